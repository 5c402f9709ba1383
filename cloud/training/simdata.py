"""Windows and labels from a ``fabpm sim export`` data set (``shared.dataset``), split by tool.

Per tool, the raw series is resampled to the feature step (``step_s``, a multiple of the export's
sample period), turned into features by ``shared.features.build_features`` (the edge's exact
code), and cut into windows ending every ``stride`` steps while the tool is up (SEMI E10 uptime
states: a window ending while the tool is down is not a prediction anyone acts on).

Labels at a window's last step (``rul_h`` is the time to the tool's next failure):

* mode ``m`` (index into ``shared.equipment.ALL_MODES``): 1 if the next failure is mode ``m``
  and within ``horizon_h``; 0 if no failure comes within the horizon (known: ``rul_h`` > horizon,
  or the run is censored with ``censor_h`` ≥ horizon) or the coming failure is another mode;
  NaN (unknown) when the run ends within the horizon without a failure. Sudden failures have no
  precursors but keep their labels: their heads then learn the base rate (a small, honest
  probability) instead of staying untrained and answering ~0.5 on the edge.
* RUL target ``min(rul_h, rul_cap_h)``; for a censored run ``rul_cap_h`` if ``censor_h`` ≥ cap,
  else NaN; NaN before a sudden failure within the cap (no sensor can show that RUL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.training.errors import TrainingError
from cloud.training.windows import WindowSet
from shared.dataset import DatasetInfo, ToolSeries, read_info, read_series
from shared.equipment import ALL_MODES, E10_CODES, UPTIME_STATES, E10State
from shared.features import FeatureSpec, build_features, fit_scaler
from shared.reference import reference_series

_logger = logging.getLogger(__name__)

WINDOW = 48  # steps
STEP_S = 1800.0  # 30 min per step: a window sees the last 24 h
RUL_CAP_H = 240.0
_UP_CODES = np.array([E10_CODES[s] for s in UPTIME_STATES])
_PROCESSING = np.array([E10_CODES[E10State.PRODUCTIVE], E10_CODES[E10State.ENGINEERING]])
# What the edge calls down (edge.windows.DOWN): a return from these starts a new reference.
_DOWN_CODES = np.array([E10_CODES[E10State.SCHEDULED_DOWN], E10_CODES[E10State.UNSCHEDULED_DOWN]])


@dataclass
class ToolWindows:
    """One tool's windows and what B2 needs to score alerts on them."""

    tool_id: str
    tool_type: str
    ws: WindowSet
    t_end_s: np.ndarray  # (N,) simulated time of each window's last step


def load(folder: Path) -> tuple[DatasetInfo, dict[str, ToolSeries]]:
    info = read_info(Path(folder))
    return info, {t.tool_id: read_series(Path(folder), t) for t in info.tools}


def fit_spec(
    info: DatasetInfo,
    series: dict[str, ToolSeries],
    window: int = WINDOW,
    step_s: float = STEP_S,
    reference_rows: int = 0,
) -> FeatureSpec:
    """A FeatureSpec whose scaler is fitted on these (training) tools only."""
    per_type: dict[str, list[np.ndarray]] = {}
    for tool in info.tools:
        s = series[tool.tool_id]
        up = np.isin(s.state, _UP_CODES)
        per_type.setdefault(tool.tool_type, []).append(s.values[up])
    scaler = fit_scaler({t: np.concatenate(v) for t, v in per_type.items()})
    return FeatureSpec(window=window, step_s=step_s, scaler=scaler, reference_rows=reference_rows)


