"""The equipment catalog: tool types, their tags and failure modes, as tables of frozen dataclasses.

The simulator adds physics on top of this table; the edge's default tag mapping and the
features use it to know which sensors a tool of a type has. OPC UA layout (DESIGN.md §4)::

    Objects/Fab/{area}/{tool_id}/Sensors/{sensor}      Double, EngineeringUnits, EURange
    Objects/Fab/{area}/{tool_id}/Setpoints/{setpoint}  Double, writable, range enforced
    Objects/Fab/{area}/{tool_id}/Counters/{counter}    Double (wafers, lots, energy_kwh,
                                                       last_lot_yield, last_lot_energy_kwh)
    Objects/Fab/{area}/{tool_id}/State                 String, SEMI E10 state (E10State)
    Objects/Fab/{area}/{tool_id}/Recipe                String, the recipe running

Browse names use the namespace of ``NAMESPACE_URI``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

NAMESPACE_URI = "urn:fabpm:sim"


class E10State(StrEnum):
    """SEMI E10 equipment states."""

    PRODUCTIVE = "productive"
    STANDBY = "standby"
    ENGINEERING = "engineering"
    SCHEDULED_DOWN = "scheduled_down"
    UNSCHEDULED_DOWN = "unscheduled_down"
    NON_SCHEDULED = "non_scheduled"


E10_CODES: dict[E10State, int] = {s: i for i, s in enumerate(E10State)}
UPTIME_STATES = frozenset({E10State.PRODUCTIVE, E10State.STANDBY, E10State.ENGINEERING})


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One measured tag: units, the physically possible range and the nominal operating value."""

    name: str
    unit: str
    lo: float
    hi: float
    nominal: float
    noise: float  # standard deviation of measurement noise, in the sensor's unit
    idle: float | None = None  # value while idle, where it differs from nominal


@dataclass(frozen=True, slots=True)
class SetpointSpec:
    """One writable tag: the server refuses writes outside [lo, hi]."""

    name: str
    unit: str
    lo: float
    hi: float
    default: float


@dataclass(frozen=True, slots=True)
class FailureModeSpec:
    """A way a tool fails. ``sensors`` are the precursors: where the degradation shows."""

    name: str
    sensors: tuple[str, ...]
    mean_days_to_failure: float  # from onset to failure, mean
    sudden: bool = False  # no precursors


@dataclass(frozen=True, slots=True)
class ToolType:
    """One kind of equipment."""

    name: str
    title: str
    sensors: tuple[SensorSpec, ...]
    setpoints: tuple[SetpointSpec, ...]
    modes: tuple[FailureModeSpec, ...]
    recipes: tuple[str, ...]
    idle_kw: float  # electrical power while idle
    run_kw: float  # electrical power while processing
    subfab: bool = False  # vacuum pumps and abatement: can run an idle (eco) mode

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sensors)

    @property
    def setpoint_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.setpoints)

    @property
    def mode_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modes)

    @property
    def warnable_mode_names(self) -> tuple[str, ...]:
        """The progressive modes: the ones with precursors, which an alert can warn of. A sudden
        mode's probability is its base hazard over the horizon, the same for every tool."""
        return tuple(m.name for m in self.modes if not m.sudden)


COUNTERS = ("wafers", "lots", "energy_kwh")
# The tuning feedback, updated at each lot end: yield in %, energy in kWh (the tool's own draw
# plus its share of the sub-fab pumps and abatement that serve it).
LOT_COUNTERS = ("last_lot_yield", "last_lot_energy_kwh")

S = SensorSpec
P = SetpointSpec
M = FailureModeSpec

