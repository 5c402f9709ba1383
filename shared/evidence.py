"""Which sensors drive a failure risk: each sensor restored to the tool's own reference.

An alert says "etch-03: rf_match_drift, 0.82". The engineer who walks to the tool asks what is
moving. For each sensor of the tool, the alert's window is run through the model again with that
sensor restored to its reference, the tool's own readings just after it last came back up, for
each row's state (``shared.reference``): ``z ← z − dz`` and ``dz ← 0`` in the rows whose reference
is known. The mode's probability falls by the sensor's *contribution*: how much of the risk goes
away when that sensor alone reads as it did after its last maintenance. The sensor's *deviation*
is its mean ``dz`` over the window's rows with a known reference, the deviation the restoring
took away: how far it read from its reference over the window, in standard deviations of the
tool type, approximately where a reading or its deviation reached the features' clip at ±20 of
them. (The last rows alone showed "+0.0 sd" beside a sensor that had deviated earlier in the
window and so carried the risk.)

The models' mode heads confuse modes of one type (on B2's runs the most probable mode was the
failing one in 40% of true alerts; alerts now name the release's namer's mode, ``shared.naming``,
right in 49%). So an explanation also weighs each sensor's fall of the tool's risk against the
precursor sensors the equipment catalog lists for each mode, and names the mode they point to.

Restoring one sensor at a time sees what each sensor alone carries; two sensors that each tell
the same story (a mode's signature moves several) share the credit and may each show a small
contribution. A sensor is named when it carries at least a tenth of the probability. Without a
reference (a spec with ``reference_rows`` 0, or no row of the window with a known one) there is
nothing of the tool's own after a maintenance to restore a sensor to. The edge then restores it
to the first readings it saw of the tool (``against``): what moved since the edge began watching,
which misses a degradation already under way then; never a guess against the tool type's mean,
which recipes and states move more than a mode's early signature does.

Pure functions of the window and a ``predict`` callable: the edge passes its ONNX model, a
benchmark the same or a torch one (``bench/alert_evidence.py`` scores this against the
simulator's own signatures).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# A sensor is named when it carries at least this share of the mode's probability: alert rules
# chosen for 95% precision sit anywhere from 0.05 to 0.9, so an absolute floor named nothing on a
# model whose alerts come at 0.06 (the demo's) and everything on one whose come at 0.9.
MIN_SHARE = 0.1
TOP = 3  # sensors an alert names at most

Predict = Callable[[np.ndarray], np.ndarray]  # (B, W, F) features → (B, M) probabilities


@dataclass(frozen=True, slots=True)
class SensorEvidence:
    """One sensor's part in a risk."""

    sensor: str
    contribution: float  # probability the mode loses when the sensor is restored to its reference
    deviation: float  # mean (reading − reference) / type std over the window's rows with a reference

    def to_dict(self) -> dict[str, float | str]:
        return {
            "sensor": self.sensor,
            "contribution": round(self.contribution, 4),
            "deviation": round(self.deviation, 3),
        }


def reference_known(x: np.ndarray, names: Sequence[str]) -> bool | None:
    """Whether any row of window ``x`` had the tool's own reference; None for features without
    one (a model that uses no reference)."""
    if "ref_known" not in names:
        return None
    return bool((x[:, list(names).index("ref_known")] > 0.5).any())


def restored_windows(
    x: np.ndarray, names: Sequence[str], n_sensors: int, against: np.ndarray | None = None
) -> np.ndarray | None:
    """(W, F) features → (n_sensors, W, F): copy j has sensor j restored to the reference where
    the row's reference is known. None when the features carry no reference (see the module
    docstring) or no row of the window has one.

    ``against`` (W, n_sensors), for a window without the tool's reference: each reading's
    deviation from another baseline in the same units (the edge's first readings of the tool,
    ``edge.windows``), NaN where unknown; copy j has sensor j's z moved back by it, the reference
    features left as they are (unknown)."""
    col = {n: i for i, n in enumerate(names)}
    if against is not None:
        if against.shape != (len(x), n_sensors):
            raise ValueError(f"against has shape {against.shape}, the window {(len(x), n_sensors)}")
        if not np.isfinite(against).any():
            return None
        out = np.repeat(x[None].astype(np.float32, copy=True), n_sensors, axis=0)
        for j in range(n_sensors):
            ok = np.isfinite(against[:, j])
            out[j, ok, col[f"z_{j:02d}"]] = x[ok, col[f"z_{j:02d}"]] - against[ok, j]
        return out
    if "ref_known" not in col or f"dz_{n_sensors - 1:02d}" not in col:
        return None
    known = x[:, col["ref_known"]] > 0.5  # (W,)
    if not known.any():
        return None
    out = np.repeat(x[None].astype(np.float32, copy=True), n_sensors, axis=0)  # (S, W, F)
    for j in range(n_sensors):
        z, dz = col[f"z_{j:02d}"], col[f"dz_{j:02d}"]
        out[j, known, z] = x[known, z] - x[known, dz]
        out[j, known, dz] = 0.0
    return out


