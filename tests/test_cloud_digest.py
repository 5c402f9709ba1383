"""The fleet's last day in one message (cloud/digest.py): its figures from what the cloud stored,
``GET /api/digest``, and a webhook of kind digest getting it once a day from its hour on; SQLite
and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from conftest import login
from test_cloud_auth import api_context, serve
from test_cloud_notify import Clock, Receiver, _alert, _cfg, _rows

from cloud.api import create_app
from cloud.auth import Users
from cloud.digest import digest
from cloud.ingest import Ingestor
from cloud.metrics import CloudMetrics
from cloud.notify import Notifier
from cloud.shelving import shelve
from cloud.storage import Repo
from cloud.storage.models import AlertRow, LearningRound, Tool
from cloud.testing import failure, maintenance
from shared.messages import Telemetry, Tuning
from shared.topics import Kind, topic

H = 3600.0


def _fleet_day(repo: Repo, clock: Clock) -> Ingestor:
    """A day: three alerts (one acknowledged) on two tools, one older; a failure and a
    maintenance; a stuck sensor; a tool shelved and one planned; a proposal waiting; a round."""
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    old = _alert("ETCH009", 0.9, ts=clock.t - 30 * H)
    for payload in (old,):
        clock.t -= 30 * H
        assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), payload)
        clock.t += 30 * H
    for tool in ("ETCH001", "ETCH001", "ETCH002"):
        assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), _alert(tool, 0.9, ts=clock.t))
    with repo.transaction() as s:
        first = s.query(AlertRow).filter(AlertRow.tool_id == "ETCH002").one()
        first.acknowledged_by = "olga"
    for ev in (
        failure("ETCH001", clock.t - 2 * H, "rf_match_drift"),
        maintenance("ETCH002", clock.t - 3 * H),
    ):
        assert ingest.handle(topic("fab1", "edge-1", Kind.EVENT), ev.to_bytes())
    stuck = {"throttle_valve": {"last": 40.0, "unchanged_s": 3 * H, "bad_s": 0.0}}
    tel = Telemetry(
        edge_id="edge-1", site="fab1", tool_id="ETCH002", period_s=60, summary=stuck, source_ts=clock.t
    )
    assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), tel.to_bytes())
    prop = Tuning(
        edge_id="edge-1", site="fab1", tool_id="ETCH002", action="proposal", proposal_id="p-1",
        setpoints={"rf_power": 505.0}, previous={"rf_power": 500.0},
    )  # fmt: skip
    assert ingest.handle(topic("fab1", "edge-1", Kind.TUNING), prop.to_bytes())
    with repo.transaction() as s:
        shelve(s, s.get(Tool, "ETCH001"), 8, "wet clean", "olga", clock.t)
        shelve(s, s.get(Tool, "ETCH002"), 8, "PM tomorrow", "olga", clock.t, start_ts=clock.t + 10 * H)
        s.add(
            LearningRound(
                trigger="labels", step="done", status="done", state={}, log=[], error="",
                label_watermark=clock.t, created_ts=clock.t - H, updated_ts=clock.t - 0.5 * H,
            )
        )  # fmt: skip
    return ingest


def test_the_digest_says_what_the_last_day_held(repo: Repo):
    clock = Clock()
    _fleet_day(repo, clock)
    with repo.transaction() as s:
        d = digest(s, clock.t)
    assert d["alerts"] == 3 and d["unacknowledged"] == 2, "the alert of 30 h ago is not in the day"
    assert d["alerts_by_tool"] == {"ETCH001": 2, "ETCH002": 1}
    assert d["failures"] == 1 and d["maintenance"] == 1
    assert d["sensor_issues_open"] == 1 and d["tuning_waiting"] == 1
    assert [x["tool_id"] for x in d["shelved"]] == ["ETCH001"]
    assert [x["tool_id"] for x in d["shelves_planned"]] == ["ETCH002"]
    assert d["rounds"] == {"done": 1} and d["rollbacks"] == 0
    assert d["text"] == (
        "fabpm, the last 24 h: 3 alerts (ETCH001 2, ETCH002 1), 2 not acknowledged; 1 failure and 1 "
        "maintenance reported; 1 sensor looking stuck or Bad now; shelved now: ETCH001 (wet clean); "
        "shelves starting within 24 h: ETCH002 (PM tomorrow); 1 tuning proposal waiting for approval; "
        "learning rounds: 1 done."
    )
    with repo.transaction() as s:  # the equipment's clock: its now is the newest source time held
        half = digest(s, clock.t, hours=0.5)
    assert (half["failures"], half["maintenance"]) == (1, 0), "the maintenance came 1 h before the failure"
    assert half["alerts"] == 3, "stored within the half hour (the cloud's clock)"


def test_a_digest_webhook_gets_one_a_day_from_its_hour(repo: Repo, tmp_path: Path):
    hook = Receiver()
    try:
        clock = Clock()
        clock.t = 20 * 86400 + 5 * H  # 05:00 UTC
        _fleet_day(repo, clock)
        cfg = _cfg(hook.url, {"name": "morning", "kinds": ["digest"], "digest_hour_utc": 6})
        notifier = Notifier(repo, cfg, "w1", CloudMetrics(), clock=clock, env={"HOOK_KEY": "k"})
        assert notifier.tick() == 0 and not hook.got, "not before 06:00"
        clock.t += H + 60
        assert notifier.tick() == 1
        ((body, _),) = hook.got
        assert body["kind"] == "digest" and body["target"] == "morning"
        assert body["text"].startswith("fabpm, the last 24 h: 3 alerts") and body["digest"]["alerts"] == 3
        clock.t += 12 * H
        assert notifier.tick() == 0 and len(hook.got) == 1, "once a day"
        clock.t += 12 * H  # the next morning
        assert notifier.tick() == 1 and len(hook.got) == 2
        assert [r.subject for r in _rows(repo)] == ["digest:1970-01-21", "digest:1970-01-22"]
        users = Users(repo, 3600, 2**4, clock)
        users.add("vic", "vic-password", "viewer")
        with serve(create_app(api_context(repo, tmp_path, users, clock=clock))) as client:
            vic = login(client, "vic")
            got = client.get("/api/digest?hours=48", headers=vic)
            assert got.status_code == 200 and got.json()["hours"] == 48
            assert client.get("/api/digest?hours=0", headers=vic).status_code == 422
            assert client.get("/api/digest").status_code == 401
    finally:
        hook.close()