PLASMA_ETCH = ToolType(
    name="plasma_etch",
    title="Plasma etch",
    sensors=(
        S("chamber_pressure", "mTorr", 0.0, 500.0, 40.0, 0.4, idle=5.0),
        S("rf_forward_power", "W", 0.0, 3000.0, 1200.0, 6.0, idle=0.0),
        S("rf_reflected_power", "W", 0.0, 500.0, 12.0, 0.6, idle=0.0),
        S("match_c1", "%", 0.0, 100.0, 48.0, 0.2),
        S("match_c2", "%", 0.0, 100.0, 52.0, 0.2),
        S("dc_bias", "V", -1200.0, 0.0, -450.0, 3.0, idle=0.0),
        S("esc_temp", "degC", -20.0, 120.0, 40.0, 0.15),
        S("wall_temp", "degC", 0.0, 150.0, 60.0, 0.2),
        S("gas_flow_cf4", "sccm", 0.0, 500.0, 80.0, 0.5, idle=0.0),
        S("gas_flow_o2", "sccm", 0.0, 200.0, 20.0, 0.2, idle=0.0),
        S("he_backside_flow", "sccm", 0.0, 50.0, 8.0, 0.1, idle=0.0),
        S("throttle_valve", "%", 0.0, 100.0, 35.0, 0.3),
        S("oes_endpoint", "au", 0.0, 10.0, 5.0, 0.05, idle=0.0),
        S("chiller_flow", "l/min", 0.0, 30.0, 12.0, 0.1),
    ),
    setpoints=(
        P("rf_power_sp", "W", 600.0, 2000.0, 1200.0),
        P("pressure_sp", "mTorr", 10.0, 100.0, 40.0),
        P("cf4_flow_sp", "sccm", 20.0, 200.0, 80.0),
        P("esc_temp_sp", "degC", 10.0, 80.0, 40.0),
    ),
    modes=(
        M("rf_match_drift", ("rf_reflected_power", "match_c1", "match_c2", "dc_bias"), 6.0),
        M("chamber_deposition", ("chamber_pressure", "throttle_valve", "oes_endpoint", "wall_temp"), 8.0),
        M("esc_degradation", ("esc_temp", "he_backside_flow", "dc_bias"), 5.0),
        M("rf_generator_trip", (), 0.0, sudden=True),
    ),
    recipes=("oxide_etch", "poly_etch", "metal_etch"),
    idle_kw=8.0,
    run_kw=25.0,
)

CVD = ToolType(
    name="cvd",
    title="Chemical vapour deposition",
    sensors=(
        S("chamber_pressure", "Torr", 0.0, 20.0, 4.0, 0.02, idle=0.5),
        S("heater_temp", "degC", 0.0, 700.0, 400.0, 0.5, idle=350.0),
        S("heater_power", "kW", 0.0, 15.0, 6.0, 0.05, idle=3.5),
        S("showerhead_temp", "degC", 0.0, 300.0, 180.0, 0.3),
        S("mfc_sih4", "sccm", 0.0, 1000.0, 300.0, 1.0, idle=0.0),
        S("mfc_n2o", "sccm", 0.0, 5000.0, 2000.0, 5.0, idle=0.0),
        S("mfc_n2", "sccm", 0.0, 10000.0, 3000.0, 8.0),
        S("rf_forward_power", "W", 0.0, 2000.0, 600.0, 4.0, idle=0.0),
        S("rf_reflected_power", "W", 0.0, 200.0, 6.0, 0.4, idle=0.0),
        S("exhaust_pressure", "Torr", 0.0, 10.0, 1.2, 0.01),
        S("deposition_rate", "nm/min", 0.0, 1000.0, 400.0, 2.0, idle=0.0),
        S("lift_motor_current", "A", 0.0, 5.0, 1.1, 0.02),
        S("cooling_water_temp", "degC", 5.0, 40.0, 18.0, 0.1),
    ),
    setpoints=(
        P("heater_temp_sp", "degC", 300.0, 550.0, 400.0),
        P("pressure_sp", "Torr", 1.0, 10.0, 4.0),
        P("sih4_flow_sp", "sccm", 100.0, 600.0, 300.0),
        P("rf_power_sp", "W", 200.0, 1200.0, 600.0),
    ),
    modes=(
        M("heater_ageing", ("heater_power", "heater_temp", "deposition_rate"), 10.0),
        M("mfc_drift", ("mfc_sih4", "deposition_rate", "chamber_pressure"), 7.0),
        M(
            "showerhead_clogging",
            ("chamber_pressure", "showerhead_temp", "exhaust_pressure", "deposition_rate"),
            9.0,
        ),
        M("lift_motor_seizure", (), 0.0, sudden=True),
    ),
    recipes=("teos_oxide", "nitride", "low_k"),
    idle_kw=6.0,
    run_kw=18.0,
)

