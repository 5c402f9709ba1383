"""Tag sources: the small interface the daemon reads through, and its asyncua adapter.

:class:`TagSource` is what the pipeline depends on (an in-memory fake implements it in tests).
:class:`AsyncuaSource` is the OPC UA adapter:

- Tags are resolved by NodeId (``ns=2;s=…``) or by browse path (``Objects/Fab/…``, segments
  without a ``n:`` prefix use the configured namespace URI), in batched TranslateBrowsePaths calls.
- Subscriptions with sampling interval, queue size and an absolute deadband, split into several
  subscriptions of at most ``max_items_per_subscription`` items, created in chunks (a 12,000-item
  subscription lost its connection under load). Notifications are decoded straight from the
  publish response, not through one task per value (the library's handler path), which costs
  several times more CPU at 10,000 values per second.
- Polling (chunked Read) when configured, and as the fallback when subscribing fails.
- Every value carries its SourceTimestamp; a Bad status code is delivered as ``good=False`` with
  value ``None``: missing, never a made-up number. Values without a SourceTimestamp use the
  server timestamp.
- Reconnect: any failure ends the session; the loop backs off exponentially
  (``backoff_initial_s`` doubling to ``backoff_max_s``, reset after a healthy session), connects a
  fresh client, resolves again and re-creates the subscriptions. A subscription from which no
  publish response came for ``silence_timeout_s`` while the link looked healthy counts as a
  failure (watchdog). Keep-alives count as responses: the server is asked for one after at most
  a third of ``silence_timeout_s`` without data, so tags that sit still (a frozen process, a
  deadband) do not look dead. When polling, a successful read is the sign of life.
  Link state changes are logged once each way.
- Cancellation always finishes, within ``DISCONNECT_S`` of the cancel at worst: nothing
  here uses ``asyncio.wait_for``, which on Python 3.11 returns the inner result and drops the
  cancel when both happen in the same loop step; asyncua's connect does use it, so it runs in a
  task of its own (:func:`connect_client`), and the client is closed by :func:`close_client`,
  which bounds asyncua's disconnect (that swallows a cancel while it awaits its own tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal, Protocol

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import Subscription
from asyncua.crypto import security_policies

from edge.config import OpcUaConfig, ToolConfig
from edge.errors import SourceError
from shared.equipment import tool_type

_logger = logging.getLogger(__name__)

Group = Literal["sensor", "setpoint", "counter", "state", "recipe"]
# (tag index, value or None when Bad, source timestamp in epoch seconds, good)
Value = tuple[int, Any, float, bool]
ValuesSink = Callable[[list[Value]], None]
EventSink = Callable[["SourceEvent"], None]
_EVENT_HANDLE = 1 << 30
DISCONNECT_S = 2.0  # how long a polite disconnect (CloseSession) may take before the socket is cut
_abandoned: set[asyncio.Task[None]] = set()  # connects and disconnects given up on, until they end


@dataclass(frozen=True, slots=True)
class TagRef:
    """One tag the edge reads: which tool, which role, which name, where on the server."""

    tool_id: str
    group: Group
    name: str
    address: str  # NodeId string or browse path


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """An alarm or event from the server (OPC UA event notification)."""

    source: str
    message: str
    severity: int
    ts: float
    fields: dict[str, Any]


class TagSource(Protocol):
    """What the daemon needs from a source of tag values."""

    @property
    def tags(self) -> Sequence[TagRef]: ...

    @property
    def connected(self) -> bool: ...

    async def run(self, on_values: ValuesSink, on_event: EventSink) -> None:
        """Deliver values and events until cancelled; reconnects by itself. Each batch is in
        source-timestamp order (the windows close a grid row on the first later value)."""

    async def write(self, index: int, value: float) -> float:
        """Write a numeric tag and return the value read back."""

    async def eu_range(self, index: int) -> tuple[float, float] | None:
        """The tag's EURange (low, high) when the server has one."""


