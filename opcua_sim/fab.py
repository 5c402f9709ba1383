"""The simulated fab: its tools, the simulated clock, scenario drifts and the ground-truth log.

:class:`Fab` owns every :class:`~opcua_sim.tool.Tool`, advances them together in simulated time
and turns their state into readings with :mod:`opcua_sim.physics`. The server calls
:meth:`Fab.advance_to` and :meth:`Fab.readings` once per update tick; the exporter asks each tool
for its whole history instead (same events, same physics).

Ground truth: every event is a dict with ``kind``, ``tool``, the simulated time (``t_s`` since
the start and ISO ``time``) and, by kind::

    onset         mode, failure_due_t_s          a progressive mode starts degrading
    failure       mode, sudden, injected, health the tool goes unscheduled-down (health per mode)
    maintenance   type (preventive|requested), modes_reset
    back_up       after (the down state it leaves)
    setpoint      name, old, new, source (engineer|opcua)
    sensor_fault  sensor, fault (dropout|stuck), end_t_s
    lot           recipe, yield, energy_kwh, expected_yield, best_yield, best_setpoints (the
                  oracle's), health, drift, setpoints
    lot_aborted   (a failure or maintenance cut the lot short)
    state         state (SEMI E10)

Listeners receive each one (the server turns failures, maintenance and returns into alarm
events), and a JSONL file keeps them when a path is given.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np

from opcua_sim.errors import SimError
from opcua_sim.history import DAY
from opcua_sim.physics import Context, sensor_values, tables, tool_key
from opcua_sim.process import lot_yield, oracle_setpoints, power_kw
from opcua_sim.scenario import DEFAULT_PREFIX, Scenario
from opcua_sim.tool import Tool
from shared import e10
from shared.e10 import E10Metrics
from shared.equipment import TOOL_TYPES, E10State

_logger = logging.getLogger(__name__)
MAX_TOOLS_PER_FOLDER = 200  # tools per area folder; beyond it, "{area}-2", "{area}-3", ...
TRUTH_MEMORY = 20_000  # events kept in memory (oldest dropped first; the JSONL file keeps all)


class DriftTable:
    """The scenario's drifts, composed in time order, per tool type."""

    def __init__(self, scenario: Scenario) -> None:
        self._by_type: dict[str, list[tuple[float, np.ndarray, np.ndarray, float, np.ndarray, float]]] = {}
        for name, tool in TOOL_TYPES.items():
            s = len(tool.sensors)
            mix = scenario.production.recipe_mix
            weights = np.array([mix.get(r, 1.0 if not mix else 0.0) for r in tool.recipes], dtype=np.float64)
            if weights.sum() <= 0:
                weights = np.ones(len(tool.recipes))
            gain, offset, noise, onset = np.ones(s), np.zeros(s), 1.0, 1.0
            steps = [(-math.inf, gain.copy(), offset.copy(), noise, weights / weights.sum(), onset)]
            for d in sorted(scenario.drifts, key=lambda d: d.day):
                if d.tool_types and name not in d.tool_types:
                    continue
                for j, sensor in enumerate(tool.sensor_names):
                    gain[j] *= d.sensor_gains.get(sensor, 1.0)
                    offset[j] += d.sensor_offsets.get(sensor, 0.0)
                noise *= d.noise_scale
                onset *= d.onset_rate_scale
                if any(r in d.recipe_mix for r in tool.recipes):
                    w = np.array([d.recipe_mix.get(r, 0.0) for r in tool.recipes])
                    weights = w if w.sum() > 0 else weights
                steps.append((d.day * DAY, gain.copy(), offset.copy(), noise, weights / weights.sum(), onset))
            self._by_type[name] = steps

    def _at(self, type_name: str, t: float) -> tuple[float, np.ndarray, np.ndarray, float, np.ndarray, float]:
        steps = self._by_type[type_name]
        if len(steps) == 1:
            return steps[0]
        return steps[bisect.bisect_right([s[0] for s in steps], t) - 1]

    def onset_scale(self, type_name: str, t: float) -> float:
        return self._at(type_name, t)[5]

    def recipe_weights(self, type_name: str, t: float) -> np.ndarray:
        return self._at(type_name, t)[4]

    def sensors_at(self, type_name: str, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gain (N, S), offset (N, S) and noise scale (N,) at each time in ``t``."""
        steps = self._by_type[type_name]
        idx = np.searchsorted(np.array([s[0] for s in steps]), t, side="right") - 1
        gain = np.stack([s[1] for s in steps])[idx]
        offset = np.stack([s[2] for s in steps])[idx]
        noise = np.array([s[3] for s in steps])[idx]
        return gain, offset, noise


class SimClock:
    """Simulated seconds since the scenario start: wall time × ``speed``, or manual (speed 0)."""

    def __init__(self, speed: float, wall: Callable[[], float] = time.monotonic) -> None:
        if speed < 0:
            raise SimError(f"speed: must be ≥ 0, got {speed}")
        self.speed = speed
        self._wall = wall
        self._wall0 = wall()
        self._base = 0.0

    def now(self) -> float:
        return self._base + (self._wall() - self._wall0) * self.speed

    def advance(self, seconds: float) -> None:
        """Move simulated time forward by hand (the only way it moves at speed 0)."""
        self._base += seconds


class Fab:
    """All tools of a scenario, advanced together. ``record=True`` keeps histories (export)."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        record: bool = False,
        truth_path: Path | None = None,
        truth_kinds: Iterable[str] | None = None,
    ) -> None:
        self.scenario = scenario
        self.start: datetime = scenario.start
        self.drift = DriftTable(scenario)
        self.t = 0.0
        self.truth: deque[dict[str, Any]] = deque(maxlen=TRUTH_MEMORY)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._truth_kinds = frozenset(truth_kinds) if truth_kinds is not None else None
        self._truth_file: IO[str] | None = None
        if truth_path is not None:
            truth_path.parent.mkdir(parents=True, exist_ok=True)
            self._truth_file = truth_path.open("w", encoding="utf-8", buffering=1)  # a line per event
        self.tools: list[Tool] = []
        counters: dict[str, int] = {}
        for area in scenario.areas:
            in_area = 0
            for group in area.tools:
                prefix = group.prefix or DEFAULT_PREFIX[group.type]
                for _ in range(group.count):
                    counters[prefix] = counters.get(prefix, 0) + 1
                    tool_id = f"{prefix}{counters[prefix]:03d}"
                    # A big area becomes bays of MAX_TOOLS_PER_FOLDER: asyncua slows down
                    # quadratically with the siblings of one folder (FACTS.md).
                    bay = in_area // MAX_TOOLS_PER_FOLDER
                    in_area += 1
                    tool = Tool(
                        len(self.tools),
                        tool_id,
                        group.type,
                        area.name if bay == 0 else f"{area.name}-{bay + 1}",
                        scenario,
                        self.drift,
                        self._emit,
                        record,
                    )
                    self.tools.append(tool)
        self.by_id = {t.tool_id: t for t in self.tools}
        if len(self.by_id) != len(self.tools):
            raise SimError("tool ids collide: give each tool group its own prefix")
        self._assign_hosts()
        self.groups: dict[str, list[Tool]] = {}
        for t in self.tools:
            self.groups.setdefault(t.type_name, []).append(t)
        self._keys = {
            name: np.array([tool_key(scenario.seed, t.index) for t in ts]) for name, ts in self.groups.items()
        }

    def _assign_hosts(self) -> None:
        """Sub-fab tools serve the process tools round-robin (pumps and abatement separately)."""
        hosts = [t for t in self.tools if not t.subfab]
        if not hosts or not self.scenario.subfab_follows_host:
            return
        served: dict[str, int] = {}
        for t in self.tools:
            if t.subfab:
                k = served.get(t.type_name, 0)
                served[t.type_name] = k + 1
                t.host = hosts[k % len(hosts)]
        n_of_type = {name: sum(1 for t in self.tools if t.type_name == name) for name in served}
        for t in self.tools:
            if t.subfab and t.host is not None:
                # an abatement unit shared by several hosts charges each its share
                share = min(1.0, n_of_type[t.type_name] / len(hosts))
                t.host.subfab_run_kw += t.tt.tool.run_kw * share

    # ------------------------------------------------------------------ ground truth
    def _emit(self, event: dict[str, Any]) -> None:
        if self._truth_kinds is not None and event["kind"] not in self._truth_kinds:
            return
        event["time"] = (self.start + timedelta(seconds=event["t_s"])).isoformat()
        event["t_s"] = round(float(event["t_s"]), 3)
        self.truth.append(event)
        if self._truth_file is not None:
            self._truth_file.write(json.dumps(event) + "\n")
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the simulation
                _logger.exception("ground-truth listener failed on %s", event["kind"])

    def close(self) -> None:
        if self._truth_file is not None:
            self._truth_file.close()
            self._truth_file = None

    # ------------------------------------------------------------------ time
    def time_at(self, t_s: float) -> datetime:
        return self.start + timedelta(seconds=t_s)

    def advance_to(self, t: float) -> None:
        """Advance every tool to ``t`` (simulated seconds); energy counters integrate the draw."""
        if t < self.t:
            return
        dt_h = (t - self.t) / 3600.0
        for tool in self.tools:
            tool.energy_kwh += power_kw(tool.type_name, tool.processing, tool.down, tool.eco) * dt_h
            state = tool.e10
            tool.e10_hours[state] = tool.e10_hours.get(state, 0.0) + dt_h
            down = state == E10State.UNSCHEDULED_DOWN
            tool.open_down_h = tool.open_down_h + dt_h if down else 0.0
        for tool in self.tools:
            if not tool.subfab:
                tool.advance_to(t)
        for tool in self.tools:
            if tool.subfab:
                tool.advance_to(t)
        self.t = t

    # ------------------------------------------------------------------ readings now
    def context(self, type_name: str, spike_p: float = 0.0) -> Context:
        ts = self.groups[type_name]
        t = self.t
        gain, offset, noise = self.drift.sensors_at(type_name, np.array([t]))
        n = len(ts)
        return Context(
            processing=np.array([x.processing for x in ts]),
            down=np.array([x.down for x in ts]),
            recipe=np.array([x.load_recipe for x in ts]),
            phase_s=np.array([t - x.lot_start for x in ts]),
            setpoints=np.stack([x.setpoints for x in ts]),
            health=np.stack([x.health_now(t) for x in ts]),
            days_since_pm=np.array([(t - x.last_maint) / DAY for x in ts]),
            drift_rate=np.stack([x.drift_rate for x in ts]),
            gain=gain * np.stack([x.tool_gain for x in ts]),
            offset=np.repeat(offset, n, axis=0),
            noise_scale=np.repeat(noise, n),
            key=self._keys[type_name],
            tick=np.full(n, int(t // self.scenario.tick_s), dtype=np.int64),
            severity=self.scenario.degradation.severity,
            spike_p=spike_p,
        )

    def readings(self, type_name: str, spike_p: float = 0.0) -> np.ndarray:
        """Sensor readings (N, S) of the tools of a type now; NaN where a dropout makes them Bad,
        the frozen value where a sensor is stuck."""
        values = sensor_values(tables(type_name), self.context(type_name, spike_p))
        for row, tool in enumerate(self.groups[type_name]):
            for f in tool.faults:
                if f.kind == "dropout":
                    values[row, f.sensor] = np.nan
                else:
                    if f.held is None:
                        f.held = float(values[row, f.sensor])
                    values[row, f.sensor] = f.held
        return values

    def oracle_for(self, tool_id: str, energy_weight: float = 0.0) -> dict[str, float]:
        """The best setpoints for a process tool right now (B9 scoring; never for the edge)."""
        tool = self.by_id[tool_id]
        opt = self.scenario.optimum
        return oracle_setpoints(
            tool.type_name,
            float(tool.health_now(self.t).max(initial=0.0)),
            tool.process_drift(self.t),
            self.t,
            energy_weight=energy_weight,
            period_days=opt.period_days,
            amplitude=opt.amplitude,
        )

    def expected_yield(self, tool_id: str, setpoints: dict[str, float] | None = None) -> float:
        """Expected lot yield (%) of a process tool now, with its own or the given setpoints."""
        tool = self.by_id[tool_id]
        opt = self.scenario.optimum
        return lot_yield(
            tool.type_name,
            setpoints if setpoints is not None else tool.setpoint_dict(),
            float(tool.health_now(self.t).max(initial=0.0)),
            tool.process_drift(self.t),
            self.t,
            period_days=opt.period_days,
            amplitude=opt.amplitude,
        )

    def e10_metrics(self, tool_id: str) -> E10Metrics:
        """SEMI E10 figures of a tool since the start (state sampled at each advance)."""
        tool = self.by_id[tool_id]
        down = tool.e10 == E10State.UNSCHEDULED_DOWN  # its failure is counted: it is under way
        figures = e10.from_hours(tool.e10_hours, tool.failures)
        return e10.with_open_repair(figures, tool.open_down_h, int(down))
