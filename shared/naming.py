"""Which progressive mode an alert is of: a linear namer on the edge model's embedding.

The edge model's mode heads carry the alert risk (the highest probability among the tool type's
progressive modes), and they are trained per mode with a binary loss: one head per tool type
tends to win on every degrading window, so "the most probable mode" named the failing one in
about half the windows of the last day before a failure on B2's runs, and in under 40% of true
alerts (``bench/alert_evidence.py``). Training the heads to tell modes apart worsened the risk's
ranking (``cloud.training.trainer.TrainConfig.w_mode_ce``). The embedding the model already
outputs (for novelty) holds the mode: a softmax regression on it, per tool type, fitted when a
release is built on its calibration windows that precede a known failure within the horizon,
names the mode without touching the risk. It ships in the signed manifest
(``output_spec.mode_namer``) and the edge applies it with numpy to an alert's window; a release
without one (older, or a type with too few failures of some mode) names the most probable mode.

Every mode of a type needs ``MIN_WINDOWS`` windows before its failure for the type to get a namer:
a namer that never saw a mode would never name it. Modes weigh alike in the fit, so that the
commonest failure does not win every doubtful window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_WINDOWS = 20  # windows before a failure of each of a type's modes, for the type to get a namer
L2 = 1e-3
STEPS = 3000
LEARNING_RATE = 0.2


@dataclass(frozen=True, slots=True)
class TypeNamer:
    """One tool type's namer: softmax(((e − mean) / scale) @ weight + bias) over ``modes``."""

    modes: tuple[str, ...]
    mean: np.ndarray  # (E,)
    scale: np.ndarray  # (E,)
    weight: np.ndarray  # (E, K)
    bias: np.ndarray  # (K,)
    windows: tuple[int, ...]  # windows each mode was fitted on

    def probs(self, embedding: np.ndarray) -> np.ndarray:
        """(E,) or (B, E) → (K,) or (B, K) probabilities over :attr:`modes`."""
        s = ((np.asarray(embedding, dtype=np.float64) - self.mean) / self.scale) @ self.weight + self.bias
        s = s - s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        return p / p.sum(axis=-1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modes": list(self.modes),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weight": self.weight.tolist(),
            "bias": self.bias.tolist(),
            "windows": list(self.windows),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TypeNamer:
        """Rebuild from :meth:`to_dict`; ValueError when the parts do not fit together."""
        modes = tuple(str(m) for m in data["modes"])
        mean = np.asarray(data["mean"], dtype=np.float64)
        scale = np.asarray(data["scale"], dtype=np.float64)
        weight = np.asarray(data["weight"], dtype=np.float64)
        bias = np.asarray(data["bias"], dtype=np.float64)
        k, e = len(modes), mean.shape[0] if mean.ndim == 1 else -1
        if k < 2 or e < 1 or scale.shape != (e,) or weight.shape != (e, k) or bias.shape != (k,):
            raise ValueError(
                f"namer of {k} modes has mean {mean.shape}, scale {scale.shape}, weight "
                f"{weight.shape}, bias {bias.shape}"
            )
        if not (np.isfinite(weight).all() and np.isfinite(bias).all() and (scale > 0).all()):
            raise ValueError("namer weights must be finite and its scale positive")
        return cls(modes, mean, scale, weight, bias, tuple(int(n) for n in data.get("windows", [])))


@dataclass(frozen=True, slots=True)
class ModeNamer:
    """The namers of the tool types that have one."""

    types: dict[str, TypeNamer]

    def name(self, tool_type: str, embedding: np.ndarray) -> tuple[str, float] | None:
        """(the mode, its probability among the type's) for one window's (E,) embedding; None when
        the type has no namer or the embedding is not the size it was fitted on."""
        namer = self.types.get(tool_type)
        if namer is None or np.shape(embedding) != namer.mean.shape:
            return None
        p = namer.probs(embedding)
        k = int(np.argmax(p))
        return namer.modes[k], float(p[k])

    def to_dict(self) -> dict[str, Any]:
        return {t: n.to_dict() for t, n in sorted(self.types.items())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModeNamer:
        """ValueError (naming the type) when a type's namer is malformed."""
        types = {}
        for t, d in data.items():
            try:
                types[str(t)] = TypeNamer.from_dict(d)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"mode namer of {t}: {exc}") from exc
        return cls(types)


def _softmax_regression(z: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of a multinomial logistic regression, modes weighted alike, by full-batch
    gradient descent (a few thousand steps on a few thousand windows: well under a second)."""
    w_mode = 1.0 / np.maximum(np.bincount(y, minlength=k), 1)
    w = w_mode[y] / w_mode[y].mean()
    onehot = np.eye(k)[y]
    weight, bias = np.zeros((z.shape[1], k)), np.zeros(k)
    for _ in range(STEPS):
        s = z @ weight + bias
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) * w[:, None] / len(z)
        weight -= LEARNING_RATE * (z.T @ g + L2 * weight)
        bias -= LEARNING_RATE * g.sum(axis=0)
    return weight, bias


def fit_namer(
    embedding: np.ndarray,
    labels: np.ndarray,
    tool_types: Sequence[str],
    modes: Sequence[str],
    progressive: Mapping[str, Sequence[str]],
) -> ModeNamer:
    """Fit a namer per tool type on the windows that precede one known failure of a progressive
    mode of their type within the horizon (``labels`` (N, M) over ``modes``: exactly one 1 among
    the type's); ``progressive`` maps each type to its progressive modes. A type gets none unless
    each of its modes has :data:`MIN_WINDOWS` windows."""
    emb = np.asarray(embedding, dtype=np.float64)
    types = np.asarray(tool_types)
    out: dict[str, TypeNamer] = {}
    for ttype, names in progressive.items():
        names = [m for m in names if m in modes]
        if len(names) < 2:
            continue
        rows = types == ttype
        lab = np.nan_to_num(labels[rows][:, [list(modes).index(m) for m in names]], nan=0.0)
        one = (lab == 1.0).sum(axis=1) == 1
        y = np.argmax(lab[one], axis=1)
        counts = np.bincount(y, minlength=len(names))
        if counts.min() < MIN_WINDOWS:
            continue
        x = emb[rows][one]
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        weight, bias = _softmax_regression((x - mean) / scale, y, len(names))
        out[ttype] = TypeNamer(tuple(names), mean, scale, weight, bias, tuple(int(c) for c in counts))
    return ModeNamer(out)