def deviations(
    x: np.ndarray, names: Sequence[str], n_sensors: int, against: np.ndarray | None = None
) -> np.ndarray:
    """(n_sensors,) mean dz over the window's rows with a known reference (0 where none): the
    deviation that restoring the sensor takes away; dz is 0 where the sensor was Bad, so a dropout
    does not read as a deviation. With ``against`` (:func:`restored_windows`), its mean."""
    if against is not None:
        with np.errstate(invalid="ignore"):
            known = np.isfinite(against)
            total = np.where(known, against, 0.0).sum(axis=0)
            return np.where(known.any(axis=0), total / np.maximum(known.sum(axis=0), 1), 0.0)
    col = {n: i for i, n in enumerate(names)}
    if "ref_known" not in col:
        return np.zeros(n_sensors)
    rows = x[x[:, col["ref_known"]] > 0.5]
    if len(rows) == 0:
        return np.zeros(n_sensors)
    return np.array([float(rows[:, col[f"dz_{j:02d}"]].mean()) for j in range(n_sensors)])


def _probs(
    x: np.ndarray,
    names: Sequence[str],
    n_sensors: int,
    mode_index: int,
    predict: Predict,
    against: np.ndarray | None = None,
) -> np.ndarray | None:
    """(n_sensors + 1, M): the window's probabilities, then each sensor-restored copy's, from one
    batch; None without a reference."""
    restored = restored_windows(x, names, n_sensors, against)
    if restored is None:
        return None
    batch = np.concatenate([x[None].astype(np.float32), restored])
    probs = np.asarray(predict(batch), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != n_sensors + 1 or not 0 <= mode_index < probs.shape[1]:
        raise ValueError(f"predict gave {probs.shape} for {n_sensors + 1} windows, mode {mode_index}")
    return probs


def contributions(
    x: np.ndarray, names: Sequence[str], n_sensors: int, mode_index: int, predict: Predict
) -> tuple[np.ndarray | None, float]:
    """((n_sensors,) the fall of the mode's probability when each sensor alone is restored, the
    probability itself), from one batch of ``n_sensors + 1`` windows; (None, nan) without a
    reference."""
    probs = _probs(x, names, n_sensors, mode_index, predict)
    if probs is None:
        return None, float("nan")
    return probs[0, mode_index] - probs[1:, mode_index], float(probs[0, mode_index])


def sensor_evidence(
    x: np.ndarray,
    names: Sequence[str],
    sensors: Sequence[str],
    mode_index: int,
    predict: Predict,
    top: int = TOP,
    min_share: float = MIN_SHARE,
) -> list[SensorEvidence]:
    """The sensors that carry the mode's risk in window ``x`` (W, F), largest contribution first:
    at most ``top``, each carrying at least ``min_share`` of the mode's probability (and more
    than nothing); [] without a reference."""
    return explain(x, names, sensors, mode_index, predict, {}, top, min_share).sensors


@dataclass(frozen=True, slots=True)
class Explanation:
    """What an alert's window says: the sensors that carry the alerted mode's probability, and
    the mode whose precursors (the equipment catalog's) carry the tool's risk, if any."""

    sensors: list[SensorEvidence]
    likely_mode: str | None


def likely_mode(
    risk_contrib: np.ndarray, sensors: Sequence[str], precursors: Mapping[str, Sequence[str]]
) -> str | None:
    """The mode whose precursor sensors carry the most of the risk: the mean positive contribution
    over its precursors (a mode with more precursors is not favoured for having more); None when
    no precursor of any mode carries any."""
    pos = {s: max(float(c), 0.0) for s, c in zip(sensors, risk_contrib, strict=True)}
    score = {m: float(np.mean([pos.get(s, 0.0) for s in ps])) for m, ps in precursors.items() if ps}
    best = max(score, key=lambda m: score[m], default=None)
    return best if best is not None and score[best] > 0.0 else None


def explain(
    x: np.ndarray,
    names: Sequence[str],
    sensors: Sequence[str],
    mode_index: int,
    predict: Predict,
    precursors: Mapping[str, tuple[int, Sequence[str]]],
    top: int = TOP,
    min_share: float = MIN_SHARE,
    against: np.ndarray | None = None,
) -> Explanation:
    """:func:`sensor_evidence`, and from the same batch the likely mode: ``precursors`` maps each
    mode the alert could be of (the tool type's progressive ones) to (its index in the model's
    outputs, its precursor sensors); the risk is the highest of their probabilities, as the alert
    rule reads it, and :func:`likely_mode` weighs each sensor's fall of it. Where the catalog's
    precursors describe the plant, this names the failing mode more often than the most probable
    mode does (``bench/alert_evidence.py``: the models' mode heads confuse modes of one type).
    ``against``: see :func:`restored_windows` (a window without the tool's reference)."""
    n = len(sensors)
    probs = _probs(x, names, n, mode_index, predict, against)
    if probs is None:
        return Explanation([], None)
    contrib = probs[0, mode_index] - probs[1:, mode_index]
    floor = max(min_share * probs[0, mode_index], 1e-6)
    dev = deviations(x, names, n, against)
    order = np.argsort(-contrib, kind="stable")
    named = [
        SensorEvidence(sensors[j], float(contrib[j]), float(dev[j]))
        for j in order[:top]
        if contrib[j] >= floor
    ]
    mode = None
    if precursors:
        idx = [i for i, _ in precursors.values()]
        risk = probs[:, idx].max(axis=1)  # (n + 1,)
        mode = likely_mode(risk[0] - risk[1:], sensors, {m: ps for m, (_, ps) in precursors.items()})
    return Explanation(named, mode)
