"""Alerts, model rollbacks, failed learning rounds (and, asked for by name, rejected candidates
and sensors that began to look wrong) to webhooks (Teams, Slack, an MES endpoint), at least once.

Each tick, under the ``notify`` lease (one worker at a time sends; another takes over when it
dies), the notifier:

1. queues every alert the cloud stored, every rollout rolled back and every learning round that
   failed, within ``lookback_h``, that a target wants (``kinds``, and for alerts
   ``min_probability`` and ``sites``) and has not got yet: one row per target and subject in
   ``notifications``. The alerts, rollouts and rounds tables are the source, so what was stored
   just before a crash is still queued after it, and a target added later does not get old
   history. The price: what was stored while no worker could queue for longer than
   ``lookback_h`` (the database down, every worker down) is not sent;
   an alert or sensor issue of a tool an operator has shelved (:mod:`cloud.shelving`) when the
   cloud stored it is queued as ``shelved`` and never sent, so the console shows what was held
   back and unshelving does not send a backlog; a target with kind ``escalation`` also gets each
   alert that nobody acknowledged within its ``escalate_after_min`` of the cloud storing it (due
   within ``lookback_h``), and one with kind ``digest`` the fleet's last 24 h
   (:mod:`cloud.digest`) once a day, from its ``digest_hour_utc`` on;
2. POSTs the pending rows that are due, oldest first, each with a timeout. A 2xx answer marks the
   row delivered. Anything else is retried after ``backoff_s``, doubling up to ``backoff_max_s``,
   until ``max_attempts``; then it is marked failed and logged. An escalation whose alert has
   been acknowledged meanwhile is ``withdrawn``, not sent;
3. bounds the queue: beyond ``max_pending`` pending rows for a target, the oldest are marked
   dropped (overflow policy: the newest alerts matter most to someone reading them now), and rows
   done for ``keep_days`` are deleted.

At least once: a worker that dies between a target's 2xx and its commit sends that alert again;
receivers de-duplicate by ``notification_id`` (in the body). With a secret (from the environment
variable the config names), ``X-Fabpm-Signature: sha256=<hex HMAC of the body>`` lets the
receiver check that the body came from this cloud. The body carries ``text`` (Teams and Slack
show it) and the alert's fields.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, String, cast, delete, func, literal, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from cloud.config import NotifyConfig, WebhookConfig
from cloud.digest import digest
from cloud.errors import CloudError, StorageError
from cloud.metrics import CloudMetrics
from cloud.shelving import Shelves, Span
from cloud.storage.models import AlertRow, LearningRound, NotificationRow, RolloutRow, SensorIssueRow
from cloud.storage.repo import Repo

_logger = logging.getLogger(__name__)
LEASE = "notify"
Post = Callable[[str, bytes, dict[str, str], float], int]  # (url, body, headers, timeout) → status


def http_post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST ``body``; the HTTP status (an HTTP error's too); OSError when nothing answered."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def text_of(alert: AlertRow) -> str:
    rul = f", RUL {alert.rul_h:.0f} h" if alert.rul_h is not None else ""
    if alert.rul_h is not None and alert.rul_std_h is not None:
        rul += f" ± {alert.rul_std_h:.0f}"
    sensors = "; ".join(
        f"{i['sensor']} {'unchanged' if i['issue'] == 'unchanged' else 'no good value'} {i['hours']:.1f} h"
        for i in alert.sensor_issues or []
    )
    moving = ", ".join(f"{e['sensor']} {e['deviation']:+.1f} sd" for e in alert.evidence or [])
    since = "since the edge began watching" if alert.reference_known is False else "from the tool's reference"
    return (
        f"fabpm alert: {alert.tool_id} ({alert.site}) may fail by {alert.mode}, risk {alert.probability:.2f}"
        f"{rul} (edge {alert.edge_id}, model {alert.model_version})"
        + (f"; moving {since}: {moving}" if moving else "")
        + (
            f"; those sensors point to {alert.likely_mode}"
            if alert.likely_mode and alert.likely_mode != alert.mode
            else ""
        )
        + (f"; check these sensors first: {sensors}" if sensors else "")
    )


def payload_of(alert: AlertRow) -> dict[str, Any]:
    return {
        "kind": "alert",
        "text": text_of(alert),
        "alert": {
            "msg_id": alert.msg_id,
            "site": alert.site,
            "edge_id": alert.edge_id,
            "tool_id": alert.tool_id,
            "mode": alert.mode,
            "probability": alert.probability,
            "rul_h": alert.rul_h,
            "rul_std_h": alert.rul_std_h,
            "model_version": alert.model_version,
            "ts": alert.ts,
            "source_ts": alert.source_ts,
            "episode_start_ts": alert.episode_start_ts,
            "sensor_issues": list(alert.sensor_issues or []),
            "evidence": alert.evidence,
            "reference_known": alert.reference_known,
            "likely_mode": alert.likely_mode,
            "received_ts": alert.received_ts,
        },
    }


def escalation_payload(alert: AlertRow, after_min: float) -> dict[str, Any]:
    """An alert nobody acknowledged within ``after_min`` minutes, as its alert payload says it."""
    doc = payload_of(alert)
    return doc | {
        "kind": "escalation",
        "text": f"fabpm escalation: not acknowledged within {after_min:g} min: {doc['text']}",
        "after_min": after_min,
    }


def rollback_payload(row: RolloutRow) -> dict[str, Any]:
    back_to = f" to {row.previous_version}" if row.previous_version else ""
    return {
        "kind": "rollback",
        "text": f"fabpm: model {row.version} rolled back{back_to} (rollout {row.id}): {row.reason}",
        "rollout": {
            "id": row.id,
            "version": row.version,
            "previous_version": row.previous_version,
            "canary_edges": list(row.canary_edges or []),
            "reason": row.reason,
            "ts": row.updated_ts,
        },
    }


def round_payload(row: LearningRound) -> dict[str, Any]:
    return {
        "kind": "round_failed",
        "text": f"fabpm: learning round {row.id} ({row.trigger}) failed at {row.step}: {row.error[:300]}",
        "round": {
            "id": row.id,
            "trigger": row.trigger,
            "step": row.step,
            "error": row.error,
            "ts": row.updated_ts,
        },
    }


def rejected_payload(row: LearningRound) -> dict[str, Any]:
    reason = row.log[-1]["msg"] if row.log else ""
    return {
        "kind": "round_rejected",
        "text": f"fabpm: learning round {row.id} ({row.trigger}): candidate {reason[:300]}",
        "round": {"id": row.id, "trigger": row.trigger, "reason": reason, "ts": row.updated_ts},
    }


def sensor_payload(row: SensorIssueRow) -> dict[str, Any]:
    what = "unchanged while processing" if row.issue == "unchanged" else "without a good value"
    return {
        "kind": "sensor",
        "text": f"fabpm: {row.tool_id} ({row.site}) sensor {row.sensor} {what} for {row.hours:.1f} h "
        f"(edge {row.edge_id}): check it before trusting the tool's risk",
        "sensor_issue": {
            "id": row.id,
            "site": row.site,
            "edge_id": row.edge_id,
            "tool_id": row.tool_id,
            "sensor": row.sensor,
            "issue": row.issue,
            "start_ts": row.start_ts,
            "hours": row.hours,
            "received_ts": row.received_ts,
        },
    }


class Notifier:
    def __init__(
        self,
        repo: Repo,
        cfg: NotifyConfig,
        owner: str,
        metrics: CloudMetrics,
        post: Post = http_post,
        clock: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.repo = repo
        self.cfg = cfg
        self.owner = owner
        self.metrics = metrics
        self.post = post
        self.clock = clock
        self.targets = {w.name: w for w in cfg.webhooks}
        environ = os.environ if env is None else env
        self.secrets: dict[str, bytes] = {}
        self.urls: dict[str, str] = {}
        for w in cfg.webhooks:
            url = w.url if w.url is not None else environ.get(w.url_env or "", "")
            if not url.startswith(("https://", "http://")):
                raise CloudError(
                    f"notify webhook {w.name}: environment variable {w.url_env} holds no http(s) URL"
                )
            self.urls[w.name] = url
            if w.secret_env is not None:
                if not environ.get(w.secret_env):
                    raise CloudError(
                        f"notify webhook {w.name}: environment variable {w.secret_env} is not set"
                    )
                self.secrets[w.name] = environ[w.secret_env].encode()
        # The lease outlives a tick's sending (bounded below), so a live sender keeps it.
        self.lease_s = max(30.0, 3 * cfg.interval_s, 2 * cfg.timeout_s + cfg.interval_s)

    def tick(self) -> int:
        """One round of queueing, sending and pruning; how many were delivered (0 without the lease)."""
        if not self.targets:
            return 0
        try:
            if not self.repo.take_lease(LEASE, self.owner, self.clock(), self.lease_s):
                return 0
            self._enqueue()
            self._bound()
            return self._send()
        except StorageError as exc:
            _logger.warning("notifications: %s (tried again next tick)", exc)
            return 0

    # ---- queue --------------------------------------------------------------------------------
    @staticmethod
    def _wanted(target: WebhookConfig, alert: AlertRow) -> bool:
        return alert.probability >= target.min_probability and (
            not target.sites or alert.site in target.sites
        )

    def _fresh(
        self, s: Session, name: str, target: WebhookConfig, since: float, now: float
    ) -> list[tuple[str, dict[str, Any]]]:
        """(subject, body) of what ``target`` has not got yet, oldest first."""
        queued = select(NotificationRow.subject).where(NotificationRow.target == name)
        out: list[tuple[str, dict[str, Any]]] = []
        if "alert" in target.kinds:
            alerts = s.scalars(
                select(AlertRow)
                .where(
                    AlertRow.received_ts >= since, literal("alert:").concat(AlertRow.msg_id).not_in(queued)
                )
                .order_by(AlertRow.received_ts)
            )
            out += [(f"alert:{a.msg_id}", payload_of(a)) for a in alerts if self._wanted(target, a)]
        if "escalation" in target.kinds:
            # Due once nobody acknowledged it for escalate_after_min; lookback_h bounds how long
            # before that it may have come (a target added later gets no old history).
            due = now - target.escalate_after_min * 60
            unacked = s.scalars(
                select(AlertRow)
                .where(
                    AlertRow.received_ts >= due - (now - since),
                    AlertRow.received_ts <= due,
                    AlertRow.acknowledged_by.is_(None),
                    literal("escalation:").concat(AlertRow.msg_id).not_in(queued),
                )
                .order_by(AlertRow.received_ts)
            )
            out += [
                (f"escalation:{a.msg_id}", escalation_payload(a, target.escalate_after_min))
                for a in unacked
                if self._wanted(target, a)
            ]
        if "rollback" in target.kinds:
            key = literal("rollback:").concat(cast(RolloutRow.id, String))
            ended = self._ended(s, RolloutRow.stage, "rolled_back", RolloutRow.updated_ts, key, queued, since)
            out += [(f"rollback:{r.id}", rollback_payload(r)) for r in ended]
        if "sensor" in target.kinds:
            opened = s.scalars(
                select(SensorIssueRow)
                .where(
                    SensorIssueRow.received_ts >= since,
                    literal("sensor:").concat(cast(SensorIssueRow.id, String)).not_in(queued),
                )
                .order_by(SensorIssueRow.received_ts)
            )
            out += [
                (f"sensor:{r.id}", sensor_payload(r))
                for r in opened
                if not target.sites or r.site in target.sites
            ]
        if "digest" in target.kinds:
            day = now - now % 86400  # midnight UTC
            subject = f"digest:{datetime.fromtimestamp(day, UTC):%Y-%m-%d}"
            due = now >= day + target.digest_hour_utc * 3600
            sent = select(func.count()).where(
                NotificationRow.target == name, NotificationRow.subject == subject
            )
            if due and s.scalar(sent) == 0:
                d = digest(s, now)
                out.append((subject, {"kind": "digest", "text": d.pop("text"), "digest": d}))
        round_key = literal("round:").concat(cast(LearningRound.id, String))  # failed or rejected: one each
        if "round_failed" in target.kinds:
            ended = self._ended(
                s, LearningRound.status, "failed", LearningRound.updated_ts, round_key, queued, since
            )
            out += [(f"round:{r.id}", round_payload(r)) for r in ended]
        if "round_rejected" in target.kinds:  # by the gate; not a round with too few labels to try
            ended = self._ended(
                s, LearningRound.status, "rejected", LearningRound.updated_ts, round_key, queued, since
            )
            out += [(f"round:{r.id}", rejected_payload(r)) for r in ended if r.step == "gate"]
        return out

    @staticmethod
    def _ended(
        s: Session,
        state: InstrumentedAttribute[str],
        value: str,
        ts: InstrumentedAttribute[float],
        subject: ColumnElement[str],
        queued: Select[Any],
        since: float,
    ) -> list[Any]:
        """Rows of ``state``'s table that reached ``value`` since ``since`` and whose ``subject`` is
        not in ``queued``, oldest first."""
        fresh = select(state.class_).where(state == value, ts >= since, subject.not_in(queued))
        return list(s.scalars(fresh.order_by(ts)))

    def _enqueue(self) -> None:
        now = self.clock()
        since = now - self.cfg.lookback_h * 3600
        with self.repo.transaction() as s:
            shelves = Shelves(s, since, now)
            for name, target in self.targets.items():
                for subject, body in self._fresh(s, name, target, since, now):
                    shelf = self._shelf_of(shelves, body)
                    s.add(
                        NotificationRow(
                            target=name,
                            subject=subject,
                            payload=body | {"target": name},
                            status="pending" if shelf is None else "shelved",
                            attempts=0,
                            next_ts=now,
                            last_error="" if shelf is None else f"not sent: {shelf.says()}",
                            created_ts=now,
                            done_ts=None if shelf is None else now,
                        )
                    )
                    if shelf is not None:
                        self.metrics.notifications.labels(name, "shelved").inc()

    @staticmethod
    def _shelf_of(shelves: Shelves, body: dict[str, Any]) -> Span | None:
        """The shelf that holds this alert or sensor issue back: its tool's, when the cloud stored
        it (a shelf decides what is sent from the moment it is set, whatever the equipment's clock
        says); None for what shelving does not cover (rollbacks, learning rounds)."""
        about = body.get("alert") or body.get("sensor_issue")
        if about is None or about.get("received_ts") is None:
            return None
        return shelves.covering(about["tool_id"], about["received_ts"])

    def _bound(self) -> None:
        now = self.clock()
        with self.repo.transaction() as s:
            for name in self.targets:
                pending = select(func.count()).where(
                    NotificationRow.target == name, NotificationRow.status == "pending"
                )
                excess = int(s.scalar(pending) or 0) - self.cfg.max_pending
                if excess <= 0:
                    continue
                oldest = (
                    select(NotificationRow.id)
                    .where(NotificationRow.target == name, NotificationRow.status == "pending")
                    .order_by(NotificationRow.id)
                    .limit(excess)
                )
                s.execute(
                    update(NotificationRow)
                    .where(NotificationRow.id.in_(list(s.scalars(oldest))))
                    .values(status="dropped", done_ts=now, last_error="the pending queue overflowed")
                )
                self.metrics.notifications.labels(name, "dropped").inc(excess)
                _logger.warning(
                    "notify %s: %d pending notifications dropped (queue over %d)",
                    name,
                    excess,
                    self.cfg.max_pending,
                )
            s.execute(
                delete(NotificationRow).where(
                    NotificationRow.status != "pending",
                    NotificationRow.done_ts < now - self.cfg.keep_days * 86400,
                )
            )

    # ---- send ---------------------------------------------------------------------------------
    def _send(self) -> int:
        start = self.clock()
        with self.repo.transaction() as s:
            due = list(
                s.scalars(
                    select(NotificationRow)
                    .where(NotificationRow.status == "pending", NotificationRow.next_ts <= start)
                    .order_by(NotificationRow.id)
                    .limit(100)
                )
            )
        delivered = 0
        down: set[str] = set()  # a target that did not answer waits for its back-off, not each row's timeout
        for row in due:
            if self.clock() - start > self.lease_s / 2:  # keep well inside the lease
                break
            if row.target not in self.targets or row.target in down:
                continue
            if (by := self._acknowledged(row)) is not None:
                self._withdraw(row, by)
                continue
            ok, error = self._post_one(row)
            if not ok:
                down.add(row.target)
            delivered += ok
            self._record(row, ok, error)
        return delivered

    def _acknowledged(self, row: NotificationRow) -> str | None:
        """Who acknowledged the alert an escalation is about, since it was queued; else None."""
        if not row.subject.startswith("escalation:"):
            return None
        with self.repo.transaction() as s:
            alert = s.get(AlertRow, row.subject.removeprefix("escalation:"))
            return None if alert is None else alert.acknowledged_by

    def _withdraw(self, row: NotificationRow, by: str) -> None:
        """An escalation whose alert was acknowledged before it went: not sent (it would page
        someone about what is being handled)."""
        with self.repo.transaction() as s:
            s.execute(
                update(NotificationRow)
                .where(NotificationRow.id == row.id)
                .values(status="withdrawn", done_ts=self.clock(), last_error=f"acknowledged by {by} first")
            )
        self.metrics.notifications.labels(row.target, "withdrawn").inc()

    def _post_one(self, row: NotificationRow) -> tuple[bool, str]:
        return self._post(row.target, row.payload | {"notification_id": row.id})

    def _post(self, target: str, doc: dict[str, Any]) -> tuple[bool, str]:
        """POST ``doc`` to ``target``, signed when it has a key: (2xx, what happened)."""
        body = json.dumps(doc, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "fabpm-cloud"}
        secret = self.secrets.get(target)
        if secret is not None:
            headers["X-Fabpm-Signature"] = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        try:
            status = self.post(self.urls[target], body, headers, self.cfg.timeout_s)
        except (OSError, ValueError) as exc:
            return False, f"no answer: {exc}"[:500]
        return (200 <= status < 300), f"HTTP {status}"

    def send_test(self, target: str, by: str) -> tuple[bool, str]:
        """A test message to ``target`` now, outside the queue (whoever sets a webhook up wants to
        see it arrive): (2xx, what happened). KeyError for a target the config does not name."""
        if target not in self.targets:
            raise KeyError(f"no webhook {target!r}; configured: {', '.join(self.targets) or 'none'}")
        text = f"fabpm: a test notification to {target}, sent by {by} from worker {self.owner}"
        return self._post(target, {"kind": "test", "text": text, "target": target})

    def _record(self, row: NotificationRow, ok: bool, error: str) -> None:
        now = self.clock()
        attempts = row.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "last_error": "" if ok else error}
        if ok:
            values |= {"status": "delivered", "done_ts": now}
        elif attempts >= self.cfg.max_attempts:
            values |= {"status": "failed", "done_ts": now}
            _logger.warning(
                "notify %s: %s not delivered after %d attempts (%s)",
                row.target,
                row.subject,
                attempts,
                error,
            )
        else:
            wait = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2.0 ** min(attempts - 1, 30))
            values["next_ts"] = now + wait
        with self.repo.transaction() as s:
            s.execute(update(NotificationRow).where(NotificationRow.id == row.id).values(**values))
        self.metrics.notifications.labels(row.target, values.get("status", "retry")).inc()