def tag_table(tools: Sequence[ToolConfig]) -> list[TagRef]:
    """Every tag of every configured tool: the default layout under ``path`` plus overrides."""
    refs: list[TagRef] = []
    for tool in tools:
        ttype = tool_type(tool.type)
        layout: list[tuple[Group, str, str]] = [("sensor", n, f"Sensors/{n}") for n in ttype.sensor_names]
        layout += [("setpoint", n, f"Setpoints/{n}") for n in ttype.setpoint_names]
        layout += [("counter", n, f"Counters/{n}") for n in ("last_lot_yield", "last_lot_energy_kwh")]
        layout += [("state", "State", "State"), ("recipe", "Recipe", "Recipe")]
        for group, name, rel in layout:
            address = tool.tags.get(name)
            if address is None and tool.path is not None:
                address = f"{tool.path.rstrip('/')}/{rel}"
            if address is not None:
                refs.append(TagRef(tool.id, group, name, address))
    return refs


def _epoch(dv: ua.DataValue) -> float:
    stamp = dv.SourceTimestamp or dv.ServerTimestamp
    return stamp.timestamp() if stamp is not None else time.time()


def decode(index: int, dv: ua.DataValue) -> Value:
    """A DataValue as (index, value, source ts, good); Bad status → (index, None, ts, False)."""
    code = dv.StatusCode
    if code is not None and code.value & 0x80000000:
        return (index, None, _epoch(dv), False)
    variant = dv.Value
    return (index, variant.Value if variant is not None else None, _epoch(dv), True)


def data_changes(notif: ua.DataChangeNotification) -> list[Value]:
    """One notification's values in source-timestamp order (stable: same-instant values keep the
    server's order).

    A server sends each monitored item's queued values together: with several samples per item
    in one publish (a burst, a publishing interval longer than the sampling), item A's later
    value comes before item B's earlier one. The windows close a grid row on the first value
    stamped at or after it, so in the server's order the row would close without B's value."""
    return in_source_order([decode(item.ClientHandle - 1, item.Value) for item in notif.MonitoredItems])


def in_source_order(batch: list[Value]) -> list[Value]:
    """The batch sorted by source timestamp, in place and stable."""
    batch.sort(key=itemgetter(2))
    return batch


class _FastSubscription(Subscription):
    """Decodes data changes straight from the publish response into one batch per publish."""

    def __init__(self, session: Any, params: ua.CreateSubscriptionParameters, owner: AsyncuaSource) -> None:
        super().__init__(session, params, handler=self)  # type: ignore[arg-type]
        self._owner = owner

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        # Any publish response, data or keep-alive, shows the subscription alive (the watchdog).
        self.last_publish_at = time.monotonic()
        data = publish_result.NotificationMessage.NotificationData
        if not data:
            self._owner.keepalives += 1
            return
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                self._owner._deliver(data_changes(notif))
            elif isinstance(notif, ua.EventNotificationList):
                for ev in self._explode_events(notif):
                    self._owner._deliver_event(ev.event)
            elif isinstance(notif, ua.StatusChangeNotification):
                _logger.warning("OPC UA subscription status changed: %s", notif.Status)


