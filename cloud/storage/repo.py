"""Queries the cloud shares: transactions, cases and verdicts, labels, leases.

Every method opens its own short transaction; :meth:`Repo.transaction` is for callers that need
several writes to land together (ingest stores a message and its de-duplication key at once).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Engine, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from cloud.errors import StorageError
from cloud.storage.models import Case, EventRow, LabelRow, Lease, RiskPoint, SeenMessage, Tool
from shared.risk_trace import RiskAt, thin_peaks

Clock = Callable[[], float]
UPSERT_ATTEMPTS = 3  # concurrent first inserts of one edge/tool row by two workers


def equipment_now(s: Session, clock_now: float, *also: Any) -> float:
    """ "Now" on the equipment's clock: the newest source time the cloud holds (state events, the
    tools' telemetry, and any column in ``also``), ``clock_now`` while there is none. On a plant
    that is the wall clock within the time since the last report; a simulator keeps its own
    (the demo's is months off the wall clock), and every figure and retention on source times
    must count from it, not from the cloud's clock."""
    latest = [s.scalar(select(func.max(c))) for c in (EventRow.source_ts, Tool.last_source_ts, *also)]
    known = [float(t) for t in latest if t is not None]
    return max(known) if known else clock_now


class Duplicate(Exception):
    """The msg_id was stored before (raised inside :meth:`Repo.store_once`)."""


class Repo:
    """The database, through one engine. Thread-safe: each call has its own session."""

    def __init__(self, engine: Engine, clock: Clock = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # SQLite has one writer at a time and makes the others poll with sleeps of up to 100 ms
        # (its busy handler); within this process we queue them on a lock instead. PostgreSQL
        # needs no such lock.
        self._write_lock: threading.RLock | None = (
            threading.RLock() if engine.dialect.name == "sqlite" else None
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session committed on success, rolled back on any error; DB outages → StorageError."""
        with self._write_lock or contextlib.nullcontext():
            yield from self._transaction()

    def _transaction(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except OperationalError as exc:
            session.rollback()
            raise StorageError(f"database error: {exc.orig}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def store_once(self, msg_id: str, kind: str, edge_id: str, write: Callable[[Session], Any]) -> Any:
        """Insert the de-duplication key and run ``write`` in one transaction.

        Raises :class:`Duplicate` (and writes nothing) when ``msg_id`` was stored before, so a
        message redelivered by the broker is stored exactly once, whichever worker gets it.
        """
        last: IntegrityError | None = None
        for _attempt in range(UPSERT_ATTEMPTS):
            try:
                with self.transaction() as s:
                    s.add(SeenMessage(msg_id=msg_id, kind=kind, edge_id=edge_id, received_ts=self.clock()))
                    s.flush()
                    return write(s)
            except IntegrityError as exc:
                last = exc
                with self.transaction() as s:
                    if s.get(SeenMessage, msg_id) is not None:
                        raise Duplicate(msg_id) from exc
                # Another worker inserted the same edge or tool row first: run again, it updates now.
        raise StorageError(f"integrity error storing {kind} {msg_id}: {last.orig if last else ''}") from last

    # ---- cases and verdicts -------------------------------------------------------------------
    def case_window(self, case: Case) -> np.ndarray:
        return np.frombuffer(case.features, dtype="<f4").reshape(case.steps, case.n_features).copy()

    def get_case(self, case_id: str) -> Case | None:
        with self.transaction() as s:
            return s.get(Case, case_id)

    def save_verdicts(self, verdicts: dict[str, dict[str, Any]], model_version: str) -> set[str]:
        """Store a batch of verdicts in one transaction; returns the case ids that had none yet
        (a case another worker answered meanwhile keeps its first verdict)."""
        if not verdicts:
            return set()
        now = self.clock()
        with self.transaction() as s:
            rows = s.scalars(
                select(Case).where(Case.case_id.in_(list(verdicts)), Case.verdict.is_(None)).with_for_update()
            )
            fresh = set()
            for case in rows:
                case.verdict = verdicts[case.case_id]
                case.verdict_model = model_version
                case.verdict_ts = now
                fresh.add(case.case_id)
            return fresh

    def pending_cases(self, older_than_ts: float, limit: int = 500) -> list[Case]:
        """Cases still without a verdict, received before ``older_than_ts`` (for the retry sweep)."""
        with self.transaction() as s:
            rows = s.scalars(
                select(Case)
                .where(Case.verdict.is_(None), Case.received_ts < older_than_ts)
                .order_by(Case.received_ts)
                .limit(limit)
            )
            return list(rows)

    # ---- labels ------------------------------------------------------------------------------
    def label_history(self, case_id: str) -> list[LabelRow]:
        with self.transaction() as s:
            return list(s.scalars(select(LabelRow).where(LabelRow.case_id == case_id).order_by(LabelRow.id)))

    def labels_since(self, ts: float) -> int:
        """How many cases got a label after ``ts`` (the label-count trigger of learning)."""
        with self.transaction() as s:
            return int(
                s.scalar(select(func.count()).select_from(Case).where(Case.label_ts > ts)) or 0  # type: ignore[operator]
            )

    def labelled_cases(self, since_ts: float | None, until_ts: float, limit: int | None = None) -> list[Case]:
        """Cases whose current label was set in (since_ts, until_ts], oldest label first."""
        with self.transaction() as s:
            q = select(Case).where(Case.label_failed.is_not(None), Case.label_ts <= until_ts)  # type: ignore[operator]
            if since_ts is not None:
                q = q.where(Case.label_ts > since_ts)  # type: ignore[operator]
            q = q.order_by(Case.label_ts, Case.case_id)
            if limit is not None:
                q = q.limit(limit)
            return list(s.scalars(q))

    # ---- risk history ------------------------------------------------------------------------
    def risk_history(self, tool_id: str, since_ts: float, max_points: int) -> list[RiskAt]:
        """The tool's risk points from ``since_ts`` on the equipment's clock, oldest first, at most
        ``max_points`` (``shared.risk_trace.thin_peaks``: every peak kept)."""
        with self.transaction() as s:
            rows = s.execute(
                select(RiskPoint.source_ts, RiskPoint.risk)
                .where(RiskPoint.tool_id == tool_id, RiskPoint.source_ts >= since_ts)
                .order_by(RiskPoint.source_ts)
            ).all()
        points = [(float(ts), {str(k): float(v) for k, v in risk.items()}) for ts, risk in rows]
        return thin_peaks(points, max_points)

    def prune_risk(self, before_ts: float, chunk: int = 20_000) -> int:
        """Delete risk points older than ``before_ts`` (:meth:`prune_older`); how many went."""
        return self.prune_older(RiskPoint.ts, before_ts, chunk=chunk)

    def prune_older(
        self,
        column: InstrumentedAttribute[float] | InstrumentedAttribute[float | None],
        before_ts: float,
        *where: ColumnElement[bool],
        chunk: int = 20_000,
    ) -> int:
        """Delete the rows of ``column``'s table whose ``column`` is older than ``before_ts`` (and
        that match ``where``), ``chunk`` rows per transaction; how many went.

        In chunks because a backlog (the first prune after the cloud was down, or after a retention
        was lowered) can be millions of rows: one DELETE of an 8-hour backlog of risk points
        (480,000 rows) held SQLite's single write lock, and every ingest write behind it, for 1.7 s;
        in chunks an ingest write waited at most 0.19 s (``bench/risk_history_scale.py``).
        ``column`` needs an index: each chunk is cut by it. Rows where it is NULL never go.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        table = column.class_
        total = 0
        while True:
            with self.transaction() as s:
                # The chunk-th oldest row's time, through the index; a chunk is cut by time
                # (``id IN (… LIMIT n)`` made PostgreSQL scan the table for every chunk: 8× slower).
                cut = s.scalar(
                    select(column)
                    .where(column < before_ts, *where)
                    .order_by(column)
                    .offset(chunk - 1)
                    .limit(1)
                )
                last = cut is None  # fewer than a chunk left: the rest goes
                cond = column < before_ts if last else column <= cut
                result = s.execute(
                    delete(table).where(cond, *where).execution_options(synchronize_session=False)
                )
            total += int(result.rowcount or 0)  # type: ignore[attr-defined]
            if last:
                return total

    # ---- leases ------------------------------------------------------------------------------
    @staticmethod
    def hold_lease(session: Session, name: str, owner: str, now: float, ttl_s: float) -> bool:
        """Take or renew ``name`` for ``owner`` until ``now + ttl_s``, inside ``session``'s transaction;
        False when another owner holds it unexpired (or the lease row does not exist yet).

        One conditional UPDATE, atomic on SQLite (one writer) and on PostgreSQL (a concurrent update
        of the row waits for the other's commit, then re-checks the WHERE): of two workers taking an
        expired lease at once, exactly one matches the row.
        """
        result = session.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.owner == owner, Lease.expires_ts <= now))
            .values(owner=owner, expires_ts=now + ttl_s)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def take_lease(self, name: str, owner: str, now: float, ttl_s: float) -> bool:
        """Take or renew ``name`` (its own transaction); creates the lease row on first use."""
        with self.transaction() as s:
            if self.hold_lease(s, name, owner, now, ttl_s):
                return True
            if s.get(Lease, name) is not None:
                return False
        try:
            with self.transaction() as s:
                s.add(Lease(name=name, owner=owner, expires_ts=now + ttl_s))
        except IntegrityError:
            return False  # another worker created it first, so it holds it
        return True

    def release_lease(self, name: str, owner: str) -> None:
        """Let ``name`` go now, if ``owner`` still holds it (never someone else's)."""
        with self.transaction() as s:
            s.execute(
                update(Lease)
                .where(Lease.name == name, Lease.owner == owner)
                .values(expires_ts=0.0)
                .execution_options(synchronize_session=False)
            )

    def lease(self, name: str) -> Lease | None:
        with self.transaction() as s:
            return s.get(Lease, name)
