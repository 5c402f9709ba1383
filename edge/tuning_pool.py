"""Run-to-run optimisation pooled over the tools of one type (numpy only; the edge's tuner).

Tools of one type run the same recipe on the same incoming material with the same
consumables, so much of what moves their yield optimum is shared; what differs per tool (chamber
seasoning since maintenance, wear) changes slowly. One tool reports one noisy yield per lot,
too little to follow a moving optimum alone; the pool follows the shared part with the lots of
every tool, and each tool's own offset with its own lots.

Model of lot ``i`` of tool ``j`` run at ``z`` (setpoints in envelope spans, measured from where
the tools ran lately), curvature ``q_k`` with the offline surrogate's as its prior
(:func:`edge.tuning_r2r.surrogate_curvature`):

    yield = L_j(t) − Σ_k q_k·(z_k − M_k − V_k·τ − O_jk)²

``M`` (the shared optimum now), ``V`` (its velocity per day) and ``O_j`` (tool ``j``'s offset)
are fitted by Bayesian ridge on consecutive-lot differences of each tool (the level ``L_j``
cancels but for a linear trend per tool), rows weighted by ``exp(−age / memory_days)``. Energy:
a pooled least-squares slope per setpoint on the same differences. The target for the next lot
of tool ``j`` maximises ``w_yield·yield − w_energy·energy``; the proposal steps towards it and
adds a small ± dither per setpoint (excitation), always inside the envelope and within
``max_step`` of the current value. The caller's guards still check every write.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge.tuning_r2r import DEFAULT_CURVATURE, STEP_MARGIN, Lot, ridge

DAY = 86400.0


class PooledOptimizer:
    """One per tool type; see the module docstring."""

    def __init__(
        self,
        names: Sequence[str],
        envelope: Mapping[str, tuple[float, float]],
        max_step: Mapping[str, float],
        weights: Mapping[str, float],
        *,
        curvature: Mapping[str, float] | None = None,
        memory_days: float = 0.5,
        dither: float = 0.02,
        noise: float = 0.6,
        offset_sd: float = 0.03,
        q_rel_sd: float = 1.0,
        gain: float = 1.0,
        history: int = 80,
        seed: int = 0,
    ) -> None:
        missing = [n for n in names if n not in envelope]
        if missing:
            raise ValueError(f"no envelope for {missing}")
        if memory_days <= 0:
            raise ValueError(f"memory_days must be positive, got {memory_days}")
        self.names = list(names)
        self.lo = np.array([float(envelope[n][0]) for n in self.names])
        self.hi = np.array([float(envelope[n][1]) for n in self.names])
        self.span = np.maximum(self.hi - self.lo, 1e-12)
        self.step = np.array([float(max_step.get(n, np.inf)) for n in self.names]) * STEP_MARGIN
        self.w_yield = float(weights.get("yield", 1.0))
        self.w_energy = float(weights.get("energy", 0.0))
        prior = curvature or {}
        self.q = np.array([max(float(prior.get(n, DEFAULT_CURVATURE)), 1.0) for n in self.names])
        self.memory, self.dither, self.noise, self.offset_sd = memory_days, dither, noise, offset_sd
        self.history, self.q_rel_sd, self.gain = history, q_rel_sd, gain
        self.q_fit = self.q.copy()  # the curvature of the last fit
        self.lots: dict[str, deque[Lot]] = {}
        self.nominal: dict[str, np.ndarray] = {}
        self.prior_m: np.ndarray | None = None
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict[str, object]:
        """What the pool has learnt, as JSON-able data (absolute units, so a changed envelope
        still reads it): every tool's recent lots, its nominal setpoints, the recipe's optimum."""
        return {
            "names": self.names,
            "prior": None if self.prior_m is None else (self.lo + self.prior_m * self.span).tolist(),
            "nominal": {t: v.tolist() for t, v in self.nominal.items()},
            "lots": {
                t: [[lot.t_s, list(lot.setpoints), lot.yield_pct, lot.energy_kwh] for lot in lots]
                for t, lots in self.lots.items()
            },
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`state` saved. Raises ValueError when it does not fit this pool
        (other setpoints, a malformed entry); the pool is then left as it was."""
        names = state.get("names")
        if names != self.names:
            raise ValueError(f"saved for setpoints {names}, this pool tunes {self.names}")
        k = len(self.names)
        try:
            prior = state.get("prior")
            prior_m = None if prior is None else self._z([float(v) for v in prior])
            nominal = {str(t): np.array([float(v) for v in u]) for t, u in state["nominal"].items()}
            lots = {
                str(t): deque(
                    (Lot(float(ts), tuple(float(v) for v in u), float(y), float(e)) for ts, u, y, e in rows),
                    maxlen=self.history,
                )
                for t, rows in state["lots"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed pool state: {exc}") from exc
        if (prior_m is not None and prior_m.shape != (k,)) or any(v.shape != (k,) for v in nominal.values()):
            raise ValueError(f"pool state does not have {k} setpoints per entry")
        if any(len(lot.setpoints) != k for q in lots.values() for lot in q):
            raise ValueError(f"pool state has lots without {k} setpoints")
        self.prior_m, self.nominal, self.lots = prior_m, nominal, lots

    def _z(self, u: Sequence[float]) -> np.ndarray:
        return (np.asarray(u, dtype=np.float64) - self.lo) / self.span

    def observe(
        self, tool: str, t_s: float, setpoints: Mapping[str, float], lot_yield: float, energy: float
    ) -> None:
        """One finished lot of ``tool``, run with ``setpoints``; non-finite figures are ignored."""
        u = tuple(float(setpoints[n]) for n in self.names)
        if not (np.isfinite(lot_yield) and np.isfinite(energy) and np.all(np.isfinite(u))):
            return
        if self.prior_m is None:
            self.prior_m = self._z(u)  # with no evidence the optimum is where the recipe put it
        self.lots.setdefault(tool, deque(maxlen=self.history)).append(
            Lot(float(t_s), u, float(lot_yield), float(energy))
        )

    def fit(self, now: float) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray] | None:
        """(M, V, offsets per tool, energy slope per span) at time ``now``; None without data."""
        if self.prior_m is None:
            return None
        k = len(self.names)
        tools = [t for t, lots in self.lots.items() if len(lots) >= 2]
        if not tools:
            return None
        rows, lhs, energy, wts = [], [], [], []
        width = 3 * k + len(tools) * (1 + k)
        # Setpoints are measured from where the tools ran lately (zc), not from the envelope's low
        # end: the optimum's share of the level, −q·|c − zc|², then changes slowly, so the
        # per-tool level trends take less of the evidence (B9: +0.1 yield points on 3 seeds).
        zs = np.vstack([[self._z(lot.setpoints) for lot in self.lots[t]] for t in tools])
        ages = np.concatenate([[min(lot.t_s - now, 0.0) for lot in self.lots[t]] for t in tools])
        ws = np.exp(ages / DAY / self.memory)
        zc = (ws[:, None] * zs).sum(axis=0) / ws.sum()
        for j, tool in enumerate(tools):
            lots = self.lots[tool]
            z = np.array([self._z(lot.setpoints) for lot in lots]) - zc
            tau = (np.array([lot.t_s for lot in lots]) - now) / DAY
            y = np.array([lot.yield_pct for lot in lots])
            e = np.array([lot.energy_kwh for lot in lots])
            dz, dtz, dtau = np.diff(z, axis=0), np.diff(tau[:, None] * z, axis=0), np.diff(tau)
            x = np.zeros((len(dz), width))
            x[:, :k] = dz  # A = 2·q·M
            x[:, k : 2 * k] = dtz  # B = 2·q·V
            x[:, 2 * k : 3 * k] = -np.diff(z**2, axis=0)  # q
            base = 3 * k + j * (1 + k)
            x[:, base] = dtau
            x[:, base + 1 : base + 1 + k] = dz  # C_j = 2·q·O_j
            rows.append(x)
            lhs.append(np.diff(y))
            energy.append(np.column_stack([np.diff(e), dz]))
            wts.append(np.exp(np.minimum(tau[1:], 0.0) / self.memory))
        x, y, w = np.vstack(rows), np.concatenate(lhs), np.concatenate(wts)
        two_q = 2.0 * self.q
        mean = np.zeros(width)
        mean[:k] = two_q * (self.prior_m - zc)
        mean[2 * k : 3 * k] = self.q
        sd = np.zeros(width)
        sd[:k], sd[k : 2 * k], sd[2 * k : 3 * k] = two_q * 0.5, two_q * 0.3, self.q * self.q_rel_sd
        for j in range(len(tools)):
            base = 3 * k + j * (1 + k)
            sd[base] = 20.0  # per-tool level trend (points per day)
            sd[base + 1 : base + 1 + k] = two_q * self.offset_sd
        theta = ridge(x, y, w, mean, sd, self.noise * np.sqrt(2.0))
        q = np.maximum(theta[2 * k : 3 * k], 0.2 * self.q)
        first = 3 * k + 1
        offsets = {
            t: theta[first + j * (1 + k) : first + j * (1 + k) + k] / (2 * q) for j, t in enumerate(tools)
        }
        self.q_fit = q
        ed = np.vstack(energy)
        scale = max(float(np.std(ed[:, 0])), 1e-3)
        g = ridge(ed[:, 1:], ed[:, 0], w, np.zeros(k), np.full(k, 1e6), scale)
        return zc + theta[:k] / (2 * q), theta[k : 2 * k] / (2 * q), offsets, g

    def _optimum(self, tool: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(the yield optimum for ``tool``'s next lot in envelope spans, the energy slope per span)
        from a fit at its last lot; None without one."""
        lots = self.lots.get(tool)
        if not lots:
            return None
        fitted = self.fit(lots[-1].t_s)
        if fitted is None:
            return None
        m, v, offsets, g = fitted
        times = [lot.t_s for lot in lots]
        ahead = float(np.median(np.diff(times[-9:]))) / DAY if len(times) > 1 else 0.0
        return m + v * ahead + offsets.get(tool, np.zeros_like(m)), g

    def target(self, tool: str) -> np.ndarray | None:
        """The best setpoints for ``tool``'s next lot (absolute units), or None without a fit."""
        found = self._optimum(tool)
        if found is None:
            return None
        z, g = found
        if self.w_yield > 0 and self.w_energy > 0:
            z = z - self.w_energy * g / (2.0 * self.w_yield * self.q_fit)
        return np.clip(self.lo + z * self.span, self.lo, self.hi)

    def expect(
        self, tool: str, current: Mapping[str, float], proposal: Mapping[str, float]
    ) -> tuple[float, float] | None:
        """What the pool's own fit expects of moving ``tool`` from ``current`` to ``proposal``:
        (yield change in points, energy change per lot), dither included; None without a fit.
        This, not the offline surrogate, is the model the proposal came from."""
        found = self._optimum(tool)
        if found is None:
            return None
        opt, g = found
        z0 = self._z([float(current[n]) for n in self.names])
        z1 = self._z([float(proposal[n]) for n in self.names])
        dy = -float(np.sum(self.q_fit * ((z1 - opt) ** 2 - (z0 - opt) ** 2)))
        return dy, float(g @ (z1 - z0))

    def propose(self, tool: str, current: Mapping[str, float]) -> dict[str, float]:
        """``tool``'s next setpoints: towards the target plus dither, inside the envelope and
        within ``max_step`` of ``current``."""
        cur = np.array([float(current[n]) for n in self.names])
        nominal = self.nominal.get(tool)
        if nominal is None:
            nominal = np.clip(cur, self.lo, self.hi)
        best = self.target(tool)
        if best is not None:
            nominal = nominal + np.clip(self.gain * (best - nominal), -self.step, self.step)
        self.nominal[tool] = nominal
        signs = self.rng.choice([-1.0, 1.0], size=len(self.names))
        out = np.clip(nominal + signs * self.dither * self.span, cur - self.step, cur + self.step)
        out = np.clip(out, self.lo, self.hi)
        return {n: float(x) for n, x in zip(self.names, out, strict=True)}
