"""Scenario files: which fab to simulate and how its equipment behaves (YAML or TOML).

A scenario names the areas and the tools in them, and tunes production, maintenance,
degradation, sensor faults and the process optimum. Every field has a default, so the smallest
scenario is a list of areas. ``drifts`` shift the fab's behaviour from a given day on
(recalibration offsets, a new recipe mix, noisier sensors): a model trained before the day sees
a different world after it (the cloud's B8 measures how fast it recovers).

Errors name the field as a dotted path (``areas.0.tools.1.type: unknown tool type 'etch'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from opcua_sim.errors import ScenarioError, UnknownToolTypeError
from shared.config import StrictModel, read_mapping, validate
from shared.equipment import COUNTERS, LOT_COUNTERS, TOOL_TYPES

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_\-]{0,31}$"
DEFAULT_PREFIX = {
    "plasma_etch": "ETCH",
    "cvd": "CVD",
    "cmp": "CMP",
    "vacuum_pump": "PUMP",
    "abatement": "ABAT",
}
# Every counter the simulator serves: totals, then the tuning feedback of each lot.
SIM_COUNTERS: tuple[str, ...] = (*COUNTERS, *LOT_COUNTERS)
_ALL_SENSORS = frozenset(s.name for t in TOOL_TYPES.values() for s in t.sensors)
_ALL_RECIPES = frozenset(r for t in TOOL_TYPES.values() for r in t.recipes)


def _known_type(value: str) -> str:
    if value not in TOOL_TYPES:
        raise ValueError(f"unknown tool type {value!r}; known: {', '.join(sorted(TOOL_TYPES))}")
    return value


class ToolGroup(StrictModel):
    """``count`` tools of one type; ids are ``{prefix}{n:03d}``, numbered across the whole fab."""

    type: str
    count: int = Field(ge=0, le=100_000)
    prefix: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9]{0,7}$")

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        return _known_type(value)


class Area(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    tools: list[ToolGroup] = Field(min_length=1)


class Production(StrictModel):
    wafers_per_lot: int = Field(default=25, ge=1, le=50)
    lot_overhead_min: float = Field(default=6.0, ge=0.0)  # load, pump-down, vent
    mean_idle_min: float = Field(default=35.0, gt=0.0)  # waiting for the next lot
    qualification_h: float = Field(default=1.0, ge=0.0)  # engineering run after maintenance
    # Engineers retune a setpoint now and then: the tuning model learns from this spread.
    setpoint_change_mean_days: float = Field(default=3.0, gt=0.0)
    recipe_mix: dict[str, float] = Field(default_factory=dict)  # recipe -> weight; default uniform
    # [start_day, end_day) windows when no production is scheduled (E10 non-scheduled): process
    # tools finish their lot and stop; sub-fab equipment keeps running idle.
    non_scheduled_days: list[tuple[float, float]] = Field(default_factory=list)

    @field_validator("recipe_mix")
    @classmethod
    def _recipes(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_recipe_mix(value)

    @field_validator("non_scheduled_days")
    @classmethod
    def _windows(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for start, end in value:
            if not 0 <= start < end:
                raise ValueError(f"window [{start}, {end}]: need 0 ≤ start < end (days)")
        return sorted(value)


class Maintenance(StrictModel):
    pm_interval_days: float = Field(default=21.0, gt=0.0)  # preventive maintenance period
    subfab_pm_interval_days: float = Field(default=35.0, gt=0.0)
    pm_h: float = Field(default=6.0, gt=0.0)
    repair_h: float = Field(default=12.0, gt=0.0)  # mean, after a failure


class Degradation(StrictModel):
    mean_days_between_onsets: float = Field(default=18.0, gt=0.0)  # per progressive mode, per tool
    ttf_spread: float = Field(default=0.3, ge=0.0, le=1.5)  # lognormal sigma of onset→failure
    sudden_mean_days: float = Field(default=120.0, gt=0.0)  # per tool
    severity: float = Field(default=1.0, gt=0.0, le=5.0)  # scales every precursor signature


class ToolVariation(StrictModel):
    """How tools of one type differ: no two read alike, and each drifts its own way."""

    tool_spread: float = Field(default=0.03, ge=0.0, le=0.3)  # relative std of each sensor's level
    drift_per_day: float = Field(default=0.25, ge=0.0, le=5.0)  # std of each sensor's drift rate
    # (noise units per day since maintenance)


class SensorFaults(StrictModel):
    mean_days_between: float = Field(default=2.5, gt=0.0)  # stuck values and dropouts, per tool
    spike_per_hour: float = Field(default=0.05, ge=0.0)  # isolated spikes, per sensor
    dropout_fraction: float = Field(default=0.55, ge=0.0, le=1.0)  # the rest are stuck values
    # How long each lasts: lognormal around these medians (σ = 1 in log space). A plant's stuck
    # sensor stays stuck until someone fixes it: raise these to test an edge's sensor health.
    dropout_median_min: float = Field(default=20.0, gt=0.0, le=30 * 24 * 60)
    stuck_median_min: float = Field(default=60.0, gt=0.0, le=30 * 24 * 60)


class ProcessOptimum(StrictModel):
    period_days: float = Field(default=9.0, gt=0.0)  # the optimum wanders with this period
    amplitude: float = Field(default=0.12, ge=0.0, le=0.4)  # as a fraction of each setpoint's range


class Drift(StrictModel):
    """From ``day`` on, for the listed tool types (all when empty): sensor offsets (in the
    sensor's unit), gains, a noise scale, a recipe mix and a degradation-rate scale."""

    day: float = Field(ge=0.0)
    tool_types: list[str] = Field(default_factory=list)
    sensor_offsets: dict[str, float] = Field(default_factory=dict)
    sensor_gains: dict[str, float] = Field(default_factory=dict)
    noise_scale: float = Field(default=1.0, gt=0.0, le=20.0)
    recipe_mix: dict[str, float] = Field(default_factory=dict)
    onset_rate_scale: float = Field(default=1.0, gt=0.0, le=20.0)

    @field_validator("tool_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return [_known_type(v) for v in value]

    @field_validator("sensor_offsets", "sensor_gains")
    @classmethod
    def _sensors(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name not in _ALL_SENSORS:
                raise ValueError(f"unknown sensor {name!r}")
        return value

    @field_validator("recipe_mix")
    @classmethod
    def _recipes(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_recipe_mix(value)


class Scenario(StrictModel):
    name: str = Field(default="default", pattern=NAME_PATTERN)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    tick_s: float = Field(default=1.0, gt=0.0, le=3600.0)  # simulated seconds per noise sample
    # Sub-fab pumps and abatement serve the process tools round-robin: they are loaded while their
    # host processes and idle (or in eco mode) while it waits.
    subfab_follows_host: bool = True
    areas: list[Area] = Field(min_length=1)
    production: Production = Production()
    maintenance: Maintenance = Maintenance()
    degradation: Degradation = Degradation()
    sensor_faults: SensorFaults = SensorFaults()
    variation: ToolVariation = ToolVariation()
    optimum: ProcessOptimum = ProcessOptimum()
    drifts: list[Drift] = Field(default_factory=list)

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _unique_areas(self) -> Scenario:
        names = [a.name for a in self.areas]
        if len(set(names)) != len(names):
            raise ValueError(f"areas: names must be unique, got {names}")
        if sum(g.count for a in self.areas for g in a.tools) == 0:
            raise ValueError("areas: the fab has no tools (every count is 0)")
        return self

    @property
    def n_tools(self) -> int:
        return sum(g.count for a in self.areas for g in a.tools)


def _check_recipe_mix(value: dict[str, float]) -> dict[str, float]:
    for name, weight in value.items():
        if name not in _ALL_RECIPES:
            raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(_ALL_RECIPES))}")
        if weight < 0:
            raise ValueError(f"recipe {name!r}: weight must be ≥ 0, got {weight}")
    return value


DEFAULT_PRODUCTION: dict[str, Any] = {"non_scheduled_days": [(24.0, 25.0)]}  # a one-day shutdown
DEFAULT_AREAS: list[dict[str, Any]] = [
    {"name": "etch", "tools": [{"type": "plasma_etch", "count": 12}]},
    {"name": "deposition", "tools": [{"type": "cvd", "count": 10}]},
    {"name": "planarization", "tools": [{"type": "cmp", "count": 8}]},
    {"name": "subfab", "tools": [{"type": "vacuum_pump", "count": 30}, {"type": "abatement", "count": 10}]},
]


def default_scenario() -> Scenario:
    """The default fab: 60 tools, about 1,400 tags (examples/scenarios/default_fab.yaml)."""
    return Scenario.model_validate({"areas": DEFAULT_AREAS, "production": DEFAULT_PRODUCTION})


def parse_scenario(data: Mapping[str, Any], source: str = "scenario") -> Scenario:
    """Validate a scenario mapping; :class:`ScenarioError` naming each bad field."""
    _check_types_first(data, source)
    try:
        return validate(Scenario, data, source)
    except ScenarioError:
        raise
    except Exception as exc:  # shared.config raises ConfigError; re-raise as the simulator's own
        raise ScenarioError(str(exc)) from exc


def _check_types_first(data: Mapping[str, Any], source: str) -> None:
    """An unknown tool type gets its own error class (callers may want to tell it apart)."""
    areas = data.get("areas")
    if not isinstance(areas, list):
        return
    for i, area in enumerate(areas):
        tools = area.get("tools") if isinstance(area, Mapping) else None
        for j, group in enumerate(tools if isinstance(tools, list) else []):
            kind = group.get("type") if isinstance(group, Mapping) else None
            if isinstance(kind, str) and kind not in TOOL_TYPES:
                raise UnknownToolTypeError(
                    f"{source}: areas.{i}.tools.{j}.type: unknown tool type {kind!r}; "
                    f"known: {', '.join(sorted(TOOL_TYPES))}"
                )


def load_scenario(path: Path | None) -> Scenario:
    """The scenario in ``path`` (``.yaml``, ``.yml`` or ``.toml``), or the default fab."""
    if path is None:
        return default_scenario()
    try:
        data = read_mapping(path)
    except Exception as exc:
        raise ScenarioError(str(exc)) from exc
    return parse_scenario(data, str(path))


def scale_tools(scenario: Scenario, n_tools: int) -> Scenario:
    """The same fab with ``n_tools`` tools, every group scaled in proportion (largest remainders)."""
    if n_tools < 1:
        raise ScenarioError(f"--tools: must be ≥ 1, got {n_tools}")
    groups = [(i, j, g.count) for i, a in enumerate(scenario.areas) for j, g in enumerate(a.tools)]
    total = sum(c for _, _, c in groups)
    exact = [c * n_tools / total for _, _, c in groups]
    counts = [int(x) for x in exact]
    order = sorted(range(len(groups)), key=lambda k: exact[k] - counts[k], reverse=True)
    for k in order[: n_tools - sum(counts)]:
        counts[k] += 1
    data = scenario.model_dump()
    for (i, j, _), count in zip(groups, counts, strict=True):
        data["areas"][i]["tools"][j]["count"] = count
    return Scenario.model_validate(data)


def with_seed(scenario: Scenario, seed: int) -> Scenario:
    """The same scenario with another seed (validated: ``--seed`` errors name the flag)."""
    if not 0 <= seed <= 2**32 - 1:
        raise ScenarioError(f"--seed: must be in [0, 2**32 - 1], got {seed}")
    return scenario.model_copy(update={"seed": seed})


def tag_count(scenario: Scenario) -> int:
    """Variables the server publishes: sensors, setpoints, counters, State and Recipe per tool."""
    total = 0
    for area in scenario.areas:
        for group in area.tools:
            t = TOOL_TYPES[group.type]
            total += group.count * (len(t.sensors) + len(t.setpoints) + len(SIM_COUNTERS) + 2)
    return total
