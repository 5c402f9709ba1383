"""The simulator's OPC UA server: the fab's address space, kept current in simulated time.

An update loop runs ``rate_hz`` times per wall second: it advances the :class:`~opcua_sim.fab.Fab`
to the simulated clock, writes every value that changed straight into the address space
(a DataValue with SourceTimestamp = simulated time; Bad status ``BadSensorFailure`` for a
dropout) and fires the alarm events the step produced. Writes bypass asyncua's per-node write
path (lookups and type checks) and call the monitored items' callbacks directly; the loop yields
to the event loop every ``yield_every`` writes so the publisher is not starved (FACTS.md: without
yielding only 62% of changes reached a subscriber).

Client writes to ``Setpoints/*`` are checked against the EURange first: outside it the write
fails with ``BadOutOfRange`` and nothing changes; inside it the tool's setpoint changes (ground
truth ``setpoint`` event, source ``opcua``).
"""

# asyncua annotates with NewTypes (UInt32, Int16, DateTime) that reject the plain int/datetime it
# accepts at run time; checking those arguments here would only add casts.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from opcua_sim import address_space as aspace_mod
from opcua_sim.address_space import AddressSpace, ToolNodes, counter_values
from opcua_sim.errors import FaultError, SimError
from opcua_sim.fab import Fab, SimClock
from opcua_sim.security import POLICIES, SERVER_URI, PasswordUserManager, SecuritySettings, ensure_certificate
from shared.equipment import NAMESPACE_URI

_logger = logging.getLogger(__name__)
ALARM_QUEUE = 1000  # pending alarm events per tick; overflow drops the oldest (counted, logged)
ALARM_KINDS = {"failure": 900, "maintenance": 300, "back_up": 200}  # kind -> OPC UA severity
_BAD_SENSOR = ua.StatusCode(ua.StatusCodes.BadSensorFailure)
_GOOD = ua.StatusCode(ua.StatusCodes.Good)
_NO_DATA_YET = ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)  # no lot has ended yet
_ADMIN = User(role=UserRole.Admin)  # asyncua's default for internal writes


