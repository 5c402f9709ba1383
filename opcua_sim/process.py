"""Process outcome: per-lot yield and energy, and the oracle that knows the best setpoints.

Pure functions of (tool type, setpoints, health, drift, simulated time). The optimum wanders
with time (a slow sinusoid per setpoint, its own period and phase), moves with process drift
(chamber seasoning since maintenance) and with tool health, so a tuner that found it last week
must keep following it. Yield falls quadratically away from the optimum and with health and
drift; energy rises with power-like setpoints and with wear, and includes the sub-fab's share.

The edge never reads the oracle: B9 uses it to score tuning against the best possible.

``health`` is the worst progressive mode's health index in [0, 1]; ``drift`` is the process
drift since the last maintenance (days since maintenance / the PM interval, about 0..1.5);
``t`` is simulated seconds since the scenario's start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache

import numpy as np

from opcua_sim.physics import _unit
from shared.equipment import TOOL_TYPES, ToolType

MAX_YIELD = 97.0  # % of good dies on a perfect tool at the optimum
# Energy elasticities: lot energy scales with (setpoint / default) ** e.
ENERGY_ELASTICITY: dict[str, float] = {
    "rf_power_sp": 0.6,
    "pressure_sp": -0.05,
    "cf4_flow_sp": 0.08,
    "esc_temp_sp": 0.1,
    "heater_temp_sp": 0.9,
    "sih4_flow_sp": 0.08,
    "down_force_sp": 0.3,
    "platen_speed_sp": 0.45,
    "slurry_flow_sp": 0.1,
    "rotor_speed_sp": 1.2,
    "n2_purge_sp": 0.15,
    "fuel_flow_sp": 0.8,
}


def _tunable(tool: ToolType) -> list[int]:
    return [i for i, sp in enumerate(tool.setpoints) if sp.name != "idle_mode"]


@cache
def _params(type_name: str) -> tuple[np.ndarray, ...]:
    """Per setpoint: yield weight, period factor, phase, drift and health sensitivities."""
    tool = TOOL_TYPES[type_name]
    names = [sp.name for sp in tool.setpoints]
    u = np.array([[_unit(f"{type_name}/{n}/{k}") for k in ("w", "f", "p", "d", "h")] for n in names])
    weight = 2.0 + 1.0 * u[:, 0]
    freq = 1.0 + 0.35 * u[:, 1]
    phase = math.pi * u[:, 2]
    drift_sens = 0.08 * u[:, 3]
    health_sens = 0.10 * u[:, 4]
    return weight, freq, phase, drift_sens, health_sens


@cache
def _ranges(type_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per setpoint: lo, hi, default, reference for ratios (default, 1 for switches), energy
    elasticity, and the indices of the tunable setpoints (all but idle_mode)."""
    tool = TOOL_TYPES[type_name]
    lo = np.array([sp.lo for sp in tool.setpoints])
    hi = np.array([sp.hi for sp in tool.setpoints])
    default = np.array([sp.default for sp in tool.setpoints])
    ref = np.where(default > 0, default, 1.0)
    elast = np.array([ENERGY_ELASTICITY.get(sp.name, 0.0) for sp in tool.setpoints])
    return lo, hi, default, ref, elast, np.array(_tunable(tool), dtype=np.int64)


def _as_array(tool: ToolType, setpoints: Mapping[str, float]) -> np.ndarray:
    try:
        return np.array([float(setpoints[sp.name]) for sp in tool.setpoints])
    except KeyError as exc:
        raise ValueError(f"{tool.name}: setpoint {exc.args[0]!r} missing") from None


def _optimum(
    tool: ToolType, health: float, drift: float, t: float, period_days: float, amplitude: float
) -> np.ndarray:
    _, freq, phase, drift_sens, health_sens = _params(tool.name)
    lo, hi, default, *_ = _ranges(tool.name)
    span = hi - lo
    wave = amplitude * np.sin(2.0 * math.pi * t / (period_days * 86400.0) * freq + phase)
    opt = default + span * (wave + drift_sens * drift + health_sens * health)
    return np.clip(opt, lo + 0.02 * span, hi - 0.02 * span)