class AsyncuaSource:
    """The OPC UA adapter of :class:`TagSource`."""

    def __init__(self, cfg: OpcUaConfig, tags: Sequence[TagRef]) -> None:
        self.cfg = cfg
        self.tags = list(tags)
        self._client: Client | None = None
        self._nodes: list[ua.NodeId | None] = []
        self._on_values: ValuesSink | None = None
        self._on_event: EventSink | None = None
        self._up = False
        self._last_data = 0.0
        self.polling = cfg.mode == "poll"
        self.values_received = 0
        self.sink_errors = 0
        self.sessions = 0
        self.attempts = 0  # connects tried
        self.watchdog_trips = 0  # sessions ended by the silence watchdog
        self.keepalives = 0  # publish responses without data
        self.keepalive_s = 0.0  # the longest keep-alive period the server granted (0: polling)
        self._silence_s = cfg.silence_timeout_s
        self.unresolved: list[str] = []

    @property
    def connected(self) -> bool:
        return self._up

    # -- the supervised loop ------------------------------------------------------------------

    async def run(self, on_values: ValuesSink, on_event: EventSink) -> None:
        self._on_values, self._on_event = on_values, on_event
        delay = self.cfg.backoff_initial_s
        while True:
            started = time.monotonic()
            sessions = self.sessions
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.sessions > sessions:  # the link had come up in this session
                    _logger.warning("OPC UA link to %s lost: %s", self.cfg.endpoint, exc)
                elif self.sessions == 0 and delay == self.cfg.backoff_initial_s:
                    _logger.warning("OPC UA server %s not reachable yet: %s", self.cfg.endpoint, exc)
                else:
                    _logger.debug("OPC UA connect failed", exc_info=True)
            if time.monotonic() - started > 4 * self.cfg.backoff_max_s:
                delay = self.cfg.backoff_initial_s  # a long healthy session resets the backoff
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.backoff_max_s)

    async def _connect(self) -> Client:
        cfg = self.cfg
        self.attempts += 1
        client = Client(
            cfg.endpoint, timeout=cfg.request_timeout_s, watchdog_intervall=cfg.watchdog_interval_s
        )
        client.session_timeout = int(max(60.0, 6 * cfg.watchdog_interval_s) * 1000)
        if cfg.security_policy != "None":
            policy = getattr(security_policies, f"SecurityPolicy{cfg.security_policy}")
            mode = getattr(ua.MessageSecurityMode, cfg.security_mode)
            await client.set_security(
                policy,
                str(cfg.certificate),
                str(cfg.private_key),
                server_certificate=str(cfg.server_certificate) if cfg.server_certificate else None,
                mode=mode,
            )
        if cfg.username is not None:
            client.set_user(cfg.username)
            client.set_password(cfg.password.get_secret_value() if cfg.password else "")
        try:
            await connect_client(client, cfg.request_timeout_s)
        except (OSError, TimeoutError, ua.UaError) as exc:
            raise SourceError(f"cannot connect to {cfg.endpoint}: {exc!r}") from exc
        return client

    async def _session(self) -> None:
        client = await self._connect()
        subs: list[Subscription] = []
        try:
            self._nodes = await self._resolve(client)
            self._client = client
            if not self.polling:
                try:
                    subs = await self._subscribe(client)
                except (ua.UaError, TimeoutError) as exc:
                    _logger.warning(
                        "subscribing failed (%s); polling every %.1f s", exc, self.cfg.poll_interval_s
                    )
                    self.polling = True
            self.sessions += 1
            self._up = True
            up_at = self._last_data = time.monotonic()
            _logger.info(
                "OPC UA link to %s up: %d tags (%s)",
                self.cfg.endpoint,
                sum(n is not None for n in self._nodes),
                "polling" if self.polling else f"{len(subs)} subscriptions",
            )
            if self.polling:
                self._silence_s = self.cfg.silence_timeout_s
            tick = self.cfg.poll_interval_s if self.polling else min(1.0, self.cfg.silence_timeout_s / 4)
            while True:
                if self.polling:
                    await self._poll_once(client)
                await asyncio.sleep(tick)
                if client.state is not UaClientState.CONNECTED:
                    raise SourceError(f"connection state is {client.state.value}")
                silent = self._silent_for(subs, up_at)
                if silent > self._silence_s:
                    self.watchdog_trips += 1
                    what = "data" if self.polling or not subs else "publish response"
                    raise SourceError(f"no {what} for {silent:.0f} s (watchdog)")
        finally:
            self._up = False  # first: writes and health see the link down while it is closed
            self._client = None
            await close_client(client)

    def _silent_for(self, subs: Sequence[Subscription], up_at: float) -> float:
        """Seconds since the quietest subscription last answered a publish (or since the last
        successful read when polling)."""
        now = time.monotonic()
        if self.polling or not subs:
            return now - self._last_data
        return max(now - (sub.last_publish_at or up_at) for sub in subs)

    # -- resolution ----------------------------------------------------------------------------

    async def _resolve(self, client: Client) -> list[ua.NodeId | None]:
        ns = await client.get_namespace_index(self.cfg.namespace_uri)
        out: list[ua.NodeId | None] = [None] * len(self.tags)
        paths: list[tuple[int, ua.RelativePath]] = []
        for i, ref in enumerate(self.tags):
            if _looks_like_nodeid(ref.address):
                out[i] = ua.NodeId.from_string(ref.address)
            else:
                paths.append((i, _relative_path(ref.address, ns)))
        root = ua.NodeId(ua.ObjectIds.RootFolder)  # type: ignore[arg-type]
        unresolved: list[str] = []
        chunk = self.cfg.read_chunk
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            results = await client.translate_browsepaths(root, [p for _, p in part])
            for (i, _), res in zip(part, results, strict=True):
                if res.StatusCode.is_good() and res.Targets:
                    target = res.Targets[0].TargetId
                    out[i] = ua.NodeId(target.Identifier, target.NamespaceIndex)  # type: ignore
                else:
                    unresolved.append(self.tags[i].address)
        if unresolved and unresolved != self.unresolved:
            _logger.warning("%d tags do not resolve, e.g. %s", len(unresolved), unresolved[:3])
        self.unresolved = unresolved
        if all(n is None for n in out) and self.tags:
            raise SourceError("no configured tag resolves on this server")
        return out

    # -- subscriptions and polling -------------------------------------------------------------

    async def _subscribe(self, client: Client) -> list[Subscription]:
        cfg = self.cfg
        items = [(i, n) for i, n in enumerate(self._nodes) if n is not None]
        subs: list[Subscription] = []
        mfilter: ua.DataChangeFilter | None = None
        keepalive = keepalive_count(cfg, client.get_keepalive_count(cfg.publishing_interval_ms))
        self.keepalive_s = 0.0
        for start in range(0, len(items), cfg.max_items_per_subscription):
            group = items[start : start + cfg.max_items_per_subscription]
            params = ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=cfg.publishing_interval_ms,
                RequestedLifetimeCount=max(10000, 3 * keepalive),  # the spec wants ≥ 3 keep-alives
                RequestedMaxKeepAliveCount=keepalive,
                MaxNotificationsPerPublish=0,
                PublishingEnabled=True,
                Priority=0,
            )
            sub = _FastSubscription(client.uaclient.session, params, self)
            granted = await sub.init()
            subs.append(sub)
            period = granted.RevisedPublishingInterval * granted.RevisedMaxKeepAliveCount / 1000
            self.keepalive_s = max(self.keepalive_s, period)
            for cstart in range(0, len(group), cfg.create_chunk):
                requests = []
                for i, node in group[cstart : cstart + cfg.create_chunk]:
                    numeric = self.tags[i].group in ("sensor", "setpoint", "counter")
                    if cfg.deadband_abs > 0 and numeric:
                        mfilter = ua.DataChangeFilter(
                            Trigger=ua.DataChangeTrigger.StatusValue,
                            DeadbandType=1,
                            DeadbandValue=cfg.deadband_abs,
                        )
                    else:
                        mfilter = None
                    requests.append(
                        _item_request(node, i + 1, cfg.sampling_interval_ms, cfg.queue_size, mfilter)
                    )
                results = await sub.create_monitored_items(requests)
                bad = [r for r in results if isinstance(r, ua.StatusCode)]
                if bad:
                    _logger.warning("%d monitored items refused, e.g. %s", len(bad), bad[0])
        self._silence_s = max(cfg.silence_timeout_s, 3 * self.keepalive_s)
        if self._silence_s > cfg.silence_timeout_s:
            # The server revised the keep-alive upwards: a tighter watchdog would trip on a healthy
            # but quiet subscription.
            _logger.warning(
                "the server keeps subscriptions alive only every %.1f s; silence watchdog at %.0f s",
                self.keepalive_s,
                self._silence_s,
            )
        if cfg.subscribe_events and subs:
            # The library numbers its own items from a counter; keep them clear of the tag handles.
            subs[0]._client_handle = _EVENT_HANDLE
            with contextlib.suppress(ua.UaError):
                await subs[0].subscribe_events(ua.ObjectIds.Server)
        return subs

    async def _poll_once(self, client: Client) -> None:
        pairs = [(i, n) for i, n in enumerate(self._nodes) if n is not None]
        chunk = self.cfg.read_chunk
        batch: list[Value] = []
        for start in range(0, len(pairs), chunk):
            part = pairs[start : start + chunk]
            dvs = await client.uaclient.read_attributes([n for _, n in part], ua.AttributeIds.Value)
            batch += [decode(i, dv) for (i, _), dv in zip(part, dvs, strict=True)]
        # One batch per poll, in source-time order, as a publish is (see data_changes): a tag
        # stamped after the next grid point must not close the row before an earlier one is in.
        self._deliver(in_source_order(batch))

    # -- delivery ------------------------------------------------------------------------------

    def _deliver(self, batch: list[Value]) -> None:
        self._last_data = time.monotonic()
        self.values_received += len(batch)
        if self._on_values is not None:
            try:
                self._on_values(batch)
            except Exception:
                # A bug downstream must not kill the library's publish loop (and with it every
                # later value): count it, log the first one with its traceback.
                self.sink_errors += 1
                if self.sink_errors == 1:
                    _logger.exception(
                        "processing a batch of %d values failed; later failures are counted", len(batch)
                    )

    def _deliver_event(self, event: Any) -> None:
        if self._on_event is None:
            return
        message = getattr(event, "Message", None)
        text = message.Text if isinstance(message, ua.LocalizedText) else str(message or "")
        stamp = getattr(event, "Time", None)
        fields = event.get_event_props_as_fields_dict()
        self._on_event(
            SourceEvent(
                source=str(getattr(event, "SourceName", "") or ""),
                message=text or "",
                severity=int(getattr(event, "Severity", 0) or 0),
                ts=stamp.timestamp() if stamp is not None else time.time(),
                fields={k: str(v.Value) for k, v in fields.items()},
            )
        )

    # -- writes --------------------------------------------------------------------------------

    def _node(self, index: int) -> tuple[Client, ua.NodeId]:
        client = self._client
        if client is None or not self._up:
            raise SourceError("OPC UA link is down")
        node = self._nodes[index] if index < len(self._nodes) else None
        if node is None:
            raise SourceError(f"tag {self.tags[index].address} is not resolved")
        return client, node

    async def write(self, index: int, value: float) -> float:
        client, node = self._node(index)
        dv = ua.DataValue(ua.Variant(float(value), ua.VariantType.Double))
        try:
            codes = await client.uaclient.write_attributes([node], [dv], ua.AttributeIds.Value)
            codes[0].check()
            back = (await client.uaclient.read_attributes([node], ua.AttributeIds.Value))[0]
        except (ua.UaError, OSError, TimeoutError) as exc:
            raise SourceError(f"write of {self.tags[index].address} failed: {exc}") from exc
        _, got, _, good = decode(index, back)
        if not good or got is None:
            raise SourceError(f"read-back of {self.tags[index].address} is Bad")
        return float(got)

    async def eu_range(self, index: int) -> tuple[float, float] | None:
        client, node = self._node(index)
        try:
            prop = await client.get_node(node).get_child("0:EURange")
            rng = await prop.read_value()
        except (ua.UaError, OSError, TimeoutError):
            return None
        return (float(rng.Low), float(rng.High))


