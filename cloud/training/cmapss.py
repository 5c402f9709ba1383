"""NASA C-MAPSS FD001 and its standard evaluation protocol (``../shared/data/cmapss/README.md``).

Protocol: the 14 informative sensors, z-scored with train statistics; windows of 30 cycles;
training target ``min(RUL, 125)`` (piece-wise linear); ONE prediction per test unit, from the
window ending at its last observed cycle, compared with ``RUL_FD001.txt`` capped at 125. Metrics:
RMSE over the 100 units and the PHM08 score ``Σ exp(-d/13) − 1`` (d < 0) / ``exp(d/10) − 1``
(d ≥ 0), ``d = predicted − true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.training.windows import WindowSet
from shared.errors import DatasetError

# s2 s3 s4 s7 s8 s9 s11 s12 s13 s14 s15 s17 s20 s21 → columns 2 + 3 + (n - 1)
SENSORS = (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21)
SENSOR_COLS = tuple(5 + s - 1 for s in SENSORS)
RUL_CAP = 125.0
WINDOW = 30
HORIZON = 30.0  # cycles: the C-MAPSS stand-in for the fab's 72 h "fails within the horizon" head
MODES = ("hpc_degradation",)


@dataclass
class Fd001:
    train: np.ndarray  # (rows, 26) raw
    test: np.ndarray  # (rows, 26) raw
    rul_test: np.ndarray  # (100,) true RUL after each test unit's last cycle
    mean: np.ndarray  # (14,) train statistics of SENSOR_COLS
    std: np.ndarray


def load_fd001(data_dir: Path) -> Fd001:
    """Read FD001 from ``data_dir/cmapss``; DatasetError naming the file when absent or malformed."""
    folder = Path(data_dir) / "cmapss"
    try:
        train = np.loadtxt(folder / "train_FD001.txt")
        test = np.loadtxt(folder / "test_FD001.txt")
        rul = np.loadtxt(folder / "RUL_FD001.txt")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{folder}: cannot read C-MAPSS FD001 ({exc}); pass --data") from exc
    if train.ndim != 2 or train.shape[1] != 26 or test.shape[1] != 26:
        raise DatasetError(f"{folder}: expected 26 columns, got {train.shape} / {test.shape}")
    n_test = len(np.unique(test[:, 0]))
    if len(rul) != n_test:
        raise DatasetError(f"{folder}: RUL_FD001.txt has {len(rul)} rows for {n_test} test units")
    cols = list(SENSOR_COLS)
    mean = train[:, cols].mean(0)
    std = train[:, cols].std(0)
    return Fd001(
        train=train, test=test, rul_test=rul.astype(np.float32), mean=mean, std=np.maximum(std, 1e-9)
    )


def _units(raw: np.ndarray, data: Fd001) -> list[tuple[int, np.ndarray]]:
    """[(unit id, (cycles, 14) z-scored sensors)] in unit order."""
    z = ((raw[:, list(SENSOR_COLS)] - data.mean) / data.std).astype(np.float32)
    units = raw[:, 0].astype(int)
    return [(int(u), z[units == u]) for u in np.unique(units)]


def _pad(seq: np.ndarray, window: int) -> np.ndarray:
    """Left-pad a short series by repeating its first cycle (FD001 test units are all ≥ 31)."""
    if len(seq) >= window:
        return seq
    return np.concatenate([np.repeat(seq[:1], window - len(seq), axis=0), seq])


def train_windows(data: Fd001, window: int = WINDOW, cap: float = RUL_CAP) -> WindowSet:
    """Every window of every training unit, target min(RUL at its last cycle, cap)."""
    xs, ruls, groups = [], [], []
    for unit, z in _units(data.train, data):
        z = _pad(z, window)
        life = len(z)
        idx = np.arange(window, life + 1)  # window ends (exclusive)
        xs.append(np.stack([z[e - window : e] for e in idx]))
        ruls.append(np.minimum(life - idx, cap).astype(np.float32))
        groups.append(np.full(len(idx), unit))
    rul = np.concatenate(ruls)
    labels = (rul <= HORIZON).astype(np.float32)[:, None]
    return WindowSet(x=np.concatenate(xs), rul=rul, labels=labels, groups=np.concatenate(groups))


def last_windows(data: Fd001, window: int = WINDOW, cap: float = RUL_CAP) -> WindowSet:
    """The last window of each test unit; ``rul`` is the official truth capped at ``cap``."""
    xs, units = [], []
    for unit, z in _units(data.test, data):
        xs.append(_pad(z, window)[-window:])
        units.append(unit)
    rul = np.minimum(data.rul_test, cap).astype(np.float32)
    labels = (rul <= HORIZON).astype(np.float32)[:, None]
    return WindowSet(x=np.stack(xs), rul=rul, labels=labels, groups=np.asarray(units))


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    d = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.sqrt(np.mean(d**2)))


def nasa_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """PHM08 asymmetric score: late predictions (d > 0) cost more. Lower is better."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))
