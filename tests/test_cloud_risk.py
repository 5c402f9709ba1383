"""Each tool's risk history from telemetry: stored, thinned for a chart with its peaks kept, pruned
(real databases: SQLite; PostgreSQL when CI has it)."""

from __future__ import annotations

import pytest
from conftest import login
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from test_cloud_auth import Clock, api_context, serve

from cloud.api import create_app
from cloud.auth import Users
from cloud.ingest import Ingestor
from cloud.metrics import CloudMetrics
from cloud.storage import Repo
from cloud.storage.models import SensorIssueRow, Tool
from shared.messages import RISK_TRACE_MAX, Alert, Event, RiskSample, Telemetry
from shared.risk_trace import thin_peaks
from shared.topics import Kind, topic


def _telemetry(ts: float, risk: dict[str, float], tool: str = "etch-01", **more: object) -> bytes:
    more = {"summary": {}} | more
    msg = Telemetry(edge_id="edge-1", site="fab1", tool_id=tool, period_s=60, risk=risk, ts=ts, **more)
    return msg.to_bytes()


def test_risk_is_kept_per_tool_thinned_with_its_peaks_and_pruned(repo: Repo):
    ingest = Ingestor(repo, CloudMetrics())
    t0 = 1_000_000.0
    for i in range(1000):  # a reading a minute for about 17 hours; one spike at minute 500
        wear = 0.9 if i == 500 else 0.1 + i / 10_000
        assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), _telemetry(t0 + 60 * i, {"wear": wear}))
    assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), _telemetry(t0, {"seal": 0.5}, "cvd-01"))
    assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), _telemetry(t0, {}, "cvd-01"))  # no risk

    full = repo.risk_history("etch-01", t0, max_points=2000)
    assert len(full) == 1000 and full[0] == (t0, {"wear": 0.1})
    chart = repo.risk_history("etch-01", t0, max_points=100)
    assert 90 <= len(chart) <= 100
    assert [ts for ts, _ in chart] == sorted(ts for ts, _ in chart)
    assert max(r["wear"] for _, r in chart) == pytest.approx(0.9)  # the spike survives the thinning
    assert chart[-1][0] == full[-1][0]
    assert repo.risk_history("etch-01", t0 + 60 * 990, max_points=100) == full[990:]
    assert len(repo.risk_history("cvd-01", 0, 100)) == 1

    # In chunks of 64 (many transactions, the last one short): etch-01's first 900 minutes and
    # cvd-01's point, none of the newer ones.
    assert repo.prune_risk(t0 + 60 * 900, chunk=64) == 900 + 1
    assert len(repo.risk_history("etch-01", 0, 2000)) == 100
    assert repo.prune_risk(t0 + 60 * 950, chunk=50) == 50  # exactly one full chunk, then an empty one
    assert repo.risk_history("etch-01", 0, 2000) == full[950:]
    with pytest.raises(ValueError, match="chunk"):
        repo.prune_risk(t0, chunk=0)


def _type(repo: Repo, tool_id: str) -> str | None:
    with repo.transaction() as s:
        tool = s.get(Tool, tool_id)
        assert tool is not None
        return tool.tool_type


def test_telemetry_tells_the_cloud_a_tools_type(repo: Repo):
    """A tool's type arrives with its telemetry (before any hard case); telemetry from an older
    edge, without it, leaves the known type as it is."""
    ingest = Ingestor(repo, CloudMetrics())
    where = topic("fab1", "edge-1", Kind.TELEMETRY)
    assert ingest.handle(where, _telemetry(1000.0, {"wear": 0.1}, "pump-01"))
    assert _type(repo, "pump-01") is None
    ingest = Ingestor(repo, CloudMetrics())  # a new worker: nothing cached as fresh
    assert ingest.handle(where, _telemetry(2000.0, {"wear": 0.1}, "pump-01", tool_type="vacuum_pump"))
    assert _type(repo, "pump-01") == "vacuum_pump"
    ingest = Ingestor(repo, CloudMetrics())
    assert ingest.handle(where, _telemetry(3000.0, {"wear": 0.1}, "pump-01"))
    assert _type(repo, "pump-01") == "vacuum_pump"


