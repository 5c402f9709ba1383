"""The simulator's OPC UA server, through a real asyncua client on a free port."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import Client, Node, ua

from opcua_sim.fab import Fab
from opcua_sim.history import SensorFault
from opcua_sim.scenario import default_scenario, scale_tools, with_seed
from opcua_sim.testing import SimHandle, running_sim
from shared.equipment import NAMESPACE_URI

TIMEOUT = 10.0
WATCHDOG = 30.0  # asyncua's 1 s default can disconnect on a busy CI machine (FACTS.md)


class Collector:
    """asyncua subscription handler that keeps what arrives."""

    def __init__(self) -> None:
        self.changes: list[tuple[Node, Any, ua.DataValue]] = []
        self.events: list[Any] = []

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        self.changes.append((node, val, data.monitored_item.Value))

    def event_notification(self, event: Any) -> None:
        self.events.append(event)


async def _until(predicate: Any, timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def _same_instant(a: datetime, b: datetime) -> bool:
    """asyncua may hand back naive UTC datetimes; compare instants."""
    return a.replace(tzinfo=a.tzinfo or UTC) == b


async def _tool_node(client: Client, sim: SimHandle, index: int = 0) -> tuple[Node, int]:
    idx = await client.get_namespace_index(NAMESPACE_URI)
    tool = sim.fab.tools[index]
    node = await client.nodes.objects.get_child([f"{idx}:Fab", f"{idx}:{tool.area}", f"{idx}:{tool.tool_id}"])
    return node, idx


async def test_browse_read_units_ranges_and_simulated_timestamps():
    async with (
        running_sim(tools=8, seed=1, speed=0) as sim,
        Client(sim.endpoint, timeout=TIMEOUT, watchdog_intervall=WATCHDOG) as client,
    ):
        idx = await client.get_namespace_index(NAMESPACE_URI)
        fab = await client.nodes.objects.get_child(f"{idx}:Fab")
        areas = {(await a.read_browse_name()).Name for a in await fab.get_children()}
        assert areas == {t.area for t in sim.fab.tools}
        tool_node, _ = await _tool_node(client, sim)
        children = {(await c.read_browse_name()).Name for c in await tool_node.get_children()}
        assert {
            "Sensors",
            "Setpoints",
            "Counters",
            "State",
            "Recipe",
            "InjectFault",
            "PerformMaintenance",
        } <= children
        tool = sim.fab.tools[0]
        spec = tool.tt.tool
        sensors = await tool_node.get_child(f"{idx}:Sensors")
        names = [(await s.read_browse_name()).Name for s in await sensors.get_children()]
        assert names == list(spec.sensor_names)
        first = await sensors.get_child(f"{idx}:{spec.sensors[0].name}")
        dv = await first.read_data_value()
        assert dv.StatusCode.is_good() and isinstance(dv.Value.Value, float)
        assert _same_instant(dv.SourceTimestamp, sim.fab.time_at(sim.fab.t))
        eurange = await (await first.get_child("0:EURange")).read_value()
        units = await (await first.get_child("0:EngineeringUnits")).read_value()
        assert (eurange.Low, eurange.High) == (spec.sensors[0].lo, spec.sensors[0].hi)
        assert units.DisplayName.Text == spec.sensors[0].unit
        counters = await tool_node.get_child(f"{idx}:Counters")
        cnames = {(await c.read_browse_name()).Name for c in await counters.get_children()}
        assert {"wafers", "lots", "energy_kwh", "last_lot_yield", "last_lot_energy_kwh"} <= cnames
        lot_yield = await counters.get_child(f"{idx}:last_lot_yield")
        yield_range = await (await lot_yield.get_child("0:EURange")).read_value()
        assert (yield_range.Low, yield_range.High) == (0.0, 100.0)
        assert (await (await lot_yield.get_child("0:EngineeringUnits")).read_value()).DisplayName.Text == "%"
        dv = await lot_yield.read_data_value(raise_on_bad_status=False)
        assert dv.StatusCode.value == ua.StatusCodes.BadWaitingForInitialData  # no lot has ended yet
        await sim.advance(12 * 3600.0)  # several lots later
        value = await lot_yield.read_value()
        assert value == pytest.approx(tool.last_lot_yield) and 0.0 < value <= 100.0
        energy = await (await counters.get_child(f"{idx}:last_lot_energy_kwh")).read_value()
        assert energy == pytest.approx(tool.last_lot_energy_kwh) and energy > 0
        state = await (await tool_node.get_child(f"{idx}:State")).read_value()
        assert state == str(tool.e10)


async def test_subfab_tools_name_their_host_tool_in_a_property():
    async with (
        running_sim(tools=12, seed=3, speed=0) as sim,
        Client(sim.endpoint, timeout=TIMEOUT, watchdog_intervall=WATCHDOG) as client,
    ):
        seen: dict[str, str | None] = {}
        for i, tool in enumerate(sim.fab.tools):
            node, idx = await _tool_node(client, sim, i)
            props = {(await p.read_browse_name()).to_string(): p for p in await node.get_properties()}
            host = props.get(f"{idx}:HostTool")
            seen[tool.tool_id] = await host.read_value() if host is not None else None
        expected = {t.tool_id: t.host.tool_id if t.host is not None else None for t in sim.fab.tools}
        assert seen == expected
        assert any(v is not None for v in seen.values()) and any(v is None for v in seen.values())


async def test_subscription_gets_changes_stamped_in_simulated_time():
    drift = Path(__file__).resolve().parent.parent / "examples" / "scenarios" / "drift.toml"
    async with (
        running_sim(tools=6, seed=2, speed=0, scenario=drift) as sim,
        Client(sim.endpoint, timeout=TIMEOUT, watchdog_intervall=WATCHDOG) as client,
    ):
        tool_node, idx = await _tool_node(client, sim)
        sensors = await (await tool_node.get_child(f"{idx}:Sensors")).get_children()
        handler = Collector()
        sub = await client.create_subscription(20, handler)
        await sub.subscribe_data_change(sensors)
        await _until(lambda: len(handler.changes) >= len(sensors))  # initial values
        stamps = []
        for _ in range(3):
            await sim.advance(600.0)
            stamps.append(sim.fab.time_at(sim.fab.t))
            await _until(lambda: any(dv.SourceTimestamp == stamps[-1] for _, _, dv in handler.changes))
        assert sim.fab.scenario.name == "drift"
        seen = {dv.SourceTimestamp for _, _, dv in handler.changes}
        assert set(stamps) <= seen
        await sub.delete()


async def test_setpoint_writes_in_and_out_of_range():
    async with (
        running_sim(tools=6, seed=3, speed=0) as sim,
        Client(sim.endpoint, timeout=TIMEOUT, watchdog_intervall=WATCHDOG) as client,
    ):
        tool_node, idx = await _tool_node(client, sim)
        tool = sim.fab.tools[0]
        spec = tool.tt.tool.setpoints[0]
        node = await tool_node.get_child([f"{idx}:Setpoints", f"{idx}:{spec.name}"])
        inside = (spec.lo + spec.hi) / 2
        await node.write_value(ua.Variant(inside, ua.VariantType.Double))
        assert await node.read_value() == inside and tool.setpoints[0] == inside
        change = [e for e in sim.fab.truth if e["kind"] == "setpoint" and e.get("source") == "opcua"][-1]
        assert change["new"] == inside and change["tool"] == tool.tool_id
        with pytest.raises(ua.UaStatusCodeError) as info:
            await node.write_value(ua.Variant(spec.hi * 10 + 1, ua.VariantType.Double))
        assert info.value.code == ua.StatusCodes.BadOutOfRange
        with pytest.raises(ua.UaStatusCodeError) as info:
            await node.write_value(ua.Variant("high", ua.VariantType.String))
        assert info.value.code == ua.StatusCodes.BadTypeMismatch
        assert await node.read_value() == inside and tool.setpoints[0] == inside
        sensor = await tool_node.get_child([f"{idx}:Sensors", f"{idx}:{tool.tt.tool.sensors[0].name}"])
        with pytest.raises(ua.UaStatusCodeError):
            await sensor.write_value(ua.Variant(1.0, ua.VariantType.Double))


async def test_inject_fault_goes_down_with_an_alarm_and_maintenance_resets():
    async with (
        running_sim(tools=6, seed=4, speed=0) as sim,
        Client(sim.endpoint, timeout=TIMEOUT, watchdog_intervall=WATCHDOG) as client,
    ):
        tool_node, idx = await _tool_node(client, sim)
        tool = sim.fab.tools[0]
        etype = await client.nodes.base_event_type.get_child(f"{idx}:ToolAlarmEventType")
        handler = Collector()
        sub = await client.create_subscription(20, handler)
        await sub.subscribe_events(client.nodes.server, etype)
        state = await tool_node.get_child(f"{idx}:State")
        mode = tool.modes[1]
        await tool_node.call_method(f"{idx}:InjectFault", ua.Variant(mode, ua.VariantType.String))
        assert await state.read_value() == "unscheduled_down"
        await _until(lambda: any(getattr(e, "Kind", "") == "failure" for e in handler.events))
        alarm = next(e for e in handler.events if e.Kind == "failure")
        assert alarm.ToolId == tool.tool_id and alarm.Mode == mode and mode in alarm.Message.Text
        assert _same_instant(alarm.Time, sim.fab.time_at(sim.fab.t))
        with pytest.raises(ua.UaStatusCodeError) as info:
            await tool_node.call_method(
                f"{idx}:InjectFault", ua.Variant("no_such_mode", ua.VariantType.String)
            )
        assert info.value.code == ua.StatusCodes.BadInvalidArgument
        tool.onset[0], tool.ttf[0] = sim.fab.t - 3600.0, 86400.0  # a mode under way, to be reset
        await tool_node.call_method(f"{idx}:PerformMaintenance")
        assert await state.read_value() == "scheduled_down"
        assert not tool.health_now().any()
        await _until(lambda: any(getattr(e, "Kind", "") == "maintenance" for e in handler.events))
        await sim.advance(7 * 3600.0)  # PM (6 h) done: engineering qualification, then production
        assert await state.read_value() in ("engineering", "standby", "productive")
        kinds = [e["kind"] for e in sim.fab.truth if e["tool"] == tool.tool_id]
        assert "failure" in kinds and "maintenance" in kinds
        await sub.delete()


async def test_same_seed_same_values_and_bad_status_for_dropouts():
    values = []
    for run in range(2):
        async with running_sim(tools=6, seed=7, speed=0) as sim:
            await sim.advance(5 * 3600.0)
            async with Client(sim.endpoint, timeout=TIMEOUT, watchdog_intervall=WATCHDOG) as client:
                tool_node, idx = await _tool_node(client, sim, 1)
                nodes = await (await tool_node.get_child(f"{idx}:Sensors")).get_children()
                values.append([dv.Value.Value for dv in await client.read_attributes(nodes)])
                if run == 0:
                    other = Fab(scale_tools(with_seed(default_scenario(), 8), 6))  # another seed
                    other.advance_to(sim.fab.t)
                    row = other.groups[other.tools[1].type_name].index(other.tools[1])
                    assert list(other.readings(other.tools[1].type_name)[row]) != values[0]
                    continue
                tool = sim.fab.tools[1]
                tool.faults.append(SensorFault(0, "dropout", sim.fab.t, sim.fab.t + 3600.0))
                await sim.advance(60.0)
                dv = await nodes[0].read_data_value(raise_on_bad_status=False)
                assert dv.StatusCode.value == ua.StatusCodes.BadSensorFailure
                assert dv.Value.Value is None
    assert values[0] == values[1]


async def test_a_repeated_reading_at_the_same_instant_is_the_same_reading(tmp_path: Path) -> None:
    """Spikes belong to a sample: a tick that finds the clock where it was publishes nothing.

    Before, a second tick at the same simulated time drew its readings with no spike, so a spike
    published by one tick was taken back by the next, at the same SourceTimestamp, and what a
    subscriber held for that instant depended on how many wall-clock ticks fell between two
    advances of a stopped clock."""
    data = scale_tools(default_scenario(), 4).model_dump(mode="json")
    data["sensor_faults"]["spike_per_hour"] = 1.0  # an hour's step: every reading is a spike
    path = tmp_path / "spiky.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    # One background tick per 100 s: the test's own steps are the only ones in its few seconds.
    async with running_sim(seed=4, speed=0, scenario=path, rate_hz=0.01) as sim:
        await sim.advance(3600.0)
        type_name = sim.fab.tools[0].type_name
        spiked = sim.fab.readings(type_name, 1.0)
        assert not np.allclose(spiked, sim.fab.readings(type_name), equal_nan=True), "no spike drawn"
        assert await sim.server.step() == 0, "a tick at the same instant changed published values"


async def test_speed_factor_moves_simulated_time_and_restart_keeps_the_port():
    async with running_sim(tools=4, seed=5, speed=3600.0, rate_hz=5) as sim:
        async with Client(sim.endpoint, timeout=TIMEOUT, watchdog_intervall=WATCHDOG) as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            sim_time = await client.nodes.objects.get_child([f"{idx}:FabSimulator", f"{idx}:SimTime"])
            loop = asyncio.get_running_loop()
            t0, wall0 = await sim_time.read_value(), loop.time()
            elapsed = 0.0
            while elapsed < 1800.0 and loop.time() - wall0 < TIMEOUT:  # half a simulated hour
                await asyncio.sleep(0.1)
                elapsed = (await sim_time.read_value() - t0).total_seconds()
            wall = loop.time() - wall0
            assert elapsed >= 1800.0
            assert elapsed <= 3600.0 * (wall + 0.3)  # never faster than the speed factor (+ one tick)
        t_before = sim.fab.t
        await sim.restart()
        async with Client(sim.endpoint, timeout=TIMEOUT, watchdog_intervall=WATCHDOG) as client:
            tool_node, idx = await _tool_node(client, sim)
            assert await (await tool_node.get_child(f"{idx}:State")).read_value()
        assert sim.fab.t >= t_before  # the same fab carries on


async def test_basic256sha256_sign_and_encrypt_with_generated_certificates_and_login():
    async with running_sim(tools=3, seed=6, speed=0, security=True, users={"operator": "s3cret"}) as sim:
        for mode in ("SignAndEncrypt", "Sign"):
            client = Client(sim.endpoint, timeout=TIMEOUT, watchdog_intervall=WATCHDOG)
            client.application_uri = sim.client_application_uri
            await client.set_security_string(sim.security_string(mode))
            client.set_user("operator")
            client.set_password("s3cret")
            async with client:
                tool_node, idx = await _tool_node(client, sim)
                assert await (await tool_node.get_child(f"{idx}:State")).read_value()
        bad = Client(sim.endpoint, timeout=TIMEOUT, watchdog_intervall=WATCHDOG)
        await bad.set_security_string(sim.security_string("SignAndEncrypt"))
        bad.set_user("operator")
        bad.set_password("wrong")
        with pytest.raises(ua.UaError):
            async with bad:
                pass


async def test_cli_serve_runs_until_terminated(tmp_path):
    import os
    import signal
    import sys

    from opcua_sim.testing import free_port

    port = free_port()
    truth = tmp_path / "truth.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fabpm.cli",
        "sim",
        "serve",
        "--tools",
        "3",
        "--seed",
        "2",
        "--speed",
        "3600",
        "--security",
        "none",
        "--endpoint",
        f"opc.tcp://127.0.0.1:{port}/fabpm/",
        "--truth",
        str(truth),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        banner = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert b"3 tools" in banner
        async with Client(
            f"opc.tcp://127.0.0.1:{port}/fabpm/", timeout=TIMEOUT, watchdog_intervall=WATCHDOG
        ) as c:
            idx = await c.get_namespace_index(NAMESPACE_URI)
            n_tools = await (
                await c.nodes.objects.get_child([f"{idx}:FabSimulator", f"{idx}:Tools"])
            ).read_value()
            assert n_tools == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert truth.read_text().count("\n") >= 1
