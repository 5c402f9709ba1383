"""NASA C-MAPSS FD001 and its standard evaluation protocol (``../shared/data/cmapss/README.md``).

Protocol: the 14 informative sensors, z-scored with train statistics; windows of 30 cycles;
training target ``min(RUL, 125)`` (piece-wise linear); ONE prediction per test unit, from the
window ending at its last observed cycle, compared with ``RUL_FD001.txt`` capped at 125. Metrics:
RMSE over the 100 units and the PHM08 score ``Σ exp(-d/13) − 1`` (d < 0) / ``exp(d/10) − 1``
(d ≥ 0), ``d = predicted − true``.

Each unit's own reference (``reference`` cycles, as the simulator pipeline's tools have theirs):
every engine starts with its own manufacturing variation and initial wear, so the model also sees
each sensor minus the mean of the unit's first ``reference`` cycles. Every test unit has at least
31 cycles, all known at its last cycle; a unit shorter than the reference is refused, and a
training window uses the reference only when it ends at or after cycle ``reference``, so no
window sees a cycle after its end.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud.training.windows import WindowSet, split_by_group
from shared.errors import DatasetError

if TYPE_CHECKING:
    from cloud.training.pipeline import PipelineConfig
    from shared.models.dga import DGAConfig

# s2 s3 s4 s7 s8 s9 s11 s12 s13 s14 s15 s17 s20 s21 → columns 2 + 3 + (n - 1)
SENSORS = (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21)
SENSOR_COLS = tuple(5 + s - 1 for s in SENSORS)
RUL_CAP = 125.0
WINDOW = 30
HORIZON = 30.0  # cycles: the C-MAPSS stand-in for the fab's 72 h "fails within the horizon" head
MODES = ("hpc_degradation",)
SMOOTH = 0.0  # EWMA alpha applied causally per unit (0 = raw sensors, the plain protocol)
SHORTEST_TEST_UNIT = 31  # cycles
B1_REFERENCE = 0  # cycles of each unit's own reference B1 trains with (chosen by bench/b1_cv.py)
# The official test truths lie within 7–145 cycles (data README): the protocol never scores a unit
# further from failure, while 20% of B1's training windows are (the early life of long-lived units).
TEST_RUL_RANGE = (7, 145)
B1_FAR_WEIGHT = 1.0  # B1's weight of the windows beyond that range (far_weighted; chosen by bench/b1_cv.py)
# L1 pressure on the full model's mean gate (TrainConfig.w_gate): the gates of the tokens that do
# not help close, so dropping them (B7) moves the output less. Chosen by bench/b1_cv.py over five
# folds: the RUL error as before (13.06 against 13.06), 0.85 of the tokens kept costing 0.3%
# instead of 1.4% (0.05: 0.6%; 0.01 changed nothing; bench/results/models.md, B7).
B1_W_GATE = 0.1


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


def ewma(z: np.ndarray, alpha: float) -> np.ndarray:
    """Causal exponential smoothing along time (each value sees only its past): no leak."""
    if alpha <= 0.0 or alpha >= 1.0:
        return z
    out = np.empty_like(z)
    acc = z[0].astype(np.float64)
    for i in range(len(z)):
        acc = alpha * z[i] + (1.0 - alpha) * acc
        out[i] = acc
    return out


def n_features(reference: int = 0) -> int:
    """The model's input width: the 14 sensors, and as many deviations from the reference."""
    return len(SENSORS) * (2 if reference > 0 else 1)


def _units(
    raw: np.ndarray, data: Fd001, smooth: float = 0.0, reference: int = 0
) -> list[tuple[int, np.ndarray]]:
    """[(unit id, (cycles, 14) z-scored, optionally EWMA-smoothed sensors)] in unit order; with
    ``reference``, 14 more columns: the smoothed sensors minus the mean of the unit's first
    ``reference`` cycles (raw, since the EWMA starts from cycle 1 and is still settling there)."""
    z = ((raw[:, list(SENSOR_COLS)] - data.mean) / data.std).astype(np.float32)
    units = raw[:, 0].astype(int)
    out = []
    for u in np.unique(units):
        own = z[units == u]
        seq = ewma(own, smooth)
        if reference > 0:
            if len(own) < reference:
                raise DatasetError(f"unit {u}: {len(own)} cycles, fewer than the {reference}-cycle reference")
            seq = np.concatenate([seq, seq - own[:reference].mean(0, keepdims=True)], axis=1)
        out.append((int(u), seq.astype(np.float32)))
    return out


