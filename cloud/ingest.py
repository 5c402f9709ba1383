"""Ingest: one MQTT message in, validated, de-duplicated and stored; never an exception out.

:meth:`Ingestor.handle` is the MQTT handler. For each message it

1. parses the topic and validates the payload against its schema (``shared.messages``), and checks
   that the payload's ``edge_id``/``site`` are the topic's (an edge may speak only for itself);
   anything wrong is counted, logged and set aside in ``dead_letters`` with the reason;
2. stores it and its ``msg_id`` in one transaction (:meth:`Repo.store_once`), so a redelivered
   message is stored once; failures and maintenance label the cases before them (:mod:`labels`);
3. hands a new hard case to ``on_case`` (the verdict batcher) after the commit.

A database outage returns False: the message stays unacknowledged and the broker redelivers it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from cloud.config import SensorsConfig
from cloud.errors import StorageError
from cloud.labels import label_from_event, label_late_case
from cloud.metrics import CloudMetrics
from cloud.sensor_health import DEFAULT_LIMITS, sensor_issues
from cloud.sensor_health import track as track_sensor_issues
from cloud.storage.models import AlertRow, Case, DeadLetter, Edge, EventRow, RiskPoint, Tool, TuningRow
from cloud.storage.repo import Duplicate, Repo
from shared.errors import SchemaError
from shared.messages import (
    Alert,
    Event,
    HardCase,
    Message,
    Status,
    Telemetry,
    Tuning,
    decode_array,
    parse_payload,
)
from shared.topics import CONFIRMED, EDGE_TO_CLOUD, parse_topic

_logger = logging.getLogger(__name__)
DEAD_PAYLOAD_KEEP = 64 * 1024  # bytes of a rejected payload kept for inspection
TOUCH_INTERVAL_S = 1.0  # last-seen times of edges and tools are refreshed at most this often per worker
MAX_WINDOW_VALUES = 1_000_000


class Ingestor:
    """Validates and stores edge messages; ``on_case`` gets each new hard case (after commit)."""

    def __init__(
        self,
        repo: Repo,
        metrics: CloudMetrics,
        horizon_h: float = 72.0,
        on_case: Callable[[Case], None] | None = None,
        clock: Callable[[], float] = time.time,
        on_stored: Callable[[Message], None] | None = None,
        sensor_limits: SensorsConfig = DEFAULT_LIMITS,
    ) -> None:
        """``on_stored``: called with each message of a kind the cloud confirms (alert, event,
        hard case, tuning) once it is stored, or found stored before (a redelivery)."""
        self.repo = repo
        self.metrics = metrics
        self.horizon_h = horizon_h
        self.on_case = on_case
        self.on_stored = on_stored
        self.sensor_limits = sensor_limits
        self.clock = clock
        self.dead = 0
        self.handled_ids: list[str] = []  # msg_ids this worker stored, newest last (bounded)
        # (edge or tool key) → when this worker last committed its row: skips two queries per message.
        self._touched: dict[tuple[str, ...], float] = {}
        self._pending_touch: list[tuple[str, ...]] = []
        # One message at a time: the worker's own link and a link draining a gone worker's session
        # (cloud/sessions.py) call in from two network threads, and the caches above are per call.
        self._lock = threading.Lock()

    def handle(self, topic: str, payload: bytes) -> bool:
        """Process one message. True: done (acknowledge); False: retry later (do not acknowledge)."""
        with self._lock:
            return self._handle(topic, payload)

    def _handle(self, topic: str, payload: bytes) -> bool:
        try:
            msg = self._validate(topic, payload)
        except SchemaError as exc:
            return self._dead_letter(topic, payload, str(exc))
        kind = msg.KIND.value
        self._pending_touch = []
        try:
            case = self.repo.store_once(msg.msg_id, kind, msg.edge_id, lambda s: self._write(s, msg))
        except Duplicate:
            self.metrics.messages.labels(kind, "duplicate").inc()
            if isinstance(msg, HardCase):
                self._resubmit_unanswered(msg.case_id)
            self._stored(msg)  # the edge sent it again: its receipt was lost, or came late
            return True
        except StorageError as exc:
            self.metrics.messages.labels(kind, "retry").inc()
            _logger.warning("could not store %s %s (%s); left for redelivery", kind, msg.msg_id, exc)
            return False
        self.metrics.messages.labels(kind, "stored").inc()
        self._stored(msg)
        now = self.clock()
        for key in self._pending_touch:  # only after the commit: a rolled-back insert is not cached
            self._touched[key] = now
        if len(self._touched) > 100_000:
            self._touched.clear()
        self.handled_ids.append(msg.msg_id)
        if len(self.handled_ids) > 100_000:
            del self.handled_ids[:50_000]
        if isinstance(case, Case) and self.on_case is not None and case.verdict is None:
            self.on_case(case)
        return True

    def _stored(self, msg: Message) -> None:
        if self.on_stored is not None and msg.KIND in CONFIRMED:
            self.on_stored(msg)

    # ---- validation --------------------------------------------------------------------------
    def _validate(self, topic: str, payload: bytes) -> Message:
        try:
            parts = parse_topic(topic)
        except ValueError as exc:
            raise SchemaError(str(exc)) from exc
        if parts.kind not in EDGE_TO_CLOUD:
            raise SchemaError(f"{parts.kind.value} is not an edge→cloud topic")
        msg = parse_payload(payload, parts.kind)
        if msg.edge_id != parts.edge or msg.site != parts.site:
            raise SchemaError(
                f"payload says {msg.site}/{msg.edge_id} on the topic of {parts.site}/{parts.edge}"
            )
        if isinstance(msg, HardCase):
            steps, feats = msg.shape
            if steps < 1 or feats < 1 or steps * feats > MAX_WINDOW_VALUES:
                raise SchemaError(f"hardcase: shape {msg.shape} out of range")
            decode_array(msg.features, msg.shape)  # size and base64 check before storing
        return msg

    def _dead_letter(self, topic: str, payload: bytes, reason: str) -> bool:
        self.dead += 1
        self.metrics.dead_letters.inc()
        if self.dead <= 10 or self.dead % 1000 == 0:
            _logger.warning("dead letter #%d from %s: %s", self.dead, topic[:200], reason)
        try:
            with self.repo.transaction() as s:
                s.add(
                    DeadLetter(
                        topic=topic[:512],
                        reason=reason[:2000],
                        payload=payload[:DEAD_PAYLOAD_KEEP],
                        size=len(payload),
                        received_ts=self.clock(),
                    )
                )
        except StorageError as exc:
            # Counted and logged already; keeping the bytes is best effort.
            _logger.warning("dead letter not stored: %s", exc)
        return True

    def _resubmit_unanswered(self, case_id: str) -> None:
        case = self.repo.get_case(case_id)
        if case is not None and case.verdict is None and self.on_case is not None:
            self.on_case(case)

    # ---- storage (inside the de-duplication transaction) -------------------------------------
    def _write(self, s: Session, msg: Message) -> Any:
        now = self.clock()
        self._touch_edge(s, msg, now)
        if isinstance(msg, Status):
            edge = s.get(Edge, msg.edge_id)
            assert edge is not None
            edge.state = msg.state
            # An edge going away (its last will, or a stop) says nothing of its models: keep what it
            # ran, which is what the console and the rollout need to know of an offline edge.
            gone = msg.state == "offline"
            if msg.models or not gone:
                edge.models = dict(msg.models)
            if msg.health or not gone:
                edge.health = dict(msg.health)
            if msg.last_update or not gone:
                edge.last_update = dict(msg.last_update)
            return None
        if isinstance(msg, Alert):
            tool = self._touch_tool(s, msg.edge_id, msg.site, msg.tool_id, None, msg.ts, msg.source_ts)
            tool = tool or s.get(Tool, msg.tool_id)
            s.add(
                AlertRow(
                    msg_id=msg.msg_id,
                    edge_id=msg.edge_id,
                    site=msg.site,
                    tool_id=msg.tool_id,
                    mode=msg.mode,
                    probability=msg.probability,
                    rul_h=msg.rul_h,
                    rul_std_h=msg.rul_std_h,
                    model_version=msg.model_version,
                    episode_start_ts=msg.episode_start_ts,
                    ts=msg.ts,
                    received_ts=now,
                    source_ts=msg.source_ts,
                    # As its latest telemetry said (a minute old at most): a stuck or Bad sensor
                    # may be what raised it.
                    sensor_issues=self._sensor_issues(tool.summary or {}) if tool is not None else [],
                    evidence=None if msg.evidence is None else [e.model_dump() for e in msg.evidence],
                    reference_known=msg.reference_known,
                    likely_mode=msg.likely_mode,
                )
            )
            return None
        if isinstance(msg, HardCase):
            return self._write_case(s, msg, now)
        if isinstance(msg, Event):
            if msg.state:
                tool = self._touch_tool(
                    s, msg.edge_id, msg.site, msg.tool_id, None, msg.ts, msg.source_ts
                ) or s.get(Tool, msg.tool_id)
                if tool is not None:
                    tool.state = msg.state
            else:
                self._touch_tool(s, msg.edge_id, msg.site, msg.tool_id, None, msg.ts, msg.source_ts)
            row = EventRow(
                msg_id=msg.msg_id,
                edge_id=msg.edge_id,
                site=msg.site,
                tool_id=msg.tool_id,
                event=msg.event,
                state=msg.state,
                mode=msg.mode,
                source_ts=msg.source_ts,
                detail=dict(msg.detail),
            )
            s.add(row)
            s.flush()
            n = label_from_event(s, row, self.horizon_h, now)
            if n:
                self.metrics.labels.labels(msg.event).inc(n)
                _logger.info("%s of %s at %.0f labelled %d cases", msg.event, msg.tool_id, msg.source_ts, n)
            return None
        if isinstance(msg, Telemetry):
            tool = self._touch_tool(
                s, msg.edge_id, msg.site, msg.tool_id, msg.tool_type, msg.ts, msg.source_ts
            ) or s.get(Tool, msg.tool_id)
            if tool is not None:
                before = self._sensor_issues(tool.summary or {})
                tool.summary = {k: dict(v) for k, v in msg.summary.items()}
                tool.risk = dict(msg.risk)
                issues = self._sensor_issues(tool.summary)
                if before or issues:  # only then is there a stretch to open, extend or end
                    at = msg.source_ts if msg.source_ts is not None else msg.ts
                    track_sensor_issues(s, (msg.edge_id, msg.site, msg.tool_id), issues, at, now)
            if msg.risk_trace is not None:  # the risk at each step the edge ran (shared.risk_trace)
                for p in msg.risk_trace:
                    s.add(RiskPoint(tool_id=msg.tool_id, ts=msg.ts, source_ts=p.ts, risk=dict(p.risk)))
            elif msg.risk:  # an older edge: its risk at the message, at the summary's newest row
                at = msg.source_ts if msg.source_ts is not None else msg.ts
                s.add(RiskPoint(tool_id=msg.tool_id, ts=msg.ts, source_ts=at, risk=dict(msg.risk)))
            return None
        if isinstance(msg, Tuning):
            if msg.tool_type:  # a proposal says the tool's type: known before its first telemetry
                self._touch_tool(s, msg.edge_id, msg.site, msg.tool_id, msg.tool_type, msg.ts, None)
            self._write_tuning(s, msg, now)
            return None
        raise SchemaError(f"{msg.KIND.value} messages are not stored by the cloud")

    def _write_case(self, s: Session, msg: HardCase, now: float) -> Case | None:
        if s.get(Case, msg.case_id) is not None:
            # The edge re-sent a case under a new msg_id (e.g. after restoring its outbox).
            self.metrics.messages.labels("hardcase", "same_case").inc()
            return None
        self._touch_tool(s, msg.edge_id, msg.site, msg.tool_id, msg.tool_type, msg.ts, msg.window_ts)
        window = decode_array(msg.features, msg.shape)
        case = Case(
            case_id=msg.case_id,
            msg_id=msg.msg_id,
            edge_id=msg.edge_id,
            site=msg.site,
            tool_id=msg.tool_id,
            tool_type=msg.tool_type,
            window_ts=msg.window_ts,
            features=window.astype("<f4").tobytes(),
            steps=int(msg.shape[0]),
            n_features=int(msg.shape[1]),
            edge_prediction=dict(msg.edge_prediction),
            reasons=list(msg.reasons),
            model_version=msg.model_version,
            received_ts=now,
        )
        s.add(case)
        s.flush()
        if label_late_case(s, case, self.horizon_h, now):
            self.metrics.labels.labels(case.label_source or "event").inc()
        return case

    def _write_tuning(self, s: Session, msg: Tuning, now: float) -> None:
        row = s.get(TuningRow, msg.proposal_id)
        entry = {"action": msg.action, "actor": msg.actor, "ts": msg.ts, "reason": msg.reason}
        if row is None:
            row = TuningRow(
                proposal_id=msg.proposal_id,
                edge_id=msg.edge_id,
                site=msg.site,
                tool_id=msg.tool_id,
                status=msg.action,
                setpoints=dict(msg.setpoints),
                previous=dict(msg.previous),
                expected=dict(msg.expected),
                reason=msg.reason,
                history=[entry],
                updated_ts=now,
            )
            s.add(row)
            return
        row.status = msg.action
        row.history = [*row.history, entry]
        row.updated_ts = now
        if msg.action == "proposal":
            row.setpoints = dict(msg.setpoints)

    def _sensor_issues(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        limits = self.sensor_limits
        return sensor_issues(summary, limits.unchanged_h, limits.bad_h)

    def _fresh(self, key: tuple[str, ...], now: float) -> bool:
        """True when this worker committed the row less than TOUCH_INTERVAL_S ago."""
        last = self._touched.get(key)
        if last is not None and now - last < TOUCH_INTERVAL_S:
            return True
        self._pending_touch.append(key)
        return False

    def _touch_edge(self, s: Session, msg: Message, now: float) -> None:
        if not isinstance(msg, Status) and self._fresh(("edge", msg.edge_id), now):
            return
        edge = s.get(Edge, msg.edge_id)
        if edge is None:
            edge = Edge(
                edge_id=msg.edge_id, site=msg.site, state="online", models={}, health={}, last_update={}
            )
            s.add(edge)
        edge.last_seen_ts = now

    def _touch_tool(
        self,
        s: Session,
        edge_id: str,
        site: str,
        tool_id: str,
        tool_type: str | None,
        ts: float,
        source_ts: float | None,
    ) -> Tool | None:
        """The tool's row, created if new; None when it was refreshed moments ago (nothing to change).

        ``source_ts`` (the message's time on the equipment's clock, if it has one) widens the span
        the tool reported over. A message within the touch interval leaves it as it is: the span is
        as exact as the telemetry period, which is what counting tool-months needs."""
        if self._fresh(("tool", tool_id, tool_type or ""), self.clock()):
            return None
        tool = s.get(Tool, tool_id)
        if tool is None:
            tool = Tool(tool_id=tool_id, edge_id=edge_id, site=site, tool_type=tool_type, summary={}, risk={})
            s.add(tool)
        if tool_type:
            tool.tool_type = tool_type
        tool.last_ts = max(ts, tool.last_ts or 0.0)
        if source_ts is not None:
            first, last = tool.first_source_ts, tool.last_source_ts
            tool.first_source_ts = source_ts if first is None else min(first, source_ts)
            tool.last_source_ts = source_ts if last is None else max(last, source_ts)
        return tool