CMP = ToolType(
    name="cmp",
    title="Chemical mechanical planarization",
    sensors=(
        S("platen_motor_current", "A", 0.0, 60.0, 22.0, 0.2, idle=4.0),
        S("carrier_motor_current", "A", 0.0, 30.0, 9.0, 0.1, idle=2.0),
        S("platen_speed", "rpm", 0.0, 150.0, 90.0, 0.3, idle=0.0),
        S("down_force", "psi", 0.0, 10.0, 3.5, 0.03, idle=0.0),
        S("slurry_flow", "ml/min", 0.0, 400.0, 200.0, 1.5, idle=0.0),
        S("pad_temp", "degC", 10.0, 80.0, 38.0, 0.2, idle=25.0),
        S("pad_conditioner_torque", "Nm", 0.0, 20.0, 6.0, 0.08, idle=0.0),
        S("vibration_rms", "mm/s", 0.0, 30.0, 2.0, 0.08),
        S("endpoint_signal", "au", 0.0, 10.0, 4.0, 0.05, idle=0.0),
        S("removal_rate", "nm/min", 0.0, 600.0, 250.0, 2.5, idle=0.0),
        S("di_water_flow", "l/min", 0.0, 10.0, 3.0, 0.03),
    ),
    setpoints=(
        P("down_force_sp", "psi", 1.5, 6.0, 3.5),
        P("platen_speed_sp", "rpm", 40.0, 130.0, 90.0),
        P("slurry_flow_sp", "ml/min", 100.0, 350.0, 200.0),
    ),
    modes=(
        M("pad_glazing", ("removal_rate", "pad_temp", "pad_conditioner_torque", "endpoint_signal"), 6.0),
        M("spindle_bearing_wear", ("vibration_rms", "platen_motor_current", "pad_temp"), 12.0),
        M("slurry_line_clog", ("slurry_flow", "removal_rate", "carrier_motor_current"), 5.0),
        M("carrier_membrane_tear", (), 0.0, sudden=True),
    ),
    recipes=("oxide_cmp", "tungsten_cmp", "copper_cmp"),
    idle_kw=5.0,
    run_kw=15.0,
)

VACUUM_PUMP = ToolType(
    name="vacuum_pump",
    title="Dry vacuum pump (sub-fab)",
    sensors=(
        S("motor_current", "A", 0.0, 40.0, 14.0, 0.1, idle=9.0),
        S("motor_power", "kW", 0.0, 15.0, 4.5, 0.04, idle=2.8),
        S("vibration_rms", "mm/s", 0.0, 30.0, 1.8, 0.06),
        S("bearing_temp", "degC", 10.0, 150.0, 55.0, 0.2, idle=48.0),
        S("body_temp", "degC", 10.0, 200.0, 90.0, 0.3, idle=80.0),
        S("exhaust_pressure", "mbar", 0.0, 2000.0, 1050.0, 2.0),
        S("inlet_pressure", "mbar", 0.0, 10.0, 0.05, 0.001, idle=0.02),
        S("n2_purge_flow", "slm", 0.0, 100.0, 40.0, 0.3, idle=15.0),
        S("cooling_water_flow", "l/min", 0.0, 20.0, 6.0, 0.05),
        S("rotor_speed", "rpm", 0.0, 6000.0, 4800.0, 5.0, idle=3000.0),
    ),
    setpoints=(
        P("rotor_speed_sp", "rpm", 2500.0, 5500.0, 4800.0),
        P("n2_purge_sp", "slm", 10.0, 80.0, 40.0),
        P("idle_mode", "bool", 0.0, 1.0, 0.0),
    ),
    modes=(
        M("bearing_wear", ("vibration_rms", "bearing_temp", "motor_current"), 14.0),
        M("rotor_deposition", ("motor_current", "motor_power", "body_temp", "exhaust_pressure"), 10.0),
        M("cooling_degradation", ("body_temp", "cooling_water_flow", "bearing_temp"), 7.0),
        M("motor_burnout", (), 0.0, sudden=True),
    ),
    recipes=("pump_normal",),
    idle_kw=2.8,
    run_kw=4.5,
    subfab=True,
)