def _check_reference(reference: int, first_end: int) -> None:
    if not 0 <= reference <= first_end:
        raise ValueError(
            f"reference: {reference} cycles, but windows end from cycle {first_end} on; a window would "
            "see cycles after its end (at most the first window end; the shortest test unit has "
            f"{SHORTEST_TEST_UNIT} cycles)"
        )


def _pad(seq: np.ndarray, window: int) -> np.ndarray:
    """Left-pad a short series by repeating its first cycle (FD001 test units are all ≥ 31)."""
    if len(seq) >= window:
        return seq
    return np.concatenate([np.repeat(seq[:1], window - len(seq), axis=0), seq])


def train_windows(
    data: Fd001,
    window: int = WINDOW,
    cap: float = RUL_CAP,
    smooth: float = 0.0,
    first_end: int | None = None,
    reference: int = 0,
) -> WindowSet:
    """Every window of every training unit, target min(RUL at its last cycle, cap).

    ``first_end`` (cycles, ≤ window): windows also end at cycles ``first_end … window - 1``, left-
    padded the way :func:`last_windows` pads a short test unit, so a window longer than the
    shortest test unit (31 cycles) is trained on what it will be shown. None: from ``window`` on.
    ``reference``: see the module docstring; at most the first window end.
    """
    _check_reference(reference, min(first_end or window, window))
    xs, ruls, groups = [], [], []
    for unit, z in _units(data.train, data, smooth, reference):
        z = _pad(z, max(window, len(z) + window - min(first_end or window, window)))
        life = len(z)
        idx = np.arange(window, life + 1)  # window ends (exclusive)
        xs.append(np.stack([z[e - window : e] for e in idx]))
        ruls.append(np.minimum(life - idx, cap).astype(np.float32))
        groups.append(np.full(len(idx), unit))
    rul = np.concatenate(ruls)
    labels = (rul <= HORIZON).astype(np.float32)[:, None]
    return WindowSet(x=np.concatenate(xs), rul=rul, labels=labels, groups=np.concatenate(groups))


