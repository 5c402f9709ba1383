"""The AI4I 2020 predictive-maintenance data set (``../shared/data/ai4i2020/README.md``) as windows.

AI4I is **synthetic** (Matzka 2020): one milling machine, 10,000 products in production order.
Its rows are a time series: the air temperature is a random walk, the tool wear grows by 2 / 3 /
5 minutes per L / M / H product and falls to 0 when the tool is changed (about every 85 rows,
119 changes), so each tool's life is a unit, as an engine is in C-MAPSS. Four failure modes
follow the inputs: tool wear (TWF, at a random wear between 200 and 240 min; the tool is then
changed), heat dissipation (HDF: process − air temperature below 8.6 K and speed below
1,380 rpm), power (PWF: torque × speed outside 3,500–9,000 W) and overstrain (OSF: wear × torque
above 11,000 / 12,000 / 13,000 min·Nm for L / M / H). :func:`rule_flags` computes the last three
from the inputs and reproduces the file's flags exactly; the fifth flag, random failures (RNF),
follows nothing, so the model has no head for it.

A window holds the last ``window`` products of one tool's life, ending at the product it is
labelled for, left-padded by repeating the life's first product (like a short C-MAPSS test unit),
so no window crosses a tool change and splits by tool life (``groups``) never share a product.
Its channels: the five process inputs z-scored with the given statistics (those of the training
products only, in a benchmark) and the product quality one-hot. Labels: whether each mode fails
on that product (``horizon`` 0, the usual task), or on any of the next ``horizon`` products
(NaN where those run past the end of the file): the failure ahead that maintenance could act on.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.training.windows import WindowSet
from shared.errors import DatasetError

FILE = Path("ai4i2020") / "ai4i2020.csv"
INPUTS = ("air_temp_k", "process_temp_k", "speed_rpm", "torque_nm", "tool_wear_min")
QUALITIES = ("L", "M", "H")
FEATURES = INPUTS + tuple(f"quality_{q}" for q in QUALITIES)
MODES = ("TWF", "HDF", "PWF", "OSF")  # RNF is random: no head, but it counts in "Machine failure"
# The inputs each mode's rule reads (Matzka 2020): what an explanation of a failure should name.
RULE_INPUTS = {
    "TWF": ("tool_wear_min",),
    "HDF": ("air_temp_k", "process_temp_k", "speed_rpm"),
    "PWF": ("speed_rpm", "torque_nm"),
    "OSF": ("tool_wear_min", "torque_nm"),
}
_HEADER = (
    "UDI",
    "Product ID",
    "Type",
    "Air temperature [K]",
    "Process temperature [K]",
    "Rotational speed [rpm]",
    "Torque [Nm]",
    "Tool wear [min]",
    "Machine failure",
    "TWF",
    "HDF",
    "PWF",
    "OSF",
    "RNF",
)


@dataclass(frozen=True)
class Ai4i:
    inputs: np.ndarray  # (N, 5) float64, INPUTS in production order
    quality: np.ndarray  # (N,) int, index into QUALITIES
    flags: np.ndarray  # (N, 5) int, MODES then RNF
    failure: np.ndarray  # (N,) int, the "Machine failure" column
    life: np.ndarray  # (N,) int, the tool's life each product was made with (0, 1, ...)

    def __len__(self) -> int:
        return len(self.inputs)

    def stats(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of the inputs over ``rows`` (a boolean mask or indices): the z-scoring."""
        sel = self.inputs[rows]
        if len(sel) < 2:
            raise DatasetError(f"statistics need at least 2 products, got {len(sel)}")
        return sel.mean(0), np.maximum(sel.std(0), 1e-9)