def _span(repo: Repo, tool_id: str) -> tuple[float | None, float | None]:
    with repo.transaction() as s:
        tool = s.get(Tool, tool_id)
        assert tool is not None
        return tool.first_source_ts, tool.last_source_ts


def test_a_tools_span_on_the_equipment_clock_comes_from_every_message_with_a_source_time(repo: Repo):
    """What false alarms per tool-month are counted over: the first and last source time of the
    tool's telemetry, alerts, events and cases, whatever order they arrive in (an outbox replays
    old ones after an outage), on the equipment's clock, not the edge's send time."""
    sent = 5_000_000.0  # the edge's clock, months off the equipment's (a simulator)
    where = {k: topic("fab1", "edge-1", k) for k in (Kind.TELEMETRY, Kind.ALERT, Kind.EVENT)}
    ingest = Ingestor(repo, CloudMetrics())
    assert ingest.handle(where[Kind.TELEMETRY], _telemetry(sent, {}, "pump-01"))  # an older edge
    assert _span(repo, "pump-01") == (None, None)
    for i, src in enumerate((1000.0, 5000.0)):
        ingest = Ingestor(repo, CloudMetrics())  # a new worker each time: nothing cached as fresh
        assert ingest.handle(where[Kind.TELEMETRY], _telemetry(sent + i, {}, "pump-01", source_ts=src))
    assert _span(repo, "pump-01") == (1000.0, 5000.0)
    late = Alert(
        edge_id="edge-1", site="fab1", tool_id="pump-01", mode="bearing_wear", probability=0.9,
        model_version="r1", episode_start_ts=400.0, source_ts=400.0, ts=sent + 10,
    )  # fmt: skip
    assert Ingestor(repo, CloudMetrics()).handle(where[Kind.ALERT], late.to_bytes())
    event = Event(edge_id="edge-1", site="fab1", tool_id="pump-01", event="failure", source_ts=9e3, ts=sent)
    assert Ingestor(repo, CloudMetrics()).handle(where[Kind.EVENT], event.to_bytes())
    assert _span(repo, "pump-01") == (400.0, 9000.0)


def test_each_stretch_a_sensor_looks_wrong_is_one_row_opened_extended_and_ended(repo: Repo):
    """From the edge's sensor health in each telemetry: a stuck valve opens a stretch when it passes
    2 h (starting when it stuck, on the equipment's clock), later telemetry extends it, the first
    without it ends it; a sensor that goes Bad after is a stretch of its own."""
    h = 3600.0

    def tel(src: float, valve_still_h: float, gauge_bad_h: float = 0.0) -> bytes:
        summary = {
            "throttle_valve": {"last": 40.0, "unchanged_s": valve_still_h * h, "bad_s": 0.0},
            "chamber_pressure": {"last": None, "unchanged_s": 0.0, "bad_s": gauge_bad_h * h},
        }
        return _telemetry(src + 5e6, {}, "etch-01", summary=summary, source_ts=src)

    def stretches() -> list[tuple[str, str, float, float, float | None, bool]]:
        with repo.transaction() as s:
            rows = s.scalars(select(SensorIssueRow).order_by(SensorIssueRow.id))
            # closed_ts: when the cloud ended it (retention goes by it), None while open
            return [(r.sensor, r.issue, r.start_ts, r.hours, r.end_ts, r.closed_ts is None) for r in rows]

    where = topic("fab1", "edge-1", Kind.TELEMETRY)
    # (source time, the valve unchanged for h, the gauge Bad for h)
    steps = ((0.0, 1.0, 0.0), (h, 2.5, 0.0), (2 * h, 3.5, 0.0), (3 * h, 0.0, 0.0), (4 * h, 0.0, 0.6))
    for src, still, bad in steps:
        ingest = Ingestor(repo, CloudMetrics())  # a new worker each time: nothing cached as fresh
        assert ingest.handle(where, tel(src, still, bad))
    assert stretches() == [
        ("throttle_valve", "unchanged", h - 2.5 * h, 3.5, 3 * h, False),
        ("chamber_pressure", "no_good_value", 4 * h - 0.6 * h, pytest.approx(0.6), None, True),
    ]


