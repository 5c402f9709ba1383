"""The MQTT link (paho-mqtt 2.x, MQTT 5): drains the outbox in priority order and receives commands.

One :class:`MqttRelay` per daemon. paho runs its network loop in its own thread and reconnects by
itself with a bounded exponential delay (``reconnect_min_s`` … ``reconnect_max_s``); everything
else happens on the asyncio loop:

- :meth:`MqttRelay.run` takes up to ``publish_batch`` rows from the outbox (never more than
  ``max_inflight`` unacknowledged), publishes them, and deletes a row only when paho reports its
  PUBACK (QoS 1) or its write to the socket (QoS 0). Messages in flight when the link drops are
  re-sent by paho after the reconnect; messages in flight when the process dies are re-sent from
  the outbox on restart (the cloud de-duplicates by ``msg_id``).
- A PUBACK carrying an error reason: "quota exceeded" (0x97) puts the row back for a later try;
  any other refusal (not authorized, bad topic, bad payload) would fail forever, so the row is
  set aside (deleted) and counted in ``rejected``, logged once per reason.
- The session is persistent (clean_start false, ``session_expiry_s``), so verdicts, approvals
  and model announcements sent while the edge was away are delivered when it comes back.
- The status topic carries the retained online status; the last will (retained) says offline.
- Receipts from the cloud (``.../receipt``) let the outbox forget what the cloud stored; with
  ``mqtt.receipts`` the outbox waits for them (see :mod:`edge.outbox`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttConfig
from edge.decisions import message
from edge.errors import OutboxError, PublishError
from edge.outbox import Outbox
from shared.errors import SchemaError
from shared.messages import Receipt, Status, parse_payload
from shared.topics import Kind, topic

_logger = logging.getLogger(__name__)

QUOTA_EXCEEDED = 0x97
# CONNACK reasons that mean the login itself is wrong: bad user name or password, not
# authorized, bad authentication method.
AUTH_REFUSALS = (0x86, 0x87, 0x8C)
SESSION_EXPIRY_S = 7 * 86400
SUBSCRIBED = (Kind.VERDICT, Kind.MODEL, Kind.TUNING, Kind.RECEIPT)

MessageCallback = Callable[[Kind, bytes], None]


class MqttRelay:
    """Publishes the outbox over MQTT and hands incoming command payloads to ``on_message``."""

    def __init__(
        self,
        cfg: MqttConfig,
        site: str,
        edge_id: str,
        outbox: Outbox,
        on_message: MessageCallback | None = None,
    ) -> None:
        self.cfg = cfg
        self.site = site
        self.edge_id = edge_id
        self.outbox = outbox
        self._on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acks: collections.deque[tuple[int, int]] = collections.deque()  # (mid, reason), paho thread
        self._inflight: dict[int, int] = {}  # mid -> outbox row id
        self._inflight_rows: set[int] = set()
        self._retry_rows: set[int] = set()
        self._wake = asyncio.Event()
        self._connected = threading.Event()
        self._rejected_reasons: set[int] = set()
        self.published = 0
        self.acked = 0
        self.confirmed = 0  # outbox rows a cloud receipt let go
        self.rejected = 0
        self.connects = 0
        self.refusals = 0  # CONNACKs with a failure reason
        self.refused: str | None = None  # the broker's reason while it refuses us, else None
        self._status: Status | None = None
        self._status_topic = topic(site, edge_id, Kind.STATUS)
        self._own_topics = {topic(site, edge_id, k): k for k in SUBSCRIBED}
        self.client = self._make_client()

    # -- set-up -------------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"fabpm-edge-{self.site}-{self.edge_id}",
            protocol=paho.MQTTv5,
        )
        if cfg.username is not None:
            secret = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, secret)
        if cfg.tls:
            try:
                client.tls_set(
                    ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                    certfile=str(cfg.cert_file) if cfg.cert_file else None,
                    keyfile=str(cfg.key_file) if cfg.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise PublishError(f"mqtt TLS set-up failed: {exc}") from exc
        will = message(Status, edge_id=self.edge_id, site=self.site, state="offline")
        client.will_set(self._status_topic, will.to_bytes(), qos=1, retain=True)
        client.max_inflight_messages_set(cfg.max_inflight)
        # paho queues the messages above the in-flight window itself; bound it too.
        client.max_queued_messages_set(cfg.max_inflight * 4)
        client.reconnect_delay_set(max(1, round(cfg.reconnect_min_s)), max(1, round(cfg.reconnect_max_s)))
        client.connect_timeout = cfg.connect_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_paho_message
        return client

    def start(self) -> None:
        """Connect in the background (paho's thread); returns at once."""
        self._loop = asyncio.get_running_loop()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(
            self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, clean_start=False, properties=props
        )
        self.client.loop_start()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline (retained), give in-flight messages ``timeout_s`` to be acknowledged, disconnect."""
        if self._connected.is_set():
            offline = message(Status, edge_id=self.edge_id, site=self.site, state="offline")
            info = self.client.publish(self._status_topic, offline.to_bytes(), qos=1, retain=True)
            deadline = asyncio.get_running_loop().time() + timeout_s
            while not info.is_published() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- paho callbacks (paho's thread) -------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            # paho retries with its bounded back-off; the refusal is state: logged when it starts
            # or changes, counted every time, shown in ``refused`` until a connect succeeds.
            self.refusals += 1
            text = str(reason)
            if text != self.refused:
                self.refused = text
                hint = ""
                if reason.value in AUTH_REFUSALS and self.cfg.username:
                    hint = f" (login as {self.cfg.username!r}: check mqtt.username and mqtt.password)"
                elif reason.value in AUTH_REFUSALS:
                    hint = " (the broker wants a login: mqtt.username and mqtt.password, or a certificate)"
                _logger.warning(
                    "mqtt broker %s:%d refused the connection: %s%s; retrying with back-off up to %.0f s",
                    self.cfg.host,
                    self.cfg.port,
                    text,
                    hint,
                    self.cfg.reconnect_max_s,
                )
            return
        self.connects += 1
        self.refused = None
        _logger.info("mqtt connected to %s:%d", self.cfg.host, self.cfg.port)
        for name in self._own_topics:
            client.subscribe(name, qos=1)
        if self._status is not None:
            client.publish(self._status_topic, self._status.to_bytes(), qos=1, retain=True)
        self._connected.set()
        self._poke()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self._connected.is_set():
            _logger.warning(
                "mqtt link to %s:%d lost (%s); paho reconnects", self.cfg.host, self.cfg.port, reason
            )
        self._connected.clear()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acks.append((mid, int(reason.value) if reason is not None else 0))
        self._poke()

    def _on_paho_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        kind = self._own_topics.get(msg.topic)
        if kind is None or self._loop is None:
            return
        if kind is Kind.RECEIPT:
            self._loop.call_soon_threadsafe(self._on_receipt, bytes(msg.payload))
        elif self._on_message is not None:
            self._loop.call_soon_threadsafe(self._on_message, kind, bytes(msg.payload))

    def _on_receipt(self, payload: bytes) -> None:
        """The cloud stored these messages: their outbox rows go."""
        try:
            receipt = parse_payload(payload, Kind.RECEIPT)
        except SchemaError as exc:
            _logger.warning("receipt set aside: %s", exc)
            return
        assert isinstance(receipt, Receipt)
        try:
            self.confirmed += self.outbox.confirm(receipt.msg_ids)
        except OutboxError as exc:  # the rows stay and are sent again: the cloud de-duplicates
            _logger.warning("%s", exc)

    def _poke(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- asyncio side -------------------------------------------------------------------------

    def publish_status(self, status: Status) -> None:
        """Publish the retained status now if connected, and again after every reconnect."""
        self._status = status
        if self._connected.is_set():
            self.client.publish(self._status_topic, status.to_bytes(), qos=1, retain=True)

    def publish_direct(self, kind: Kind, payload: bytes, retain: bool = False) -> None:
        """Publish without the outbox (QoS 0, lost when offline): only for what may be lost."""
        if self._connected.is_set():
            self.client.publish(topic(self.site, self.edge_id, kind), payload, qos=0, retain=retain)

    async def run(self) -> None:
        """Drain the outbox forever. Cancel to stop."""
        while True:
            self._wake.clear()
            self._drain_acks()
            if self._connected.is_set():
                self._publish_some()
            # asyncio.timeout, not wait_for: on 3.11 a wake() and a cancel in the same loop step
            # made wait_for return normally and drop the cancel, so the daemon never stopped.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._wake.wait()

    def wake(self) -> None:
        """Call after putting rows into the outbox so they leave without waiting for the tick."""
        self._wake.set()

    def _publish_some(self) -> None:
        room = self.cfg.max_inflight - len(self._inflight)
        if room <= 0:
            return
        rows = self.outbox.pending(min(room, self.cfg.publish_batch), exclude=self._inflight_rows)
        for row in rows:
            info = self.client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # Not connected any more, or paho's queue is full: try again on the next tick.
                break
            self._inflight[info.mid] = row.id
            self._inflight_rows.add(row.id)
            self.published += 1
        if rows:
            self._drain_acks()

    def _drain_acks(self) -> None:
        done: list[int] = []
        while self._acks:
            mid, reason = self._acks.popleft()
            row_id = self._inflight.pop(mid, None)
            if row_id is None:
                continue
            self._inflight_rows.discard(row_id)
            if reason < 0x80:
                done.append(row_id)
            elif reason == QUOTA_EXCEEDED:
                continue  # stays in the outbox, published again on a later tick
            else:
                self.rejected += 1
                if reason not in self._rejected_reasons:
                    self._rejected_reasons.add(reason)
                    _logger.error(
                        "broker refused a message with reason 0x%02x; setting such messages aside", reason
                    )
                done.append(row_id)
        if done:
            self.outbox.ack(done)
            self.acked += len(done)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def flushed(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty and nothing is in flight (tests, shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            self._drain_acks()
            if len(self.outbox) == 0 and not self._inflight:
                return True
            await asyncio.sleep(0.05)
        return False