ABATEMENT = ToolType(
    name="abatement",
    title="Burn-wet abatement (sub-fab)",
    sensors=(
        S("combustion_temp", "degC", 0.0, 1400.0, 950.0, 3.0, idle=700.0),
        S("fuel_flow", "slm", 0.0, 200.0, 60.0, 0.5, idle=30.0),
        S("inlet_pressure", "mbar", 800.0, 1100.0, 990.0, 0.5),
        S("scrubber_water_flow", "l/min", 0.0, 40.0, 15.0, 0.1),
        S("scrubber_ph", "pH", 0.0, 14.0, 7.0, 0.03),
        S("exhaust_fan_current", "A", 0.0, 20.0, 7.0, 0.05),
        S("differential_pressure", "mbar", 0.0, 50.0, 8.0, 0.08),
    ),
    setpoints=(
        P("fuel_flow_sp", "slm", 20.0, 120.0, 60.0),
        P("idle_mode", "bool", 0.0, 1.0, 0.0),
    ),
    modes=(
        M("burner_fouling", ("combustion_temp", "fuel_flow", "differential_pressure"), 9.0),
        M("scrubber_clogging", ("differential_pressure", "scrubber_water_flow", "inlet_pressure"), 8.0),
        M("fan_bearing_wear", ("exhaust_fan_current", "differential_pressure"), 12.0),
        M("igniter_failure", (), 0.0, sudden=True),
    ),
    recipes=("abate_normal",),
    idle_kw=10.0,
    run_kw=22.0,
    subfab=True,
)

del S, P, M

TOOL_TYPES: dict[str, ToolType] = {t.name: t for t in (PLASMA_ETCH, CVD, CMP, VACUUM_PUMP, ABATEMENT)}

# Every failure mode of the fab, in a fixed order: the model's per-mode heads follow it.
ALL_MODES: tuple[str, ...] = tuple(m.name for t in TOOL_TYPES.values() for m in t.modes)
MAX_SENSORS: int = max(len(t.sensors) for t in TOOL_TYPES.values())


def tool_type(name: str) -> ToolType:
    """The tool type called ``name``; KeyError listing the known ones otherwise."""
    try:
        return TOOL_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown tool type {name!r}; known: {', '.join(sorted(TOOL_TYPES))}") from None


def alert_modes(type_name: str, modes: list[str] | tuple[str, ...]) -> list[int]:
    """The indices into a model's ``modes`` whose highest probability an alert rule reads for a
    tool of ``type_name``: the type's progressive modes (a sudden mode's probability is a base
    hazard, the same on every tool), or for a model trained on none of them the type's modes, or
    every mode (also for a type not in the catalog). The edge's decisions and the learning gate
    both read the risk this way."""
    choices: list[set[str]] = [set(modes)]
    if type_name in TOOL_TYPES:
        tt = TOOL_TYPES[type_name]
        choices = [set(tt.warnable_mode_names), set(tt.mode_names), set(modes)]
    for names in choices:
        idx = [i for i, m in enumerate(modes) if m in names]
        if idx:
            return idx
    return []


def setpoint_units(name: str | None) -> dict[str, str]:
    """Each setpoint of a tool of type ``name`` and its unit. For a type not known (yet: the
    cloud learns a tool's type from its telemetry), every setpoint whose name means one unit in
    every type that has it."""
    if name in TOOL_TYPES:
        return {sp.name: sp.unit for sp in TOOL_TYPES[name].setpoints}
    seen: dict[str, set[str]] = {}
    for tt in TOOL_TYPES.values():
        for sp in tt.setpoints:
            seen.setdefault(sp.name, set()).add(sp.unit)
    return {sp: next(iter(units)) for sp, units in seen.items() if len(units) == 1}


def type_modes(name: str) -> list[str] | None:
    """The failure modes a tool of type ``name`` can have (None: a type this code does not know,
    say from a newer edge)."""
    try:
        return list(tool_type(name).mode_names)
    except KeyError:
        return None
