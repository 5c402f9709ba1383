"""Sensor physics: from a tool's operating context to its sensor readings, vectorized.

:func:`sensor_values` maps a :class:`Context` of ``N`` rows to an ``(N, S)`` array. A row is a
tool at one instant: the server passes one row per tool of a type (now), the exporter one row per
time step of one tool. The same function serves both, so the OPC UA server and the training
data show the same physics.

A reading is built in layers::

    operating point   idle value, or the recipe step's level between idle and the recipe's
                      nominal (itself moved by the setpoints through elasticities)
    + degradation     Σ_modes signature × h² × scale (partly hidden while idle)
    + slow drift      per tool and sensor, growing with days since maintenance
    + noise           Gaussian, counter-based: a pure function of (seed, tool, sensor, tick),
                      so a value depends on the simulated time, never on how often it is read
    × gain + offset   scenario drifts (recalibration), then clipped to the sensor's range

Sensor faults (stuck, dropout) are applied by the caller; spikes here, from the same hash.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np

from opcua_sim.degradation import SignatureTable, signature_table
from shared.equipment import TOOL_TYPES, ToolType

STEPS = ("stabilize", "main", "finish", "purge")
# Level of each step between idle (0) and the recipe's nominal (1), per sensor category.
_STEP_LEVEL = {
    "energy": (0.0, 1.0, 0.6, 0.0),
    "gas": (1.0, 1.0, 0.8, 0.05),
    "pressure": (1.0, 1.0, 0.9, 0.2),
    "other": (1.0, 1.0, 1.0, 1.0),
}
_CATEGORY_WORDS = (
    ("gas", ("flow", "mfc_")),
    ("pressure", ("pressure", "throttle")),
    ("energy", ("rf_", "power", "bias", "oes", "rate", "endpoint", "torque", "current", "speed", "force")),
)
# Setpoint → sensor elasticities: a sensor's nominal scales with (setpoint / default) ** e.
SETPOINT_LINKS: dict[str, dict[str, dict[str, float]]] = {
    "plasma_etch": {
        "rf_power_sp": {
            "rf_forward_power": 1.0,
            "rf_reflected_power": 1.0,
            "dc_bias": 0.7,
            "oes_endpoint": 0.5,
        },
        "pressure_sp": {"chamber_pressure": 1.0, "throttle_valve": -0.6},
        "cf4_flow_sp": {"gas_flow_cf4": 1.0, "oes_endpoint": 0.3},
        "esc_temp_sp": {"esc_temp": 1.0},
    },
    "cvd": {
        "heater_temp_sp": {"heater_temp": 1.0, "heater_power": 1.5, "deposition_rate": 0.8},
        "pressure_sp": {"chamber_pressure": 1.0, "exhaust_pressure": 0.3},
        "sih4_flow_sp": {"mfc_sih4": 1.0, "deposition_rate": 0.7},
        "rf_power_sp": {"rf_forward_power": 1.0, "rf_reflected_power": 1.0, "deposition_rate": 0.3},
    },
    "cmp": {
        "down_force_sp": {
            "down_force": 1.0,
            "platen_motor_current": 0.6,
            "removal_rate": 0.8,
            "pad_temp": 0.2,
        },
        "platen_speed_sp": {"platen_speed": 1.0, "removal_rate": 0.6, "platen_motor_current": 0.4},
        "slurry_flow_sp": {"slurry_flow": 1.0, "removal_rate": 0.2},
    },
    "vacuum_pump": {
        "rotor_speed_sp": {
            "rotor_speed": 1.0,
            "motor_power": 1.2,
            "motor_current": 1.0,
            "vibration_rms": 0.8,
        },
        "n2_purge_sp": {"n2_purge_flow": 1.0},
    },
    "abatement": {"fuel_flow_sp": {"fuel_flow": 1.0, "combustion_temp": 0.3}},
}
SUBFAB_LOADS = 3  # sub-fab load levels, indexed by the host's recipe
# Sub-fab sensors the catalog keeps at one level that in fact follow the gas load: their value
# while the host idles, as a fraction of nominal (the rest of the sub-fab's idle values are in
# shared.equipment).
SUBFAB_LOAD_IDLE = {"differential_pressure": 0.8, "exhaust_pressure": 0.97, "scrubber_water_flow": 0.9}
# Sub-fab eco mode (idle_mode = 1 while the host idles): slower rotor, less purge and fuel, so
# these readings drop to this fraction of their idle value; pressures and water stay as they are.
ECO_FACTORS = {
    "motor_current": 0.6,
    "motor_power": 0.55,
    "rotor_speed": 0.6,
    "n2_purge_flow": 0.5,
    "bearing_temp": 0.92,
    "body_temp": 0.9,
    "fuel_flow": 0.55,
    "combustion_temp": 0.85,
}
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _unit(text: str) -> float:
    """A fixed number in [-1, 1] derived from ``text`` (recipe tables are stable across runs)."""
    return (zlib.crc32(text.encode()) / 0xFFFFFFFF) * 2.0 - 1.0


def _category(sensor: str) -> str:
    for cat, words in _CATEGORY_WORDS:
        if any(w in sensor for w in words):
            return cat
    return "other"


@dataclass(frozen=True)
class TypeTables:
    """Everything about one tool type that the physics needs, as arrays."""

    tool: ToolType
    nominal: np.ndarray  # (S,)
    idle: np.ndarray  # (S,)
    down: np.ndarray  # (S,) value while the tool is down
    noise: np.ndarray  # (S,)
    lo: np.ndarray  # (S,)
    hi: np.ndarray  # (S,)
    active: np.ndarray  # (S,) bool: moves between idle and nominal with processing
    scale: np.ndarray  # (S,) scale of degradation signatures
    recipe_gain: np.ndarray  # (R, S)
    step_cum: np.ndarray  # (R, K) cumulative end of each step within a wafer, s
    wafer_s: np.ndarray  # (R,) seconds per wafer
    step_level: np.ndarray  # (K, S)
    elasticity: np.ndarray  # (P, S)
    sp_default: np.ndarray  # (P,)
    sp_ref: np.ndarray  # (P,) default, or 1 where the default is 0 (switches carry no elasticity)
    sp_lo: np.ndarray  # (P,)
    sp_hi: np.ndarray  # (P,)
    sig: SignatureTable
    eco_setpoint: int  # index of the idle_mode setpoint, -1 if none
    eco: np.ndarray  # (S,) factor on the idle value in eco mode (1 where eco changes nothing)

    @property
    def n_sensors(self) -> int:
        return len(self.nominal)


@cache
def tables(type_name: str) -> TypeTables:
    """The (cached) tables of a catalog tool type."""
    tool = TOOL_TYPES[type_name]
    sensors = tool.sensors
    nominal = np.array([s.nominal for s in sensors])
    idle = np.array([s.nominal if s.idle is None else s.idle for s in sensors])
    active = np.array([s.idle is not None for s in sensors])
    if tool.subfab:
        for j, s in enumerate(sensors):
            if s.idle is None and s.name in SUBFAB_LOAD_IDLE:
                idle[j], active[j] = s.nominal * SUBFAB_LOAD_IDLE[s.name], True
    lo = np.array([s.lo for s in sensors])
    if tool.subfab:  # a stopped pump or burner: motors and flames near zero, the rest at idle
        motor = np.array([s.idle is not None for s in sensors])
        down = np.where(motor, lo + 0.1 * (idle - lo), idle)
    else:
        down = idle.copy()
    scale = np.maximum(np.abs(nominal), np.abs(nominal - idle))
    if tool.subfab:
        # One step, loaded while the host processes; how much depends on the host's recipe (its
        # gas load), so the sub-fab changes regime with the process too.
        recipe_gain = np.array(
            [
                [
                    1.0 + (0.15 if s.idle is not None else 0.02) * _unit(f"{tool.name}/load{r}/{s.name}")
                    for s in sensors
                ]
                for r in range(SUBFAB_LOADS)
            ]
        )
        step_cum = np.full((SUBFAB_LOADS, 1), 60.0)
        step_level = np.ones((1, len(sensors)))
    else:
        recipe_gain = np.array(
            [
                [
                    1.0 + (0.2 if s.idle is not None else 0.03) * _unit(f"{tool.name}/{r}/{s.name}")
                    for s in sensors
                ]
                for r in tool.recipes
            ]
        )
        durations = np.array(
            [[15.0, 75.0 + 45.0 * _unit(f"{tool.name}/{r}/main"), 20.0, 10.0] for r in tool.recipes]
        )
        step_cum = np.cumsum(durations, axis=1)
        step_level = np.array(
            [[_STEP_LEVEL[_category(s.name)][k] for s in sensors] for k in range(len(STEPS))]
        )
    names = tool.sensor_names
    elasticity = np.zeros((len(tool.setpoints), len(sensors)))
    links = SETPOINT_LINKS.get(tool.name, {})
    for p, sp in enumerate(tool.setpoints):
        for sensor, e in links.get(sp.name, {}).items():
            elasticity[p, names.index(sensor)] = e
    sp_names = tool.setpoint_names
    return TypeTables(
        tool=tool,
        nominal=nominal,
        idle=idle,
        down=down,
        noise=np.array([s.noise for s in sensors]),
        lo=lo,
        hi=np.array([s.hi for s in sensors]),
        active=active,
        scale=scale,
        recipe_gain=recipe_gain,
        step_cum=step_cum,
        wafer_s=step_cum[:, -1].copy(),
        step_level=step_level,
        elasticity=elasticity,
        sp_default=np.array([sp.default for sp in tool.setpoints]),
        sp_ref=np.array([sp.default if sp.default > 0 else 1.0 for sp in tool.setpoints]),
        sp_lo=np.array([sp.lo for sp in tool.setpoints]),
        sp_hi=np.array([sp.hi for sp in tool.setpoints]),
        sig=signature_table(tool),
        eco_setpoint=sp_names.index("idle_mode") if "idle_mode" in sp_names else -1,
        eco=np.array([ECO_FACTORS.get(s.name, 1.0) for s in sensors]),
    )


@dataclass
class Context:
    """The operating context of N rows (tools now, or one tool's time steps)."""

    processing: np.ndarray  # (N,) bool
    down: np.ndarray  # (N,) bool
    recipe: np.ndarray  # (N,) int, valid where processing
    phase_s: np.ndarray  # (N,) seconds since the lot started processing wafers
    setpoints: np.ndarray  # (N, P)
    health: np.ndarray  # (N, M) progressive modes, in [0, 1]
    days_since_pm: np.ndarray  # (N,)
    drift_rate: np.ndarray  # (N, S) slow drift, in noise units per day
    gain: np.ndarray  # (N, S) scenario drift gain
    offset: np.ndarray  # (N, S) scenario drift offset, in the sensor's unit
    noise_scale: np.ndarray  # (N,)
    key: np.ndarray  # (N,) uint64, per tool (seed and tool index)
    tick: np.ndarray  # (N,) int64 noise counter (simulated time / tick_s)
    severity: float = 1.0
    spike_p: float = 0.0  # probability that a reading is a spike


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wraps on overflow, as intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(bits: np.ndarray) -> np.ndarray:
    """(0, 1] from the top 53 bits."""
    return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 9007199254740992.0)