def keepalive_count(cfg: OpcUaConfig, session_count: int) -> int:
    """Publishing intervals without data after which the server sends a keep-alive.

    At most a third of ``silence_timeout_s`` (so the watchdog sees at least two keep-alives
    before it trips) and at most ``session_count`` (the library's count, 75% of the session
    timeout, which keeps the session alive); at least 1.
    """
    per_silence = int(cfg.silence_timeout_s * 1000 / 3 / cfg.publishing_interval_ms)
    return max(1, min(per_silence, session_count or per_silence))


async def connect_client(client: Client, timeout_s: float) -> None:
    """Connect ``client`` (socket, Hello, channel, session) within ``timeout_s``.

    Raises TimeoutError at the deadline, what the connect raised, or the caller's cancel the
    moment it comes, after closing the client (:func:`close_client`): no socket stays open.
    asyncua opens the socket under ``asyncio.wait_for``, which on Python 3.11 drops a cancel that
    arrives in the step the socket opens; the connect then runs on into a Hello that a hung server
    never answers, for the whole timeout (a stopping edge hung so in CI). So the connect runs in a
    task of its own that :func:`asyncio.wait` watches, which never loses a cancel; a connect still
    running when the caller gives up is cancelled, its socket cut (which fails its pending
    requests at once) and the task kept referenced until it ends.
    """
    task = asyncio.get_running_loop().create_task(client.connect(), name="opcua-connect")
    task.add_done_callback(_retrieve)
    try:
        await asyncio.wait({task}, timeout=timeout_s)
        if not task.done():
            raise TimeoutError(f"no OPC UA session within {timeout_s:g} s")
        if task.cancelled():  # not by this caller (its cancel ends the wait above): a failed connect
            raise ConnectionError("the OPC UA connect was cancelled")
        task.result()
    except BaseException:
        if not task.done():
            _abandon(task)
            with contextlib.suppress(Exception):
                client.disconnect_socket()
        await close_client(client)
        raise


