"""The fleet's SEMI E10 availability from the state changes the edges report (cloud/e10_report.py):
figures worked out by hand, on the equipment's clock, a plant state that is not E10 kept apart,
and a window longer than the state events are kept refused; SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import login
from test_cloud_auth import api_context, serve

from cloud.api import create_app
from cloud.auth import Users
from cloud.e10_report import CACHE_ENTRIES, CACHE_S, CachedReports, describe_fleet, e10_report
from cloud.ingest import Ingestor
from cloud.metrics import CloudMetrics
from cloud.storage import Repo
from shared.messages import Event, Telemetry
from shared.topics import Kind, topic

DAY, H = 86400.0, 3600.0
T0 = 1_800_000_000.0  # the equipment's clock: far from the cloud's, as a simulator's is


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _state(ingest: Ingestor, clock: Clock, tool: str, ts: float, state: str) -> None:
    clock.t += 120  # past the ingest's touch interval: each message moves the tool's span
    kind = {"unscheduled_down": "failure", "scheduled_down": "maintenance"}.get(state, "state")
    ev = Event(edge_id="edge-1", site="fab1", tool_id=tool, event=kind, state=state, source_ts=ts)
    assert ingest.handle(topic("fab1", "edge-1", Kind.EVENT), ev.to_bytes())


def _seed(repo: Repo, clock: Clock) -> None:
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    for ts, state in (
        (T0 - 40 * DAY, "productive"),  # before the window: the state it opens in
        (T0 - 20 * DAY, "unscheduled_down"),  # a failure, repaired in 10 h
        (T0 - 20 * DAY + 10 * H, "productive"),
        (T0 - 10 * DAY, "scheduled_down"),  # a PM of 5 h
        (T0 - 10 * DAY + 5 * H, "WARMUP"),  # the plant's own state, not an E10 one: 1 h
        (T0 - 10 * DAY + 6 * H, "standby"),
    ):
        _state(ingest, clock, "ETCH001", ts, state)
    clock.t += 120
    tel = Telemetry(edge_id="edge-1", site="fab1", tool_id="ETCH001", period_s=60, summary={}, source_ts=T0)
    assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), tel.to_bytes())
    # A second tool that came up in the window and whose edge went quiet 2 days before now.
    _state(ingest, clock, "PUMP001", T0 - 5 * DAY, "standby")
    _state(ingest, clock, "PUMP001", T0 - 4 * DAY, "productive")
    _state(ingest, clock, "PUMP001", T0 - 3 * DAY, "unscheduled_down")
    _state(ingest, clock, "PUMP001", T0 - 3 * DAY + 2 * H, "standby")
    _state(ingest, clock, "PUMP001", T0 - 2 * DAY, "standby")  # a repeated report: not a change


def test_availability_by_hand(repo: Repo):
    clock = Clock()
    _seed(repo, clock)
    report = e10_report(repo, clock(), 30, 90)
    assert report["now_ts"] == T0 and report["since_ts"] == T0 - 30 * DAY
    etch, pump = report["tools"]
    assert etch["tool_id"] == "ETCH001" and pump["tool_id"] == "PUMP001"
    hours = etch["hours"]
    assert hours["unscheduled_down"] == 10 and hours["scheduled_down"] == 5
    assert hours["standby"] == 10 * 24 - 6 and hours["productive"] == 720 - 10 - 5 - 1 - 234
    assert etch["unmapped_h"] == 1 and etch["known_h"] == 720
    assert etch["failures"] == 1 and etch["mttr_h"] == 10 and etch["mtbf_productive_h"] == 470
    assert etch["equipment_uptime_pct"] == pytest.approx(100 * (470 + 234) / 719)
    # PUMP001: known from its first state to its last report (5 days − 2 days), one failure of 2 h
    assert pump["known_h"] == 3 * 24 and pump["failures"] == 1 and pump["mttr_h"] == 2
    assert pump["hours"]["productive"] == 24 and pump["hours"]["standby"] == 24 + 22
    fleet = report["fleet"]
    assert fleet["tools"] == 2 and fleet["failures"] == 2 and fleet["unscheduled_down_h"] == 12
    assert fleet["mttr_h"] == 6 and fleet["mtbf_productive_h"] == (470 + 24) / 2
    assert fleet["known_h"] == 720 + 72 and fleet["unmapped_h"] == 1
    assert describe_fleet(report) == (  # uptime (704 + 70) / (719 + 72)
        "equipment uptime 97.9% (SEMI E10, 2 tools, 792 tool-hours known), 2 failures, 12.0 h "
        "unscheduled down, 5.0 h scheduled down, MTBF 247 h, MTTR 6.0 h"
    )
    # A week back: the failure of ETCH001 is before it, its PM inside.
    week = e10_report(repo, clock(), 7, 90)["tools"][0]
    assert week["failures"] == 0 and week["mtbf_productive_h"] is None and week["mttr_h"] is None
    assert week["hours"]["scheduled_down"] == 0 and week["hours"]["standby"] == 7 * 24


def test_mttr_counts_the_repairs_that_ended_not_one_still_under_way(repo: Repo):
    """A tool that failed 3 h before its last report and is still down: its downtime and failure
    count, but its MTTR is over the repair that ended (4 h), not (4 + 2) / 2 = 3 h; a tool down
    since before the window has no MTTR in it at all."""
    clock = Clock()
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    for ts, state in (
        (T0 - 48 * H, "productive"),
        (T0 - 30 * H, "unscheduled_down"),
        (T0 - 26 * H, "productive"),
        (T0 - 3 * H, "unscheduled_down"),
    ):
        _state(ingest, clock, "CVD001", ts, state)
    _state(ingest, clock, "PUMP002", T0 - 40 * DAY, "unscheduled_down")  # down all window long
    for tool in ("CVD001", "PUMP002"):  # each reported to an hour before the equipment's now
        clock.t += 120
        tel = Telemetry(
            edge_id="edge-1", site="fab1", tool_id=tool, period_s=60, summary={}, source_ts=T0 - H
        )
        assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), tel.to_bytes())
    report = e10_report(repo, clock(), 30, 90)
    cvd, pump = report["tools"]
    assert cvd["failures"] == 2 and cvd["unscheduled_down_h"] == 6 and cvd["down_now"]
    assert cvd["mttr_h"] == 4
    assert pump["failures"] == 0 and pump["unscheduled_down_h"] == 720 and pump["mttr_h"] is None
    assert pump["down_now"]
    fleet = report["fleet"]
    assert fleet["failures"] == 2 and fleet["unscheduled_down_h"] == 726 and fleet["mttr_h"] == 4


def test_the_api_serves_it_to_viewers_and_refuses_a_window_beyond_the_events_kept(repo: Repo, tmp_path: Path):
    clock = Clock()
    _seed(repo, clock)
    users = Users(repo, 3600, 2**4, clock)
    users.add("vic", "vic-password", "viewer")
    ctx = api_context(repo, tmp_path, users, clock=clock, state_events_days=60)
    with serve(create_app(ctx)) as client:
        assert client.get("/api/e10").status_code == 401
        vic = login(client, "vic")
        got = client.get("/api/e10?days=30", headers=vic)
        assert got.status_code == 200 and got.json()["fleet"]["failures"] == 2
        far = client.get("/api/e10?days=61", headers=vic)
        assert far.status_code == 422 and "state_events_days" in far.text


def test_a_report_is_reused_for_a_minute_and_few_windows_are_kept(repo: Repo):
    clock, mono = Clock(), Clock()
    _seed(repo, clock)
    reports = CachedReports(repo, 90, monotonic=mono)
    first = reports.get(clock(), 30)
    _state(Ingestor(repo, CloudMetrics(), clock=clock), clock, "PUMP001", T0 - 1 * DAY, "unscheduled_down")
    mono.t += CACHE_S - 1
    assert reports.get(clock(), 30) is first
    mono.t += 2
    assert reports.get(clock(), 30)["fleet"]["failures"] == first["fleet"]["failures"] + 1
    for days in range(1, 3 * CACHE_ENTRIES):
        reports.get(clock(), days)
    assert len(reports._kept) == CACHE_ENTRIES
    with pytest.raises(ValueError, match="state_events_days"):
        reports.get(clock(), 91)
