"""The simulation without OPC UA: determinism, failure physics, recipes, E10 figures, the oracle."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from opcua_sim.errors import FaultError, SetpointError, SimError
from opcua_sim.fab import Fab, SimClock
from opcua_sim.physics import Context, sensor_values, tables, tool_key
from opcua_sim.process import lot_energy, lot_yield, oracle_setpoints, power_kw
from opcua_sim.scenario import ToolVariation, default_scenario, load_scenario, scale_tools, with_seed
from shared import e10
from shared.equipment import E10_CODES, TOOL_TYPES, E10State

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "scenarios"

DAY = 86400.0


def _context(type_name: str, n: int, **over: object) -> Context:
    tt = tables(type_name)
    s, m = tt.n_sensors, len(tt.sig.modes)
    base: dict[str, object] = {
        "processing": np.ones(n, bool),
        "down": np.zeros(n, bool),
        "recipe": np.zeros(n, int),
        "phase_s": np.full(n, 30.0),  # inside the main step of every recipe
        "setpoints": np.tile(tt.sp_default, (n, 1)),
        "health": np.zeros((n, m)),
        "days_since_pm": np.zeros(n),
        "drift_rate": np.zeros((n, s)),
        "gain": np.ones((n, s)),
        "offset": np.zeros((n, s)),
        "noise_scale": np.zeros(n),  # noiseless: the tests look at the physics
        "key": np.full(n, tool_key(0, 1)),
        "tick": np.arange(n, dtype=np.int64),
    }
    base.update(over)
    return Context(**base)  # type: ignore[arg-type]


def _small_fab(seed: int = 0, tools: int = 12) -> Fab:
    return Fab(scale_tools(with_seed(default_scenario(), seed), tools))


def test_same_seed_same_readings_whatever_the_tick_pattern():
    a, b, c = _small_fab(5), _small_fab(5), _small_fab(6)
    a.advance_to(3 * DAY)
    for t in np.linspace(0, 3 * DAY, 97)[1:]:
        b.advance_to(float(t))
    c.advance_to(3 * DAY)
    for name in a.groups:
        ra, rb, rc = a.readings(name), b.readings(name), c.readings(name)
        np.testing.assert_array_equal(ra, rb)
        assert not np.array_equal(np.nan_to_num(ra), np.nan_to_num(rc))

    def key(e: dict) -> tuple:
        return (e["t_s"], e["tool"], e["kind"])

    assert sorted(a.truth, key=key) == sorted(b.truth, key=key)


@pytest.mark.parametrize("type_name", sorted(TOOL_TYPES))
def test_every_progressive_mode_shows_in_several_sensors(type_name: str):
    tt = tables(type_name)
    for m, mode in enumerate(tt.sig.modes):
        health = np.zeros((2, len(tt.sig.modes)))
        health[1, m] = 1.0
        v = sensor_values(tt, _context(type_name, 2, health=health))
        moved = np.abs(v[1] - v[0]) > 4 * tt.noise
        assert moved.sum() >= 2, f"{mode}: precursors in {moved.sum()} sensors"


@pytest.mark.parametrize("type_name", ["plasma_etch", "cvd", "cmp"])
def test_recipes_shift_sensors_more_than_early_degradation(type_name: str):
    """A threshold on one sensor cannot separate a mode at half health from a recipe change."""
    tt = tables(type_name)
    n_rec = len(tt.tool.recipes)
    by_recipe = sensor_values(tt, _context(type_name, n_rec, recipe=np.arange(n_rec)))
    spread = by_recipe.max(axis=0) - by_recipe.min(axis=0)
    hidden = 0
    for m in range(len(tt.sig.modes)):
        health = np.zeros((2, len(tt.sig.modes)))
        health[1, m] = 0.5
        v = sensor_values(tt, _context(type_name, 2, health=health))
        shift = np.abs(v[1] - v[0])
        sensors = np.nonzero(shift > 1e-9)[0]
        hidden += int(np.all(shift[sensors] < spread[sensors] + 1e-9))
    assert hidden >= 1


def test_recipe_steps_and_idle_change_the_operating_point():
    tt = tables("plasma_etch")
    rf = tt.tool.sensor_names.index("rf_forward_power")
    steps = sensor_values(tt, _context("plasma_etch", 3, phase_s=np.array([5.0, 30.0, 86.0])))
    assert steps[0, rf] == 0.0 and steps[1, rf] > 1000.0  # stabilize: gas on, RF off; main: RF on
    idle = sensor_values(tt, _context("plasma_etch", 1, processing=np.zeros(1, bool)))
    assert idle[0, rf] == 0.0


def test_subfab_draws_power_while_idle_and_saves_in_eco_mode():
    assert power_kw("vacuum_pump", processing=False, down=False, eco=False) > 0
    eco = power_kw("vacuum_pump", processing=False, down=False, eco=True)
    plain = power_kw("vacuum_pump", processing=False, down=False, eco=False)
    assert 0.6 <= eco / plain <= 0.9 - 0.2  # 40% saved: inside the 10–40% fabs report
    tt = tables("vacuum_pump")
    sp = np.tile(tt.sp_default, (2, 1))
    sp[1, tt.eco_setpoint] = 1.0
    v = sensor_values(tt, _context("vacuum_pump", 2, processing=np.zeros(2, bool), setpoints=sp))
    power = tt.tool.sensor_names.index("motor_power")
    exhaust = tt.tool.sensor_names.index("exhaust_pressure")
    assert v[1, power] < 0.7 * v[0, power]
    assert v[1, exhaust] == pytest.approx(v[0, exhaust])  # still pumping to atmosphere


def test_runs_have_concurrent_modes_sudden_failures_and_maintenance():
    sc = scale_tools(with_seed(default_scenario(), 2), 40)
    fab = Fab(sc, record=True)
    for tool in fab.tools:
        tool.advance_to(60 * DAY)
    kinds = [e["kind"] for e in fab.truth]
    assert {"onset", "failure", "maintenance", "setpoint", "sensor_fault", "lot"} <= set(kinds)
    failures = [e for e in fab.truth if e["kind"] == "failure"]
    assert any(e["sudden"] for e in failures) and any(not e["sudden"] for e in failures)
    concurrent = 0
    for tool in fab.tools:
        assert tool.history is not None
        eps = sorted(tool.history.episodes, key=lambda e: e[1])
        concurrent += sum(1 for x, y in itertools.pairwise(eps) if y[1] < x[2] and x[0] != y[0])
    assert concurrent >= 1


def test_actions_inject_fault_maintenance_and_setpoint_ranges():
    fab = _small_fab(1, 6)
    fab.advance_to(DAY)
    tool = fab.tools[0]
    with pytest.raises(FaultError, match="no failure mode 'melt'"):
        tool.inject_fault("melt")
    tool.inject_fault(tool.modes[0])
    assert tool.e10 == E10State.UNSCHEDULED_DOWN
    last = fab.truth[-1]
    assert last["kind"] == "state" and fab.truth[-2]["kind"] == "failure" and fab.truth[-2]["injected"]
    tool.perform_maintenance()
    assert tool.e10 == E10State.SCHEDULED_DOWN and not tool.health_now().any()
    sp = tool.tt.tool.setpoints[0]
    with pytest.raises(SetpointError, match="outside"):
        tool.set_setpoint(sp.name, sp.hi + 1)
    tool.set_setpoint(sp.name, sp.lo)
    assert tool.setpoints[0] == sp.lo


def test_e10_metrics_from_a_known_series():
    p, s, u = (E10_CODES[x] for x in (E10State.PRODUCTIVE, E10State.STANDBY, E10State.UNSCHEDULED_DOWN))
    m = e10.from_series(np.array([p] * 6 + [s] * 2 + [u] * 2 + [p] * 2), 3600.0)
    assert m.failures == 1 and m.unscheduled_down_h == 2.0 and m.mttr_h == 2.0
    assert m.mtbf_productive_h == 8.0 and m.equipment_uptime_pct == pytest.approx(100 * 10 / 12)
    t = e10.from_transitions(
        [(0.0, "productive"), (7200.0, "unscheduled_down"), (10800.0, "standby")], 14400.0
    )
    assert t.failures == 1 and t.uptime_h == 3.0 and t.unscheduled_down_h == 1.0


def test_oracle_beats_defaults_and_moves_with_time():
    for name in ("plasma_etch", "cvd", "cmp"):
        defaults = {sp.name: sp.default for sp in TOOL_TYPES[name].setpoints}
        for t in (0.0, 3 * DAY, 7 * DAY):
            best = oracle_setpoints(name, 0.2, 0.4, t)
            assert lot_yield(name, best, 0.2, 0.4, t) >= lot_yield(name, defaults, 0.2, 0.4, t)
        assert oracle_setpoints(name, 0.0, 0.0, 0.0) != oracle_setpoints(name, 0.0, 0.0, 4 * DAY)
        assert lot_yield(name, defaults, 0.9, 0.0, 0.0) < lot_yield(name, defaults, 0.0, 0.0, 0.0)
        best = oracle_setpoints(name, 0.2, 0.4, 0.0)
        lean = oracle_setpoints(name, 0.2, 0.4, 0.0, energy_weight=1.0)
        assert lot_energy(name, lean, 0.2, 0.4, 0.0) <= lot_energy(name, best, 0.2, 0.4, 0.0) + 1e-9
    with pytest.raises(ValueError, match="no lots"):
        lot_yield("vacuum_pump", {"rotor_speed_sp": 4800.0, "n2_purge_sp": 40.0, "idle_mode": 0.0}, 0, 0, 0)


def test_clock_speed_and_manual_advance():
    now = [100.0]
    clock = SimClock(3600.0, wall=lambda: now[0])
    now[0] += 2.0
    assert clock.now() == 7200.0
    frozen = SimClock(0.0, wall=lambda: now[0])
    frozen.advance(60.0)
    now[0] += 10.0
    assert frozen.now() == 60.0
    with pytest.raises(SimError):
        SimClock(-1.0)


def test_live_e10_tallies_and_the_oracle_for_a_tool():
    fab = _small_fab(9, 10)
    fab.advance_to(12 * DAY)
    for tool in fab.tools:
        m = fab.e10_metrics(tool.tool_id)
        assert m.total_h == pytest.approx(12 * 24)
    etch = next(t for t in fab.tools if t.type_name == "plasma_etch")
    before = fab.e10_metrics(etch.tool_id)
    assert not etch.down, "this draw's etch tool runs at day 12"
    etch.inject_fault("")  # fails now; an hour into its repair the MTTR leaves that hour out
    fab.advance_to(fab.t + 3600.0)
    m = fab.e10_metrics(etch.tool_id)
    assert m.failures == before.failures + 1 and m.open_failures == 1
    assert m.open_repair_h == pytest.approx(1.0)
    assert m.unscheduled_down_h == pytest.approx(before.unscheduled_down_h + 1.0)
    assert (m.mttr_h == pytest.approx(before.mttr_h)) if before.failures else math.isnan(m.mttr_h)
    best = fab.oracle_for(etch.tool_id)
    assert fab.expected_yield(etch.tool_id, best) >= fab.expected_yield(etch.tool_id)


def test_injected_degradation_develops_precursors_then_fails():
    sc = scale_tools(with_seed(default_scenario(), 3), 6)
    quiet = sc.degradation.model_copy(update={"mean_days_between_onsets": 1e6, "sudden_mean_days": 1e6})
    fab = Fab(sc.model_copy(update={"degradation": quiet}))  # nothing else fails or resets
    fab.advance_to(DAY)
    tool = next(t for t in fab.tools if t.type_name == "vacuum_pump")
    tool.perform_maintenance()  # a clean start: no mode under way
    fab.advance_to(fab.t + 7 * 3600.0)
    row = fab.groups["vacuum_pump"].index(tool)
    vib = tool.tt.tool.sensor_names.index("vibration_rms")
    before = fab.readings("vacuum_pump")[row, vib]
    tool.inject_fault("bearing_wear:degrade")
    onset = fab.t
    due = onset + tool.ttf[tool.modes.index("bearing_wear")]
    with pytest.raises(FaultError, match="no progressive mode"):
        tool.inject_fault("motor_burnout:degrade")
    fab.advance_to(onset + 0.9 * (due - onset))
    assert tool.health_now()[tool.modes.index("bearing_wear")] == pytest.approx(0.9, abs=1e-6)
    assert fab.readings("vacuum_pump")[row, vib] > before + 1.0  # mm/s: the bearing is loud now
    fab.advance_to(due + 1.0)
    failures = [e for e in fab.truth if e["kind"] == "failure" and e["tool"] == tool.tool_id]
    assert (
        failures
        and failures[-1]["mode"] == "bearing_wear"
        and failures[-1]["t_s"] == pytest.approx(due, abs=1e-3)
    )


def test_big_areas_are_split_into_bays_of_small_folders():
    fab = Fab(scale_tools(default_scenario(), 1000))
    per_area: dict[str, int] = {}
    for tool in fab.tools:
        per_area[tool.area] = per_area.get(tool.area, 0) + 1
    assert max(per_area.values()) <= 200 and "subfab-2" in per_area
    assert len(fab.by_id) == 1000


def test_server_settings_are_checked():
    from opcua_sim.server import SimServer, auto_rate

    assert auto_rate(0.0) == 1.0 and auto_rate(3600.0) == 6.0 and auto_rate(1e6) == 10.0
    fab = _small_fab(0, 2)
    with pytest.raises(SimError, match=r"opc\.tcp"):
        SimServer(fab, SimClock(1.0), endpoint="http://localhost:4840")
    with pytest.raises(SimError, match="rate"):
        SimServer(fab, SimClock(1.0), endpoint="opc.tcp://127.0.0.1:4840/", rate_hz=0.0)


def test_lot_events_carry_the_oracle_for_scoring():
    fab = _small_fab(4, 6)
    fab.advance_to(2 * DAY)
    lots = [e for e in fab.truth if e["kind"] == "lot"]
    assert lots
    for lot in lots:
        assert lot["best_yield"] >= lot["expected_yield"] - 1e-6
        assert 0.0 <= lot["yield"] <= 100.0 and lot["energy_kwh"] > 0


def test_tool_variation_is_a_scenario_setting():
    """Tools of a type differ by gain and drift rate by default; the uniform fleet turns both off."""
    default = _small_fab(3)
    assert all(np.std(t.tool_gain) > 0 and np.any(t.drift_rate != 0) for t in default.tools)
    uniform = Fab(scale_tools(with_seed(load_scenario(EXAMPLES / "uniform_fleet.yaml"), 3), 12))
    assert all(np.all(t.tool_gain == 1.0) and np.all(t.drift_rate == 0.0) for t in uniform.tools)
    uniform.advance_to(2 * DAY)
    default.advance_to(2 * DAY)
    down = (E10State.UNSCHEDULED_DOWN, E10State.SCHEDULED_DOWN)  # a stopped tool reads its down values
    running = [
        g for g in default.groups if all(t.state not in down for t in default.tools if t.type_name == g)
    ]
    assert running
    for name in running:
        assert not np.array_equal(
            np.nan_to_num(default.readings(name)), np.nan_to_num(uniform.readings(name))
        )
    with pytest.raises(ValueError, match="tool_spread"):
        ToolVariation(tool_spread=-0.1)


def test_mttr_leaves_out_a_repair_still_under_way_at_the_records_end():
    """A record that ends an hour into a failure: the hour and the failure count, the MTTR is
    over the repair that ended (3 h), in the sampled and in the transition form alike."""
    H = 3600.0
    p, u = E10_CODES[E10State.PRODUCTIVE], E10_CODES[E10State.UNSCHEDULED_DOWN]
    m = e10.from_series(np.array([p] * 4 + [u] * 3 + [p] * 4 + [u] * 1), 3600.0)
    assert m.failures == 2 and m.unscheduled_down_h == 4 and m.mttr_h == 3
    t = e10.from_transitions([(0, "productive"), (4 * H, "unscheduled_down"), (7 * H, "productive"),
                              (11 * H, "unscheduled_down")], 12 * H)  # fmt: skip
    assert t.failures == 2 and t.unscheduled_down_h == 4 and t.mttr_h == 3
    only = e10.from_transitions([(0, "productive"), (11 * H, "unscheduled_down")], 12 * H)
    assert only.failures == 1 and math.isnan(only.mttr_h)
    before = e10.from_transitions([(0, "unscheduled_down")], 12 * H, start_s=2 * H)  # down since before
    assert before.failures == 0 and before.unscheduled_down_h == 10 and math.isnan(before.mttr_h)
    both = e10.pool([m, t, before])  # a fleet's figures leave the repairs under way out alike
    assert both.failures == 4 and both.unscheduled_down_h == 18 and both.mttr_h == 3