def test_the_cloud_s_sensor_limits_decide_what_is_flagged(repo: Repo):
    """``[sensors]`` in cloud.toml: a valve still for 1.5 h is no issue by default (2 h), one at 1 h."""
    from cloud.config import SensorsConfig

    valve = {"throttle_valve": {"last": 40.0, "unchanged_s": 1.5 * 3600, "bad_s": 0.0}}
    where = topic("fab1", "edge-1", Kind.TELEMETRY)
    assert Ingestor(repo, CloudMetrics()).handle(where, _telemetry(1.0, {}, "etch-01", summary=valve))
    with repo.transaction() as s:
        assert s.scalar(select(SensorIssueRow)) is None
    strict = SensorsConfig(unchanged_h=1.0)
    assert Ingestor(repo, CloudMetrics(), sensor_limits=strict).handle(
        where, _telemetry(2.0, {}, "etch-01", summary=valve)
    )
    with repo.transaction() as s:
        assert s.scalars(select(SensorIssueRow.sensor)).all() == ["throttle_valve"]
    with pytest.raises(ValueError, match="unchanged_h"):
        SensorsConfig(unchanged_h=0)


def test_two_workers_opening_one_stretch_at_once_leave_one_row(repo: Repo, monkeypatch: pytest.MonkeyPatch):
    """Two workers handling two telemetry messages of one tool at the same instant both read "no
    open stretch" (PostgreSQL's read committed) and both insert. Played here by inserting the other
    worker's row in the same transaction before this worker's own insert: the unique index refuses
    the second, the message's transaction runs again and extends the one row, and nothing is lost."""
    import cloud.ingest

    real_track = cloud.ingest.track_sensor_issues
    raced: list[float] = []

    def track_after_the_other_worker(session, where, issues, at, now):  # type: ignore[no-untyped-def]
        if not raced:
            raced.append(at)
            edge_id, site, tool_id = where
            for issue in issues:
                session.add(
                    SensorIssueRow(
                        tool_id=tool_id, edge_id=edge_id, site=site, sensor=issue["sensor"],
                        issue=issue["issue"], start_ts=at, last_ts=at, hours=issue["hours"], received_ts=now,
                    )
                )  # fmt: skip
        real_track(session, where, issues, at, now)

    monkeypatch.setattr(cloud.ingest, "track_sensor_issues", track_after_the_other_worker)
    valve = {"throttle_valve": {"last": 40.0, "unchanged_s": 3 * 3600, "bad_s": 0.0}}
    where = topic("fab1", "edge-1", Kind.TELEMETRY)
    assert Ingestor(repo, CloudMetrics()).handle(where, _telemetry(7200.0, {}, "etch-01", summary=valve))
    assert raced
    with repo.transaction() as s:
        rows = s.scalars(select(SensorIssueRow)).all()
        assert [(r.sensor, r.end_ts) for r in rows] == [("throttle_valve", None)]
        tool = s.get(Tool, "etch-01")
        assert tool is not None and tool.summary == valve  # the telemetry itself was stored
    with pytest.raises(IntegrityError), repo.transaction() as s:  # the index itself, on both databases
        s.add(
            SensorIssueRow(
                tool_id="etch-01", edge_id="edge-1", site="fab1", sensor="throttle_valve", issue="unchanged",
                start_ts=0.0, last_ts=1.0, hours=3.0, received_ts=1.0,
            )
        )  # fmt: skip


def test_the_migration_closes_duplicate_open_stretches_a_race_left(db_url: str):
    """A database that met the race before migration 0015 keeps the oldest of each open stretch."""
    from cloud.storage import make_engine, migrate

    engine = make_engine(db_url)
    try:
        assert migrate(engine, "0014") == "0014"
        repo = Repo(engine)
        with repo.transaction() as s:
            for i in range(3):
                s.add(
                    SensorIssueRow(
                        tool_id="etch-01", edge_id="edge-1", site="fab1", sensor="throttle_valve",
                        issue="unchanged", start_ts=0.0, last_ts=10.0 + i, hours=3.0, received_ts=5.0 + i,
                    )
                )  # fmt: skip
        migrate(engine)
        with repo.transaction() as s:
            rows = s.scalars(select(SensorIssueRow).order_by(SensorIssueRow.id)).all()
            assert [(r.end_ts, r.closed_ts) for r in rows] == [(None, None), (11.0, 6.0), (12.0, 7.0)]
    finally:
        engine.dispose()