def cycles_to_failure(ws: WindowSet) -> np.ndarray:
    """Each training window's RUL without the cap, for windows as :func:`train_windows` returns
    them (each unit's windows contiguous, one cycle apart, the last at its failure)."""
    starts = np.r_[0, np.flatnonzero(ws.groups[1:] != ws.groups[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(ws)])
    if len(np.unique(ws.groups)) != len(starts):
        raise ValueError("windows are not grouped by unit in cycle order (take them from train_windows)")
    return np.concatenate([np.arange(n - 1, -1, -1) for n in sizes]).astype(np.float32)


def in_test_range(ws: WindowSet) -> np.ndarray:
    """Mask of the training windows whose RUL lies in the range the test protocol scores
    (:data:`TEST_RUL_RANGE`): the windows a test-like cross-validation score counts."""
    rul = cycles_to_failure(ws)
    return (rul >= TEST_RUL_RANGE[0]) & (rul <= TEST_RUL_RANGE[1])


def far_weighted(ws: WindowSet, far_weight: float) -> WindowSet:
    """``ws`` with windows beyond the test's longest RUL (:data:`TEST_RUL_RANGE`) weighted
    ``far_weight`` in the RUL loss, the others 1, rescaled to mean 1. Targets at the cap are 30% of
    B1's training windows (20% beyond 145 cycles) against 11% of the test's truths: under a squared
    loss that share pulls a window that shows little wear towards the cap."""
    if not 0.0 <= far_weight <= 1.0:
        raise ValueError(f"far_weight: {far_weight}, between 0 and 1")
    w = np.where(cycles_to_failure(ws) > TEST_RUL_RANGE[1], far_weight, 1.0)
    return replace(ws, weight=(w / w.mean()).astype(np.float32))


def last_windows(
    data: Fd001, window: int = WINDOW, cap: float = RUL_CAP, smooth: float = 0.0, reference: int = 0
) -> WindowSet:
    """The last window of each test unit; ``rul`` is the official truth capped at ``cap``. Each window
    ends at its unit's last cycle: a unit shorter than ``reference`` is refused (DatasetError)."""
    xs, units = [], []
    for unit, z in _units(data.test, data, smooth, reference):
        xs.append(_pad(z, window)[-window:])
        units.append(unit)
    rul = np.minimum(data.rul_test, cap).astype(np.float32)
    labels = (rul <= HORIZON).astype(np.float32)[:, None]
    return WindowSet(x=np.stack(xs), rul=rul, labels=labels, groups=np.asarray(units))


def all_test_windows(
    data: Fd001, window: int = WINDOW, cap: float = RUL_CAP, smooth: float = 0.0, reference: int = 0
) -> WindowSet:
    """Every window of every test unit, RUL known from the official file (B7's larger sample)."""
    _check_reference(reference, window)
    xs, ruls, groups = [], [], []
    for (unit, z), final in zip(_units(data.test, data, smooth, reference), data.rul_test, strict=True):
        z = _pad(z, window)
        ends = np.arange(window, len(z) + 1)
        xs.append(np.stack([z[e - window : e] for e in ends]))
        ruls.append(np.minimum(final + (len(z) - ends), cap).astype(np.float32))
        groups.append(np.full(len(ends), unit))
    rul = np.concatenate(ruls)
    labels = (rul <= HORIZON).astype(np.float32)[:, None]
    return WindowSet(x=np.concatenate(xs), rul=rul, labels=labels, groups=np.concatenate(groups))


def recent_test_windows(
    data: Fd001, k: int, window: int = WINDOW, cap: float = RUL_CAP, smooth: float = 0.0, reference: int = 0
) -> WindowSet:
    """Each test unit's windows ending at its last ``k`` cycles (none before cycle 31, the shortest
    unit's last), in cycle order and padded as :func:`last_windows` pads; the last of each unit is
    its :func:`last_windows` window. ``rul``: the official truth plus the cycles still to run."""
    if k < 1:
        raise ValueError(f"k: {k} cycles, at least 1")
    xs, ruls, groups = [], [], []
    for (unit, z), final in zip(_units(data.test, data, smooth, reference), data.rul_test, strict=True):
        ends = np.arange(max(len(z) - k + 1, min(SHORTEST_TEST_UNIT, len(z))), len(z) + 1)
        xs.append(np.stack([_pad(z[:e], window)[-window:] for e in ends]))
        ruls.append(np.minimum(final + (len(z) - ends), cap).astype(np.float32))
        groups.append(np.full(len(ends), unit))
    rul = np.concatenate(ruls)
    labels = (rul <= HORIZON).astype(np.float32)[:, None]
    return WindowSet(x=np.concatenate(xs), rul=rul, labels=labels, groups=np.concatenate(groups))


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    d = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.sqrt(np.mean(d**2)))


def nasa_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """PHM08 asymmetric score: late predictions (d > 0) cost more. Lower is better."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))


def b1_config(
    seed: int = 0,
    epochs: int = 8,
    d_model: int = 96,
    n_layers: int = 2,
    dropout: float = 0.1,
    window: int = 80,
    lr: float = 7e-4,
    weight_decay: float = 0.01,
    input_noise: float = 0.05,
    drop_prob: float = 0.5,
    val_fraction: float = 0.0,
    drop_min_keep: float = 0.5,
    w_gate: float = B1_W_GATE,
) -> PipelineConfig:
    """The configuration B1 measures (chosen by ``bench/b1_cv.py``): what ``fabpm train cmapss``
    and the C-MAPSS benchmarks train. The one-cycle schedule runs all ``epochs``; the best epoch
    on the held-out units is kept, or with ``val_fraction`` 0 the last one, every unit trained on."""
    from cloud.training.pipeline import PipelineConfig

    base = PipelineConfig(
        d_model=d_model, n_layers=n_layers, dropout=dropout, cmapss_window=window, val_fraction=val_fraction
    )
    train = replace(
        base.train,
        seed=seed,
        epochs=epochs,
        patience=epochs,
        lr=lr,
        weight_decay=weight_decay,
        input_noise=input_noise,
        drop_prob=drop_prob,
        drop_min_keep=drop_min_keep,
        w_gate=w_gate,
        monitor="loss",  # the RUL is B1's target (the simulator pipeline watches the mode heads)
        keep="best" if val_fraction > 0 else "last",
    )
    return replace(base, train=train)


def model_config(cfg: PipelineConfig, reference: int = 0) -> DGAConfig:
    """The full DGA's shape for FD001 under ``cfg``: the pipeline's, with FD001's window and cap."""
    full = cfg.model_config(n_features=n_features(reference), n_modes=len(MODES), horizon_h=HORIZON)
    return replace(full, window=cfg.cmapss_window, rul_cap=RUL_CAP)


