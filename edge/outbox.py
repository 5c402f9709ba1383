"""The disk outbox: every message the edge must not lose is written here before it is published.

SQLite in WAL mode. A row is deleted only when the broker has acknowledged it (PUBACK for QoS 1;
for QoS 0 telemetry, when paho has written it to the socket). Rows leave in priority order, then
in order of arrival::

    0  events and alerts        (and anything else critical)
    1  tuning records
    2  hard cases
    3  telemetry

With ``await_receipts`` (``mqtt.receipts``), a PUBACK only marks an alert, event, hard case or
tuning record as sent: the row stays until the cloud's receipt names its ``msg_id`` (it is stored),
and a sent row with no receipt after ``resend_after_s`` is published again, the wait doubling at
each try up to 64 × (a cloud away for hours does not get every row again every minute). A broker acknowledges
a message before it delivers it and keeps it in memory (Mosquitto persists by snapshot), so without
receipts a broker crash loses what it had acknowledged and not delivered (B10 measured it).

Rows are sent again only while the cloud answers: when no receipt came within ``resend_after_s``
of a send, the cloud is away and the broker holds what was sent in the cloud's session, so a copy
would only pile up beside it (with the doubling wait alone, a cloud away for an hour got each early
row six more times). Then one row per ``resend_after_s`` goes again as a probe, so that an answering
cloud is noticed even when nothing new is sent; at the first receipt after the silence, no row goes
again for another ``resend_after_s``, for the cloud to work through its backlog first.

Durability: a committed row survives ``kill -9`` of the process (WAL with ``synchronous=NORMAL``
keeps committed transactions in the OS; ``FULL`` also survives power loss). A message in flight
when the process dies is published again on restart; the cloud de-duplicates by ``msg_id``.

Overflow policy (disk quota ``quota_bytes``, counted as the sum of payload sizes): when a new
message does not fit, the oldest telemetry rows are dropped first, then the oldest hard cases;
each drop is counted in :attr:`Outbox.dropped` by priority. A new telemetry or hard-case message
that still does not fit is itself dropped (and counted). Events, alerts and tuning records are
never dropped to make room: they are admitted up to a hard ceiling of 1.25 × the quota, past
which the new critical message is refused with :class:`OutboxError` (the disk is the limit).

The outbox also remembers the hard cases waiting for a verdict (table ``cases``), so a verdict
that arrives after a restart still finds its case, and keeps a ledger per message kind (table
``ledger``: written, acknowledged by the broker, dropped by the overflow policy), updated in the
same transaction as the queue, so it survives restarts and ``kill -9`` as the queue does: what the
cloud should hold from this edge is ``written − dropped − still queued`` (B10 reconciles it).
Table ``latest`` keeps, per key, the id of the last message written under it: a tool's ``State``
read again after a restart is the change already written and is not written twice.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import OutboxError
from shared.topics import Kind

_logger = logging.getLogger(__name__)

PRIORITY: dict[Kind, int] = {
    Kind.EVENT: 0,
    Kind.ALERT: 0,
    Kind.STATUS: 0,
    Kind.TUNING: 1,
    Kind.HARDCASE: 2,
    Kind.TELEMETRY: 3,
}
DROPPABLE = (3, 2)  # telemetry first, then hard cases
HARD_CEILING = 1.25

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    msg_id TEXT,
    resend_at REAL,  -- set when the broker acknowledged a row that waits for its receipt
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS ledger (
    kind TEXT PRIMARY KEY,
    written INTEGER NOT NULL DEFAULT 0,
    acked INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    confirmed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS latest (
    key TEXT PRIMARY KEY,
    msg_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    tool_id TEXT NOT NULL,
    created REAL NOT NULL,
    prediction TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Row:
    """One queued message."""

    id: int
    priority: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """SQLite-backed priority queue with a disk quota. Thread-safe (one connection, one lock)."""

    def __init__(
        self,
        path: Path,
        quota_bytes: int,
        synchronous: str = "NORMAL",
        await_receipts: bool = False,
        resend_after_s: float = 60.0,
    ) -> None:
        self.path = path
        self.quota_bytes = int(quota_bytes)
        self.await_receipts = await_receipts
        self.resend_after_s = float(resend_after_s)
        self.dropped: Counter[int] = Counter()  # by priority
        self.refused = 0
        self.last_receipt = 0.0  # wall time of the cloud's last receipt
        self._unanswered_since: float | None = None  # the first send since that receipt
        self._last_probe = 0.0  # a resend while the cloud is silent, at most one per resend_after_s
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a crash never leaves a
            # half-applied multi-statement change.
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
            self._migrate()
            ok = self._db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.Error as exc:
            raise OutboxError(f"{path}: cannot open the outbox: {exc}") from exc
        if ok != "ok":
            raise OutboxError(f"{path}: outbox fails its integrity check: {ok}")
        self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])
        self._count = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        if self._count:
            _logger.info("outbox %s holds %d messages from before (%d bytes)", path, self._count, self._bytes)

    def _migrate(self) -> None:
        """Columns added since the first release, for an outbox file written by an older edge."""
        for table, column, decl in (
            ("outbox", "msg_id", "TEXT"),
            ("outbox", "resend_at", "REAL"),
            ("outbox", "attempts", "INTEGER NOT NULL DEFAULT 0"),
            ("ledger", "confirmed", "INTEGER NOT NULL DEFAULT 0"),
        ):
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_msg ON outbox (msg_id)")
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (priority, id) WHERE resend_at IS NULL"
        )
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS outbox_resend ON outbox (resend_at) WHERE resend_at IS NOT NULL"
        )

    # -- queue -------------------------------------------------------------------------------

    def put(
        self,
        kind: Kind,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        msg_id: str | None = None,
        latest_key: str | None = None,
    ) -> int | None:
        """Store one message; its row id, or None when the overflow policy dropped it or it was
        already written. ``msg_id``: the id a receipt will name (only rows with one wait for a
        receipt). ``latest_key`` (with a ``msg_id``): a message whose id is the last one written
        under that key is not written again (table ``latest``, one row per key, in the same
        transaction): a tool's state read again after a restart is the change already sent."""
        priority = PRIORITY.get(kind, 0)
        size = len(payload)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if latest_key is not None and msg_id is not None:
                    got = self._db.execute(
                        "SELECT msg_id FROM latest WHERE key = ?", (latest_key,)
                    ).fetchone()
                    if got is not None and got[0] == msg_id:
                        self._db.execute("COMMIT")
                        return None
                    self._db.execute(
                        "INSERT INTO latest (key, msg_id) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET msg_id = excluded.msg_id",
                        (latest_key, msg_id),
                    )
                if self._bytes + size > self.quota_bytes:
                    self._make_room(size, priority)
                if self._bytes + size > self.quota_bytes and priority in DROPPABLE:
                    self._count_in(kind.value, "written", 1)  # and dropped at once, by the policy
                    self._count_in(kind.value, "dropped", 1)
                    self._db.execute("COMMIT")
                    self.dropped[priority] += 1
                    return None
                if self._bytes + size > self.quota_bytes * HARD_CEILING:
                    self._count_in(kind.value, "refused", 1)
                    self._db.execute("COMMIT")
                    self.refused += 1
                    raise OutboxError(
                        f"outbox is full ({self._bytes} bytes, quota {self.quota_bytes}): "
                        f"{kind.value} refused"
                    )
                cur = self._db.execute(
                    "INSERT INTO outbox (priority, kind, topic, payload, qos, retain, created, size, msg_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (priority, kind.value, topic, payload, qos, int(retain), time.time(), size, msg_id),
                )
                self._count_in(kind.value, "written", 1)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"{self.path}: cannot store a {kind.value} message: {exc}") from exc
            self._bytes += size
            self._count += 1
            return int(cur.lastrowid or 0)

    def _make_room(self, size: int, priority: int) -> None:
        """Drop the oldest rows of droppable priorities (lowest value first) until ``size`` fits."""
        for victim in DROPPABLE:
            if victim < priority:
                # Never drop something more important than the message being added.
                continue
            while self._bytes + size > self.quota_bytes:
                rows = self._db.execute(
                    "SELECT id, size, kind FROM outbox WHERE priority = ? ORDER BY id LIMIT 256", (victim,)
                ).fetchall()
                if not rows:
                    break
                freed = 0
                for row_id, row_size, row_kind in rows:
                    self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                    self._count_in(row_kind, "dropped", 1)
                    freed += row_size
                    self._count -= 1
                    self.dropped[victim] += 1
                    if self._bytes - freed + size <= self.quota_bytes:
                        break
                self._bytes -= freed

    def confirm(self, msg_ids: list[str]) -> int:
        """The cloud stored these: forget their rows (sent or not). Returns how many went."""
        now = time.time()
        with self._lock:
            was_silent = self.await_receipts and self.cloud_silent(now)
            self.last_receipt = now
            self._unanswered_since = None
        if was_silent:
            self._grace(now)
        return self._settle("msg_id", msg_ids, "confirmed", mark_sent=False)

    def silence_s(self, now: float | None = None) -> float:
        """How long the cloud has left a send unanswered (0 while it answers or nothing waits)."""
        since = self._unanswered_since
        return 0.0 if since is None else max(0.0, (time.time() if now is None else now) - since)

    def awaiting_receipt(self) -> int:
        """Rows the broker acknowledged that wait for the cloud's receipt."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM outbox WHERE resend_at IS NOT NULL").fetchone()
        return int(row[0])

    def cloud_silent(self, now: float) -> bool:
        """Something was sent more than ``resend_after_s`` ago and no receipt came since: the cloud
        is away (or sends no receipts)."""
        return self.silence_s(now) > self.resend_after_s

    def _grace(self, now: float) -> None:
        """The cloud answers again: no row goes again for ``resend_after_s``, the time for it to
        work through what its session held (their copies there are on their way). Rows due within
        that time are held too: sent again as soon as due, they doubled the backlog's tail."""
        until = now + self.resend_after_s
        with self._lock:
            try:
                self._db.execute(
                    "UPDATE outbox SET resend_at = ? WHERE resend_at IS NOT NULL AND resend_at < ?",
                    (until, until),
                )
            except sqlite3.Error as exc:  # the rows are then sent again at once: duplicates, not losses
                _logger.warning("%s: cannot postpone resends: %s", self.path, exc)

    def _count_in(self, kind: str, column: str, n: int) -> None:
        """Add ``n`` to the ledger (inside the caller's transaction; ``column`` is ours, not input)."""
        self._db.execute(
            f"INSERT INTO ledger (kind, {column}) VALUES (?, ?) "
            f"ON CONFLICT (kind) DO UPDATE SET {column} = {column} + excluded.{column}",
            (kind, n),
        )

    def ledger(self) -> dict[str, dict[str, int]]:
        """Per message kind since this outbox was created: written (admitted or dropped by the
        overflow policy), acked by the broker, dropped, refused (critical, past the hard ceiling:
        never written), and queued now."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, written, acked, dropped, refused, confirmed FROM ledger"
            ).fetchall()
            queued = dict(self._db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())
        return {
            str(k): {
                "written": int(w),
                "acked": int(a),
                "dropped": int(d),
                "refused": int(r),
                "confirmed": int(c),
                "queued": int(queued.get(k, 0)),
            }
            for k, w, a, d, r, c in rows
        }

    def pending(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[Row]:
        """Up to ``limit`` rows in priority order, skipping the ids in ``exclude`` (in flight)."""
        cols = "SELECT id, priority, kind, topic, payload, qos, retain FROM outbox"
        n = limit + len(exclude)
        now = time.time()
        with self._lock:
            n_due = n
            probing = self.await_receipts and self.cloud_silent(now)
            if probing:  # one probe per resend_after_s while the cloud is silent (module docstring)
                n_due = 1 + len(exclude) if now - self._last_probe >= self.resend_after_s else 0
            # Two queries on two partial indexes, merged: rows never sent, and sent rows (waiting
            # for their receipt) whose resend time came. One query with an OR scanned every
            # waiting row: 27 ms a call with 100,000 of them (a cloud away for long).
            fresh = self._db.execute(f"{cols} WHERE resend_at IS NULL ORDER BY priority, id LIMIT ?", (n,))
            raw = fresh.fetchall()
            if n_due:
                due = self._db.execute(
                    f"{cols} WHERE resend_at IS NOT NULL AND resend_at < ? ORDER BY resend_at LIMIT ?",
                    (now, n_due),
                ).fetchall()
                due = [r for r in due if r[0] not in exclude][:1] if probing else due
                if probing and due:
                    self._last_probe = now
                raw += due
        raw.sort(key=lambda r: (r[1], r[0]))
        rows = [Row(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], bool(r[6])) for r in raw]
        return [r for r in rows if r.id not in exclude][:limit]

    def ack(self, ids: list[int]) -> None:
        """The broker acknowledged these rows: deleted, or with ``await_receipts`` marked sent
        (rows that carry a ``msg_id``) until the cloud's receipt."""
        self._settle("id", ids, "acked", mark_sent=self.await_receipts)

    def _settle(self, key: str, values: Sequence[object], column: str, mark_sent: bool) -> int:
        """One transaction over the rows whose ``key`` (``id`` or ``msg_id``, ours) is in ``values``:
        mark sent (when ``mark_sent``, rows with a ``msg_id``) or delete; count them in the ledger's
        ``column``. Returns the rows deleted."""
        if not values:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                sizes = removed = 0
                kinds: Counter[str] = Counter()
                now = time.time()
                for value in values:
                    if mark_sent:
                        # Each send without a receipt doubles the wait before the next (up to
                        # 64 x): a cloud away for hours must not get the same rows every minute.
                        marked = self._db.execute(
                            "UPDATE outbox SET resend_at = ? * (1 << MIN(attempts, 6)) + ?, "
                            f"attempts = attempts + 1 WHERE {key} = ? AND msg_id IS NOT NULL RETURNING kind",
                            (self.resend_after_s, now, value),
                        ).fetchall()
                        kinds.update(str(k) for (k,) in marked)
                        if marked:
                            if self._unanswered_since is None:
                                self._unanswered_since = now
                            continue
                    for size, kind in self._db.execute(
                        f"DELETE FROM outbox WHERE {key} = ? RETURNING size, kind", (value,)
                    ).fetchall():
                        sizes += int(size)
                        removed += 1
                        kinds[str(kind)] += 1
                for kind, n in kinds.items():
                    self._count_in(kind, column, n)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"{self.path}: cannot settle {column} rows: {exc}") from exc
            self._bytes -= sizes
            self._count -= removed
            return removed

    def stats(self) -> dict[str, Any]:
        with self._lock:
            by_prio = dict(
                self._db.execute("SELECT priority, COUNT(*) FROM outbox GROUP BY priority").fetchall()
            )
        return {
            "messages": self._count,
            "bytes": self._bytes,
            "quota_bytes": self.quota_bytes,
            "by_priority": by_prio,
            "dropped": dict(self.dropped),
            "refused": self.refused,
            "ledger": self.ledger(),
            "last_receipt_s_ago": round(time.time() - self.last_receipt, 1) if self.last_receipt else None,
            "awaiting_receipt": self.awaiting_receipt() if self.await_receipts else 0,
            "cloud_silent_s": round(self.silence_s(), 1),
        }

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    # -- hard cases waiting for a verdict -----------------------------------------------------

    def remember_case(self, case_id: str, tool_id: str, prediction: dict[str, Any], max_cases: int) -> None:
        """Keep a hard case until its verdict; the oldest go when more than ``max_cases`` wait."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO cases (case_id, tool_id, created, prediction) VALUES (?, ?, ?, ?)",
                (case_id, tool_id, time.time(), json.dumps(prediction)),
            )
            self._db.execute(
                "DELETE FROM cases WHERE case_id IN (SELECT case_id FROM cases ORDER BY created DESC "
                "LIMIT -1 OFFSET ?)",
                (max_cases,),
            )

    def take_case(self, case_id: str) -> tuple[str, float, dict[str, Any]] | None:
        """The (tool, created, prediction) of a waiting case, removed; None when unknown."""
        with self._lock:
            row = self._db.execute(
                "DELETE FROM cases WHERE case_id = ? RETURNING tool_id, created, prediction", (case_id,)
            ).fetchone()
        if row is None:
            return None
        return str(row[0]), float(row[1]), json.loads(row[2])

    def expire_cases(self, older_than_s: float, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - older_than_s
        with self._lock:
            cur = self._db.execute("DELETE FROM cases WHERE created < ?", (cutoff,))
        return int(cur.rowcount)

    def waiting_cases(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM cases").fetchone()[0])

    # -- upkeep ------------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file (housekeeping)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


class SilenceWatch:
    """Says when to warn that the cloud's receipts stopped: after ``first_s`` of silence, then at
    each doubling of it, and once when they come back. The edge cannot tell a cloud that is away
    from a broker that does not let it read its receipt topic (Mosquitto grants the subscription
    and filters at delivery, measured), so the warning names both."""

    def __init__(self, outbox: Outbox, receipt_topic: str, first_s: float = 600.0) -> None:
        self.outbox = outbox
        self.receipt_topic = receipt_topic
        self.first_s = first_s
        self._warned_at = 0.0  # the silence last warned about; 0: none

    def check(self, now: float | None = None) -> str | None:
        silent = self.outbox.silence_s(now)
        if silent == 0.0:
            if not self._warned_at:
                return None
            self._warned_at = 0.0
            return "receipts from the cloud again; rows held for them go again"
        if silent < max(self.first_s, 2 * self._warned_at):
            return None
        self._warned_at = silent
        return (
            f"no receipt from the cloud for {silent / 60:.0f} min while {self.outbox.awaiting_receipt()} "
            f"message(s) wait for one: the cloud is away, or the broker does not let this edge read "
            f"{self.receipt_topic} (deploy/mosquitto/acl). They stay in the outbox; one goes again per "
            f"{self.outbox.resend_after_s:.0f} s as a probe. mqtt.receipts = false turns receipts off"
        )
