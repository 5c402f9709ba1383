"""Distil a small edge DGA from the full one (DESIGN.md §5).

The student trains on the same windows with targets blended from the ground truth and the
teacher's outputs (``TrainConfig.distil_alpha``); where a label is unknown (censored RUL, a
horizon past the end of the run) the teacher's output is the whole target, so the student also
learns from windows the labels say nothing about.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from cloud.training.trainer import FitResult, TrainConfig, fit, new_model, predict
from cloud.training.windows import WindowSet
from shared.models.dga import DGA, DGAConfig


def edge_config(full: DGAConfig, d_model: int = 32, n_layers: int = 2, n_heads: int = 4) -> DGAConfig:
    """The default student: narrower and at most as deep as the teacher, same inputs and heads."""
    return replace(
        full,
        d_model=d_model,
        n_heads=n_heads,
        n_layers=min(n_layers, full.n_layers),
        d_ff=2 * d_model,
        embed_dim=min(full.embed_dim, 16),
    )


def edge_heads(d_model: int) -> int:
    """Attention heads of an edge student of width ``d_model``: about 8 dimensions each, 1 to 4."""
    return max(1, min(4, d_model // 8))


def with_teacher(teacher: DGA, ws: WindowSet) -> WindowSet:
    out = predict(teacher, ws.x)
    return ws.with_teacher(out["rul"], out["probs"])


def distil(
    teacher: DGA,
    train: WindowSet,
    val: WindowSet,
    student: DGAConfig | DGA,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    meta: dict[str, Any] | None = None,
) -> FitResult:
    """Train a student on the teacher's soft targets; returns its FitResult. ``student``: the
    config of a fresh one, or a model to continue training (it is trained in place)."""
    if isinstance(student, DGAConfig):
        student = new_model(student, cfg.seed)
    doc = dict(meta or {})
    doc["distilled_from"] = {"config": teacher.cfg.to_dict(), "alpha": cfg.distil_alpha}
    return fit(student, with_teacher(teacher, train), val, cfg, checkpoint, doc)
