"""What a learning round works on: labelled windows (:class:`Windows`), the injected training
work (:class:`Pipeline`) and the by-tool split of new labels into training and frozen test cases
(:func:`split_holdout`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Windows:
    """Labelled windows: x (N, T, F) float32, failed (N,) bool, mode names, rul_h (N,) NaN=unknown,
    and the case and tool of each (tools: splits by tool, never by window), and each tool's type
    (empty: not known; the gate's alert threshold then reads every mode's probability)."""

    x: np.ndarray
    failed: np.ndarray
    modes: list[str | None]
    rul_h: np.ndarray
    case_ids: list[str]
    tools: list[str]
    tool_types: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.case_ids)

    @staticmethod
    def concat(parts: list[Windows]) -> Windows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Windows(np.zeros((0, 0, 0), np.float32), np.zeros(0, bool), [], np.zeros(0), [], [])
        typed = all(len(p.tool_types) == len(p) for p in parts)
        return Windows(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.failed for p in parts]),
            [m for p in parts for m in p.modes],
            np.concatenate([p.rul_h for p in parts]),
            [c for p in parts for c in p.case_ids],
            [t for p in parts for t in p.tools],
            [t for p in parts for t in p.tool_types] if typed else [],
        )


@dataclass
class Pipeline:
    """The training work a round calls. Paths in, paths out; each call writes only under ``out``."""

    fine_tune: Callable[[Path, Windows, Windows, Path], Path]  # (full ckpt, new, replay, out) → full ckpt
    # (full ckpt, windows, out, running edge ckpt to start from or None) → edge ckpt
    distil: Callable[[Path, Windows, Path, Path | None], Path]
    # (edge ckpt, calibration windows, windows the mode namer is fitted on, out, version, parent)
    # → .onnx
    export: Callable[[Path, Windows, Windows, Path, str, str | None], Path]
    # (.onnx, frozen set) → each window's risk of failing within the horizon, higher is likelier
    risk: Callable[[Path, Windows], np.ndarray]
    # (.onnx, frozen set) → each window's probability as the edge's alert rule reads it (the
    # highest of its tool type's progressive modes); None: ``risk`` stands for it
    alert_risk: Callable[[Path, Windows], np.ndarray] | None = None


def _hash01(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_holdout(cases: list[tuple[str, str]], fraction: float) -> tuple[list[str], list[str]]:
    """(case id, tool id) pairs → (training ids, frozen test ids), split by tool.

    Neighbouring windows of one tool overlap, so a test set drawn from the training tools' cases
    flatters a model that memorised those tools (bench B8 caught exactly that). Tools go to the test
    set by a stable hash of their id, at least one each way when there are two tools or more; with
    a single tool the cases themselves are split by hash.
    """
    tools = sorted({t for _, t in cases}, key=_hash01)
    if len(tools) < 2:
        test = {c for c, _ in cases if _hash01(c) < fraction}
        return [c for c, _ in cases if c not in test], [c for c, _ in cases if c in test]
    held = {t for t in tools if _hash01(t) < fraction} or {tools[0]}
    if len(held) == len(tools):
        held.discard(tools[-1])
    return [c for c, t in cases if t not in held], [c for c, t in cases if t in held]