class SimDataValue(ua.DataValue):
    """A DataValue the simulator never mutates after writing it, so it is its own deep copy.

    asyncua deep-copies the value for every monitored item it notifies (about 200 µs for a
    DataValue with timestamps, measured: it capped the server near 2,500 changes per second);
    the copy guards against a writer mutating a value in place, which the simulator never does.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> SimDataValue:
        return self


def auto_rate(speed: float) -> float:
    """Updates per wall second: one per 10 simulated minutes or faster, between 1 and 10 Hz."""
    return float(min(10.0, max(1.0, speed / 600.0)))


@dataclass
class ServerStats:
    ticks: int = 0
    changes: int = 0  # values written (each one a data change for subscribers)
    alarms: int = 0
    alarms_dropped: int = 0
    last_step_s: float = 0.0
    behind: int = 0  # ticks that started late because the previous one overran


class SimServer:
    """An asyncua server around a :class:`Fab`. ``start()``/``stop()``; ``step()`` runs one tick."""

    def __init__(
        self,
        fab: Fab,
        clock: SimClock,
        *,
        endpoint: str = "opc.tcp://0.0.0.0:4840/fabpm/",
        rate_hz: float | None = None,
        security: SecuritySettings | None = None,
        yield_every: int = 200,
    ) -> None:
        if not endpoint.startswith("opc.tcp://"):
            raise SimError(f"endpoint: expected opc.tcp://host:port/path, got {endpoint!r}")
        self.fab, self.clock, self.endpoint = fab, clock, endpoint
        self.rate_hz = rate_hz if rate_hz is not None else auto_rate(clock.speed)
        if not (0 < self.rate_hz <= 100):
            raise SimError(f"rate: must be in (0, 100] Hz, got {self.rate_hz}")
        self.security = security or SecuritySettings()
        self.yield_every = max(1, yield_every)
        self.stats = ServerStats()
        self.server: Server | None = None
        self.aspace: AddressSpace | None = None
        self._groups: dict[str, list[ToolNodes]] = {}
        self._last: dict[str, np.ndarray] = {}
        self._last_sp: dict[str, np.ndarray] = {}
        self._last_small: dict[int, tuple[list[float], str, str]] = {}
        self._alarms: deque[dict[str, Any]] = deque()
        self._event_gen: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._last_t = fab.t
        # A spike is a property of a sample: a repeated reading at the same simulated instant (the
        # loop ticking while the clock stands still, or between a test's advances) must be the
        # same reading, so the spike probability of an instant is kept until time moves on.
        self._spike_p = 0.0

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        started = time.perf_counter()
        server = Server(user_manager=PasswordUserManager(self.security.users, self.security.allow_anonymous))
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("fabpm fab simulator")
        await server.set_application_uri(SERVER_URI)
        sec = self.security
        server.set_security_policy([POLICIES[p] for p in sec.policies])
        tokens: list[type] = [ua.UserNameIdentityToken] if sec.users else []
        if sec.allow_anonymous:
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        if sec.needs_certificate and sec.cert_dir is not None:
            cert, key = ensure_certificate(sec.cert_dir, "server", SERVER_URI)
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
        if self._on_truth not in self.fab.listeners:
            self.fab.listeners.append(self._on_truth)
        idx = await server.register_namespace(NAMESPACE_URI)
        self.aspace = await aspace_mod.build(server, self.fab, idx, self._inject, self._maintain)
        self._groups = {}
        for tn in self.aspace.tools:
            self._groups.setdefault(tn.tool.type_name, []).append(tn)
        self._event_gen = await server.get_event_generator(self.aspace.event_type, ua.ObjectIds.Server)
        self._wrap_writes(server)
        self._last.clear()
        self._last_sp.clear()
        self._last_small.clear()
        try:
            await server.start()
        except OSError as exc:
            raise SimError(f"endpoint {self.endpoint}: cannot listen: {exc}") from exc
        self.server = server
        await self.step()
        self._task = asyncio.create_task(self._loop(), name="fabpm-sim-update")
        _logger.info(
            "simulator serving %d tools at %s (speed %g×, %g Hz) in %.1f s",
            len(self.fab.tools),
            self.endpoint,
            self.clock.speed,
            self.rate_hz,
            time.perf_counter() - started,
        )

    async def stop(self) -> None:
        if self._on_truth in self.fab.listeners:
            self.fab.listeners.remove(self._on_truth)
        self._alarms.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.server is not None:
            # asyncua's stop waits out the 1 s sleep of its clock task; cancelling it first makes
            # a stop (and so every restart in tests) a second faster.
            clock_task = getattr(self.server.iserver, "time_task", None)
            if clock_task is not None and not clock_task.done():
                clock_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await clock_task
                self.server.iserver.time_task = None
            await self.server.stop()
            self.server = None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate_hz
        deadline = loop.time()
        failures = 0
        while True:
            try:
                await self.step()
                failures = 0
            except Exception:  # keep serving; back off while a bug repeats
                failures += 1
                _logger.exception("update tick failed (%d in a row)", failures)
                await asyncio.sleep(min(30.0, period * 2**failures))
            deadline += period
            delay = deadline - loop.time()
            if delay < 0:
                self.stats.behind += 1
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ one tick
    async def step(self) -> int:
        """Advance the fab to the clock and publish what changed; returns the values written."""
        async with self._lock:
            t0 = time.perf_counter()
            t = self.clock.now()
            dt = max(t - self._last_t, 0.0)
            self._last_t = t
            if dt > 0:
                self._spike_p = min(1.0, self.fab.scenario.sensor_faults.spike_per_hour * dt / 3600.0)
            self.fab.advance_to(t)
            n = await self._publish()
            await self._fire_alarms()
            self.stats.ticks += 1
            self.stats.changes += n
            self.aspace_changes()
            self.stats.last_step_s = time.perf_counter() - t0
            return n

    def aspace_changes(self) -> None:
        """Expose the running count of value changes (FabSimulator/ValueChanges) to clients."""
        if self.aspace is not None:
            self.aspace.value_changes.value = SimDataValue(
                ua.Variant(self.stats.changes, ua.VariantType.Int64), _GOOD, None, datetime.now(UTC)
            )

    async def _publish(self) -> int:
        assert self.aspace is not None
        src = self.fab.time_at(self.fab.t)
        srv = datetime.now(UTC)
        spike_p = self._spike_p
        written = 0
        yield_every = self.yield_every

        async def put(attval: Any, dv: ua.DataValue) -> None:
            nonlocal written
            attval.value = dv
            if attval.datachange_callbacks:
                for handle, cb in list(attval.datachange_callbacks.items()):
                    await cb(handle, dv)
            written += 1
            if written % yield_every == 0:
                await asyncio.sleep(0)

        self.aspace.sim_time.value = ua.DataValue(
            ua.Variant(src, ua.VariantType.DateTime), SourceTimestamp=src, ServerTimestamp=srv
        )
        for type_name, nodes in self._groups.items():
            values = self.fab.readings(type_name, spike_p)
            last = self._last.get(type_name)
            if last is None:
                changed = np.ones(values.shape, dtype=bool)
            else:
                changed = ~((values == last) | (np.isnan(values) & np.isnan(last)))
            self._last[type_name] = values
            rows, cols = np.nonzero(changed)
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                v = float(values[r, c])
                if math.isnan(v):
                    dv = SimDataValue(ua.Variant(None, ua.VariantType.Null), _BAD_SENSOR, src, srv)
                else:
                    dv = SimDataValue(ua.Variant(v, ua.VariantType.Double), _GOOD, src, srv)
                await put(nodes[r].sensors[c], dv)
            sps = np.stack([tn.tool.setpoints for tn in nodes])
            last_sp = self._last_sp.get(type_name)
            self._last_sp[type_name] = sps.copy()
            for r, c in zip(
                *np.nonzero(sps != last_sp if last_sp is not None else np.ones(sps.shape, bool)), strict=True
            ):
                await put(
                    nodes[r].setpoints[c],
                    SimDataValue(ua.Variant(float(sps[r, c]), ua.VariantType.Double), _GOOD, src, srv),
                )
            for tn in nodes:
                tool = tn.tool
                small = (counter_values(tool), str(tool.e10), tool.recipe_name())
                old = self._last_small.get(tool.index)
                self._last_small[tool.index] = small
                for k, value in enumerate(small[0]):
                    if old is not None and (
                        old[0][k] == value or (math.isnan(value) and math.isnan(old[0][k]))
                    ):
                        continue
                    if math.isnan(value):
                        dv = SimDataValue(ua.Variant(None, ua.VariantType.Null), _NO_DATA_YET, src, srv)
                    else:
                        dv = SimDataValue(ua.Variant(float(value), ua.VariantType.Double), _GOOD, src, srv)
                    await put(tn.counters[k], dv)
                if old is None or old[1] != small[1]:
                    await put(
                        tn.state, SimDataValue(ua.Variant(small[1], ua.VariantType.String), _GOOD, src, srv)
                    )
                if old is None or old[2] != small[2]:
                    await put(
                        tn.recipe, SimDataValue(ua.Variant(small[2], ua.VariantType.String), _GOOD, src, srv)
                    )
        return written

    # ------------------------------------------------------------------ alarms
    def _on_truth(self, event: dict[str, Any]) -> None:
        if event["kind"] not in ALARM_KINDS:
            return
        if len(self._alarms) >= ALARM_QUEUE:
            self._alarms.popleft()
            self.stats.alarms_dropped += 1
            if self.stats.alarms_dropped == 1:
                _logger.warning("alarm queue full (%d): dropping the oldest", ALARM_QUEUE)
        self._alarms.append(event)

    async def _fire_alarms(self) -> None:
        if self._event_gen is None or self.aspace is None:
            self._alarms.clear()
            return
        while self._alarms:
            event = self._alarms.popleft()
            tool = self.fab.by_id[event["tool"]]
            kind = event["kind"]
            mode = str(event.get("mode", ""))
            ev = self._event_gen.event
            ev.ToolId, ev.Mode, ev.Kind, ev.Sudden = (
                tool.tool_id,
                mode,
                kind,
                bool(event.get("sudden", False)),
            )
            ev.Severity = ALARM_KINDS[kind]
            ev.SourceNode = ua.NodeId(f"Fab/{tool.area}/{tool.tool_id}", self.aspace.idx)
            ev.SourceName = tool.tool_id
            text = {
                "failure": f"{tool.tool_id} failed: {mode}{' (sudden)' if event.get('sudden') else ''}",
                "maintenance": f"{tool.tool_id} maintenance ({event.get('type', '')})",
                "back_up": f"{tool.tool_id} back up after {event.get('after', '')}",
            }[kind]
            await self._event_gen.trigger(time_attr=self.fab.time_at(event["t_s"]), message=text)
            self.stats.alarms += 1

    # ------------------------------------------------------------------ methods and writes
    def _tool_of(self, parent: ua.NodeId) -> ToolNodes | None:
        return self.aspace.by_node.get(parent) if self.aspace is not None else None

    async def _inject(self, parent: ua.NodeId, mode: ua.Variant | None = None) -> Any:
        tn = self._tool_of(parent)
        if tn is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdInvalid)
        name = "" if mode is None or mode.Value is None else str(mode.Value)
        async with self._lock:
            self.fab.advance_to(self.clock.now())
            try:
                tn.tool.inject_fault(name)
            except FaultError as exc:
                _logger.info("InjectFault refused: %s", exc)
                return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        await self.step()
        return []

    async def _maintain(self, parent: ua.NodeId) -> Any:
        tn = self._tool_of(parent)
        if tn is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdInvalid)
        async with self._lock:
            self.fab.advance_to(self.clock.now())
            tn.tool.perform_maintenance()
        await self.step()
        return []

    def _wrap_writes(self, server: Server) -> None:
        """Check setpoint writes against their range before asyncua applies them."""
        service = server.iserver.attribute_service
        original = service.write

        async def write(params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
            results: list[ua.StatusCode | None] = [None] * len(params.NodesToWrite)
            passed: list[int] = []
            applied: dict[int, tuple[ToolNodes, int, float]] = {}
            now = self.fab.time_at(self.clock.now())
            for i, wv in enumerate(params.NodesToWrite):
                hit = self.aspace.setpoint_nodes.get(wv.NodeId) if self.aspace is not None else None
                if hit is None or wv.AttributeId != ua.AttributeIds.Value:
                    passed.append(i)
                    continue
                tn, k = hit
                status, value = _check_setpoint(tn, k, wv.Value)
                if not status.is_good():
                    results[i] = status
                    continue
                wv.Value = SimDataValue(ua.Variant(value, ua.VariantType.Double), _GOOD, now)
                applied[i] = (tn, k, value)
                passed.append(i)
            if passed:
                sub = ua.WriteParameters(NodesToWrite=[params.NodesToWrite[i] for i in passed])
                statuses = await original(sub, user)
                # The lock keeps the change out of a publish in progress (one consistent tick).
                async with self._lock:
                    for i, status in zip(passed, statuses, strict=True):
                        results[i] = status
                        if i in applied and status.is_good():
                            tn, k, value = applied[i]
                            self.fab.advance_to(self.clock.now())
                            tn.tool.set_setpoint(tn.tool.tt.tool.setpoints[k].name, value, source="opcua")
            return [r if r is not None else ua.StatusCode(ua.StatusCodes.BadInternalError) for r in results]

        service.write = write  # type: ignore[method-assign]


def _check_setpoint(tn: ToolNodes, k: int, dv: ua.DataValue) -> tuple[ua.StatusCode, float]:
    spec = tn.tool.tt.tool.setpoints[k]
    raw = dv.Value.Value if dv.Value is not None else None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return ua.StatusCode(ua.StatusCodes.BadTypeMismatch), 0.0
    value = float(raw)
    if math.isnan(value) or not (spec.lo <= value <= spec.hi):
        return ua.StatusCode(ua.StatusCodes.BadOutOfRange), 0.0
    return _GOOD, value