def oracle_setpoints(
    tool_type: str,
    health: float,
    drift: float,
    t: float,
    *,
    energy_weight: float = 0.0,
    period_days: float = 9.0,
    amplitude: float = 0.12,
) -> dict[str, float]:
    """The setpoints that maximise ``yield - energy_weight × energy`` right now (the oracle).

    With ``energy_weight = 0`` this is the yield optimum, in closed form; otherwise a coordinate
    search inside each setpoint's range. ``idle_mode`` keeps its default (it is not a lot knob).
    """
    tool = TOOL_TYPES[tool_type]
    opt = _optimum(tool, health, drift, t, period_days, amplitude)
    if energy_weight > 0 and not tool.subfab:
        best = opt.copy()
        for _ in range(3):  # coordinate sweeps, each setpoint on a 61-point grid (vectorized)
            for i in _tunable(tool):
                sp = tool.setpoints[i]
                grid = np.linspace(sp.lo, sp.hi, 61)
                trial = np.repeat(best[None], len(grid), axis=0)
                trial[:, i] = grid
                scores = _yields(tool, trial, opt, health, drift) - energy_weight * _energies(
                    tool, trial, health, 1.0
                )
                best[i] = grid[int(np.argmax(scores))]
        opt = best
    out = {sp.name: float(opt[i]) for i, sp in enumerate(tool.setpoints)}
    if "idle_mode" in out:
        out["idle_mode"] = 0.0
    return out


def _yields(tool: ToolType, sp: np.ndarray, opt: np.ndarray, health: float, drift: float) -> np.ndarray:
    """Expected yield (%) of each row of setpoints ``sp`` (G, P)."""
    weight = _params(tool.name)[0]
    lo, hi, _, _, _, idx = _ranges(tool.name)
    span = hi - lo
    loss = 100.0 * np.sum(weight[idx] * ((sp[:, idx] - opt[idx]) / span[idx]) ** 2, axis=1)
    return np.clip(MAX_YIELD - loss - 8.0 * health**2 - 1.5 * max(drift, 0.0), 0.0, 100.0)


def _energies(tool: ToolType, sp: np.ndarray, health: float, lot_hours: float) -> np.ndarray:
    """Energy (kWh) of a lot for each row of setpoints ``sp`` (G, P), without the sub-fab."""
    _, _, _, ref, elast, _ = _ranges(tool.name)
    factor = np.exp(np.sum(elast * np.log(np.maximum(sp / ref, 1e-3)), axis=1))
    return tool.run_kw * lot_hours * factor * (1.0 + 0.15 * health)


def _yield(tool: ToolType, sp: np.ndarray, opt: np.ndarray, health: float, drift: float) -> float:
    return float(_yields(tool, sp[None], opt, health, drift)[0])


def _energy(tool: ToolType, sp: np.ndarray, health: float, lot_hours: float) -> float:
    return float(_energies(tool, sp[None], health, lot_hours)[0])


def lot_yield(
    tool_type: str,
    setpoints: Mapping[str, float],
    health: float,
    drift: float,
    t: float,
    *,
    period_days: float = 9.0,
    amplitude: float = 0.12,
) -> float:
    """Expected yield (%) of a lot run now with ``setpoints`` (the simulator adds lot noise)."""
    tool = TOOL_TYPES[tool_type]
    if tool.subfab:
        raise ValueError(f"{tool_type}: sub-fab equipment runs no lots")
    sp = _as_array(tool, setpoints)
    opt = _optimum(tool, health, drift, t, period_days, amplitude)
    return _yield(tool, sp, opt, health, drift)


def lot_energy(
    tool_type: str,
    setpoints: Mapping[str, float],
    health: float,
    drift: float,
    t: float,
    *,
    lot_hours: float = 1.0,
    subfab_kwh: float = 0.0,
) -> float:
    """Energy (kWh) of a lot: the tool's own draw for ``lot_hours`` plus its sub-fab's share.

    ``drift`` and ``t`` are accepted for symmetry with :func:`lot_yield` (energy does not wander
    with the optimum; a drifted chamber draws a little more).
    """
    tool = TOOL_TYPES[tool_type]
    sp = _as_array(tool, setpoints)
    return _energy(tool, sp, health, lot_hours) * (1.0 + 0.03 * max(drift, 0.0)) + subfab_kwh


def power_kw(tool_type: str, processing: bool, down: bool, eco: bool) -> float:
    """Electrical draw now. Sub-fab equipment keeps drawing while its tool idles; eco mode
    (``idle_mode = 1``) cuts that idle draw by 40%, inside the 10–40% fabs report."""
    tool = TOOL_TYPES[tool_type]
    if down:
        return 0.1 * tool.idle_kw
    if processing:
        return tool.run_kw
    return tool.idle_kw * (0.6 if eco and tool.subfab else 1.0)