def test_the_risk_chart_is_on_the_equipments_clock_with_every_step_and_the_failures(repo: Repo, tmp_path):
    """An edge sends the risk at each window it ran (``risk_trace``); the chart's hours end at the
    tool's newest source time, its points, alerts and failures on that clock as the tool's history
    is, even with the equipment's clock months behind the cloud's (the demo's simulator)."""
    clock = Clock()
    metrics = CloudMetrics()
    ingest = Ingestor(repo, metrics, clock=clock)
    users = Users(repo, 3600, 2**4, clock)
    users.add("vic", "vic-password", "viewer")
    h = 3600.0
    t0 = clock.t - 300 * 86400  # the equipment's clock, far behind the cloud's
    tel = topic("fab1", "edge-1", Kind.TELEMETRY)
    for m in range(100):  # 100 telemetry messages, each with the 30 steps (30 min) run since the last
        clock.t += 60.0
        trace = [
            RiskSample(ts=t0 + (30 * m + k) * h / 2, risk={"wear": min(1.0, (30 * m + k) / 3000)})
            for k in range(30)
        ]
        assert ingest.handle(
            tel, _telemetry(clock.t, {"wear": 0.5}, source_ts=trace[-1].ts, risk_trace=trace)
        )
    end = t0 + 2999 * h / 2
    clock.t += 60.0
    assert ingest.handle(tel, _telemetry(clock.t, {"wear": 0.5}, source_ts=end, risk_trace=[]))  # nothing ran
    for before in (80, 20):  # the first outside the 72 h
        alert = Alert(
            edge_id="edge-1", site="fab1", tool_id="etch-01", mode="wear", probability=0.9,
            model_version="r1", episode_start_ts=end - before * h, source_ts=end - before * h,
        )  # fmt: skip
        assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), alert.to_bytes())
    fail = Event(
        edge_id="edge-1", site="fab1", tool_id="etch-01", event="failure", mode="wear", source_ts=end
    )
    assert ingest.handle(topic("fab1", "edge-1", Kind.EVENT), fail.to_bytes())
    ctx = api_context(repo, tmp_path, users, metrics=metrics, clock=clock, ingest=ingest.handle)
    with serve(create_app(ctx)) as client:
        got = client.get("/api/tools/etch-01/risk?hours=72&points=2000", headers=login(client, "vic")).json()
    assert got["until_ts"] == end and got["since_ts"] == end - 72 * h
    assert len(got["points"]) == 145 and got["points"][-1]["ts"] == end  # a point per half hour
    assert got["points"][0]["ts"] == end - 72 * h
    assert [a["ts"] for a in got["alerts"]] == [end - 20 * h]  # its source time, not when sent
    assert got["events"] == [{"ts": end, "event": "failure", "mode": "wear"}]
    assert got["points"][-1]["risk"]["wear"] == pytest.approx(2999 / 3000)


def test_an_edge_thins_its_risk_trace_to_the_messages_cap_with_the_peak_kept():
    points = [(float(i), {"wear": 0.9 if i == 777 else 0.1}) for i in range(3600)]
    thin = thin_peaks(points, RISK_TRACE_MAX)
    assert len(thin) == RISK_TRACE_MAX and thin[-1][0] == 3599.0
    assert max(r["wear"] for _, r in thin) == 0.9
    assert thin_peaks(points[:5], RISK_TRACE_MAX) == points[:5]
    with pytest.raises(ValueError):
        thin_peaks(points, 0)


def test_a_risk_trace_out_of_range_or_too_long_is_refused_with_the_reason():
    from shared.errors import SchemaError
    from shared.messages import parse_payload

    ok = _telemetry(1.0, {}, risk_trace=[RiskSample(ts=1.0, risk={"wear": 0.2})])
    assert parse_payload(ok, Kind.TELEMETRY).risk_trace == [RiskSample(ts=1.0, risk={"wear": 0.2})]
    bad = ok.replace(b'"wear":0.2', b'"wear":1.5')
    with pytest.raises(SchemaError, match="risk_trace"):
        parse_payload(bad, Kind.TELEMETRY)
    many = [RiskSample(ts=float(i), risk={"wear": 0.1}) for i in range(RISK_TRACE_MAX + 1)]
    with pytest.raises(ValueError):
        _telemetry(1.0, {}, risk_trace=many)