def _labels(s: ToolSeries, idx: np.ndarray, horizon_h: float, cap_h: float) -> tuple[np.ndarray, np.ndarray]:
    rul = s.rul_h[idx].astype(np.float64)
    censor = s.censor_h[idx].astype(np.float64)
    mode = s.fail_mode[idx].astype(int)
    sudden = s.sudden[idx].astype(bool)
    known_fail = np.isfinite(rul)
    labels = np.zeros((len(idx), len(ALL_MODES)), dtype=np.float32)
    within = known_fail & (rul <= horizon_h)
    rows = np.flatnonzero(within & (mode >= 0))
    labels[rows, mode[rows]] = 1.0
    unknown = ~known_fail & (censor < horizon_h)
    labels[unknown] = np.nan
    target = np.where(known_fail, np.minimum(rul, cap_h), np.where(censor >= cap_h, cap_h, np.nan))
    target = np.where(known_fail & sudden & (rul <= cap_h), np.nan, target)
    return target.astype(np.float32), labels


def tool_windows(
    tool_id: str,
    tool_type: str,
    s: ToolSeries,
    spec: FeatureSpec,
    sample_period_s: float,
    horizon_h: float,
    group: int,
    stride: int = 4,
    cap_h: float = RUL_CAP_H,
) -> ToolWindows:
    """All windows of one tool (see the module docstring for the labels)."""
    every = round(spec.step_s / sample_period_s)
    if every < 1 or abs(every * sample_period_s - spec.step_s) > 1e-6 * spec.step_s:
        raise TrainingError(
            f"step {spec.step_s} s is not a multiple of the sample period {sample_period_s} s"
        )
    sel = np.arange(0, len(s.t_s), every)
    processing = np.isin(s.state[sel], _PROCESSING)
    raw = s.values[sel].astype(np.float64)
    if spec.reference_rows > 0:
        # Row by row, as the edge does: the same causal reference (shared.reference).
        down = np.isin(s.state[sel], _DOWN_CODES)
        ref, since = reference_series(s.t_s[sel], raw, processing, down, spec.reference_rows)
        feats = build_features(raw, processing, tool_type, spec, ref, since)  # (T', F)
    else:
        feats = build_features(raw, processing, tool_type, spec)
    w = spec.window
    ends = np.arange(w - 1, len(sel), stride)
    ends = ends[np.isin(s.state[sel][ends], _UP_CODES)]
    empty = np.zeros((0, w, spec.n_features), np.float32)
    if len(ends) == 0:
        ws = WindowSet(
            empty, np.zeros(0, np.float32), np.zeros((0, len(ALL_MODES)), np.float32), np.zeros(0, int)
        )
        return ToolWindows(tool_id, tool_type, ws, np.zeros(0))
    x = np.stack([feats[e - w + 1 : e + 1] for e in ends]).astype(np.float32)
    rul, labels = _labels(s, sel[ends], horizon_h, cap_h)
    ws = WindowSet(x=x, rul=rul, labels=labels, groups=np.full(len(ends), group))
    return ToolWindows(tool_id, tool_type, ws, s.t_s[sel[ends]])


def dataset_windows(
    folder: Path,
    spec: FeatureSpec | None = None,
    stride: int = 4,
    cap_h: float = RUL_CAP_H,
    horizon_h: float | None = None,
) -> tuple[FeatureSpec, list[ToolWindows], DatasetInfo]:
    """Windows of every tool of an export; fits the spec (scaler) on this set when none is given.

    ``horizon_h`` overrides the export's horizon for the mode labels (None: the export's).
    """
    info, series = load(folder)
    if spec is None:
        spec = fit_spec(info, series)
    out = []
    for g, tool in enumerate(info.tools):
        out.append(
            tool_windows(
                tool.tool_id,
                tool.tool_type,
                series[tool.tool_id],
                spec,
                info.sample_period_s,
                horizon_h if horizon_h is not None else info.horizon_h,
                g,
                stride,
                cap_h,
            )
        )
    n = sum(len(t.ws) for t in out)
    if n == 0:
        raise TrainingError(
            f"{folder}: no windows (runs shorter than {spec.window} steps of {spec.step_s} s?)"
        )
    _logger.info("%s: %d windows from %d tools", folder, n, len(out))
    return spec, out, info


def merge(tools: list[ToolWindows]) -> WindowSet:
    return WindowSet.concat([t.ws for t in tools if len(t.ws)])
