"""Cloud ingest against a real Mosquitto and real databases (SQLite; PostgreSQL when CI has it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from cloud.config import MqttConfig, ServingConfig
from cloud.ingest import Ingestor
from cloud.labels import Label, label_survivors, set_label
from cloud.metrics import CloudMetrics
from cloud.mqtt import MqttLink
from cloud.receipts import Receipts
from cloud.serving import load_replicas
from cloud.storage import Repo, migrate
from cloud.storage.db import head_revision
from cloud.storage.models import AlertRow, Base, Case, DeadLetter, Edge, LabelRow, SeenMessage, Tool
from cloud.testing import failure, hardcase, maintenance, tiny_full_checkpoint
from cloud.verdicts import VerdictService
from shared.messages import Alert, Event, HardCase, Status, Telemetry, Verdict, parse_payload
from shared.topics import Kind, topic


def test_migrations_create_exactly_the_models(repo: Repo):
    with repo.engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert ctx.get_current_revision() == head_revision()
        assert compare_metadata(ctx, Base.metadata) == []
    assert migrate(repo.engine) == head_revision()  # idempotent at start-up


def _count(repo: Repo, model) -> int:
    with repo.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_an_edge_going_offline_keeps_the_models_it_ran(repo: Repo):
    """The last will (or a stop) carries no models: the console still shows what the edge ran."""
    ingest = Ingestor(repo, CloudMetrics())
    where = topic("fab1", "edge-1", Kind.STATUS)
    up = Status(edge_id="edge-1", site="fab1", state="online", models={"edge-risk": "3"}, health={"ok": 1})
    assert ingest.handle(where, up.to_bytes())
    assert ingest.handle(where, Status(edge_id="edge-1", site="fab1", state="offline").to_bytes())
    with repo.transaction() as s:
        edge = s.get(Edge, "edge-1")
        assert edge is not None
        assert (edge.state, edge.models, edge.health) == ("offline", {"edge-risk": "3"}, {"ok": 1})
    back = Status(edge_id="edge-1", site="fab1", state="online", models={"edge-risk": "4"})
    assert ingest.handle(where, back.to_bytes())
    with repo.transaction() as s:
        edge = s.get(Edge, "edge-1")
        assert edge is not None
        assert (edge.state, edge.models, edge.health) == ("online", {"edge-risk": "4"}, {})


def test_a_failure_naming_another_types_mode_labels_without_a_mode(repo: Repo):
    ingest = Ingestor(repo, CloudMetrics(), horizon_h=72.0)
    case = hardcase(window_ts=1_000_000.0 - 10 * 3600)  # a plasma_etch tool's
    assert ingest.handle(topic(case.site, case.edge_id, Kind.HARDCASE), case.to_bytes())
    fail = failure("etch-01", 1_000_000.0, mode="bearing_wear")  # a pump's mode
    assert ingest.handle(topic(fail.site, fail.edge_id, Kind.EVENT), fail.to_bytes())
    got = repo.get_case(case.case_id)
    assert got.label_failed is True and got.label_mode is None  # failed; no head taught another type's mode


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
    fail = failure("etch-01", t0, mode="rf_match_drift")
    assert ingest.handle(topic(fail.site, fail.edge_id, Kind.EVENT), fail.to_bytes())
    assert ingest.handle(topic(fail.site, fail.edge_id, Kind.EVENT), fail.to_bytes())  # duplicate
    by_id = {m.case_id: repo.get_case(m.case_id) for m in msgs}
    c100, c50, c10 = (by_id[m.case_id] for m in msgs)
    assert c100.label_failed is False and c100.label_rul_h == pytest.approx(100.0)
    assert c50.label_failed and c50.label_mode == "rf_match_drift" and c50.label_rul_h == pytest.approx(50.0)
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
        source_ts=t0 + 60,
    )
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), alert.to_bytes())
    assert _count(repo, AlertRow) == 1
    with repo.transaction() as s:
        assert s.get(AlertRow, alert.msg_id).source_ts == t0 + 60  # the equipment's clock, kept
    assert _count(repo, SeenMessage) == 3 + 1 + 1 + 1 + 1 + 1


def test_a_tool_that_ran_a_horizon_on_labels_its_cases_did_not_fail(repo: Repo):
    """Survival labels (cloud/labels.label_survivors): a case whose tool reported for a whole
    horizon past it with no failure or maintenance did not fail within it. A case a maintenance
    censored never is a candidate (so it cannot crowd newer ones out of a pass's limit), nor a
    case too recent, one an operator labelled, or one of a tool not heard of since; a failure
    reported later relabels as failures do."""
    ticks = iter(range(10**6))
    ingest = Ingestor(repo, CloudMetrics(), horizon_h=72.0, clock=lambda: 10.0 * next(ticks))
    t0, h = 1_000_000.0, 3600.0

    def send(msg: Event | HardCase | Telemetry) -> None:
        assert ingest.handle(topic(msg.site, msg.edge_id, msg.KIND), msg.to_bytes())

    censored, ran_on, recent, by_hand = (
        hardcase(window_ts=t0 + k * h, seed=i) for i, k in enumerate((50, 150, 200, 160))
    )
    other = hardcase(tool="pump-01", window_ts=t0, seed=7)  # nothing of its tool since
    for case in (censored, ran_on, recent, by_hand, other):
        send(case)
    send(maintenance("etch-01", t0 + 100 * h))  # censors `censored` (50 h before it)
    with repo.transaction() as s:
        set_label(s, s.get(Case, by_hand.case_id), Label(True, None, None, "operator", "olga"), t0)
    now = t0 + 250 * h  # the equipment's clock, from etch-01's telemetry
    send(Telemetry(edge_id="edge-1", site="fab1", tool_id="etch-01", period_s=60, summary={}, source_ts=now))
    with repo.transaction() as s:
        assert label_survivors(s, 72.0, t0, limit=1) == 1  # the censored, older one is not in the way
        assert label_survivors(s, 72.0, t0) == 0
    got = {c.case_id: repo.get_case(c.case_id) for c in (censored, ran_on, recent, by_hand, other)}
    assert (got[ran_on.case_id].label_failed, got[ran_on.case_id].label_source) == (False, "survival")
    assert [got[c.case_id].label_source for c in (censored, recent, other)] == [None, None, None]
    assert got[by_hand.case_id].label_source == "operator"
    send(failure("etch-01", t0 + 260 * h, mode="rf_match_drift"))  # late: the failure's labels win
    after = repo.get_case(ran_on.case_id)
    assert (after.label_failed, after.label_source) == (False, "failure")
    assert after.label_rul_h == pytest.approx(110.0)
    assert [r.source for r in repo.label_history(ran_on.case_id)] == ["survival", "failure"]
    assert repo.get_case(recent.case_id).label_failed is True


def test_one_worker_at_a_time_labels_survivors(db_url: str, tmp_path: Path):
    """The worker's survival-label job runs under a lease: while another worker holds it, this
    one labels nothing (two would label a case twice); then it labels, and counts them."""
    from conftest import cloud_config, free_port

    from cloud.service import SURVIVORS_LEASE, CloudService

    t0 = 1_000_000.0
    svc = CloudService(cloud_config(db_url, free_port(), tmp_path), clock=lambda: t0)
    try:
        migrate(svc.engine)  # start() would; this test calls the job alone
        ingest = Ingestor(svc.repo, CloudMetrics())
        case = hardcase(window_ts=t0)
        assert ingest.handle(topic("fab1", "edge-1", Kind.HARDCASE), case.to_bytes())
        with svc.repo.transaction() as s:
            s.get(Tool, "etch-01").last_source_ts = t0 + 100 * 3600  # ran on 100 h since
        assert svc.repo.take_lease(SURVIVORS_LEASE, "another-worker", t0, 60.0)
        assert svc._label_survivors() == 0 and svc.repo.get_case(case.case_id).label_source is None
        svc.repo.release_lease(SURVIVORS_LEASE, "another-worker")
        assert svc._label_survivors() == 1 and svc.repo.get_case(case.case_id).label_source == "survival"
        assert svc.metrics.labels.labels("survival")._value.get() == 1
        assert svc._label_survivors() == 0
    finally:
        svc.stop()


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


class ReceiptingLoop:
    """An edge (outbox with receipts, its MQTT relay) and a cloud worker cut down to ingest and
    receipts, on the test's broker. ``until`` flushes the receipts, as the service's scheduler does
    twice a second."""

    def __init__(self, repo: Repo, port: int, tmp_path: Path, edge_id: str, resend_after_s: float) -> None:
        from edge.config import MqttConfig as EdgeMqtt
        from edge.mqtt import MqttRelay
        from edge.outbox import Outbox

        self.repo, self.port, self.edge_id = repo, port, edge_id
        self.receipts: Receipts | None = None
        self.box = Outbox(
            tmp_path / "o.sqlite", 10_000_000, await_receipts=True, resend_after_s=resend_after_s
        )
        edge_cfg = EdgeMqtt(port=port, reconnect_min_s=0.5, reconnect_max_s=1.0, receipts=True)
        self.relay = MqttRelay(edge_cfg, "fab1", edge_id, self.box)
        self.link: MqttLink | None = None

    def cloud(self) -> MqttLink:
        """(Re)start the cloud worker: a fresh ingest on the same database and MQTT session."""
        ingest = Ingestor(
            self.repo, CloudMetrics(), on_stored=lambda m: self.receipts.add(m.site, m.edge_id, m.msg_id)
        )
        link = MqttLink(MqttConfig(port=self.port, client_id=f"cloud-{self.edge_id}"), ingest.handle)
        self.receipts = Receipts(lambda t, p, q, r: link.publish(t, p, q, r))
        link.start()
        self.link = link
        return link

    def event(self, i: int) -> None:
        e = Event(
            edge_id=self.edge_id, site="fab1", tool_id="t1", event="state", state="idle", source_ts=float(i)
        )
        self.box.put(Kind.EVENT, topic("fab1", self.edge_id, Kind.EVENT), e.to_bytes(), 1, msg_id=e.msg_id)
        self.relay.wake()

    async def until(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.receipts is not None:
                self.receipts.flush()
            if pred():
                return True
            await asyncio.sleep(0.1)
        return False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReceiptingLoop]:
        self.relay.start()
        task = asyncio.create_task(self.relay.run())
        self.cloud()
        try:
            assert await self.until(lambda: self.relay.connected and self.link.connected.is_set(), 10)
            yield self
        finally:
            if self.link is not None:
                self.link.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.relay.stop()
            self.box.close()


async def test_with_receipts_a_broker_crash_loses_nothing(repo: Repo, mosquitto, tmp_path: Path):
    """B10's broker crash, end to end: the broker acknowledges the edge's events while the cloud is
    away and dies (kill -9) before delivering them. With receipts the edge still holds them and
    sends them again after its timeout; the cloud stores each once and confirms it."""
    stored = _count(repo, SeenMessage)
    async with ReceiptingLoop(repo, mosquitto.port, tmp_path, "edge-r", resend_after_s=1.5).running() as loop:
        box = loop.box
        for i in range(5):
            loop.event(i)
        assert await loop.until(lambda: len(box) == 0, 10), "stored and confirmed"
        loop.link.stop()  # the cloud is away (its session stays on the broker)
        for i in range(5, 25):
            loop.event(i)
        # Every row acknowledged by the broker, kept by the edge for the cloud's receipt. Not the
        # ledger's count of acknowledgements: a row whose receipt came later than resend_after_s
        # (a loaded machine) was sent again and counted twice, so "25 acknowledgements" never held.
        assert await loop.until(lambda: box.awaiting_receipt() == 20, 10), box.ledger()
        assert len(box) == 20, "kept by the edge"
        assert mosquitto.proc is not None
        mosquitto.proc.kill()  # the broker crashes with the 20 events it acknowledged
        mosquitto.proc.wait(timeout=5)
        if mosquitto.proc.stderr is not None:
            mosquitto.proc.stderr.close()
        mosquitto.start()
        loop.cloud()
        assert await loop.until(lambda: len(box) == 0, 20), "sent again after the timeout, stored, confirmed"
        assert _count(repo, SeenMessage) == stored + 25


async def test_with_receipts_a_full_broker_queue_loses_nothing(repo: Repo, mosquitto, tmp_path: Path):
    """The broker's queue for an absent cloud is bounded (``max_queued_messages``) and drops what
    does not fit. With receipts the edge keeps those rows: while the cloud is away it sends one probe
    per timeout, not every row; once the cloud is back and has confirmed its queue, the rest go
    again and are stored once."""
    mosquitto.stop()
    conf = mosquitto.conf.read_text().replace("max_queued_messages 1000000", "max_queued_messages 20")
    mosquitto.conf.write_text(conf)
    mosquitto.start()
    stored = _count(repo, SeenMessage)
    async with ReceiptingLoop(repo, mosquitto.port, tmp_path, "edge-q", resend_after_s=1.0).running() as loop:
        box = loop.box
        loop.link.stop()  # the cloud is away; the broker queues at most 20 messages for its session
        for i in range(100):
            loop.event(i)
        assert await loop.until(lambda: box.ledger()["event"]["acked"] >= 100, 10)
        await asyncio.sleep(3.5)  # three timeouts of silence: probes only
        assert box.ledger()["event"]["acked"] <= 100 + 4, "not every row again while nothing answers"
        loop.cloud()
        assert await loop.until(lambda: len(box) == 0, 30), "dropped by the full queue, sent again, stored"
        assert _count(repo, SeenMessage) == stored + 100
        assert box.ledger()["event"]["acked"] >= 180, "the broker kept 20 of the 100: 80 were sent again"


def test_receipts_are_batched_per_edge_kept_while_the_broker_is_away_and_bounded():
    from cloud.receipts import Receipts
    from shared.messages import MAX_RECEIPT_IDS, Receipt

    sent: list[tuple[str, Receipt]] = []
    down = [True]

    def publish(t: str, payload: bytes, qos: int, retain: bool) -> None:
        if down[0]:
            raise OSError("broker away")
        msg = parse_payload(payload, Kind.RECEIPT)
        assert isinstance(msg, Receipt) and qos == 1 and not retain
        sent.append((t, msg))

    r = Receipts(publish, max_pending=MAX_RECEIPT_IDS + 10)
    for i in range(MAX_RECEIPT_IDS + 5):
        r.add("fab1", "edge-1", f"a{i}")
    r.add("fab1", "edge-2", "b0")
    assert r.flush() == 0 and len(r) == MAX_RECEIPT_IDS + 6, "kept for the next flush"
    down[0] = False
    assert r.flush() == MAX_RECEIPT_IDS + 6 and len(r) == 0
    assert [(t.split("/")[3], len(m.msg_ids)) for t, m in sent] == [
        ("edge-1", MAX_RECEIPT_IDS), ("edge-1", 5), ("edge-2", 1)
    ]  # fmt: skip
    assert sent[0][1].msg_ids[0] == "a0" and sent[2][1].edge_id == "edge-2"
    for i in range(MAX_RECEIPT_IDS + 20):  # past the bound the oldest go (their edges resend)
        r.add("fab1", "edge-1", f"c{i}")
    assert len(r) == MAX_RECEIPT_IDS + 10 and r.dropped == 10
