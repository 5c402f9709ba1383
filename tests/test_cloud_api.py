"""The whole cloud worker (CloudService) on a real Mosquitto and a real uvicorn: auth and roles,
tuning approvals reaching the edge, operator labels with history, health and metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import cloud_config, free_port, login
from test_cloud_ingest import EdgeClient

from cloud.sensor_health import sensor_issues
from cloud.service import CloudService
from cloud.testing import failure, hardcase, signed_release, tiny_full_checkpoint
from shared.equipment import tool_type
from shared.messages import Tuning, parse_payload
from shared.topics import Kind, topic

# Learning on, rounds only on demand (the tests start them).
LEARNING = {"enabled": True, "interval_h": None, "min_new_labels": 1000}


@pytest.fixture
def service(db_url: str, mosquitto, tmp_path: Path) -> Iterator[CloudService]:
    cfg = cloud_config(
        db_url,
        mosquitto.port,
        tmp_path,
        mqtt={"client_id": "cloud-api-test"},
        serving={"checkpoint": str(tiny_full_checkpoint(tmp_path / "full.pt")), "max_wait_ms": 2},
        api={"enabled": True, "port": free_port(), "auth": {"scrypt_n": 2**10}},
    )
    svc = CloudService(cfg)
    svc.start()
    for name, role in (("ada", "admin"), ("olga", "operator"), ("vic", "viewer")):
        svc.users.add(name, f"{name}-password", role)
    yield svc
    svc.stop()


def wait(pred, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_roles_approvals_labels_and_probes(service: CloudService, mosquitto):
    base = f"http://127.0.0.1:{service.cfg.api.port}"
    edge = EdgeClient(mosquitto.port, subscribe=topic("fab1", "edge-1", Kind.TUNING))
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/api/fleet").status_code == 401
            assert client.get("/api/fleet", headers={"Authorization": "Bearer nope"}).status_code == 401
            assert (
                client.post("/api/auth/token", json={"username": "vic", "password": "wrong"}).status_code
                == 401
            )
            viewer, operator, admin = login(client, "vic"), login(client, "olga"), login(client, "ada")
            assert client.get("/api/me", headers=viewer).json()["role"] == "viewer"

            proposal = Tuning(
                edge_id="edge-1",
                site="fab1",
                tool_id="etch-01",
                tool_type="plasma_etch",
                action="proposal",
                proposal_id="p-1",
                setpoints={"rf_power": 510.0, "pressure_sp": 41.0},
                previous={"rf_power": 500.0, "pressure_sp": 40.0},
                expected={"yield": 0.4},
            )
            edge.publish(topic("fab1", "edge-1", Kind.TUNING), proposal.to_bytes())
            case = hardcase()
            edge.publish(topic("fab1", "edge-1", Kind.HARDCASE), case.to_bytes())
            wait(lambda: client.get("/api/tuning", headers=viewer).json() != [])
            # each setpoint's unit from the tool type the proposal named (no telemetry yet): the
            # plasma etcher's pressure is in mTorr, the CVD's in Torr
            assert client.get("/api/tuning", headers=viewer).json()[0]["units"]["pressure_sp"] == "mTorr"
            assert client.get("/api/fleet", headers=viewer).json()[0]["edge_id"] == "edge-1"
            (me,) = client.get("/api/workers", headers=viewer).json()  # its session's heartbeat
            assert me["client_id"] == "cloud-api-test" and 0 <= me["age_s"] < 15

            r = client.post("/api/tuning/p-1/approve", json={"reason": "looks fine"}, headers=viewer)
            assert r.status_code == 403
            r = client.post("/api/tuning/p-1/approve", json={"reason": "looks fine"}, headers=operator)
            assert r.status_code == 200 and r.json()["status"] == "approval"
            assert client.post("/api/tuning/p-1/reject", json={}, headers=operator).status_code == 409
            approvals = [
                parse_payload(raw, Kind.TUNING) for _, raw in edge.wait_for(2)
            ]  # own proposal + approval
            approval = next(m for m in approvals if isinstance(m, Tuning) and m.action == "approval")
            assert approval.actor == "olga" and approval.setpoints == {"rf_power": 510.0, "pressure_sp": 41.0}
            time.sleep(0.3)  # our approval comes back on the shared subscription: a duplicate, not a new row
            assert client.get("/api/tuning", headers=viewer).json()[0]["status"] == "approval"

            wait(
                lambda: (
                    (c := client.get(f"/api/cases/{case.case_id}", headers=viewer)).status_code == 200
                    and c.json()["verdict"] is not None
                )
            )
            win = client.get(f"/api/cases/{case.case_id}/window", headers=viewer).json()
            assert win["steps"] == case.shape[0] and [x["name"] for x in win["series"]][:2] == ["f0", "f1"]
            assert win["scale"] == "z" and win["model_version"] == case.model_version  # not registered
            assert client.get("/api/cases/nope/window", headers=viewer).status_code == 404
            trend = client.get("/api/tools/etch-01/risk", headers=viewer).json()
            assert trend["tool_id"] == "etch-01" and trend["points"] == [] and trend["alerts"] == []
            assert client.get("/api/tools/nope/risk", headers=viewer).status_code == 404
            assert client.get("/api/tools/etch-01/risk?hours=0", headers=viewer).status_code == 422
            label = {"failed": True, "mode": "wear", "rul_h": 12.0, "note": "pad worn at inspection"}
            assert (
                client.post(f"/api/cases/{case.case_id}/labels", json=label, headers=viewer).status_code
                == 403
            )
            # A mode the tool's type does not have would teach the next round nonsense: refused.
            r = client.post(f"/api/cases/{case.case_id}/labels", json=label, headers=operator)
            assert r.status_code == 422 and "esc_degradation" in r.json()["detail"]
            got = client.get(f"/api/cases/{case.case_id}", headers=viewer).json()
            assert got["tool_modes"] == list(tool_type("plasma_etch").mode_names)
            label["mode"] = "esc_degradation"
            r = client.post(f"/api/cases/{case.case_id}/labels", json=label, headers=operator)
            assert r.status_code == 200 and r.json()["label_source"] == "operator"
            ev = failure("etch-01", case.window_ts + 200 * 3600)  # would say "not failed" — operator wins
            edge.publish(topic("fab1", "edge-1", Kind.EVENT), ev.to_bytes())
            wait(lambda: service.ingest.metrics.messages.labels("event", "stored")._value.get() >= 1)
            hist = client.get(f"/api/cases/{case.case_id}/labels", headers=viewer).json()
            assert [h["source"] for h in hist] == ["operator"] and hist[0]["actor"] == "olga"

            assert (
                client.post(
                    "/api/users",
                    json={"username": "x", "password": "pw-123456", "role": "viewer"},
                    headers=operator,
                ).status_code
                == 403
            )
            assert (
                client.post(
                    "/api/users",
                    json={"username": "x", "password": "pw-123456", "role": "viewer"},
                    headers=admin,
                ).status_code
                == 200
            )
            assert client.post("/api/rollouts", json={"version": "nope"}, headers=admin).status_code == 409
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["mqtt"] is True
            assert "fabpm_cloud_verdicts_total 1.0" in client.get("/metrics").text
            assert "/api/tuning/{proposal_id}/approve" in client.get("/openapi.json").json()["paths"]
    finally:
        edge.close()


def test_verdicts_follow_the_full_model_behind_the_active_edge_model(
    service: CloudService, mosquitto, tmp_path
):
    artifact = signed_release(service.cfg.registry, tmp_path)
    newer = tiny_full_checkpoint(tmp_path / "full-v1.pt", seed=1, version="full-v1")
    service.registry.register(artifact, newer, round_id=None)
    service.registry.set_status("v1", "active")
    assert service.model_version == "full-test"
    service._tick()
    assert service.model_version == "full-v1"
    edge = EdgeClient(mosquitto.port, subscribe=topic("fab1", "edge-1", Kind.VERDICT))
    try:
        edge.publish(topic("fab1", "edge-1", Kind.HARDCASE), hardcase().to_bytes())
        ((_t, raw),) = edge.wait_for(1)
        assert parse_payload(raw, Kind.VERDICT).model_version == "full-v1"
    finally:
        edge.close()


def test_on_demand_learning_round_through_the_api(mosquitto, tmp_path: Path):
    from test_cloud_learning import TinyPipeline

    from shared.messages import Status
    from shared.signing import generate_keypair

    keys = tmp_path / "k"
    generate_keypair(keys / "signing.key", keys / "signing.pub")
    cfg = cloud_config(
        f"sqlite:///{tmp_path / 'c.db'}",
        mosquitto.port,
        tmp_path,
        mqtt={"client_id": "cloud-learn-test"},
        serving={"checkpoint": str(tiny_full_checkpoint(tmp_path / "full.pt"))},
        api={"enabled": True, "port": free_port(), "auth": {"scrypt_n": 2**10}},
        learning=LEARNING | {"work_dir": str(tmp_path / "learn")},
    )
    svc = CloudService(cfg, pipeline=TinyPipeline(keys / "signing.key").as_pipeline())
    svc.start()
    try:
        svc.users.add("ada", "ada-password", "admin")
        svc.users.add("vic", "vic-password", "viewer")
        svc.ingest.handle(
            topic("fab1", "edge-1", Kind.STATUS),
            Status(edge_id="edge-1", site="fab1", state="online").to_bytes(),
        )
        for i in range(12):
            hc = hardcase(window_ts=1e6 - (i + 1) * 36000, seed=i, case_id=f"case-{i}")
            svc.ingest.handle(topic("fab1", "edge-1", Kind.HARDCASE), hc.to_bytes())
        svc.ingest.handle(topic("fab1", "edge-1", Kind.EVENT), failure("etch-01", 1e6).to_bytes())
        with httpx.Client(base_url=f"http://127.0.0.1:{cfg.api.port}", timeout=10) as client:
            admin, viewer = login(client, "ada"), login(client, "vic")
            assert client.post("/api/learning/rounds", headers=viewer).status_code == 403
            r = client.post("/api/learning/rounds", headers=admin)
            assert r.status_code == 202 and r.json()["new_labels"] == 12
            wait(
                lambda: (
                    [r["step"] for r in client.get("/api/learning/rounds", headers=viewer).json()]
                    == ["watch"]
                )
            )
            (round_,) = client.get("/api/learning/rounds", headers=viewer).json()
            assert round_["status"] == "running" and len(round_["log"]) >= 8  # every step is visible
            (ro,) = client.get("/api/rollouts", headers=viewer).json()
            assert ro["stage"] == "canary" and ro["canary_edges"] == ["edge-1"]
            assert client.post("/api/learning/rounds", headers=admin).status_code == 409  # one at a time
    finally:
        svc.stop()


def test_a_restarted_worker_resumes_the_round_it_was_in(mosquitto, tmp_path: Path):
    """The worker dies in the middle of distillation; a new worker on the same database picks the
    round up at that step when it starts (fine-tuning is not redone)."""
    from test_cloud_learning import Killed, TinyPipeline

    from shared.messages import Status
    from shared.signing import generate_keypair

    keys = tmp_path / "k"
    generate_keypair(keys / "signing.key", keys / "signing.pub")
    cfg = cloud_config(
        f"sqlite:///{tmp_path / 'c.db'}",
        mosquitto.port,
        tmp_path,
        mqtt={"client_id": "cloud-restart-test"},
        serving={"checkpoint": str(tiny_full_checkpoint(tmp_path / "full.pt"))},
        learning=LEARNING | {"work_dir": str(tmp_path / "learn")},
    )
    pipe = TinyPipeline(keys / "signing.key")
    first = CloudService(cfg, pipeline=pipe.as_pipeline())
    first.start()
    try:
        first.ingest.handle(
            topic("fab1", "edge-1", Kind.STATUS),
            Status(edge_id="edge-1", site="fab1", state="online").to_bytes(),
        )
        for i in range(12):
            hc = hardcase(window_ts=1e6 - (i + 1) * 36000, seed=i, case_id=f"case-{i}")
            first.ingest.handle(topic("fab1", "edge-1", Kind.HARDCASE), hc.to_bytes())
        first.ingest.handle(topic("fab1", "edge-1", Kind.EVENT), failure("etch-01", 1e6).to_bytes())
        pipe.kill_in = "distil"
        assert first.learner is not None
        with pytest.raises(Killed):
            first.learner.trigger("manual")
    finally:
        first.stop()
    # The dead worker still holds the learning lease; the new one starts after it expired.
    second = CloudService(cfg, pipeline=pipe.as_pipeline(), clock=lambda: time.time() + cfg.learning.lease_s)
    second.start()  # resumes running rounds in the background
    try:
        assert second.learner is not None
        wait(lambda: second.learner.rounds()[0].step == "watch")
        assert pipe.calls == ["fine_tune", "distil", "distil", "export"]
        assert second.rollout.rollouts()[0].stage == "canary"
    finally:
        second.stop()


def test_sensor_issues_judge_the_health_the_edge_reports():
    """Unchanged for 2 h of processing or no good value for 30 min (the defaults), worst first;
    a Bad sensor is named for that, not for sitting still; figures an older edge does not send
    (or that are not numbers) flag nothing."""
    summary = {
        "a": {"unchanged_s": 2 * 3600.0, "bad_s": 0.0},
        "b": {"unchanged_s": 7000.0, "bad_s": 0.0},  # just short of 2 h
        "c": {"unchanged_s": 9 * 3600.0, "bad_s": 3600.0},
        "d": {"mean": 1.0, "min": 1.0, "max": 1.0, "last": 1.0},
        "e": {"unchanged_s": None, "bad_s": float("nan")},
        "f": {"unchanged_s": True, "bad_s": "3600"},
    }
    assert sensor_issues(summary) == [
        {"sensor": "a", "issue": "unchanged", "hours": 2.0},
        {"sensor": "c", "issue": "no_good_value", "hours": 1.0},
    ]
    assert [i["sensor"] for i in sensor_issues(summary, unchanged_h=1.9)] == ["a", "b", "c"]
    assert sensor_issues(summary, unchanged_h=100, bad_h=2) == []
