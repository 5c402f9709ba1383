"""The hourly prune keeps the database bounded: old de-duplication keys, state and alarm events,
dead letters and risk points go; failures and maintenance (they bound the labels) stay."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from conftest import cloud_config, free_port
from sqlalchemy import func, select

from cloud import audit
from cloud.service import CloudService
from cloud.storage import migrate
from cloud.storage.models import (
    AuditEntry,
    DeadLetter,
    EventRow,
    LoginFailure,
    RiskPoint,
    SeenMessage,
    SensorIssueRow,
    ShelfRow,
)

NOW = 100 * 86400.0
DAY = 86400.0


def _event(msg_id: str, event: str, days_ago: float) -> EventRow:
    state = "productive" if event == "state" else None
    return EventRow(
        msg_id=msg_id, edge_id="e1", site="s1", tool_id="t1", event=event,
        state=state, mode=None, source_ts=NOW - days_ago * DAY, detail={},
    )  # fmt: skip


def test_old_rows_go_and_what_bounds_the_labels_stays(db_url: str, tmp_path: Path):
    storage = {"url": db_url, "dedup_days": 30, "state_events_days": 90, "dead_letters_days": 7}
    svc = CloudService(cloud_config(db_url, free_port(), tmp_path, storage=storage), clock=lambda: NOW)
    try:
        migrate(svc.engine)  # start() would; this test calls the prune alone
        with svc.repo.transaction() as s:
            for i, days in enumerate((40, 31, 29, 1)):
                s.add(SeenMessage(msg_id=f"m{i}", kind="event", edge_id="e1", received_ts=NOW - days * DAY))
            s.add_all(
                [
                    _event("old-state", "state", 95),
                    _event("old-alarm", "alarm", 91),
                    _event("new-state", "state", 10),
                    _event("now-state", "state", 0),  # the equipment's clock is the cloud's here
                    _event("old-failure", "failure", 400),
                    _event("old-maintenance", "maintenance", 200),
                ]
            )
            for days in (8, 6):
                s.add(DeadLetter(topic="x", reason="bad", payload=b"{", size=1, received_ts=NOW - days * DAY))
            s.add(RiskPoint(tool_id="t1", ts=NOW - 31 * DAY, risk={"wear": 0.1}))
            for user, days in (("gone", 1.1), ("kept", 0.9)):  # a key is forgotten a day after its failure
                ago = NOW - days * DAY
                s.add(LoginFailure(username=user, client="c", failures=9, blocked_until=0, last_ts=ago))
            # (opened, ended) days ago: what ended 90 days ago goes, however long it lasted
            for sensor, opened, ended in (("old", 200, 95), ("open", 200, None), ("long", 200, 10)):
                s.add(
                    SensorIssueRow(
                        tool_id="t1", edge_id="e1", site="s1", sensor=sensor, issue="unchanged", start_ts=0,
                        last_ts=0, hours=3, received_ts=NOW - opened * DAY,
                        end_ts=None if ended is None else 0.0,
                        closed_ts=None if ended is None else NOW - ended * DAY,
                    )
                )  # fmt: skip
            for days in (366, 364):  # the audit trail: a year
                s.add(audit.entry("ada", "admin", "c", "POST /api/users", "", 200, ts=NOW - days * DAY))
                end = NOW - days * DAY  # shelves as long, by when they ended
                s.add(ShelfRow(tool_id=f"t{days}", site="s1", reason="PM", by="olga", start_ts=end - DAY,
                               planned_end_ts=end, end_ts=end))  # fmt: skip
        svc._prune()
        with svc.repo.transaction() as s:
            assert s.scalar(select(func.count()).select_from(AuditEntry)) == 1
            assert list(s.scalars(select(ShelfRow.tool_id))) == ["t364"]
            assert sorted(s.scalars(select(SeenMessage.msg_id))) == ["m2", "m3"]
            kept = sorted(s.scalars(select(EventRow.msg_id)))
            assert kept == ["new-state", "now-state", "old-failure", "old-maintenance"]
            assert s.scalar(select(func.count()).select_from(DeadLetter)) == 1
            assert s.scalar(select(func.count()).select_from(RiskPoint)) == 0
            assert list(s.scalars(select(LoginFailure.username))) == ["kept"]
            # sensor issues as state events; one still open stays whatever its age
            assert sorted(s.scalars(select(SensorIssueRow.sensor))) == ["long", "open"]
    finally:
        svc.stop()


def test_events_age_by_the_equipments_clock_not_the_clouds(db_url: str, tmp_path: Path):
    """A simulator's clock runs months off the cloud's (the demo's by about eleven): its state
    changes are aged from the newest source time the cloud holds, so those of its first hours are
    not pruned as soon as they come (they were, and the E10 figures lost them)."""
    storage = {"url": db_url, "state_events_days": 90}
    year_later = NOW + 365 * DAY  # the cloud's clock; the equipment's "now" is NOW (its newest event)
    svc = CloudService(cloud_config(db_url, free_port(), tmp_path, storage=storage), clock=lambda: year_later)
    try:
        migrate(svc.engine)
        with svc.repo.transaction() as s:
            s.add_all(
                [_event("newest", "state", 0), _event("day-old", "state", 1), _event("stale", "state", 95)]
            )
        svc._prune()
        with svc.repo.transaction() as s:
            assert sorted(s.scalars(select(EventRow.msg_id))) == ["day-old", "newest"]
            # One tool whose clock is years ahead does not age the others' history past the cloud's.
            s.add(_event("clock-wrong", "state", -5 * 365))
        svc.clock = lambda: NOW + DAY
        svc._prune()
        with svc.repo.transaction() as s:
            assert sorted(s.scalars(select(EventRow.msg_id))) == ["clock-wrong", "day-old", "newest"]
    finally:
        svc.stop()


def test_stop_lets_a_job_in_flight_end_before_the_database_goes(db_url: str, mosquitto, tmp_path: Path):
    svc = CloudService(cloud_config(db_url, mosquitto.port, tmp_path))
    started, done = threading.Event(), threading.Event()

    def slow_prune() -> None:  # stands for a prune or a notifier tick that is mid-write at stop
        started.set()
        time.sleep(0.5)
        with svc.repo.transaction() as s:
            s.add(DeadLetter(topic="x", reason="late", payload=b"{", size=1, received_ts=NOW))
        done.set()

    try:
        svc.start()
        # An interval job, as the worker's own are (a one-shot job is removed after it is handed to
        # the pool, and that removal raced the shutdown once: JobLookupError in the scheduler thread).
        soon = datetime.now(UTC)
        every = {"hours": 1, "next_run_time": soon, "misfire_grace_time": None}
        svc.scheduler.add_job(slow_prune, "interval", id="slow", **every)
        assert started.wait(10)
    finally:
        svc.stop()
    assert done.is_set()  # stop() returned only after the job's write
