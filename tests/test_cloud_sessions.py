"""Cloud workers that go away for good leave nothing stranded in the broker (cloud/sessions.py).

Mosquitto hands a shared subscription's messages round-robin to every session in the group, a
persistent session whose worker is gone included (measured: one of two gone, the live one got 50
of 100). Real Mosquitto, real databases (SQLite; PostgreSQL when CI has it).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import cloud_config
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError
from sqlalchemy import func, select

from cloud.config import MqttConfig
from cloud.service import CloudService
from cloud.sessions import Roster
from cloud.storage import Repo
from cloud.storage.models import AlertRow, WorkerSession
from shared.messages import Alert
from shared.topics import Kind, topic


def _worker(db_url: str, port: int, name: str, tmp_path: Path, **mqtt: object) -> CloudService:
    timing = {"heartbeat_s": 0.5, "orphan_after_s": 2.0, "drain_quiet_s": 0.3}
    svc = CloudService(cloud_config(db_url, port, tmp_path, mqtt={"client_id": name, **timing, **mqtt}))
    svc.start()
    return svc


class Edge:
    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def alerts(self, n: int) -> list[str]:
        ids = []
        for i in range(n):
            a = Alert(
                edge_id="edge-1",
                site="fab1",
                tool_id=f"t{i % 5}",
                mode="wear",
                probability=0.9,
                model_version="e1",
                episode_start_ts=time.time() + i,
                msg_id=uuid.uuid4().hex,
            )
            self.client.publish(topic("fab1", "edge-1", Kind.ALERT), a.to_bytes(), qos=1).wait_for_publish(5)
            ids.append(a.msg_id)
        return ids

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _stored(repo: Repo) -> int:
    with repo.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(AlertRow)) or 0)


def _wait_stored(repo: Repo, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (got := _stored(repo)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def test_a_worker_stopping_beside_another_leaves_and_the_last_keeps_its_session(
    repo: Repo, db_url: str, mosquitto, tmp_path: Path
):
    w1 = _worker(db_url, mosquitto.port, "w1", tmp_path)
    w2 = _worker(db_url, mosquitto.port, "w2", tmp_path)
    edge = Edge(mosquitto.port)
    try:
        time.sleep(0.3)
        w2.stop()  # w1 is live: w2 ends its session, so no share of the group goes to it
        ids = edge.alerts(40)
        # Without leaving, half of them sit in w2's session until it expires (an hour).
        assert _wait_stored(repo, 40, timeout=10) == 40
        assert set(ids) <= set(w1.ingest.handled_ids)
        w1.stop()  # the last worker: its session keeps what comes while no worker runs
        with repo.transaction() as s:
            assert s.get(WorkerSession, "w1") is not None  # so another id would adopt it later
        edge.alerts(10)
        time.sleep(0.3)
        assert _stored(repo) == 40
        w1 = _worker(db_url, mosquitto.port, "w1", tmp_path)  # back under its id: resumes the session
        assert _wait_stored(repo, 50, timeout=10) == 50
    finally:
        edge.close()
        w1.stop()


def test_the_session_of_a_killed_worker_is_adopted_drained_and_ended(
    repo: Repo, db_url: str, mosquitto, tmp_path: Path
):
    w1 = _worker(db_url, mosquitto.port, "w1", tmp_path)
    w2 = _worker(db_url, mosquitto.port, "w2", tmp_path)
    edge = Edge(mosquitto.port)
    try:
        time.sleep(0.3)
        # Killed: no more heartbeats, the connection gone, the session left at the broker.
        w2.scheduler.shutdown(wait=False)
        w2.link.stop()
        t0 = time.monotonic()
        edge.alerts(40)
        assert _wait_stored(repo, 40, timeout=15) == 40  # half came through w2's session, adopted
        adopted_after = time.monotonic() - t0
        deadline = time.monotonic() + 5  # the drain ends once nothing came for drain_quiet_s
        while w1.metrics.sessions_adopted._value.get() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w1.metrics.sessions_adopted._value.get() == 1
        with repo.transaction() as s:
            assert s.get(WorkerSession, "w2") is None
        edge.alerts(10)  # the session is gone: every message goes to w1 now
        assert _wait_stored(repo, 50, timeout=3) == 50
        assert adopted_after < 2.0 + 0.5 + 5.0  # orphan_after_s + a heartbeat + the drain
    finally:
        edge.close()
        w1.stop()
        w2.engine.dispose()


def test_one_claim_per_orphan_and_an_owner_back_keeps_its_row(repo: Repo):
    now = [1000.0]
    owner = Roster(repo, "gone", "g", lambda: now[0])
    a, b = (Roster(repo, name, "g", lambda: now[0]) for name in ("a", "b"))
    other_group = Roster(repo, "x", "other", lambda: now[0])
    for r in (owner, a, b, other_group):
        r.beat()
    now[0] += 30
    a.beat()
    b.beat()
    assert a.orphans(stale_s=20) == [("gone", 1000.0)]  # not x: another share group
    claims = [r.claim("gone", 1000.0, hold_s=60) for r in (a, b)]
    assert claims[0] == 1090.0 and claims[1] is None
    assert a.orphans(stale_s=20) == []  # claimed: fresh until the claim lapses
    with repo.transaction() as s:
        assert s.get(WorkerSession, "gone").leaving  # and no live peer for a worker that stops
    owner.beat()  # the owner is back during the drain
    a.forget("gone", 1090.0)
    with repo.transaction() as s:
        assert s.get(WorkerSession, "gone") is not None
    # Leaving together: a sees b live, so it may end its session; b then sees a leaving, so it is
    # the last one and keeps its own. a's row stays until its session has ended.
    now[0] += 30  # "gone" went again
    a.beat()
    b.beat()
    assert a.leave(fresh_s=20) is True
    assert b.leave(fresh_s=20) is False
    with repo.transaction() as s:
        assert s.get(WorkerSession, "a").leaving and not s.get(WorkerSession, "b").leaving
    a.left()
    with repo.transaction() as s:
        assert s.get(WorkerSession, "b") is not None and s.get(WorkerSession, "a") is None


def test_orphans_must_be_several_heartbeats_late():
    with pytest.raises(ValidationError, match="orphan_after_s"):
        MqttConfig(heartbeat_s=10, orphan_after_s=20)


def _gone_session_holding(port: int, n: int) -> list[str]:
    """Worker "w2" subscribes and goes (its session kept); ``n`` alerts then wait in its session."""
    from cloud.mqtt import MqttLink

    gone = MqttLink(MqttConfig(port=port), lambda _t, _p: True, client_id="w2")
    gone.start()
    time.sleep(0.2)
    gone.stop()
    edge = Edge(port)
    try:
        return edge.alerts(n)
    finally:
        edge.close()


def test_an_adoption_interrupted_leaves_the_session_and_loses_nothing(mosquitto):
    """Its owner coming back, or the adopting worker stopping, ends a drain early: the session is
    left as it is (not ended), so what it still holds reaches the owner or the next adopter."""
    import threading

    from cloud.mqtt import MqttLink, drain_session

    cfg = MqttConfig(port=mosquitto.port, drain_quiet_s=0.5)
    sent = _gone_session_holding(mosquitto.port, 30)
    got: list[str] = []

    def slow(_topic: str, payload: bytes) -> bool:
        time.sleep(0.03)
        got.append(payload.decode())
        return True

    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    assert drain_session(cfg, "w2", slow, cancel=cancel) is None  # this worker stops meanwhile
    first = len(got)
    assert 0 < first < 30
    back: list[str] = []
    owner = MqttLink(cfg, lambda _t, p: back.append(p.decode()) or True, client_id="w2")
    comes_back = threading.Timer(0.3, owner.start)  # the owner comes back during the second drain
    comes_back.start()
    assert drain_session(cfg, "w2", slow) is None
    comes_back.join()
    deadline = time.monotonic() + 10
    while len(got) + len(back) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    owner.stop()
    assert len(back) > 0, "the owner took its session back with what it still held"
    ids = {Alert.model_validate_json(p).msg_id for p in got + back}
    assert ids == set(sent)
