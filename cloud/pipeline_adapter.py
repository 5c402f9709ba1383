"""The production :class:`cloud.learning.Pipeline`: the learning round's steps done by
``cloud.training.pipeline`` (fine_tune, distil_edge, export_release), and the gate's score.

Cases become :class:`~cloud.training.windows.WindowSet` rows: RUL capped at the model's
``rul_cap`` (NaN when unknown), per-mode labels (1 for the failed mode, 0 for the others and for
"did not fail"; NaN for a failure of unknown mode), groups = tool. With ``learning.ddp_nproc > 1``
fine-tuning runs under ``torchrun --nproc_per_node=N`` (:mod:`cloud.ddp_finetune`; gloo on CPUs,
NCCL on GPUs), with a bounded wall-clock time.

The gate's per-window score is the highest mode probability, computed with onnxruntime on the
exported graph the edge will run; :mod:`cloud.gate` turns it into the ROC AUC of "fails within
the horizon". AUC rather than accuracy at the alert threshold: failures are rare, so a model that
never alerts scores high accuracy and 0.5 balanced accuracy whatever it learnt; AUC ranks what it
learnt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cloud.config import CloudConfig
from cloud.errors import LearningError
from cloud.learning import Pipeline, Windows
from cloud.registry import Registry
from cloud.training.parity import run_onnx
from cloud.training.pipeline import PipelineConfig, distil_edge, export_release, fine_tune
from cloud.training.pool import pool_path, read_pool
from cloud.training.release import AlertThresholds
from cloud.training.windows import WindowSet
from shared.equipment import alert_modes
from shared.models.checkpoint import load_checkpoint
from shared.signing import manifest_path

_logger = logging.getLogger(__name__)
DDP_TIMEOUT_S = 3600.0


def to_windowset(w: Windows, modes: list[str], rul_cap: float) -> WindowSet:
    """Cases → the trainer's window set for a model with ``modes``."""
    n, m = len(w), len(modes)
    labels = np.zeros((n, m), dtype=np.float32)
    for i, (failed, mode) in enumerate(zip(w.failed, w.modes, strict=True)):
        if failed:
            if mode in modes:
                labels[i, modes.index(mode)] = 1.0
            else:
                labels[i, :] = np.nan  # failed, but we do not know which head should have said so
    tool_codes = {t: k for k, t in enumerate(sorted(set(w.tools)))}
    x = w.x if n else np.zeros((0, 1, 1), np.float32)
    return WindowSet(
        x=x.astype(np.float32),
        rul=np.minimum(w.rul_h, rul_cap).astype(np.float32),
        labels=labels,
        groups=np.array([tool_codes[t] for t in w.tools], dtype=np.int64),
    )


def balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean of the recall of each class present (plain accuracy when only one is present)."""
    recalls = [float(np.mean(pred[truth == c] == c)) for c in (False, True) if np.any(truth == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


def make_pipeline(cfg: CloudConfig, registry: Registry) -> Pipeline:
    lc = cfg.learning
    pcfg = PipelineConfig.sized(lc.size)
    pcfg = replace(pcfg, train=replace(pcfg.train, progress=False))  # a service logs, it draws no bars
    if lc.fine_tune_epochs is not None:
        pcfg = replace(pcfg, fine_tune_epochs=lc.fine_tune_epochs)
    if lc.distil_epochs is not None:  # distillation trains with pcfg.train
        pcfg = replace(pcfg, train=replace(pcfg.train, epochs=lc.distil_epochs))

    def model_info(ckpt: Path) -> tuple[list[str], float, tuple[int, int], dict[str, Any]]:
        """Its modes, RUL cap, window shape and feature spec, from one read of the checkpoint."""
        _, meta = load_checkpoint(ckpt)
        conf = meta["config"]
        return (
            list(meta.get("modes") or []),
            float(conf["rul_cap"]),
            (int(conf["window"]), int(conf["n_features"])),
            meta.get("feature_spec") or {},
        )

    def check_shape(w: Windows, shape: tuple[int, int], what: str) -> None:
        if len(w) and tuple(w.x.shape[1:]) != shape:
            raise LearningError(f"{what}: case windows are {w.x.shape[1:]}, the model takes {shape}")

    def do_fine_tune(base: Path, new: Windows, replay: Windows, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        start = out / "base.pt"
        shutil.copyfile(base, start)  # fine_tune writes beside its input: keep each round's files apart
        modes, cap, shape, _ = model_info(start)
        check_shape(new, shape, "new labels")
        check_shape(replay, shape, "replay set")
        new_ws = to_windowset(new, modes, cap)
        replay_ws = to_windowset(replay, modes, cap) if len(replay) else new_ws.take(np.arange(0))
        if cfg.learning.ddp_nproc > 1:
            return _fine_tune_ddp(start, new_ws, replay_ws, lc.ddp_nproc, lc.size, out, pcfg.fine_tune_epochs)
        return fine_tune(start, new_ws, replay_ws, pcfg)

    pool_file = distil_pool_file(cfg)

    def do_distil(full: Path, data: Windows, out: Path, init: Path | None) -> Path:
        modes, cap, _, spec = model_info(full)
        out.mkdir(parents=True, exist_ok=True)
        pool = None if pool_file is None else read_pool(pool_file, spec, len(modes), lc.distil_pool_size)
        return distil_edge(full, to_windowset(data, modes, cap), pcfg, init, pool)

    def do_export(
        edge: Path, calib: Windows, naming: Windows, out: Path, version: str, parent: str | None
    ) -> Path:
        modes, cap, _, _ = model_info(edge)
        ecfg = replace(pcfg, thresholds=parent_thresholds(registry, parent, pcfg.thresholds))
        onnx_path, _manifest = export_release(
            edge,
            to_windowset(calib, modes, cap),
            out,
            registry.cfg.private_key,
            version,
            parent,
            ecfg,
            naming_windows=to_windowset(naming, modes, cap),
        )
        return onnx_path

    # The gate reads each model twice per frozen set (the AUC's risk, the alert rule's): the
    # probabilities of the last few (release, set) pairs are kept so the graph runs once. A
    # registered release's file never changes, and a round's candidate has a path of its own.
    seen: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def probs_of(artifact: Path, data: Windows) -> np.ndarray:
        key = (str(artifact), tuple(data.case_ids))
        if key not in seen:
            if len(seen) >= 4:
                seen.clear()
            seen[key] = run_onnx(artifact, data.x.astype(np.float32))["probs"]
        return seen[key]

    def risk(artifact: Path, data: Windows) -> np.ndarray:
        return probs_of(artifact, data).max(axis=1)  # (N, M) → (N,)

    def alert_risk(artifact: Path, data: Windows) -> np.ndarray:
        probs = probs_of(artifact, data)
        modes = json.loads(manifest_path(artifact).read_text())["manifest"]["output_spec"]["modes"]
        return alerting_probability(probs, modes, data.tool_types)

    return Pipeline(do_fine_tune, do_distil, do_export, risk, alert_risk)


def distil_pool_file(cfg: CloudConfig) -> Path | None:
    """The distillation pool the learning rounds use (``learning.distil_pool``, else the one beside
    ``serving.checkpoint``), or None with a warning that says what is lost without it. One that
    was named and is missing is an error: it would fail every round."""
    lc = cfg.learning
    if lc.distil_pool_size == 0:
        return None
    if lc.distil_pool is not None:
        if not lc.distil_pool.is_file():
            raise LearningError(f"learning.distil_pool {lc.distil_pool}: no such file")
        return lc.distil_pool
    beside = pool_path(cfg.serving.checkpoint) if cfg.serving.checkpoint is not None else None
    if beside is not None and beside.is_file():
        return beside
    _logger.warning(
        "no distillation pool (%s): each learning round distils the edge model on its labelled "
        "windows alone, and the edge model forgets what they do not show; write one with "
        "`fabpm train pool` (cloud/training/pool.py)",
        beside or "serving.checkpoint is not set",
    )
    return None


def alerting_probability(probs: np.ndarray, modes: list[str], tool_types: list[str]) -> np.ndarray:
    """Each window's highest probability among the modes its tool type's alert rule reads
    (``shared.equipment.alert_modes``, as the edge does); every mode where the types are unknown."""
    if len(tool_types) != len(probs):
        return probs.max(axis=1)
    out = np.empty(len(probs))
    for ttype in set(tool_types):
        rows = np.array([t == ttype for t in tool_types])
        idx = np.array(alert_modes(ttype, modes) or range(len(modes)), dtype=np.int64)
        out[rows] = probs[np.ix_(rows, idx)].max(axis=1)
    return out


def parent_thresholds(registry: Registry, parent: str | None, default: AlertThresholds) -> AlertThresholds:
    """The alert rule of the model a round starts from, kept by its candidate: it was chosen when
    that model was released, on tools with ground truth (``cloud.training.alert_choice``), which a
    round's labelled cases are not. ``default`` when the parent is unknown or ships none."""
    row = registry.get(parent, missing_ok=True) if parent else None
    shipped = (row.manifest.get("thresholds") if row is not None else None) or {}
    try:
        return replace(
            default,
            alert_probability=float(shipped["alert_probability"]),
            alert_persistence_steps=int(shipped["alert_persistence_steps"]),
            alert_clear_probability=float(shipped["alert_clear_probability"]),
        )
    except (KeyError, TypeError, ValueError):
        return default


def _fine_tune_ddp(
    start: Path,
    new: WindowSet,
    replay: WindowSet,
    nproc: int,
    size: str,
    out: Path,
    epochs: int | None = None,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = out / "ddp_data.npz"
    np.savez(
        data,
        **{f"new_{k}": getattr(new, k) for k in ("x", "rul", "labels", "groups")},
        **{f"replay_{k}": getattr(replay, k) for k in ("x", "rul", "labels", "groups")},
    )
    result = out / "ddp_result.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
        "-m", "cloud.ddp_finetune", str(start), str(data), str(result),
    ] + ["--size", size] + (["--epochs", str(epochs)] if epochs else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DDP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise LearningError(f"DDP fine-tuning did not finish in {DDP_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        raise LearningError(f"DDP fine-tuning failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return Path(json.loads(result.read_text())["checkpoint"])


__all__ = ["balanced_accuracy", "make_pipeline", "to_windowset"]
