"""The training pipeline API the cloud's incremental learning calls (CONTRACTS.md).

::

    ckpt = train_full(dataset_dir, cfg, out_dir)                      # full DGA, checkpoint path
    ckpt2 = fine_tune(ckpt, new_windows, replay_windows, cfg)         # new labels + replay set
    edge = distil_edge(ckpt2, windows, cfg)                            # small DGA, checkpoint path
    onnx_path, manifest = export_release(edge, calib_windows, out_dir, key, version, parent)

Windows are :class:`cloud.training.windows.WindowSet` (x (N, T, F) features from
``shared.features.build_features``, RUL and per-mode labels, groups = tool ids). Every
checkpoint carries ``meta["feature_spec"]`` (``FeatureSpec.to_dict()``), ``meta["modes"]`` and
``meta["metrics"]``. ``PipelineConfig.tiny()`` trains in seconds (tests), ``small()`` in about
half a minute with useful heads (the demo).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.training import simdata
from cloud.training.distil import distil, edge_config, edge_heads
from cloud.training.errors import TrainingError
from cloud.training.pool import pool_path, write_pool
from cloud.training.release import AlertThresholds, release_edge
from cloud.training.trainer import TrainConfig, fit, new_model, predict
from cloud.training.windows import WindowSet, split_by_group
from shared.dataset import DatasetInfo
from shared.equipment import ALL_MODES
from shared.features import FeatureSpec, Scaler
from shared.models.checkpoint import load_checkpoint, save_checkpoint
from shared.models.dga import DGA, DGAConfig
from shared.signing import ModelManifest, load_private_key

_logger = logging.getLogger(__name__)

MIN_VAL_WINDOWS = 50  # held-out windows a learning round needs to choose its epoch by them


SIZES = ("default", "small", "tiny")  # PipelineConfig.sized


@dataclass
class PipelineConfig:
    d_model: int = 64  # full model
    n_layers: int = 3
    n_heads: int = 4
    dropout: float = 0.1
    edge_d_model: int = 32  # distilled edge model
    edge_layers: int = 2
    rul_cap_h: float = simdata.RUL_CAP_H
    window: int = simdata.WINDOW
    step_s: float = simdata.STEP_S
    stride: int = 4  # steps between training windows
    val_fraction: float = 0.2  # of tools, never of windows
    # Early stopping watches the failure-mode BCE: alerts are raised on those heads. On the
    # simulator's fleet the summed loss was lowest at epoch 2 (its RUL part rises from the first
    # epochs), so patience stopped B2's training at epoch 8 of 25, before the one-cycle schedule
    # annealed. Watching the mode BCE kept epoch 10 of 17 run, better on every validation metric,
    # the summed loss and the RUL error included (bench/results/models.md, B2).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(monitor="mode"))
    fine_tune_epochs: int = 15
    fine_tune_lr: float = 3e-4
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    model_id: str = "fabpm-edge-risk"
    label_horizon_h: float | None = None  # the probability heads' horizon; None: the export's (72 h)
    cmapss_window: int = 30  # C-MAPSS FD001 protocol (its own window; cap 125 cycles)
    # > 0: windows carry each tool's own reference (shared.reference), its first rows of each
    # state after it last came back up; 0: the window alone. On by default since the seventh
    # session: at 12 rows it warned 10-15 points more failures ≥ 72 h ahead at about the same
    # precision on each of three training seeds (models.md, B2), and B8 was rerun with it.
    reference_rows: int = 12

    @classmethod
    def sized(cls, size: str) -> PipelineConfig:
        """The preset called ``size``: "default", "small" or "tiny" (``SIZES``)."""
        if size not in SIZES:
            raise TrainingError(f"unknown model size {size!r}: one of {', '.join(SIZES)}")
        if size == "small":
            return cls.small()
        return cls.tiny() if size == "tiny" else cls()

    @classmethod
    def small(cls) -> PipelineConfig:
        """Trains in about half a minute on one core with useful heads: the demo's size. On the
        demo's export (16 tools, 60 days) its validation Brier score is 0.011 (full) and 0.013
        (edge), against 0.25 and 0.28 for :meth:`tiny`, whose probabilities hover near 0.5, above
        the alert threshold on every tool."""
        return cls(
            d_model=32,
            n_layers=2,
            n_heads=4,
            edge_d_model=16,
            edge_layers=1,
            stride=6,
            train=TrainConfig(epochs=10, batch_size=128, patience=4, monitor="mode"),
            fine_tune_epochs=3,
        )

    @classmethod
    def tiny(cls) -> PipelineConfig:
        """Trains in seconds on one core: for tests and demos, not for accuracy."""
        return cls(
            d_model=16,
            n_layers=1,
            n_heads=2,
            edge_d_model=8,
            edge_layers=1,
            window=12,
            stride=12,
            train=TrainConfig(epochs=2, batch_size=128, patience=2, progress=False, monitor="mode"),
            fine_tune_epochs=1,
        )

    def model_config(self, n_features: int, n_modes: int, horizon_h: float) -> DGAConfig:
        return DGAConfig(
            n_features=n_features,
            window=self.window,
            n_modes=n_modes,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
            d_ff=2 * self.d_model,
            dropout=self.dropout,
            rul_cap=self.rul_cap_h,
            horizon=horizon_h,
        )


Data = Path | str | tuple[WindowSet, WindowSet, dict[str, Any]]


def train_full(data: Data, cfg: PipelineConfig, out_dir: Path) -> Path:
    """Train the full DGA on an export folder, or on ``(train, val, feature_spec dict)`` arrays."""
    out_dir = Path(out_dir)
    if isinstance(data, Path | str):
        train, val, spec, info = sim_split(Path(data), cfg)
        spec_dict: dict[str, Any] = spec.to_dict()
        horizon = cfg.label_horizon_h or info.horizon_h
        source = {"dataset": str(data), "seed": info.seed, "days": info.days, "tools": len(info.tools)}
    else:
        train, val, spec_dict = data
        horizon, source = 72.0, {"dataset": "arrays"}
    model = new_model(cfg.model_config(train.n_features, train.n_modes, horizon), cfg.train.seed)
    meta = {
        "feature_spec": spec_dict,
        "modes": list(ALL_MODES)[: train.n_modes],
        "source": source,
        "role": "full",
        "val_fraction": cfg.val_fraction,  # with train_config's seed: which tools were held out
    }
    res = fit(model, train, val, cfg.train, out_dir / "full.pt", meta)
    assert res.checkpoint is not None
    if int(os.environ.get("RANK", "0")) == 0:  # one writer under torchrun
        write_pool(pool_path(res.checkpoint), train, spec_dict, seed=cfg.train.seed)
    return res.checkpoint


def sim_split(folder: Path, cfg: PipelineConfig) -> tuple[WindowSet, WindowSet, FeatureSpec, DatasetInfo]:
    """The windows :func:`train_full` trains on from an export: the spec fitted on it, the
    training and validation windows (split by tool with the training seed) and the export's info."""
    spec = FeatureSpec(
        window=cfg.window,
        step_s=cfg.step_s,
        scaler=_scaler_for(folder, cfg),
        reference_rows=cfg.reference_rows,
    )
    spec, tools, info = simdata.dataset_windows(
        folder, spec=spec, stride=cfg.stride, cap_h=cfg.rul_cap_h, horizon_h=cfg.label_horizon_h
    )
    train, val = split_by_group(simdata.merge(tools), cfg.val_fraction, cfg.train.seed)
    return train, val, spec, info