def load(data_dir: Path) -> Ai4i:
    """Read ``data_dir/ai4i2020/ai4i2020.csv``; DatasetError naming the file and the row on a
    missing file, a changed header (later public copies renamed a column) or a bad value."""
    path = Path(data_dir) / FILE
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read AI4I 2020 ({exc}); pass --data") from exc
    if not rows or tuple(rows[0]) != _HEADER:
        raise DatasetError(f"{path}: header {rows[0] if rows else 'missing'}, expected {list(_HEADER)}")
    body = rows[1:]
    if len(body) < 2:
        raise DatasetError(f"{path}: {len(body)} products, expected thousands")
    inputs = np.empty((len(body), len(INPUTS)))
    quality = np.empty(len(body), dtype=np.int64)
    flags = np.empty((len(body), 5), dtype=np.int64)
    failure = np.empty(len(body), dtype=np.int64)
    for i, row in enumerate(body):
        try:
            if len(row) != len(_HEADER):
                raise ValueError(f"{len(row)} columns")
            quality[i] = QUALITIES.index(row[2])
            inputs[i] = [float(v) for v in row[3:8]]
            failure[i] = int(row[8])
            flags[i] = [int(v) for v in row[9:14]]
        except ValueError as exc:
            raise DatasetError(f"{path}: row {i + 2}: {exc}") from exc
    if not (np.isin(flags, (0, 1)).all() and np.isin(failure, (0, 1)).all()):
        raise DatasetError(f"{path}: failure columns hold values other than 0 and 1")
    if not np.isfinite(inputs).all():
        raise DatasetError(f"{path}: an input is not a finite number")
    wear = inputs[:, INPUTS.index("tool_wear_min")]
    # a tool change: the wear falls (it restarts at 0 with the next tool)
    life = np.r_[0, np.cumsum(np.diff(wear) < 0)].astype(np.int64)
    return Ai4i(inputs=inputs, quality=quality, flags=flags, failure=failure, life=life)


def rule_flags(data: Ai4i) -> dict[str, np.ndarray]:
    """HDF, PWF and OSF computed from the inputs by the generator's published rules: the ceiling of
    what a model can learn for them (TWF and RNF are random given the inputs)."""
    air, proc, rpm, torque, wear = data.inputs.T
    power_w = torque * rpm * 2.0 * np.pi / 60.0
    limit = np.array([11000.0, 12000.0, 13000.0])[data.quality]
    return {
        "HDF": (proc - air < 8.6) & (rpm < 1380.0),
        "PWF": (power_w < 3500.0) | (power_w > 9000.0),
        "OSF": wear * torque > limit,
    }


def windows(data: Ai4i, window: int, mean: np.ndarray, std: np.ndarray, horizon: int = 0) -> WindowSet:
    """One window per product, in production order (see the module docstring).

    ``rul`` is unknown (NaN): AI4I has no remaining life, only failures. ``groups``: the tool life.
    """
    if window < 1:
        raise ValueError(f"window: {window} products, at least 1")
    if horizon < 0:
        raise ValueError(f"horizon: {horizon} products, 0 (the product itself) or more")
    z = (data.inputs - mean) / std
    feats = np.concatenate([z, np.eye(len(QUALITIES))[data.quality]], axis=1).astype(np.float32)
    n = len(data)
    starts = np.r_[0, np.flatnonzero(np.diff(data.life)) + 1]
    first = starts[data.life]  # each product's tool life starts here
    # rows of each window: the last `window` products up to and including this one, none before
    # the life's first (repeated in its place)
    idx = np.maximum(np.arange(n)[:, None] - np.arange(window - 1, -1, -1)[None, :], first[:, None])
    mode_flags = data.flags[:, : len(MODES)].astype(np.float32)
    if horizon == 0:
        labels = mode_flags
    else:
        labels = np.full((n, len(MODES)), np.nan, dtype=np.float32)
        ahead = np.lib.stride_tricks.sliding_window_view(mode_flags[1:], horizon, axis=0)  # (n-h, M, h)
        labels[: len(ahead)] = ahead.max(axis=2)
    return WindowSet(
        x=feats[idx], rul=np.full(n, np.nan, dtype=np.float32), labels=labels, groups=data.life.copy()
    )