def tool_key(seed: int, tool_index: int) -> np.uint64:
    """The noise key of a tool: seed (32 bits) and tool index (20 bits) mixed into 64 bits."""
    packed = ((seed & 0xFFFFFFFF) << 20) ^ (tool_index & 0xFFFFF)
    return np.uint64(mix64(np.array([packed], dtype=np.uint64))[0])


def hashed_normal(
    key: np.ndarray, tick: np.ndarray, n_sensors: int, salt: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal (N, S) and a uniform (N, S), pure functions of (key, tick, sensor)."""
    base = mix64(key.astype(np.uint64) ^ mix64(tick.astype(np.int64).astype(np.uint64) + np.uint64(salt)))
    lanes = np.arange(1, 3 * n_sensors + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    bits = mix64(base[:, None] ^ lanes[None, :])  # (N, 3S)
    u1, u2, u3 = (
        _uniform(bits[:, :n_sensors]),
        _uniform(bits[:, n_sensors : 2 * n_sensors]),
        _uniform(bits[:, 2 * n_sensors :]),
    )
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return z, u3


def step_index(tt: TypeTables, recipe: np.ndarray, phase_s: np.ndarray) -> np.ndarray:
    """Recipe step (0..K-1) at ``phase_s`` seconds into a lot's wafer sequence."""
    r = np.clip(recipe, 0, len(tt.wafer_s) - 1)
    within = np.mod(np.maximum(phase_s, 0.0), tt.wafer_s[r])
    cum = tt.step_cum[r]  # (N, K)
    return np.minimum((within[:, None] >= cum).sum(axis=1), cum.shape[1] - 1)


def sensor_values(tt: TypeTables, ctx: Context) -> np.ndarray:
    """Readings (N, S) for the rows of ``ctx``; never NaN (faults are the caller's)."""
    n = len(ctx.processing)
    r = np.clip(ctx.recipe, 0, len(tt.wafer_s) - 1)
    proc = ctx.processing[:, None]
    # Operating point: setpoints move the nominal through elasticities.
    ratio = np.maximum(ctx.setpoints / tt.sp_ref, 1e-3)  # (N, P)
    sp_factor = np.exp(np.log(ratio) @ tt.elasticity)  # (N, S)
    nominal = tt.nominal * np.where(proc, tt.recipe_gain[r], 1.0) * sp_factor
    level = tt.step_level[step_index(tt, r, ctx.phase_s)] * proc  # (N, S)
    idle = np.broadcast_to(tt.idle, (n, tt.n_sensors))
    if tt.eco_setpoint >= 0:
        eco = (ctx.setpoints[:, tt.eco_setpoint] >= 0.5)[:, None] & ~proc
        idle = np.where(eco, idle * tt.eco, idle)
    value = np.where(tt.active, idle + (nominal - idle) * level, nominal)
    # Degradation: h² makes the precursors creep at first and accelerate near failure.
    h2 = ctx.health**2  # (N, M)
    visible = np.where(proc, 1.0, 0.0)[:, :, None] + np.where(proc, 0.0, 1.0)[:, :, None] * tt.sig.idle[None]
    shift = np.einsum("nm,nms->ns", h2, tt.sig.rel[None] * visible) if h2.shape[1] else 0.0
    value = value + ctx.severity * shift * tt.scale
    value = value + ctx.drift_rate * tt.noise * ctx.days_since_pm[:, None]
    z, u = hashed_normal(ctx.key, ctx.tick, tt.n_sensors)
    noise_gain = 1.0 + (h2 @ tt.sig.noise_gain if h2.shape[1] else 0.0)
    value = value + z * tt.noise * noise_gain * ctx.noise_scale[:, None]
    if ctx.spike_p > 0:
        spike = u < ctx.spike_p
        value = np.where(spike, value + np.sign(z) * 0.15 * (tt.hi - tt.lo), value)
    value = value * ctx.gain + ctx.offset
    value = np.where(ctx.down[:, None], tt.down + z * tt.noise * 0.5, value)
    return np.clip(value, tt.lo, tt.hi)