async def close_client(client: Client, timeout_s: float = DISCONNECT_S) -> None:
    """Disconnect ``client`` politely if that takes under ``timeout_s``, else cut its socket.

    Returns within ``timeout_s`` whatever the server does, and re-raises a cancel of the caller
    after that. asyncua's ``disconnect()`` cannot be bounded from outside: it awaits its
    supervisor and renew tasks and swallows a CancelledError that arrives meanwhile
    (``Client._cancel_task``), then sends CloseSession, which on a hung server waits out the
    request timeout; ``asyncio.wait_for`` around it then waits for it after its own timeout, and
    on 3.11 can return its result instead of the cancel. So it runs in a task of its own that
    :func:`asyncio.wait` watches without ever cancelling or swallowing; a disconnect still running
    at the deadline is cancelled and kept referenced until it ends, and the transport is closed
    at once. A cancel of the caller does not cut the polite disconnect short (it is bounded
    anyway), a second one does.
    """
    loop = asyncio.get_running_loop()
    task = loop.create_task(client.disconnect(), name="opcua-disconnect")
    deadline = loop.time() + timeout_s
    cancelled: asyncio.CancelledError | None = None
    while not task.done() and loop.time() < deadline:
        try:
            await asyncio.wait({task}, timeout=deadline - loop.time())
        except asyncio.CancelledError as exc:
            if cancelled is not None:
                break
            cancelled = exc
    if task.done():
        _retrieve(task)
    else:
        _logger.debug("OPC UA disconnect did not finish in %.1f s; closing the socket", timeout_s)
        _abandon(task)
        task.add_done_callback(_retrieve)
        with contextlib.suppress(Exception):
            client.disconnect_socket()
    if cancelled is not None:
        raise cancelled


