"""Shared pieces of the run-to-run tuner (numpy only): the lot record, Bayesian ridge, and the
surrogate's curvature (the prior on the yield's curvature per setpoint)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DAY = 86400.0
DEFAULT_CURVATURE = 150.0  # yield points per (envelope span)² when nothing better is known
STEP_MARGIN = 0.999  # proposals stay strictly inside the step limit the guard enforces


@dataclass(frozen=True)
class Lot:
    t_s: float
    setpoints: tuple[float, ...]
    yield_pct: float
    energy_kwh: float


def ridge(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, mean: np.ndarray, sd: np.ndarray, noise: float
) -> np.ndarray:
    """Posterior mean of weighted least squares with a Gaussian prior (mean, sd) per column."""
    xw = x * (w / noise**2)[:, None]
    prec = np.diag(1.0 / sd**2)
    lhs = x.T @ xw + prec
    rhs = xw.T @ y + prec @ mean
    try:
        return np.asarray(np.linalg.solve(lhs, rhs))
    except np.linalg.LinAlgError:
        return np.asarray(np.linalg.lstsq(lhs, rhs, rcond=None)[0])


PredictYield = Callable[[np.ndarray], np.ndarray]


def surrogate_curvature(
    predict_yield: PredictYield,
    point: Sequence[float],
    spans: Sequence[float],
    h: float = 0.1,
) -> np.ndarray:
    """Curvature of the surrogate's yield per setpoint, in points per span², at ``point``.

    ``point`` is one full input row (setpoints first, then context); ``spans`` gives the
    envelope span of each of the first ``len(spans)`` columns. Central second differences with a
    step of ``h`` spans; a non-finite or non-positive curvature comes back as NaN (the caller
    then keeps its default)."""
    base = np.asarray(point, dtype=np.float64)
    k = len(spans)
    rows = [base]
    for i in range(k):
        for sign in (1.0, -1.0):
            r = base.copy()
            r[i] += sign * h * float(spans[i])
            rows.append(r)
    out = np.asarray(predict_yield(np.array(rows)), dtype=np.float64).reshape(-1)
    # yield ≈ c − q·z², so q is minus half the second derivative.
    curv = np.array([-(out[1 + 2 * i] + out[2 + 2 * i] - 2.0 * out[0]) / (2.0 * h**2) for i in range(k)])
    return np.where(np.isfinite(curv) & (curv > 0), curv, np.nan)
