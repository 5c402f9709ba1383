"""A failure or maintenance recorded through the API (a CMMS, a technician) labels the tool's cases
as the edge's own events do; bad input is refused with a reason."""

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
from shared.topics import Kind, topic


def test_an_event_from_the_api_labels_the_cases_before_it(repo: Repo, tmp_path: Path):
    clock = Clock()
    metrics = CloudMetrics()
    ingest = Ingestor(repo, metrics, clock=clock)
    users = Users(repo, 3600, 2**4, clock)
    ctx = api_context(repo, tmp_path, users, metrics=metrics, clock=clock, ingest=ingest.handle)
    users.add("olga", "olga-password", "operator")
    users.add("vic", "vic-password", "viewer")
    t_fail = clock.t - 600
    for i, hours in enumerate((10, 100)):  # one case 10 h before the failure, one 100 h before
        hc = hardcase(window_ts=t_fail - hours * 3600, seed=i, case_id=f"c{hours}")
        assert ingest.handle(topic("fab1", "edge-1", Kind.HARDCASE), hc.to_bytes())
    with serve(create_app(ctx)) as client:
        olga, vic = login(client, "olga"), login(client, "vic")
        failure = {"event": "failure", "mode": "rf_match_drift", "at_ts": t_fail, "note": "CMMS WO-4711"}
        assert client.post("/api/tools/etch-01/events", json=failure, headers=vic).status_code == 403
        assert client.post("/api/tools/nope/events", json=failure, headers=olga).status_code == 404
        wrong = client.post("/api/tools/etch-01/events", json=failure | {"mode": "wear"}, headers=olga)
        assert wrong.status_code == 422 and "rf_match_drift" in wrong.text  # lists the type's modes
        future = client.post(
            "/api/tools/etch-01/events", json=failure | {"at_ts": clock.t + 3600}, headers=olga
        )
        assert future.status_code == 422
        done = client.post("/api/tools/etch-01/events", json=failure, headers=olga)
        assert done.status_code == 200 and done.json()["labelled"] == 2, done.text
        near = client.get("/api/cases/c10", headers=vic).json()
        far = client.get("/api/cases/c100", headers=vic).json()
    assert near["label_failed"] is True and near["label_mode"] == "rf_match_drift"
    assert abs(near["label_rul_h"] - 10.0) < 1e-6 and near["label_source"] == "failure"
    assert far["label_failed"] is False and abs(far["label_rul_h"] - 100.0) < 1e-6  # beyond the 72 h horizon
