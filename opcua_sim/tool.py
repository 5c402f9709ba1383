"""One simulated tool: its event timeline (lots, recipe, E10 state, degradation, maintenance,
sensor faults, setpoint changes), advanced event by event in simulated time.

Events are drawn from the tool's own random generator in the order they happen, so the
timeline does not depend on how often :meth:`Tool.advance_to` is called (the server calls it
every tick, the exporter once). With ``record=True`` the tool keeps its whole history (segments,
degradation episodes, maintenance, faults, setpoint changes, failures) for the exporter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from opcua_sim.degradation import draw_ttf_s, progressive_modes, sudden_modes
from opcua_sim.errors import FaultError, SetpointError
from opcua_sim.history import DAY, HOUR, INF, History, SensorFault
from opcua_sim.physics import SUBFAB_LOADS, TypeTables, tables
from opcua_sim.process import lot_energy, lot_yield, oracle_setpoints
from shared.equipment import ALL_MODES, E10_CODES, E10State

if TYPE_CHECKING:
    from opcua_sim.fab import DriftTable
    from opcua_sim.scenario import Scenario

_PROCESSING = (E10State.PRODUCTIVE, E10State.ENGINEERING)
_DOWN = (E10State.SCHEDULED_DOWN, E10State.UNSCHEDULED_DOWN)


class Tool:
    """A tool's state now and the events that move it. Owned by :class:`opcua_sim.fab.Fab`."""

    def __init__(
        self,
        index: int,
        tool_id: str,
        type_name: str,
        area: str,
        scenario: Scenario,
        drift: DriftTable,
        emit: Callable[[dict[str, Any]], None],
        record: bool = False,
    ) -> None:
        self.index, self.tool_id, self.area = index, tool_id, area
        self.tt: TypeTables = tables(type_name)
        self.type_name = type_name
        self.subfab = self.tt.tool.subfab
        self.host: Tool | None = None
        self.subfab_run_kw = 0.0  # the sub-fab load a lot of this tool adds (set by the Fab)
        self.sc = scenario
        self.drift = drift
        self._emit = emit
        self.rng = np.random.default_rng([scenario.seed, index, 0x5EED])
        self.modes = progressive_modes(self.tt.tool)
        self.sudden_mode = sudden_modes(self.tt.tool)[0]
        self.history: History | None = History() if record else None
        m, sc = len(self.modes), scenario
        pm_days = sc.maintenance.subfab_pm_interval_days if self.subfab else sc.maintenance.pm_interval_days
        self.pm_interval = pm_days * DAY
        var = scenario.variation
        self.drift_rate = self.rng.normal(0.0, var.drift_per_day, self.tt.n_sensors)  # noise units / day
        self.tool_gain = 1.0 + self.rng.normal(0.0, var.tool_spread, self.tt.n_sensors)
        self.setpoints = self.tt.sp_default.astype(np.float64).copy()
        self.t = 0.0
        # Tools were running before the simulation starts: staggered maintenance, modes under way.
        self.last_maint = -self.rng.uniform(0.0, 0.9) * self.pm_interval
        self.next_pm = self.last_maint + self.pm_interval
        self.pending_pm = False
        self.onset = np.full(m, np.nan)
        self.ttf = np.full(m, np.inf)
        self.next_onset = np.array([self._draw_onset_gap(0.0) for _ in range(m)])
        for i in range(m):
            if self.rng.random() < 0.3:
                self.ttf[i] = draw_ttf_s(self.rng, self.tt.sig.mean_ttf_days[i], sc.degradation.ttf_spread)
                self.onset[i] = -self.rng.uniform(0.0, 0.8) * self.ttf[i]
                self.next_onset[i] = INF
        self.next_sudden = self.rng.exponential(sc.degradation.sudden_mean_days * DAY)
        self.next_fault = self.rng.exponential(sc.sensor_faults.mean_days_between * DAY)
        self.faults: list[SensorFault] = []
        self.next_sp_change = (
            INF if self.subfab else self.rng.exponential(sc.production.setpoint_change_mean_days * DAY)
        )
        self.state = E10State.STANDBY
        self.recipe = -1
        self.lot_start = 0.0
        self.lot_begin = 0.0
        self.seg_end = 0.0 if self.subfab else self.rng.exponential(sc.production.mean_idle_min * 60.0)
        self.wafers = 0.0
        self.lots = 0.0
        self.energy_kwh = 0.0
        # NaN until the first lot ends (served as BadWaitingForInitialData; sub-fab tools run no lots)
        self.last_lot_yield = math.nan
        self.last_lot_energy_kwh = math.nan
        self.e10_hours: dict[E10State, float] = {}  # tallied by the Fab at each advance (server side)
        self.failures = 0
        self.open_down_h = 0.0  # hours of the unscheduled down under way (0 when up): not a repair yet
        if self.subfab:
            self.seg_end = INF
        self._record_segment()
        if self.history is not None:
            self.history.maint_t.append(self.last_maint)
            self.history.sp_t.append(-INF)
            self.history.sp_values.append(self.setpoints.copy())

    # ------------------------------------------------------------------ what the tool looks like now
    @property
    def processing(self) -> bool:
        if self.subfab:
            if self.state in _DOWN:
                return False
            return self.host.processing if self.host is not None else True
        return self.state in _PROCESSING

    @property
    def load_recipe(self) -> int:
        """The recipe row of the physics tables: a sub-fab tool's load follows its host's recipe."""
        if self.subfab:
            host = self.host
            return max(host.recipe, 0) % SUBFAB_LOADS if host is not None else 0
        return max(self.recipe, 0)

    @property
    def down(self) -> bool:
        return self.state in _DOWN

    @property
    def e10(self) -> E10State:
        """The SEMI E10 state; a sub-fab tool that is up mirrors its host's load."""
        if self.subfab and self.state not in _DOWN:
            return E10State.PRODUCTIVE if self.processing else E10State.STANDBY
        return self.state

    @property
    def eco(self) -> bool:
        return self.tt.eco_setpoint >= 0 and self.setpoints[self.tt.eco_setpoint] >= 0.5

    def health_now(self, t: float | None = None) -> np.ndarray:
        """Health index per progressive mode in [0, 1] (0 where no episode runs)."""
        t = self.t if t is None else t
        h = np.clip((t - self.onset) / self.ttf, 0.0, 1.0)
        h[np.isnan(h)] = 0.0
        return h

    def process_drift(self, t: float | None = None) -> float:
        """Days since maintenance over the PM interval: the process drift the oracle sees."""
        t = self.t if t is None else t
        return max(t - self.last_maint, 0.0) / self.pm_interval

    def recipe_name(self) -> str:
        if self.subfab:
            return self.tt.tool.recipes[0] if self.processing else ("none" if self.down else "idle")
        if self.recipe < 0 or not self.processing:
            return "idle" if not self.down else "none"
        return self.tt.tool.recipes[min(self.recipe, len(self.tt.tool.recipes) - 1)]

    def setpoint_dict(self) -> dict[str, float]:
        return {sp.name: float(v) for sp, v in zip(self.tt.tool.setpoints, self.setpoints, strict=True)}

    # ------------------------------------------------------------------ the event loop
    def advance_to(self, t: float) -> None:
        """Process every event up to simulated time ``t`` (seconds since the scenario start)."""
        while True:
            te, handler, arg = self._next_event()
            if te > t:
                break
            self.t = te
            handler(arg)
        self.t = t

    def _next_event(self) -> tuple[float, Callable[[int], None], int]:
        best: tuple[float, Callable[[int], None], int] = (self.seg_end, self._on_segment_end, 0)
        if not self.down:
            fail = self.onset + self.ttf
            for i in range(len(self.modes)):
                if fail[i] < best[0]:
                    best = (float(fail[i]), self._on_failure, i)
                if self.next_onset[i] < best[0]:
                    best = (float(self.next_onset[i]), self._on_onset, i)
            if self.next_sudden < best[0]:
                best = (self.next_sudden, self._on_failure, -1)
            if self.next_pm < best[0] and not self.pending_pm:
                best = (self.next_pm, self._on_pm_due, 0)
        if self.next_fault < best[0]:
            best = (self.next_fault, self._on_fault, 0)
        for k, f in enumerate(self.faults):
            if f.end < best[0]:
                best = (f.end, self._on_fault_end, k)
        if self.next_sp_change < best[0]:
            best = (self.next_sp_change, self._on_sp_change, 0)
        return best

    def _event(self, kind: str, **fields: Any) -> None:
        """One ground-truth event of this tool, now."""
        self._emit({"kind": kind, "tool": self.tool_id, "t_s": self.t, **fields})

    def _draw_onset_gap(self, t: float) -> float:
        scale = self.drift.onset_scale(self.type_name, t)
        return t + self.rng.exponential(self.sc.degradation.mean_days_between_onsets * DAY / scale)

    def _set_state(self, state: E10State, seg_end: float, recipe: int = -1) -> None:
        previous = self.state
        self.state, self.seg_end, self.recipe = state, seg_end, recipe
        self._record_segment()
        if previous != state:
            self._event("state", state=str(state))

    def _record_segment(self) -> None:
        if self.history is not None:
            h = self.history
            h.seg_t.append(self.t)
            h.seg_state.append(E10_CODES[self.state])
            h.seg_recipe.append(self.recipe)
            h.seg_lot_start.append(self.lot_start)

    def _on_segment_end(self, _: int) -> None:
        p = self.sc.production
        if self.state == E10State.PRODUCTIVE:
            self._finish_lot()
        if self.state in (E10State.UNSCHEDULED_DOWN, E10State.SCHEDULED_DOWN):
            self._event("back_up", after=str(self.state))
            self._schedule_onsets_after_down()
            if p.qualification_h > 0 and not self.subfab:
                self.lot_start = self.t
                self._set_state(E10State.ENGINEERING, self.t + p.qualification_h * HOUR, 0)
                return
            self._set_state(E10State.STANDBY, INF if self.subfab else self.t + self._idle_gap())
            return
        if self.pending_pm:
            self._start_pm("preventive")
        elif self.state == E10State.STANDBY:
            self._start_lot()
        else:
            self._set_state(E10State.STANDBY, self.t + self._idle_gap())

    def _idle_gap(self) -> float:
        return float(self.rng.exponential(self.sc.production.mean_idle_min * 60.0))

    def _non_scheduled_until(self) -> float | None:
        for start, end in self.sc.production.non_scheduled_days:
            if start * DAY <= self.t < end * DAY:
                return end * DAY
        return None

    def _start_lot(self) -> None:
        p = self.sc.production
        until = self._non_scheduled_until()
        if until is not None:
            self._set_state(E10State.NON_SCHEDULED, until)
            return
        weights = self.drift.recipe_weights(self.type_name, self.t)
        recipe = min(
            int(np.searchsorted(np.cumsum(weights), self.rng.random(), side="right")), len(weights) - 1
        )
        self.lot_begin = self.t
        self.lot_start = self.t + p.lot_overhead_min * 30.0  # wafers start after half the overhead
        duration = p.lot_overhead_min * 60.0 + p.wafers_per_lot * float(self.tt.wafer_s[recipe])
        self._set_state(E10State.PRODUCTIVE, self.t + duration, recipe)

    def _finish_lot(self) -> None:
        p = self.sc.production
        hours = (self.t - self.lot_begin) / HOUR
        health = float(self.health_now().max(initial=0.0))
        drift = self.process_drift()
        sp = self.setpoint_dict()
        opt = self.sc.optimum
        expected = lot_yield(
            self.type_name, sp, health, drift, self.t, period_days=opt.period_days, amplitude=opt.amplitude
        )
        # What the oracle's setpoints would have given: B9 scores tuning by the gap to it.
        best = oracle_setpoints(
            self.type_name, health, drift, self.t, period_days=opt.period_days, amplitude=opt.amplitude
        )
        best_yield = lot_yield(
            self.type_name, best, health, drift, self.t, period_days=opt.period_days, amplitude=opt.amplitude
        )
        self.last_lot_yield = float(np.clip(expected + self.rng.normal(0.0, 0.6), 0.0, 100.0))
        self.last_lot_energy_kwh = lot_energy(
            self.type_name, sp, health, drift, self.t, lot_hours=hours, subfab_kwh=self.subfab_run_kw * hours
        ) * float(1.0 + self.rng.normal(0.0, 0.01))
        self.wafers += p.wafers_per_lot
        self.lots += 1
        self._event(
            "lot",
            recipe=self.tt.tool.recipes[self.recipe],
            energy_kwh=round(self.last_lot_energy_kwh, 3),
            expected_yield=round(expected, 3),
            best_yield=round(best_yield, 3),
            best_setpoints={k: round(v, 4) for k, v in best.items()},
            health=round(health, 4),
            drift=round(drift, 4),
            setpoints={k: round(v, 4) for k, v in sp.items()},
            **{"yield": round(self.last_lot_yield, 3)},  # a keyword in Python
        )

    def wafers_now(self) -> float:
        """Wafers completed, counting those of the lot in progress."""
        if self.state != E10State.PRODUCTIVE or self.subfab:
            return self.wafers
        done = max(self.t - self.lot_start, 0.0) // float(self.tt.wafer_s[self.recipe])
        return self.wafers + min(done, self.sc.production.wafers_per_lot)

    def _on_onset(self, i: int) -> None:
        self.onset[i] = self.t
        self.ttf[i] = draw_ttf_s(self.rng, self.tt.sig.mean_ttf_days[i], self.sc.degradation.ttf_spread)
        self.next_onset[i] = INF
        self._event("onset", mode=self.modes[i], failure_due_t_s=round(self.t + self.ttf[i], 1))

    def _reset_modes(self) -> list[str]:
        """Maintenance or repair: every progressive mode under way starts over."""
        reset = []
        for i in range(len(self.modes)):
            if not math.isnan(self.onset[i]):
                reset.append(self.modes[i])
                if self.history is not None:
                    self.history.episodes.append((i, float(self.onset[i]), self.t, float(self.ttf[i])))
            self.onset[i], self.ttf[i], self.next_onset[i] = np.nan, np.inf, INF
        self.last_maint = self.t
        if self.history is not None:
            self.history.maint_t.append(self.t)
        return reset

    def _schedule_onsets_after_down(self) -> None:
        for i in range(len(self.modes)):
            if math.isnan(self.onset[i]) and self.next_onset[i] == INF:
                self.next_onset[i] = self._draw_onset_gap(self.t)
        if self.next_sudden == INF:
            self.next_sudden = self.t + self.rng.exponential(self.sc.degradation.sudden_mean_days * DAY)

    def _on_failure(self, i: int, injected: bool = False) -> None:
        sudden = i < 0
        mode = self.sudden_mode if sudden else self.modes[i]
        if self.state == E10State.PRODUCTIVE:
            self._event("lot_aborted")
        health = self.health_now()
        self.failures += 1
        if self.history is not None:
            self.history.failures.append((self.t, ALL_MODES.index(mode), sudden))
        self._event(
            "failure",
            mode=mode,
            sudden=sudden,
            injected=injected,
            health={m: round(float(h), 4) for m, h in zip(self.modes, health, strict=True)},
        )
        self._reset_modes()
        if sudden:
            self.next_sudden = INF
        repair = float(self.rng.lognormal(math.log(self.sc.maintenance.repair_h) - 0.08, 0.4)) * HOUR
        self.pending_pm = False
        self.next_pm = self.t + self.pm_interval
        self._set_state(E10State.UNSCHEDULED_DOWN, self.t + repair)

    def _on_pm_due(self, _: int) -> None:
        if self.state == E10State.PRODUCTIVE:
            self.pending_pm = True  # finish the lot first
        else:
            self._start_pm("preventive")

    def _start_pm(self, kind: str) -> None:
        reset = self._reset_modes()
        self.pending_pm = False
        self.next_pm = self.t + self.pm_interval
        self._event("maintenance", type=kind, modes_reset=reset)
        self._set_state(E10State.SCHEDULED_DOWN, self.t + self.sc.maintenance.pm_h * HOUR)

    def _on_fault(self, _: int) -> None:
        sf = self.sc.sensor_faults
        kind = "dropout" if self.rng.random() < sf.dropout_fraction else "stuck"
        sensor = int(self.rng.integers(self.tt.n_sensors))
        median_min = sf.dropout_median_min if kind == "dropout" else sf.stuck_median_min
        end = self.t + float(self.rng.lognormal(math.log(median_min * 60.0), 1.0))
        fault = SensorFault(sensor, kind, self.t, end)
        self.faults.append(fault)
        if self.history is not None:
            self.history.faults.append(fault)
        self.next_fault = self.t + self.rng.exponential(sf.mean_days_between * DAY)
        self._event(
            "sensor_fault", sensor=self.tt.tool.sensor_names[sensor], fault=kind, end_t_s=round(end, 1)
        )

    def _on_fault_end(self, k: int) -> None:
        self.faults.pop(k)

    def _on_sp_change(self, _: int) -> None:
        tool = self.tt.tool
        tunable = [i for i, sp in enumerate(tool.setpoints) if sp.name != "idle_mode"]
        i = int(self.rng.choice(tunable))
        sp = tool.setpoints[i]
        value = float(np.clip(sp.default + (sp.hi - sp.lo) * self.rng.normal(0.0, 0.12), sp.lo, sp.hi))
        self.next_sp_change = self.t + self.rng.exponential(
            self.sc.production.setpoint_change_mean_days * DAY
        )
        self.set_setpoint(sp.name, value, source="engineer")

    # ------------------------------------------------------------------ actions from outside
    def set_setpoint(self, name: str, value: float, source: str = "opcua") -> None:
        """Change a setpoint now; :class:`SetpointError` outside its range."""
        names = self.tt.tool.setpoint_names
        if name not in names:
            raise SetpointError(f"{self.tool_id}: no setpoint {name!r}; known: {', '.join(names)}")
        i = names.index(name)
        sp = self.tt.tool.setpoints[i]
        if not (sp.lo <= value <= sp.hi) or math.isnan(value):
            raise SetpointError(f"{self.tool_id}.{name}: {value} outside [{sp.lo}, {sp.hi}] {sp.unit}")
        old = float(self.setpoints[i])
        self.setpoints[i] = value
        if self.history is not None:
            self.history.sp_t.append(self.t)
            self.history.sp_values.append(self.setpoints.copy())
        self._event("setpoint", name=name, old=old, new=value, source=source)

    def inject_fault(self, mode: str) -> None:
        """Fail now in ``mode`` (a progressive or the sudden mode of this tool type; empty: the
        sudden one). ``"<mode>:degrade"`` starts that mode's degradation now instead: the tool
        then fails after the usual onset-to-failure time, with precursors on the way."""
        if mode.endswith(":degrade"):
            name = mode.removesuffix(":degrade")
            if name not in self.modes:
                raise FaultError(
                    f"{self.tool_id}: no progressive mode {name!r}; known: {', '.join(self.modes)}"
                )
            if self.down:
                raise FaultError(f"{self.tool_id}: is down; degradation starts when it runs again")
            i = self.modes.index(name)
            if math.isnan(self.onset[i]):
                self._on_onset(i)
            return
        if mode == self.sudden_mode or mode == "":
            self._on_failure(-1, injected=True)
        elif mode in self.modes:
            self._on_failure(self.modes.index(mode), injected=True)
        else:
            known = ", ".join((*self.modes, self.sudden_mode))
            raise FaultError(f"{self.tool_id}: no failure mode {mode!r}; known: {known}")

    def perform_maintenance(self) -> None:
        """Preventive maintenance now (aborting a lot or ending a repair)."""
        if self.state == E10State.PRODUCTIVE:
            self._event("lot_aborted")
        self._start_pm("requested")
