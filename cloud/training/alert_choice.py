"""Choosing the alert rule a release ships: threshold and persistence, on tools not trained on.

The rule (``shared.alerting``; the edge runs it on the released model's risk) is picked from a
grid of thresholds ``GRID_P`` × persistence steps ``GRID_N`` on a simulator export's tools,
scored against the export's ground truth by :mod:`cloud.training.alert_eval`: the most
progressive failures warned ≥ 72 h ahead at alert precision ≥ ``MIN_PRECISION`` (the whole grid
when no point gets there), then the higher precision, then fewer alerts. This is B2's procedure
(bench/b2_sim_warning.py), which chooses on the training export's validation tools; a release
made with ``fabpm train release`` does the same, so the demo's and a site's first model alert at
a threshold measured for that model, not at a fixed 0.5 that a calibrated model (most windows
lie far from a failure) rarely reaches and an untrained one always does. The figures of the
choice travel with 90% intervals (:func:`tool_interval`), since a few held-out tools decide little.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud.intervals import wilson
from cloud.training import simdata
from cloud.training.alert_eval import Truth, read_truth, risk_series, run_rule, score
from cloud.training.release import AlertThresholds
from cloud.training.windows import held_out_groups
from shared.alerting import AlertRule
from shared.dataset import read_info
from shared.features import FeatureSpec

_logger = logging.getLogger(__name__)

GRID_P = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
GRID_N = (2, 4, 6, 8, 12)
MIN_PRECISION = 0.95
# What a manifest records of the choice (alert_eval.score's names and the count of tools it was
# chosen on), each as alert_rule_<name>.
RULE_FIGURES = (
    "warnable_failures",
    "recall_ge_lead",
    "precision",
    "false_alarms_per_tool_month",
    "mean_lead_h",
    "alerts",
    "tools",
)
# how sure: the 90% intervals of tool_interval on the tools the rule was chosen on, recorded too
INTERVAL_FIGURES = ("recall_ge_lead_lo", "recall_ge_lead_hi", "precision_lo", "precision_hi")
INTERVAL_DRAWS = 2000
DEFAULT_VAL_FRACTION = 0.2  # PipelineConfig.val_fraction, for checkpoints that do not record theirs

ProbsFn = Callable[[np.ndarray], np.ndarray]  # windows → per-mode probabilities
Scored = tuple[float, int, dict[str, float]]  # threshold, persistence, score
Series = list[tuple[str, np.ndarray, np.ndarray]]  # (tool, window end times, risk) per tool


def rule_for(p: float, n: int) -> AlertRule:
    """The alert rule of one grid point: threshold ``p`` for ``n`` steps, cleared below half of it."""
    return AlertRule(threshold=p, persistence=n, clear_threshold=min(p, 0.5) * 0.5)


@dataclass
class ScoredTools:
    """An export's tools as B2 scores them: windows at stride 1 (as the edge sees them), the truth
    of those tools, their tool-days, and the span of a window (the hold-off after a reset)."""

    tools: list[simdata.ToolWindows]
    truth: Truth
    tool_days: float
    span_s: float

    def series(self, probs_fn: ProbsFn) -> Series:
        """(tool, window end times, risk) per tool."""
        return [(tw.tool_id, tw.t_end_s, risk_series(probs_fn(tw.ws.x), tw.tool_type)) for tw in self.tools]


def scored_tools(folder: Path, spec: FeatureSpec, groups: set[int] | None = None) -> ScoredTools:
    """Every tool of the export, or only those whose index is in ``groups`` (only theirs are built)."""
    info, raw = simdata.load(folder)
    chosen = [(g, t) for g, t in enumerate(info.tools) if groups is None or g in groups]
    truth = read_truth(folder, info.days * 86400.0)
    truth.failures = {k: v for k, v in truth.failures.items() if k in {t.tool_id for _, t in chosen}}
    tools = [
        simdata.tool_windows(
            t.tool_id, t.tool_type, raw[t.tool_id], spec, info.sample_period_s, info.horizon_h, g, 1
        )
        for g, t in chosen
    ]
    tools = [tw for tw in tools if len(tw.ws)]
    return ScoredTools(tools, truth, info.days * len(tools), spec.window * spec.step_s)


def risks(
    folder: Path, spec: FeatureSpec, probs_fn: ProbsFn, groups: set[int] | None = None
) -> tuple[Series, Truth, float, float]:
    """Per tool of the export (or only ``groups``): window end times and risk; with the truth."""
    st = scored_tools(folder, spec, groups)
    return st.series(probs_fn), st.truth, st.tool_days, st.span_s


def evaluate(
    series: Series, truth: Truth, tool_days: float, span_s: float, rule: AlertRule, lead_h: float = 72.0
) -> dict[str, float]:
    """``rule`` run on each tool's risk (re-armed at its resets) and scored; warned = ≥ ``lead_h`` ahead."""
    alerts = {tool: run_rule(rule, ts, risk, truth.resets.get(tool, []), span_s) for tool, ts, risk in series}
    return score(alerts, truth, tool_days, run_start_s=0.0, lead_h=lead_h)


