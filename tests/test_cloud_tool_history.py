"""A tool's history (cloud/tool_history.py, ``GET /api/tools/{id}/history``): the equipment's and
the operators' events and the alerts on one time line on the equipment's clock, newest first,
with plain state changes only when asked for, paged back without a gap; SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from conftest import login
from test_cloud_auth import Clock, api_context, serve

from cloud.api import create_app
from cloud.auth import Users
from cloud.ingest import Ingestor
from cloud.metrics import CloudMetrics
from cloud.storage import Repo
from cloud.testing import hardcase
from shared.messages import Alert, Event
from shared.topics import Kind, topic

H = 3600.0


def _event(tool: str, kind: str, ts: float, **kw: object) -> bytes:
    msg = Event(edge_id="edge-1", site="fab1", tool_id=tool, event=kind, source_ts=ts, **kw)  # type: ignore[arg-type]
    return msg.to_bytes()


def test_a_tools_history_puts_events_and_alerts_on_one_time_line(repo: Repo, tmp_path: Path):
    clock = Clock()
    metrics = CloudMetrics()
    ingest = Ingestor(repo, metrics, clock=clock)
    users = Users(repo, 3600, 2**4, clock)
    users.add("olga", "olga-password", "operator")
    users.add("vic", "vic-password", "viewer")
    t0 = clock.t - 100 * H  # the equipment's clock: an alert's wall time (ts) is later
    hc = hardcase(window_ts=t0, seed=0, case_id="c1")
    assert ingest.handle(topic("fab1", "edge-1", Kind.HARDCASE), hc.to_bytes())
    tool = hc.tool_id
    send = [
        _event(tool, "state", t0, state="productive", detail={"previous": ""}),
        _event(tool, "maintenance", t0 + 1 * H, state="scheduled_down", detail={"previous": "productive"}),
        _event(tool, "state", t0 + 3 * H, state="productive", detail={"previous": "scheduled_down"}),
        _event(
            tool, "alarm", t0 + 40 * H, mode="rf_match_drift", detail={"message": "RF reflected power high"}
        ),
        _event(tool, "failure", t0 + 60 * H, state="unscheduled_down", mode="rf_match_drift"),
        _event("other-tool", "failure", t0 + 50 * H, mode="wear"),  # another tool's: not in this one's
    ]
    for payload in send:
        assert ingest.handle(topic("fab1", "edge-1", Kind.EVENT), payload)
    alert = Alert(
        edge_id="edge-1", site="fab1", tool_id=tool, mode="rf_match_drift", probability=0.83,
        model_version="r1", episode_start_ts=t0 + 20 * H, source_ts=t0 + 20 * H,
    )  # fmt: skip
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), alert.to_bytes())
    ctx = api_context(repo, tmp_path, users, metrics=metrics, clock=clock, ingest=ingest.handle)
    with serve(create_app(ctx)) as client:
        olga, vic = login(client, "olga"), login(client, "vic")
        finding = {"finding": "fault", "note": "match network capacitor worn"}
        assert client.post(f"/api/alerts/{alert.msg_id}/ack", json=finding, headers=olga).status_code == 200
        wo = {"event": "maintenance", "at_ts": t0 + 70 * H, "note": "CMMS WO-4711 RF match replaced"}
        assert client.post(f"/api/tools/{tool}/events", json=wo, headers=olga).status_code == 200
        assert client.get("/api/tools/nope/history", headers=vic).status_code == 404
        assert client.get(f"/api/tools/{tool}/history?limit=0", headers=vic).status_code == 422
        assert client.get(f"/api/tools/{tool}/history").status_code == 401
        got = client.get(f"/api/tools/{tool}/history", headers=vic)
        assert got.status_code == 200, got.text
        notable = got.json()
        full = client.get(f"/api/tools/{tool}/history?states=true", headers=vic).json()
        pages, before = [], None
        while True:  # two at a time, back to the start
            q = f"/api/tools/{tool}/history?states=true&limit=2" + (f"&before_ts={before}" if before else "")
            page = client.get(q, headers=vic).json()
            pages += page["items"]
            before = page["next_before_ts"]
            if before is None:
                break
    kinds = [(i["kind"], i["ts"] - t0) for i in notable["items"]]
    assert kinds == [
        ("maintenance", 70 * H),
        ("failure", 60 * H),
        ("alarm", 40 * H),
        ("alert", 20 * H),  # at its source time, not when the cloud got it
        ("maintenance", 1 * H),
    ]
    wo_item, failure, alarm, alert_item, pm = notable["items"]
    assert (
        wo_item["source"] == "operator"
        and wo_item["text"] == "reported by olga: CMMS WO-4711 RF match replaced"
    )
    assert failure["mode"] == "rf_match_drift" and failure["state"] == "unscheduled_down"
    assert alarm["text"] == "RF reflected power high"
    assert alert_item["mode"] == "rf_match_drift" and alert_item["source"] == "edge"
    assert "acknowledged by olga" in alert_item["text"] and "fault found" in alert_item["text"]
    assert "capacitor worn" in alert_item["text"] and "p 0.83" in alert_item["text"]
    assert pm["text"] == "from productive"
    assert notable["last_failure_ts"] == t0 + 60 * H and notable["last_maintenance_ts"] == t0 + 70 * H
    assert [i["ts"] - t0 for i in full["items"]] == [70 * H, 60 * H, 40 * H, 20 * H, 3 * H, 1 * H, 0.0]
    assert full["items"][-1]["text"] == "first state read by the edge"
    assert full["next_before_ts"] is None
    assert [i["id"] for i in pages] == [i["id"] for i in full["items"]], "pages back without a gap"
