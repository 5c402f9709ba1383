"""Shelving a tool (cloud/shelving.py): through the API with roles and clear refusals, shown on the
tools and alerts it covers, and held back by the notifier (recorded, never sent, not sent late),
while the alerts themselves are stored as ever; SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import login
from test_cloud_auth import api_context, serve
from test_cloud_notify import Clock, Receiver, _alert, _cfg, _rows

from cloud.api import create_app
from cloud.audit import rows as audit_rows
from cloud.auth import Users
from cloud.errors import ShelvingError
from cloud.ingest import Ingestor
from cloud.metrics import CloudMetrics
from cloud.notify import Notifier
from cloud.shelving import MAX_HOURS, shelve, unshelve
from cloud.storage import Repo
from cloud.storage.models import AlertRow, Tool
from cloud.testing import hardcase
from shared.messages import Telemetry
from shared.topics import Kind, topic


@pytest.fixture
def hook() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _ingest_alert(ingest: Ingestor, tool: str, clock: Clock) -> None:
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), _alert(tool, 0.9, ts=clock.t))


def _fleet(repo: Repo, tmp_path: Path, clock: Clock, tools: tuple[str, ...]) -> tuple[Ingestor, Any]:
    """An ingestor and an API context on ``clock``, operator olga and viewer vic, and a hard case
    of each of ``tools`` (so the cloud knows them)."""
    metrics = CloudMetrics()
    ingest = Ingestor(repo, metrics, clock=clock)
    users = Users(repo, 30 * 86400, 2**4, clock)
    users.add("olga", "olga-password", "operator")
    users.add("vic", "vic-password", "viewer")
    for tool in tools:
        hc = hardcase(window_ts=clock.t - 3600, seed=0, case_id=f"c-{tool}")
        assert ingest.handle(
            topic("fab1", "edge-1", Kind.HARDCASE), hc.model_copy(update={"tool_id": tool}).to_bytes()
        )
    return ingest, api_context(repo, tmp_path, users, metrics=metrics, clock=clock, ingest=ingest.handle)


def test_operators_shelve_and_unshelve_a_tool_and_everyone_sees_it(repo: Repo, tmp_path: Path):
    clock = Clock()
    ingest, ctx = _fleet(repo, tmp_path, clock, ("ETCH001", "ETCH002"))
    _ingest_alert(ingest, "ETCH001", clock)  # before any shelf
    with serve(create_app(ctx)) as client:
        olga, vic = login(client, "olga"), login(client, "vic")
        pm = {"hours": 8, "reason": "PM until Friday"}
        assert client.post("/api/tools/ETCH001/shelve", json=pm, headers=vic).status_code == 403
        assert client.post("/api/tools/NOPE/shelve", json=pm, headers=olga).status_code == 404
        for bad in ({"hours": 0}, {"hours": MAX_HOURS + 1}, {"reason": ""}, {"reason": "   "}):
            r = client.post("/api/tools/ETCH001/shelve", json=pm | bad, headers=olga)
            assert r.status_code == 422, (bad, r.text)
        week = client.post("/api/tools/ETCH001/shelve", json=pm | {"hours": MAX_HOURS + 1}, headers=olga)
        assert "168" in week.text  # the limit is in the refusal
        clock.t += 1
        done = client.post("/api/tools/ETCH001/shelve", json=pm, headers=olga)
        assert done.status_code == 200, done.text
        assert done.json()["end_ts"] == clock.t + 8 * 3600 and done.json()["by"] == "olga"

        clock.t += 600
        _ingest_alert(ingest, "ETCH001", clock)  # while shelved
        _ingest_alert(ingest, "ETCH002", clock)  # another tool: not shelved
        tools = {t["tool_id"]: t for t in client.get("/api/tools", headers=vic).json()}
        assert tools["ETCH001"]["shelf"]["reason"] == "PM until Friday"
        assert tools["ETCH001"]["shelf"]["end_ts"] == clock.t - 600 + 8 * 3600
        assert tools["ETCH002"]["shelf"] is None
        alerts = client.get("/api/alerts", headers=vic).json()
        said = {(a["tool_id"], a["received_ts"]): a["shelved"] for a in alerts}
        assert said[("ETCH001", clock.t - 601)] is None, "stored before the shelf: it was sent"
        assert said[("ETCH001", clock.t)]["by"] == "olga"
        assert said[("ETCH002", clock.t)] is None

        # Shelving again replaces the shelf (the old one ends now); unshelving ends it early.
        longer = client.post(
            "/api/tools/ETCH001/shelve", json={"hours": 72, "reason": "parts late"}, headers=olga
        )
        assert longer.status_code == 200
        history = client.get("/api/shelves?tool_id=ETCH001", headers=vic).json()
        assert [(h["reason"], h["active"]) for h in history] == [
            ("parts late", True),
            ("PM until Friday", False),
        ]
        assert history[1]["end_ts"] == clock.t and history[1]["ended_by"] == "olga"
        assert client.post("/api/tools/ETCH001/unshelve", headers=vic).status_code == 403
        clock.t += 60
        ended = client.post("/api/tools/ETCH001/unshelve", headers=olga)
        assert ended.status_code == 200 and ended.json()["end_ts"] == clock.t
        again = client.post("/api/tools/ETCH001/unshelve", headers=olga)
        assert again.status_code == 404 and "not shelved" in again.text
        assert client.get("/api/tools", headers=vic).json()[0]["shelf"] is None

        # A shelf ends by itself at its planned end.
        assert client.post(
            "/api/tools/ETCH002/shelve", json={"hours": 1, "reason": "qual"}, headers=olga
        ).is_success
        clock.t += 3601
        assert all(t["shelf"] is None for t in client.get("/api/tools", headers=vic).json())
    # Who shelved what, and why, is in the audit trail (written once each answer has gone out).
    deadline = time.monotonic() + 5
    while True:
        shelved = [r for r in audit_rows(repo) if r["action"] == "POST /api/tools/{tool_id}/shelve"]
        if [r["status"] for r in shelved].count(200) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [r["status"] for r in shelved].count(200) == 3, shelved
    assert any(r["actor"] == "olga" and "8 h: PM until Friday" in r["target"] for r in shelved), shelved
    with repo.transaction() as s:
        assert s.query(AlertRow).count() == 3, "shelving holds back notifications, never the alerts"


def test_the_module_refuses_a_shelf_with_no_end_or_reason(repo: Repo):
    with repo.transaction() as s:
        tool = Tool(tool_id="PUMP01", edge_id="edge-1", site="fab1", last_ts=0.0)
        s.add(tool)
        s.flush()
        for hours, reason in ((float("inf"), "x"), (-1.0, "x"), (1.0, "\n")):
            try:
                shelve(s, tool, hours, reason, "olga", 0.0)
            except ShelvingError:
                continue
            raise AssertionError(f"shelved for {hours} h with reason {reason!r}")


def test_a_shelved_tools_alerts_and_sensor_issues_are_recorded_not_sent(repo: Repo, hook: Receiver):
    clock = Clock()
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    metrics = CloudMetrics()
    cfg = _cfg(hook.url, {"kinds": ["alert", "sensor"]})
    notifier = Notifier(repo, cfg, "w1", metrics, clock=clock, env={"HOOK_KEY": "k"})
    _ingest_alert(ingest, "ETCH001", clock)
    with repo.transaction() as s:
        shelve(s, s.get(Tool, "ETCH001"), 4, "chamber wet clean", "olga", clock.t + 1)
    clock.t += 10
    _ingest_alert(ingest, "ETCH001", clock)  # raised while the tool is shelved
    _ingest_alert(ingest, "ETCH002", clock)
    stuck = {"throttle_valve": {"last": 40.0, "unchanged_s": 3 * 3600, "bad_s": 0.0}}
    tel = Telemetry(
        edge_id="edge-1", site="fab1", tool_id="ETCH001", period_s=60, summary=stuck, source_ts=clock.t
    )
    assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), tel.to_bytes())
    assert notifier.tick() == 2, "the alert stored before the shelf and the other tool's"
    sent = [(b["kind"], (b.get("alert") or b.get("sensor_issue"))["tool_id"]) for b, _ in hook.got]
    assert sorted(sent) == [("alert", "ETCH001"), ("alert", "ETCH002")]
    shelved = [r for r in _rows(repo) if r.status == "shelved"]
    assert sorted(r.subject.split(":")[0] for r in shelved) == ["alert", "sensor"]
    assert all(r.last_error == "not sent: ETCH001 shelved by olga: chamber wet clean" for r in shelved)
    assert all(r.attempts == 0 and r.done_ts == clock.t for r in shelved)
    assert 'outcome="shelved",target="teams"} 2.0' in metrics.render().decode()

    # Unshelved: what the shelf held back is not sent late; the tool's next alert is.
    with repo.transaction() as s:
        assert unshelve(s, "ETCH001", "olga", clock.t) is not None
    clock.t += 60
    assert notifier.tick() == 0 and len(hook.got) == 2
    _ingest_alert(ingest, "ETCH001", clock)
    assert notifier.tick() == 1 and hook.got[-1][0]["alert"]["tool_id"] == "ETCH001"


def test_a_shelf_planned_ahead_holds_back_only_its_stretch_and_can_be_cancelled(repo: Repo, tmp_path: Path):
    """A PM on the calendar: the shelf is set ahead, alerts before it start are sent as ever and
    those within it are held back; a plan that overlaps another is refused with what is in the
    way; a planned shelf is cancelled before it starts (and then never covered anything)."""
    clock = Clock()
    ingest, ctx = _fleet(repo, tmp_path, clock, ("ETCH001",))
    start = clock.t + 2 * 3600
    pm = {"hours": 8, "reason": "PM Friday 06:00", "start_ts": start}
    with serve(create_app(ctx)) as client:
        olga, vic = login(client, "olga"), login(client, "vic")
        far = client.post(
            "/api/tools/ETCH001/shelve", json=pm | {"start_ts": clock.t + 40 * 86400}, headers=olga
        )
        assert far.status_code == 422 and "31 days ahead" in far.text
        planned = client.post("/api/tools/ETCH001/shelve", json=pm, headers=olga)
        assert planned.status_code == 200, planned.text
        plan = planned.json()
        assert plan["start_ts"] == start and plan["end_ts"] == start + 8 * 3600
        clash = client.post(
            "/api/tools/ETCH001/shelve", json=pm | {"start_ts": start + 3600, "reason": "other"}, headers=olga
        )
        assert (
            clash.status_code == 422
            and f"shelf {plan['id']}" in clash.text
            and "cancel it first" in clash.text
        )
        now_for_day = client.post(
            "/api/tools/ETCH001/shelve", json={"hours": 24, "reason": "x"}, headers=olga
        )
        assert now_for_day.status_code == 422, "a shelf from now would swallow the planned one"
        listed = client.get("/api/shelves?tool_id=ETCH001", headers=vic).json()
        assert [(x["planned"], x["active"]) for x in listed] == [(True, False)]
        assert client.get("/api/tools", headers=vic).json()[0]["shelf"] is None, "not in force yet"
        _ingest_alert(ingest, "ETCH001", clock)  # before the PM: sent as ever
        clock.t = start + 60
        _ingest_alert(ingest, "ETCH001", clock)  # during the PM: held back
        assert client.get("/api/tools", headers=vic).json()[0]["shelf"]["reason"] == "PM Friday 06:00"
        said = sorted(
            (a["received_ts"], a["shelved"] is not None)
            for a in client.get("/api/alerts", headers=vic).json()
        )
        assert [held for _, held in said] == [False, True]
        assert client.post(f"/api/shelves/{plan['id']}/cancel", headers=vic).status_code == 403
        # Planned again for next week, then cancelled before it starts.
        nxt = pm | {"start_ts": start + 7 * 86400}
        again = client.post("/api/tools/ETCH001/shelve", json=nxt, headers=olga).json()
        cancelled = client.post(f"/api/shelves/{again['id']}/cancel", headers=olga)
        assert cancelled.status_code == 200 and cancelled.json()["end_ts"] == nxt["start_ts"]
        assert cancelled.json()["ended_by"] == "olga"
        clock.t = nxt["start_ts"] + 60
        assert client.get("/api/tools", headers=vic).json()[0]["shelf"] is None, "cancelled: never in force"
        over = client.post(f"/api/shelves/{plan['id']}/cancel", headers=olga)
        assert over.status_code == 409 and "already over" in over.text
        assert client.post("/api/shelves/999999/cancel", headers=olga).status_code == 404