def _scaler_for(folder: Path, cfg: PipelineConfig) -> Scaler:
    info, series = simdata.load(folder)
    return simdata.fit_spec(info, series, cfg.window, cfg.step_s).scaler


def fine_tune(
    checkpoint: Path, new_windows: WindowSet, replay_windows: WindowSet, cfg: PipelineConfig
) -> Path:
    """Continue training on new labelled windows mixed with a replay set (against forgetting).

    Validation is split by tool from the union. Writes ``<stem>.ft<unix time>.pt`` beside
    ``checkpoint`` and returns its path; the metrics include the replay set's RMSE before/after,
    so forgetting is visible.
    """
    model, meta = load_checkpoint(Path(checkpoint))
    if not isinstance(model, DGA):
        raise TrainingError(f"{checkpoint} is not a DGA checkpoint")
    union = WindowSet.concat([new_windows, replay_windows])
    train, val, schedule = _round_split(union, cfg, "fine-tuning")
    tcfg = replace(schedule, epochs=cfg.fine_tune_epochs, lr=cfg.fine_tune_lr)
    before = _rmse(model, replay_windows)
    out = Path(checkpoint).with_name(f"{Path(checkpoint).stem}.ft{int(time.time() * 1000)}.pt")
    meta = {**meta, "parent_checkpoint": str(checkpoint), "fine_tuned_on": len(new_windows)}
    meta.pop("config", None)
    meta.pop("kind", None)
    res = fit(model, train, val, tcfg, None, meta)
    meta.setdefault("metrics", {}).update(
        res.metrics, replay_rmse_before=before, replay_rmse_after=_rmse(res.model, replay_windows)
    )
    return save_checkpoint(out, res.model, meta)