def tool_counts(series: Series, truth: Truth, span_s: float, rule: AlertRule) -> np.ndarray:
    """Per tool of ``series``: failures warned ≥ 72 h ahead, warnable failures, true alerts and
    alerts under ``rule`` (rows sum to :func:`evaluate`'s totals over the same tools)."""
    rows = []
    for tool, ts, risk in series:
        alerts = {tool: run_rule(rule, ts, risk, truth.resets.get(tool, []), span_s)}
        alone = Truth(
            {tool: truth.failures.get(tool, [])}, truth.resets, truth.episodes, truth.back_up, truth.pm_hours
        )
        got = score(alerts, alone, 1.0, run_start_s=0.0)
        true_alerts = round(got["precision"] * got["alerts"]) if got["alerts"] else 0
        rows.append((got["warned_ge_lead"], got["warnable_failures"], true_alerts, got["alerts"]))
    return np.asarray(rows, dtype=float).reshape(-1, 4)


def tool_bootstrap(
    counts: np.ndarray, draws: int = INTERVAL_DRAWS, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """5th and 95th percentiles of the warned share and the precision over ``draws`` redraws of
    whole tools (``counts``: tool_counts' rows); NaN where no draw had a failure (an alert)."""
    out = dict.fromkeys(("recall_ge_lead", "precision"), (np.nan, np.nan))
    if not len(counts):
        return out
    pick = np.random.default_rng(seed).integers(0, len(counts), size=(draws, len(counts)))
    sums = counts[pick].sum(axis=1)  # (draws, 4)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = {"recall_ge_lead": sums[:, 0] / sums[:, 1], "precision": sums[:, 2] / sums[:, 3]}
    for name, v in shares.items():
        v = v[np.isfinite(v)]
        if len(v):
            out[name] = float(np.percentile(v, 5)), float(np.percentile(v, 95))
    return out


def tool_interval(
    series: Series, truth: Truth, span_s: float, rule: AlertRule, draws: int = INTERVAL_DRAWS, seed: int = 0
) -> dict[str, float]:
    """How sure the rule's figures on these tools are: for the warned share and the precision,
    the wider of two 90% intervals, Wilson's on the pooled counts and the 5th-95th percentiles
    of a bootstrap that redraws whole tools (a tool's alerts and failures go together).

    The bootstrap alone says 100-100% for 7 true alerts of 7 on 6 tools; Wilson alone ignores
    that tools differ. Neither knows how another fleet differs, nor that the rule was the best of
    a grid on these very tools: B2 measured a fixed rule's precision moving 7-11 points between
    30-tool fleets (bench/results/models.md), so read these as the least uncertainty there is."""
    counts = tool_counts(series, truth, span_s, rule)
    total = counts.sum(axis=0) if len(counts) else np.zeros(4)
    boot = tool_bootstrap(counts, draws, seed)
    out = {"tools": float(len(counts))}
    for name, (k, n) in (("recall_ge_lead", (total[0], total[1])), ("precision", (total[2], total[3]))):
        (w_lo, w_hi), (b_lo, b_hi) = wilson(k, n), boot[name]
        out[f"{name}_lo"] = float(np.nanmin([w_lo, b_lo])) if np.isfinite(w_lo) else np.nan
        out[f"{name}_hi"] = float(np.nanmax([w_hi, b_hi])) if np.isfinite(w_hi) else np.nan
    return out


def choose_rule(grid: list[Scored], min_precision: float = MIN_PRECISION) -> Scored:
    """From scored grid points: most failures warned ≥ 72 h at precision ≥ ``min_precision`` (the
    whole grid when no point gets there), then the higher precision, then fewer alerts."""
    pool = [c for c in grid if c[2]["precision"] >= min_precision] or grid
    return max(pool, key=lambda c: (c[2]["recall_ge_lead"], c[2]["precision"], -c[2]["alerts"]))


def grid_scores(st: ScoredTools, series: Series) -> list[Scored]:
    """Every grid point scored on ``series``, the risk of ``st``'s tools."""
    return [
        (p, n, evaluate(series, st.truth, st.tool_days, st.span_s, rule_for(p, n)))
        for p, n in itertools.product(GRID_P, GRID_N)
    ]


def unseen_tools(folder: Path, meta: dict[str, Any]) -> set[int] | None:
    """The tools of ``folder`` a checkpoint was not trained on: its validation tools when
    ``folder`` is the export it was trained on (the split ``train_full`` made), else all of
    them (None).

    The export it was trained on is the same folder, or one with the same simulator seed, days
    and tool count (a copy, or the same export made again elsewhere: the simulator is
    deterministic), so a moved training export is not taken for tools never seen. Two exports
    alike in those three but made from different scenarios are then taken for one: only the
    held-out tools are used, which is the safe side."""
    source = (meta.get("source") or {}) if isinstance(meta.get("source"), dict) else {}
    if not source.get("dataset"):
        return None
    info = read_info(Path(folder))
    same_folder = Path(str(source["dataset"])).resolve() == Path(folder).resolve()
    same_export = (source.get("seed"), source.get("days"), source.get("tools")) == (
        info.seed,
        info.days,
        len(info.tools),
    )
    if not (same_folder or same_export):
        return None
    n_tools = len(info.tools)
    seed = int((meta.get("train_config") or {}).get("seed", 0))
    val_fraction = float(meta.get("val_fraction", DEFAULT_VAL_FRACTION))
    return {int(g) for g in held_out_groups(np.arange(n_tools), val_fraction, seed)}


def release_rule(
    folder: Path, spec: FeatureSpec, meta: dict[str, Any], probs_fn: ProbsFn
) -> tuple[AlertThresholds, dict[str, float]] | None:
    """The alert thresholds a release of the checkpoint (``meta``) ships, chosen on the tools of
    ``folder`` it was not trained on, and the figures of that choice for its manifest (None: no
    warnable failure there, the pipeline's defaults stay)."""
    groups = unseen_tools(folder, meta)
    found = choose_on_tools(folder, spec, probs_fn, groups)
    if found is None:
        return None
    rule, got = found
    _logger.info(
        "alert rule chosen on %s of %s: p >= %g for %d steps warns %.0f%% of %d failures >= 72 h "
        "ahead at %.0f%% precision (90%% intervals: %.0f-%.0f%% warned, %.0f-%.0f%% "
        "precision)",
        f"{len(groups)} validation tools" if groups is not None else "every tool", folder,
        rule.threshold, rule.persistence, 100 * got["recall_ge_lead"], got["warnable_failures"],
        100 * got["precision"], 100 * got["recall_ge_lead_lo"], 100 * got["recall_ge_lead_hi"],
        100 * got["precision_lo"], 100 * got["precision_hi"],
    )  # fmt: skip
    thresholds = AlertThresholds(
        alert_probability=rule.threshold,
        alert_persistence_steps=rule.persistence,
        alert_clear_probability=rule.clear_threshold,
    )
    # NaN (no alert, no warned failure) has no JSON: such a figure is left out of the manifest.
    return thresholds, {
        f"alert_rule_{k}": float(got[k]) for k in RULE_FIGURES + INTERVAL_FIGURES if np.isfinite(got[k])
    }


def choose_on_tools(
    folder: Path, spec: FeatureSpec, probs_fn: ProbsFn, groups: set[int] | None
) -> tuple[AlertRule, dict[str, float]] | None:
    """The rule chosen on ``groups`` of the export (all its tools when None) and its score there;
    None when those tools hold no warnable progressive failure (nothing to choose on)."""
    st = scored_tools(folder, spec, groups)
    series = st.series(probs_fn)
    grid = grid_scores(st, series)
    if not grid or not grid[0][2]["warnable_failures"]:
        _logger.warning("%s: no warnable failure on the chosen tools; the alert rule is not chosen", folder)
        return None
    p, n, chosen = choose_rule(grid)
    rule = rule_for(p, n)
    return rule, chosen | tool_interval(series, st.truth, st.span_s, rule)
