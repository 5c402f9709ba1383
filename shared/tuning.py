"""Setpoint tuning by a surrogate model: propose one small step inside the envelope (numpy only).

The surrogate ``predict(x (B, D)) -> (yield (B,), energy (B,))`` (or a (B, 2) array) is the
edge-tuning ONNX model. Its input row is the setpoints then the context, in the order of
``setpoint_order``/``context_order`` (the manifest's ``input_spec["setpoints"]`` and
``["context"]``); without them, the insertion order of ``current`` and ``context``.

:func:`propose_step` searches the box ``envelope ∩ [current − max_step, current + max_step]``
(a setpoint without an envelope entry is never moved) with a seeded random search refined around
the best candidate, and returns ``current`` unchanged unless the best candidate beats it by at
least ``min_gain`` in the objective ``weights["yield"]·yield − weights["energy"]·energy``. A
current value outside its envelope is first brought back towards it (at most ``max_step``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from shared.equipment import tool_type

Predict = Callable[[np.ndarray], object]


def range_envelope(type_name: str, margin: float = 0.05) -> dict[str, tuple[float, float]]:
    """Each setpoint's range less ``margin`` of it at each end (``idle_mode``, the eco rule's
    switch, left out): the envelope B9 measures with and the demo runs with."""
    out = {}
    for sp in tool_type(type_name).setpoints:
        if sp.name != "idle_mode":
            span = sp.hi - sp.lo
            out[sp.name] = (sp.lo + margin * span, sp.hi - margin * span)
    return out


def step_limits(envelope: Mapping[str, tuple[float, float]], share: float = 0.04) -> dict[str, float]:
    """The largest step per setpoint: ``share`` of its envelope's width (B9's and the demo's)."""
    return {name: share * (hi - lo) for name, (lo, hi) in envelope.items()}


def _objective(predict: Predict, x: np.ndarray, weights: Mapping[str, float]) -> np.ndarray:
    out = predict(x.astype(np.float32))
    if isinstance(out, tuple | list):
        yld, energy = (np.asarray(a, dtype=np.float64).reshape(-1) for a in out[:2])
    else:
        arr = np.asarray(out, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] < 2:
            raise ValueError(f"predict must return (yield, energy) or a (B, 2) array, got {arr.shape}")
        yld, energy = arr[:, 0], arr[:, 1]
    return float(weights.get("yield", 1.0)) * yld - float(weights.get("energy", 0.0)) * energy


def step_box(
    current: Mapping[str, float],
    envelope: Mapping[str, tuple[float, float]],
    max_step: Mapping[str, float],
) -> dict[str, tuple[float, float]]:
    """Per setpoint, the interval a proposal may reach: the envelope within ``max_step`` of now."""
    box: dict[str, tuple[float, float]] = {}
    for name, value in current.items():
        v = float(value)
        if name not in envelope:
            box[name] = (v, v)
            continue
        lo, hi = (float(a) for a in envelope[name])
        if lo > hi:
            raise ValueError(f"envelope of {name} is empty: ({lo}, {hi})")
        step = abs(float(max_step.get(name, 0.0)))
        a, b = max(lo, v - step), min(hi, v + step)
        if a > b:  # current lies outside the envelope by more than one step: move one step back
            a = b = min(hi, v + step) if v < lo else max(lo, v - step)
        box[name] = (a, b)
    return box


def propose_step(
    predict: Predict,
    current: Mapping[str, float],
    context: Mapping[str, float],
    envelope: Mapping[str, tuple[float, float]],
    max_step: Mapping[str, float],
    weights: Mapping[str, float] | None = None,
    *,
    setpoint_order: Sequence[str] | None = None,
    context_order: Sequence[str] | None = None,
    samples: int = 256,
    rounds: int = 3,
    min_gain: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """The proposed setpoints (every key of ``current``), each inside its step box."""
    w = dict(weights or {"yield": 1.0, "energy": 0.0})
    sp_names = list(setpoint_order) if setpoint_order is not None else list(current)
    ctx_names = list(context_order) if context_order is not None else list(context)
    missing = [n for n in sp_names if n not in current] + [n for n in ctx_names if n not in context]
    if missing:
        raise ValueError(f"missing values for {missing}")
    box = step_box({n: current[n] for n in sp_names}, envelope, max_step)
    lo = np.array([box[n][0] for n in sp_names])
    hi = np.array([box[n][1] for n in sp_names])
    ctx = np.array([float(context[n]) for n in ctx_names])
    now = np.array([float(current[n]) for n in sp_names])
    start = np.clip(now, lo, hi)  # "now", or the nearest admissible point when now is outside

    def score(cands: np.ndarray) -> np.ndarray:
        x = np.concatenate([cands, np.broadcast_to(ctx, (len(cands), len(ctx)))], axis=1)
        return _objective(predict, x, w)

    rng = np.random.default_rng(seed)
    # Round 0: the box corners along each axis plus uniform samples; later rounds: shrinking
    # neighbourhoods of the best point so far.
    axis = [start]
    for i in range(len(sp_names)):
        for edge in (lo[i], hi[i]):
            c = start.copy()
            c[i] = edge
            axis.append(c)
    cands = np.vstack([*axis, rng.uniform(lo, hi, size=(samples, len(sp_names)))])
    scores = score(cands)
    best, best_score = cands[int(scores.argmax())], float(scores.max())
    width = (hi - lo) / 2.0
    for _ in range(rounds):
        width = width / 2.0
        local = np.clip(best + rng.uniform(-1, 1, size=(samples, len(sp_names))) * width, lo, hi)
        s = score(local)
        if float(s.max()) > best_score:
            best, best_score = local[int(s.argmax())], float(s.max())
    base_score = float(score(start[None])[0])
    chosen = best if best_score - base_score > min_gain else start
    out = {n: float(v) for n, v in zip(sp_names, chosen, strict=True)}
    for n, v in current.items():  # keys the order left out are never moved
        out.setdefault(n, float(v))
    return out