def _round_split(ws: WindowSet, cfg: PipelineConfig, what: str) -> tuple[WindowSet, WindowSet, TrainConfig]:
    """Training and validation windows (held-out tools) and the schedule for ``what``. When the
    held-out tools hold fewer than MIN_VAL_WINDOWS windows, they cannot choose an epoch: early
    stopping followed one window's noise in the demo's rounds (about 100 labels, one held-out
    window) and kept the first epoch, so the candidate barely moved. Then every window trains and
    the whole schedule runs (``keep`` "last"); the learning round's gate, on its frozen sets, is
    what judges the result."""
    train, val = split_by_group(ws, cfg.val_fraction, cfg.train.seed)
    if len(val) >= MIN_VAL_WINDOWS or cfg.train.keep == "last":
        return train, val, cfg.train
    _logger.info(
        "%s: %d held-out windows cannot choose an epoch (fewer than %d): all %d windows train "
        "for the whole schedule",
        what,
        len(val),
        MIN_VAL_WINDOWS,
        len(ws),
    )
    return ws, ws.take(np.zeros(0, dtype=np.int64)), replace(cfg.train, keep="last")


def _rmse(model: DGA, ws: WindowSet) -> float:
    ok = np.isfinite(ws.rul)
    if not ok.any():
        return float("nan")
    pred = predict(model, ws.x[ok])["rul"]
    return float(np.sqrt(np.mean((pred - ws.rul[ok]) ** 2)))