def _abandon(task: asyncio.Task[None]) -> None:
    """Cancel a client task given up on, and keep it referenced until it ends."""
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Collect the outcome of a client task, so a failure is logged here and not as 'never retrieved'."""
    if not task.cancelled() and task.exception() is not None:
        _logger.debug("%s failed: %r", task.get_name(), task.exception())


def _looks_like_nodeid(address: str) -> bool:
    return address.startswith(("ns=", "i=", "s=", "g=", "b=", "nsu="))


def _relative_path(address: str, ns: int) -> ua.RelativePath:
    """``Objects/Fab/a/b`` → hierarchical RelativePath from the root; ``Objects`` is namespace 0."""
    parts = [p for p in address.strip("/").split("/") if p]
    text = ""
    for k, part in enumerate(parts):
        if ":" in part and part.split(":", 1)[0].isdigit():
            text += "/" + part
        elif k == 0 and part in ("Objects", "Types", "Views"):
            text += f"/0:{part}"
        else:
            text += f"/{ns}:{part}"
    try:
        return ua.RelativePath.from_string(text)
    except ValueError as exc:
        raise SourceError(f"browse path {address!r} does not parse: {exc}") from exc


def _item_request(
    node: ua.NodeId, handle: int, sampling_ms: float, queue: int, mfilter: ua.DataChangeFilter | None
) -> ua.MonitoredItemCreateRequest:
    params = ua.MonitoringParameters(
        ClientHandle=handle, SamplingInterval=sampling_ms, QueueSize=queue, DiscardOldest=True
    )
    if mfilter is not None:
        params.Filter = mfilter
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=params,
    )
