"""Cloud ingest against a real Mosquitto and real databases (SQLite; PostgreSQL when CI has it)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from cloud.config import MqttConfig, ServingConfig
from cloud.ingest import Ingestor
from cloud.metrics import CloudMetrics
from cloud.mqtt import MqttLink
from cloud.serving import load_replicas
from cloud.storage import Repo, make_engine, migrate
from cloud.storage.db import head_revision
from cloud.storage.models import AlertRow, Base, Case, DeadLetter, LabelRow, SeenMessage
from cloud.testing import failure, hardcase, maintenance, tiny_full_checkpoint
from cloud.verdicts import VerdictService
from shared.messages import Alert, Verdict, parse_payload
from shared.topics import Kind, topic


@pytest.fixture
def repo(db_url: str) -> Iterator[Repo]:
    engine = make_engine(db_url)
    migrate(engine)
    yield Repo(engine)
    engine.dispose()


def test_migrations_create_exactly_the_models(repo: Repo):
    with repo.engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert ctx.get_current_revision() == head_revision()
        assert compare_metadata(ctx, Base.metadata) == []
    assert migrate(repo.engine) == head_revision()  # idempotent at start-up


def _count(repo: Repo, model) -> int:
    with repo.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_dedup_dead_letters_and_failure_labels(repo: Repo):
    cases = []
    ingest = Ingestor(repo, CloudMetrics(), horizon_h=72.0, on_case=cases.append)
    t0 = 1_000_000.0
    # Cases at 100 h, 50 h and 10 h before a failure, one more after it.
    msgs = [hardcase(window_ts=t0 - h * 3600, seed=i) for i, h in enumerate((100, 50, 10))]
    late = hardcase(window_ts=t0 + 3600, seed=9)
    for m in msgs:
        assert ingest.handle(topic(m.site, m.edge_id, Kind.HARDCASE), m.to_bytes())
    # Redelivery of the same message: stored once, not re-queued (its verdict is pending in `cases`).
    assert ingest.handle(topic(msgs[0].site, msgs[0].edge_id, Kind.HARDCASE), msgs[0].to_bytes())
    assert _count(repo, Case) == 3 and len(cases) == 3 + 1  # re-offered once: it has no verdict yet
    bad = [
        (topic("fab1", "edge-1", Kind.HARDCASE), b"{not json"),
        (topic("fab1", "edge-1", Kind.ALERT), msgs[0].to_bytes()),  # wrong kind for the topic
        (topic("fab1", "edge-2", Kind.HARDCASE), msgs[1].to_bytes()),  # edge speaking for another
        ("fabpm/v1/fab1/edge-1/bogus", b"{}"),
        (
            topic("fab1", "edge-1", Kind.HARDCASE),
            json.dumps({**json.loads(msgs[2].to_bytes()), "shape": [99, 8]}).encode(),
        ),
    ]
    for t, raw in bad:
        assert ingest.handle(t, raw)  # acknowledged: never retried, never crashes
    assert _count(repo, DeadLetter) == len(bad)
    fail = failure("etch-01", t0, mode="wear")
    assert ingest.handle(topic(fail.site, fail.edge_id, Kind.EVENT), fail.to_bytes())
    assert ingest.handle(topic(fail.site, fail.edge_id, Kind.EVENT), fail.to_bytes())  # duplicate
    by_id = {m.case_id: repo.get_case(m.case_id) for m in msgs}
    c100, c50, c10 = (by_id[m.case_id] for m in msgs)
    assert c100.label_failed is False and c100.label_rul_h == pytest.approx(100.0)
    assert c50.label_failed is True and c50.label_mode == "wear" and c50.label_rul_h == pytest.approx(50.0)
    assert c10.label_failed is True and c10.label_rul_h == pytest.approx(10.0)
    assert _count(repo, LabelRow) == 3  # the duplicate event labelled nothing twice
    # A maintenance 200 h after the failure: only cases ≥ 72 h before it get "did not fail".
    assert ingest.handle(topic("fab1", "edge-1", Kind.HARDCASE), late.to_bytes())
    m = maintenance("etch-01", t0 + 200 * 3600)
    ingest.handle(topic(m.site, m.edge_id, Kind.EVENT), m.to_bytes())
    assert repo.get_case(late.case_id).label_failed is False
    assert [r.source for r in repo.label_history(late.case_id)] == ["maintenance"]
    # A case that arrives after its failure was reported is labelled on arrival.
    straggler = hardcase(window_ts=t0 - 20 * 3600, seed=5)
    ingest.handle(topic("fab1", "edge-1", Kind.HARDCASE), straggler.to_bytes())
    assert repo.get_case(straggler.case_id).label_rul_h == pytest.approx(20.0)
    alert = Alert(
        edge_id="edge-1",
        site="fab1",
        tool_id="etch-01",
        mode="wear",
        probability=0.9,
        model_version="e1",
        episode_start_ts=t0,
    )
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), alert.to_bytes())
    assert _count(repo, AlertRow) == 1
    assert _count(repo, SeenMessage) == 3 + 1 + 1 + 1 + 1 + 1


class EdgeClient:
    """A plain paho client in the role of an edge: publishes, collects what arrives on its topics."""

    def __init__(self, port: int, subscribe: str | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.got = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if subscribe:
            self.client.subscribe(subscribe, qos=1)[1]
        time.sleep(0.2)  # let the SUBACK land before publishing (no callback needed for a test client)

    def _on_message(self, _c, _u, msg) -> None:
        with self.got:
            self.received.append((msg.topic, msg.payload))
            self.got.notify_all()

    def wait_for(self, n: int, timeout: float = 20.0) -> list[tuple[str, bytes]]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.received) >= n, timeout), (
                f"got {len(self.received)}/{n}"
            )
            return list(self.received)

    def publish(self, t: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(t, payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_hard_case_gets_a_verdict_over_mqtt(repo: Repo, mosquitto, tmp_path: Path):
    replicas = load_replicas(tiny_full_checkpoint(tmp_path / "full.pt"))
    metrics = CloudMetrics()
    link = MqttLink(MqttConfig(port=mosquitto.port, client_id="cloud-w1"), handler=None)
    service = VerdictService(
        repo,
        [r.predict for r in replicas],
        lambda t, p, q, r: link.publish(t, p, q, r),
        replicas[0].version,
        metrics,
        ServingConfig(max_batch=8, max_wait_ms=5),
        refuses=replicas[0].refuses,
    )
    ingest = Ingestor(repo, metrics, on_case=service.on_case)
    link.handler = ingest.handle
    link.kinds = (Kind.HARDCASE, Kind.EVENT)
    service.start()
    link.start()
    edge = EdgeClient(mosquitto.port, subscribe=topic("fab1", "edge-1", Kind.VERDICT))
    try:
        case = hardcase()
        edge.publish(topic("fab1", "edge-1", Kind.HARDCASE), b"\x00garbage")
        edge.publish(topic("fab1", "edge-1", Kind.HARDCASE), case.to_bytes())
        edge.publish(topic("fab1", "edge-1", Kind.HARDCASE), case.to_bytes())  # redelivered copy
        ((_t, raw),) = edge.wait_for(1)
        verdict = parse_payload(raw, Kind.VERDICT)
        assert isinstance(verdict, Verdict) and verdict.case_id == case.case_id
        assert set(verdict.probs) == {"wear", "leak"} and verdict.model_version == "full-test"
        deadline = time.monotonic() + 10
        while ingest.dead < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ingest.dead == 1 and _count(repo, Case) == 1
        assert repo.get_case(case.case_id).verdict["case_id"] == case.case_id
        # A window the model cannot take (wrong width) gets an error instead of failing its batch.
        odd = hardcase(n_features=5, seed=3)
        edge.publish(topic("fab1", "edge-1", Kind.HARDCASE), odd.to_bytes())
        deadline = time.monotonic() + 10
        while (repo.get_case(odd.case_id) is None or repo.get_case(odd.case_id).verdict is None) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert "window shape" in repo.get_case(odd.case_id).verdict["error"]
        time.sleep(0.3)
        assert len(edge.received) == 1  # one verdict, though the case came twice
    finally:
        edge.close()
        link.stop()
        service.stop()


def test_two_workers_split_a_shared_subscription_exactly_once(repo: Repo, mosquitto):
    workers = []
    for name in ("w1", "w2"):
        ingest = Ingestor(repo, CloudMetrics())
        link = MqttLink(MqttConfig(port=mosquitto.port), ingest.handle, kinds=(Kind.ALERT,), client_id=name)
        link.start()
        workers.append((ingest, link))
    time.sleep(0.3)
    edge = EdgeClient(mosquitto.port)
    n = 200
    try:
        sent = []
        for i in range(n):
            a = Alert(
                edge_id="edge-1",
                site="fab1",
                tool_id=f"t{i % 7}",
                mode="wear",
                probability=0.8,
                model_version="e1",
                episode_start_ts=float(i),
            )
            sent.append(a.msg_id)
            edge.client.publish(topic("fab1", "edge-1", Kind.ALERT), a.to_bytes(), qos=1)
        deadline = time.monotonic() + 30
        while sum(len(w.handled_ids) for w, _ in workers) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        a_ids, b_ids = (set(w.handled_ids) for w, _ in workers)
        assert not a_ids & b_ids
        assert a_ids | b_ids == set(sent)
        assert a_ids and b_ids  # both took part
        dups = sum(w.metrics.messages.labels("alert", "duplicate")._value.get() for w, _ in workers)
        assert dups == 0  # each message went to one worker, once
    finally:
        edge.close()
        for _, link in workers:
            link.stop()


def test_a_restarted_worker_resumes_its_own_session_by_default():
    """A worker's default MQTT client id is the same in the next process (no pid in it): a worker
    killed and restarted gets back its session, with what the broker queued for it and what was in
    flight. With a new id each start, B10 lost 259 of 1,915 QoS 1 messages to one kill -9."""
    import subprocess
    import sys

    code = "from cloud.mqtt import default_client_id; print(default_client_id())"
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
           for _ in range(2)}  # fmt: skip
    assert len(ids) == 1 and 0 < len(ids.pop().strip()) <= 64