def distil_edge(
    full_ckpt: Path,
    windows: WindowSet,
    cfg: PipelineConfig,
    init: Path | None = None,
    pool: WindowSet | None = None,
) -> Path:
    """Distil the small edge DGA from a full checkpoint on ``windows``; returns its checkpoint.

    ``pool``: unlabelled windows of the fleet's usual running (cloud/training/pool.py) that join
    the training side, the teacher's outputs their only target, so a student distilled on a
    learning round's few hard cases still learns the teacher everywhere else.

    ``init``: the edge checkpoint running now. The student then starts from its weights and
    trains at ``fine_tune_lr`` (for the distillation's epochs), so what it learnt from the whole earlier
    history is kept unless the new windows move it. It must take the teacher's inputs and give
    its heads; when its feature spec (scaler) differs from the teacher's, its weights would read
    other numbers, and a fresh student is distilled instead (logged).
    """
    teacher, meta = load_checkpoint(Path(full_ckpt))
    if not isinstance(teacher, DGA):
        raise TrainingError(f"{full_ckpt} is not a DGA checkpoint")
    train, val, schedule = _round_split(windows, cfg, "distillation")
    if pool is not None and len(pool):
        _logger.info("distillation: %d windows and %d of the pool", len(train), len(pool))
        train = WindowSet.concat([train, pool])
    start = _warm_start(init, teacher, meta)
    fresh = edge_config(teacher.cfg, cfg.edge_d_model, cfg.edge_layers, edge_heads(cfg.edge_d_model))
    student: DGAConfig | DGA = fresh if start is None else start
    tcfg = schedule if start is None else replace(schedule, lr=cfg.fine_tune_lr)
    out = Path(full_ckpt).with_name(f"{Path(full_ckpt).stem}.edge.pt")
    meta = {k: v for k, v in meta.items() if k not in ("config", "kind", "metrics")}
    meta["role"] = "edge"
    meta["teacher_checkpoint"] = str(full_ckpt)
    if start is not None:
        meta["warm_start"] = str(init)
    meta["distil_pool_windows"] = 0 if pool is None else len(pool)
    res = distil(teacher, train, val, student, tcfg, out, meta)
    assert res.checkpoint is not None
    return res.checkpoint


def _warm_start(init: Path | None, teacher: DGA, teacher_meta: dict[str, Any]) -> DGA | None:
    """The running edge model to continue from, or None for a fresh student."""
    if init is None:
        return None
    model, meta = load_checkpoint(Path(init))
    if not isinstance(model, DGA):
        raise TrainingError(f"warm start {init} is not a DGA checkpoint")
    got, want = model.cfg, teacher.cfg
    for name in ("n_features", "window", "n_modes"):
        if getattr(got, name) != getattr(want, name):
            raise TrainingError(
                f"warm start {init}: {name} is {getattr(got, name)}, the teacher's is {getattr(want, name)}"
            )
    if meta.get("feature_spec") != teacher_meta.get("feature_spec"):
        _logger.warning("warm start %s: its feature spec differs from the teacher's; distilling afresh", init)
        return None
    return model


def export_release(
    edge_ckpt: Path,
    calib_windows: WindowSet,
    out_dir: Path,
    key: Ed25519PrivateKey | Path,
    version: str,
    parent: str | None,
    cfg: PipelineConfig | None = None,
    metrics: dict[str, float] | None = None,
    naming_windows: WindowSet | None = None,
) -> tuple[Path, ModelManifest]:
    """ONNX export, adaptive INT8, parity report and signed manifest for an edge checkpoint.

    ``calib_windows`` is split by tool into calibration (quantization, novelty centroids) and
    held-out windows (parity, calibration of the hard-case signals). ``metrics`` are added to the
    checkpoint's own in the manifest (e.g. how the alert rule was chosen). ``naming_windows``,
    when given, are what the mode namer is fitted on instead of ``calib_windows``
    (``release.release_edge``).
    """
    cfg = cfg or PipelineConfig()
    model, meta = load_checkpoint(Path(edge_ckpt))
    if not isinstance(model, DGA):
        raise TrainingError(f"{edge_ckpt} is not a DGA checkpoint")
    private = key if isinstance(key, Ed25519PrivateKey) else load_private_key(Path(key))
    if len(np.unique(calib_windows.groups)) >= 2:
        calib, holdout = split_by_group(calib_windows, 0.3, 0)
    else:
        calib = holdout = calib_windows
    spec = dict(meta.get("feature_spec") or {})
    return release_edge(
        model,
        calib,
        holdout,
        Path(out_dir),
        private,
        version=version,
        parent=parent,
        model_id=cfg.model_id,
        input_spec=spec,
        modes=list(meta.get("modes") or []),
        horizon_h=float(model.cfg.horizon),
        thresholds=cfg.thresholds,
        metrics={
            **{k: v for k, v in (meta.get("metrics") or {}).items() if isinstance(v, int | float)},
            **(metrics or {}),
        },
        name=f"edge_risk_{version}",
        naming=naming_windows,
    )