def run(
    data_dir: Path,
    out_dir: Path,
    cfg: PipelineConfig,
    edge: bool = False,
    smooth: float = SMOOTH,
    first_end: int | None = None,
    reference: int = 0,
    far_weight: float = 1.0,
) -> dict[str, Any]:
    """Train the full DGA on FD001, evaluate the protocol. Validation: ``cfg.val_fraction`` of the
    units, by unit; with 0 (B1's default, ``train.keep`` "last") every unit is trained on.

    ``first_end``, ``reference``: see :func:`train_windows`; ``far_weight``: :func:`far_weighted`
    (1: every window alike). With ``edge``, also distil the edge model and
    evaluate it the same way. Returns the metrics
    (RMSE and score on the 100 test units, per-unit predictions) and the checkpoint paths.
    """
    from cloud.training.distil import distil, edge_config
    from cloud.training.trainer import fit, new_model, predict

    data = load_fd001(data_dir)
    ws = train_windows(data, cfg.cmapss_window, RUL_CAP, smooth, first_end, reference)
    if far_weight != 1.0:
        ws = far_weighted(ws, far_weight)
    test = last_windows(data, cfg.cmapss_window, RUL_CAP, smooth, reference)
    if cfg.val_fraction > 0:
        train, val = split_by_group(ws, cfg.val_fraction, cfg.train.seed)
    else:  # a refit on every unit (fit() refuses an empty split unless train.keep is "last")
        train, val = ws, ws.take(np.array([], dtype=np.int64))
    mcfg = model_config(cfg, reference)
    meta = {
        "feature_spec": feature_spec(data, cfg.cmapss_window, smooth, reference),
        "modes": list(MODES),
        "source": "cmapss/FD001",
        "train_windows_from_cycle": first_end or cfg.cmapss_window,
        "far_weight": far_weight,
    }
    out_dir = Path(out_dir)
    model = new_model(mcfg, cfg.train.seed)
    res = fit(model, train, val, cfg.train, out_dir / f"cmapss_full_s{cfg.train.seed}.pt", meta)
    pred = predict(res.model, test.x)["rul"]
    result: dict[str, Any] = {
        "seed": cfg.train.seed,
        "full": {
            "rmse": rmse(pred, test.rul),
            "score": nasa_score(pred, test.rul),
            "params": res.model.n_params(),
        },
        "full_checkpoint": str(res.checkpoint),
        "full_pred": pred.round(2).tolist(),
        "epochs": len(res.history),
    }
    if edge:
        student = edge_config(mcfg, cfg.edge_d_model, cfg.edge_layers)
        # without the gate pressure: it serves dropping tokens, and the edge release keeps them all
        eres = distil(
            res.model,
            train,
            val,
            student,
            replace(cfg.train, w_gate=0.0),
            out_dir / f"cmapss_edge_s{cfg.train.seed}.pt",
            meta,
        )
        epred = predict(eres.model, test.x)["rul"]
        result["edge"] = {
            "rmse": rmse(epred, test.rul),
            "score": nasa_score(epred, test.rul),
            "params": eres.model.n_params(),
        }
        result["edge_checkpoint"] = str(eres.checkpoint)
        result["edge_pred"] = epred.round(2).tolist()
    return result


def feature_spec(data: Fd001, window: int, smooth: float, reference: int = 0) -> dict[str, Any]:
    """The C-MAPSS input description carried by checkpoints and manifests."""
    names = [f"s{s}" for s in SENSORS]
    return {
        "source": "cmapss/FD001",
        "window": window,
        "step_s": 1.0,  # one cycle per step
        "feature_names": names + ([f"{n}-ref" for n in names] if reference > 0 else []),
        "scaler": {"mean": data.mean.tolist(), "std": data.std.tolist()},
        "ewma_alpha": smooth,
        "reference_cycles": reference,
    }


def preprocessing(spec: dict[str, Any]) -> tuple[float, int]:
    """(EWMA alpha, reference cycles) of a checkpoint's feature spec; older ones had no reference."""
    return float(spec.get("ewma_alpha", 0.0)), int(spec.get("reference_cycles", 0))
