"""The disk outbox (priority, quota policy, kill -9) and the MQTT relay against a real Mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_edge_support import Collector

from edge.config import MqttConfig
from edge.errors import OutboxError
from edge.mqtt import MqttRelay
from edge.outbox import Outbox, SilenceWatch
from shared.messages import Alert, Event, Telemetry
from shared.topics import QOS, Kind, topic

SITE, EDGE = "s1", "e1"


def _msg(kind: Kind, i: int) -> bytes:
    if kind is Kind.ALERT:
        m = Alert(
            edge_id=EDGE,
            site=SITE,
            tool_id="t1",
            mode="m",
            probability=0.9,
            model_version="1",
            episode_start_ts=float(i),
            msg_id=f"{kind.value}-{i}",
        )
    elif kind is Kind.EVENT:
        m = Event(
            edge_id=EDGE,
            site=SITE,
            tool_id="t1",
            event="state",
            state="productive",
            source_ts=float(i),
            msg_id=f"{kind.value}-{i}",
        )
    else:
        m = Telemetry(
            edge_id=EDGE,
            site=SITE,
            tool_id="t1",
            period_s=1.0,
            summary={"x": {"mean": float(i)}},
            msg_id=f"{kind.value}-{i}",
        )
    return m.to_bytes()


def _put(box: Outbox, kind: Kind, i: int, qos: int | None = None) -> int | None:
    return box.put(kind, topic(SITE, EDGE, kind), _msg(kind, i), QOS[kind] if qos is None else qos)


def test_rows_leave_in_priority_then_arrival_order(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite", quota_bytes=10_000_000)
    for i in range(3):
        _put(box, Kind.TELEMETRY, i)
        box.put(Kind.HARDCASE, "t/h", f"h{i}".encode(), 1)
        _put(box, Kind.ALERT, i)
        box.put(Kind.TUNING, "t/u", f"u{i}".encode(), 1)
    kinds = [r.kind for r in box.pending(100)]
    assert kinds == ["alert"] * 3 + ["tuning"] * 3 + ["hardcase"] * 3 + ["telemetry"] * 3
    first = box.pending(2)
    assert [r.kind for r in box.pending(2, exclude={r.id for r in first})] == ["alert", "tuning"]
    box.ack([r.id for r in first])
    assert len(box) == 10


def test_quota_drops_telemetry_first_then_hard_cases_never_alerts(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite", quota_bytes=1000)
    for _ in range(5):
        assert box.put(Kind.TELEMETRY, "t", b"x" * 100, 0) is not None
    for _ in range(4):
        assert box.put(Kind.HARDCASE, "h", b"y" * 100, 1) is not None
    # 900 bytes used; an alert of 300 needs 200 more: the two oldest telemetry rows go.
    assert box.put(Kind.ALERT, "a", b"z" * 300, 1) is not None
    assert box.dropped[3] == 2 and box.size_bytes == 1000
    # Another 300-byte alert: the other three telemetry rows go.
    assert box.put(Kind.ALERT, "a", b"z" * 300, 1) is not None
    assert box.dropped[3] == 5
    # A hard case never pushes out a telemetry row that is not there, nor an alert: it goes itself.
    assert box.put(Kind.TELEMETRY, "t", b"x" * 100, 0) is None
    assert box.dropped[3] == 6
    # Alerts push out hard cases once telemetry is gone.
    assert box.put(Kind.ALERT, "a", b"z" * 200, 1) is not None
    assert box.dropped[2] == 2
    kinds = [r.kind for r in box.pending(100)]
    assert kinds.count("alert") == 3 and kinds.count("hardcase") == 2
    # Critical messages go past the quota up to the hard ceiling, then are refused loudly.
    assert box.put(Kind.EVENT, "e", b"e" * 200, 1) is not None  # hard cases dropped first
    box.put(Kind.EVENT, "e", b"e" * 200, 1)
    with pytest.raises(OutboxError, match="full"):
        box.put(Kind.EVENT, "e", b"e" * 300, 1)
    assert box.refused == 1
    # The ledger accounts for every message, and survives a reopening: written = acked + dropped + queued.
    box.ack([r.id for r in box.pending(1) if r.kind == "alert"])
    ledger = Outbox(tmp_path / "o.sqlite", quota_bytes=1000).ledger()
    assert ledger["telemetry"] == {
        "written": 6,
        "acked": 0,
        "dropped": 6,
        "refused": 0,
        "confirmed": 0,
        "queued": 0,
    }
    assert ledger["hardcase"] == {
        "written": 4,
        "acked": 0,
        "dropped": 4,
        "refused": 0,
        "confirmed": 0,
        "queued": 0,
    }
    assert ledger["alert"] == {
        "written": 3,
        "acked": 1,
        "dropped": 0,
        "refused": 0,
        "confirmed": 0,
        "queued": 2,
    }
    assert ledger["event"] == {
        "written": 2,
        "acked": 0,
        "dropped": 0,
        "refused": 1,
        "confirmed": 0,
        "queued": 2,
    }


def test_a_message_already_written_under_its_key_is_not_written_again(tmp_path: Path):
    """``latest_key``: the last id written per key is kept with the queue, across a reopen (an edge
    restart); the same id again is not written, another id is, and becomes the key's last."""
    path = tmp_path / "o.sqlite"

    def put(box: Outbox, i: int, key: str = "state:t1") -> int | None:
        return box.put(Kind.EVENT, "t", _msg(Kind.EVENT, i), 1, msg_id=f"event-{i}", latest_key=key)

    box = Outbox(path, 10_000_000)
    assert put(box, 1) is not None and put(box, 1) is None
    assert put(box, 1, key="state:t2") is not None  # keys are apart
    box.close()
    box = Outbox(path, 10_000_000)
    assert put(box, 1) is None, "kept across a reopen"
    assert put(box, 2) is not None and put(box, 1) is not None  # a change, and a change back
    assert box.ledger()["event"]["written"] == 4 and len(box) == 4
    box.close()


def test_cases_wait_for_their_verdict(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite", quota_bytes=10_000)
    box.remember_case("c1", "t1", {"p": 0.5}, max_cases=2)
    box.remember_case("c2", "t1", {"p": 0.6}, max_cases=2)
    box.remember_case("c3", "t2", {"p": 0.7}, max_cases=2)
    assert box.waiting_cases() == 2
    assert box.take_case("c1") is None  # the oldest went over the limit
    got = box.take_case("c3")
    assert got is not None and got[0] == "t2" and got[2] == {"p": 0.7}
    assert box.take_case("c3") is None
    assert box.expire_cases(older_than_s=-1.0) == 1


_WRITER = """
import sys
from pathlib import Path
from edge.outbox import Outbox
from shared.topics import Kind
box = Outbox(Path(sys.argv[1]), quota_bytes=10**9)
i = 0
while True:
    box.put(Kind.EVENT, "t/e", (str(i) + ":" + "x" * 500).encode(), 1)
    i += 1
    if i == 200:
        print("ready", flush=True)
"""


def test_outbox_is_intact_after_kill_9(tmp_path: Path):
    path = tmp_path / "o.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=10)
    proc.stdout.close()
    box = Outbox(path, quota_bytes=10**9)  # runs the integrity check
    rows = box.pending(1_000_000)
    assert len(rows) >= 200 and len(rows) == len(box)
    numbers = [int(r.payload.split(b":")[0]) for r in rows]
    assert numbers == list(range(len(numbers))), "a committed row went missing or a torn one appeared"
    assert box.ledger()["event"]["written"] == len(rows), "the ledger commits with the row it counts"
    assert all(len(r.payload) == len(r.payload.split(b":")[0]) + 501 for r in rows)


async def _until(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_broker_outage_every_message_arrives_once_in_priority_order(tmp_path: Path, mosquitto):
    collector = Collector(mosquitto.port, SITE, EDGE)
    box = Outbox(tmp_path / "o.sqlite", quota_bytes=10_000_000)
    cfg = MqttConfig(port=mosquitto.port, reconnect_min_s=0.5, reconnect_max_s=1.0)
    relay = MqttRelay(cfg, SITE, EDGE, box)
    relay.start()
    task = asyncio.create_task(relay.run())
    try:
        assert await _until(lambda: relay.connected, 10)
        _put(box, Kind.ALERT, 0)
        relay.wake()
        assert await relay.flushed(10)
        assert await _until(lambda: len(collector.of("alert")) == 1, 10)

        mosquitto.stop()
        assert await _until(lambda: not relay.connected, 10)
        for i in range(1, 41):  # interleaved while the broker is down
            # Telemetry goes at QoS 1 here: the broker drops QoS 0 messages for a subscriber that
            # has not reconnected yet, and which of the two clients reconnects first is a race.
            _put(box, Kind.TELEMETRY, i, qos=1)
            _put(box, Kind.EVENT, i)
            _put(box, Kind.ALERT, i)
        assert len(box) == 120
        await asyncio.sleep(1.0)
        # Hold the relay's drain loop until the test's subscriber is back: whether the broker kept
        # the subscriber's session over its own restart is not what this test is about.
        task.cancel()
        mosquitto.start()
        assert await _until(lambda: collector.client.is_connected() and relay.connected, 20)
        await asyncio.sleep(0.5)  # the subscriber's SUBSCRIBE goes out in its on_connect
        task = asyncio.create_task(relay.run())
        assert await relay.flushed(30), box.stats()
        assert await _until(lambda: len(collector.got) >= 121, 20), [k for k, _ in collector.got]
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await relay.stop()
        collector.stop()
    ids = [m["msg_id"] for _, m in collector.got if _ != "status"]
    assert len(ids) == len(set(ids)) == 121, "a message was lost or duplicated"
    after = [k for k, _ in collector.got if k != "status"][1:]
    # Everything critical arrives before any telemetry.
    assert after.index("telemetry") == 80 and set(after[:80]) == {"alert", "event"}
    assert [m["msg_id"] for m in collector.of("telemetry")] == [f"telemetry-{i}" for i in range(1, 41)]


async def test_last_will_says_offline_when_the_link_dies_and_status_returns(tmp_path: Path, mosquitto):
    from edge.decisions import message
    from shared.messages import Status

    collector = Collector(mosquitto.port, SITE, EDGE, client_id="will-watcher")
    box = Outbox(tmp_path / "o.sqlite", quota_bytes=1_000_000)
    cfg = MqttConfig(port=mosquitto.port, reconnect_min_s=0.5, reconnect_max_s=1.0)
    relay = MqttRelay(cfg, SITE, EDGE, box)
    relay.start()
    task = asyncio.create_task(relay.run())
    try:
        assert await _until(lambda: relay.connected, 10)
        relay.publish_status(message(Status, edge_id=EDGE, site=SITE, state="online"))
        assert await _until(lambda: [s["state"] for s in collector.of("status")] == ["online"], 10)
        sock = relay.client.socket()
        assert sock is not None
        sock.close()  # the link dies without a DISCONNECT: the broker publishes the will
        assert await _until(lambda: "offline" in [s["state"] for s in collector.of("status")], 10)
        # paho reconnects by itself and the retained status says online again
        assert await _until(lambda: [s["state"] for s in collector.of("status")][-1] == "online", 15)
    finally:
        task.cancel()
        await relay.stop()
        collector.stop()


def test_while_the_cloud_is_silent_only_one_probe_goes_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No receipt within resend_after_s of a send: the cloud is away and its session at the broker
    holds what was sent, so rows due are not sent again, but for one probe per resend_after_s. The
    first receipt after the silence gives the rows due another resend_after_s (the cloud's backlog
    confirms them meanwhile); after that, rows without a receipt go again as before."""
    now = [1_000_000.0]
    monkeypatch.setattr("edge.outbox.time", type("Clock", (), {"time": staticmethod(lambda: now[0])}))
    box = Outbox(tmp_path / "o.sqlite", quota_bytes=10_000_000, await_receipts=True, resend_after_s=10)
    ids = [box.put(Kind.EVENT, "e", _msg(Kind.EVENT, i), 1, msg_id=f"e{i}") for i in range(6)]
    assert len(box.pending(10)) == 6  # nothing sent yet: nothing unanswered
    box.ack([r.id for r in box.pending(10)])
    now[0] += 11  # every row due, and no receipt for 11 s: the cloud is away
    probe = box.pending(10)
    assert [r.id for r in probe] == ids[:1], "one probe, not six copies"
    box.ack([probe[0].id])
    assert box.pending(10) == [] and box.stats()["last_receipt_s_ago"] is None  # none ever
    fresh = box.put(Kind.ALERT, "a", _msg(Kind.ALERT, 9), 1, msg_id="a9")
    assert [r.id for r in box.pending(10)] == [fresh], "new rows still go at once"
    box.ack([fresh])
    now[0] += 11
    assert [r.id for r in box.pending(10)] == ids[1:2], "the next probe, a resend_after_s later"
    box.confirm(["e1"])  # the cloud is back: the rest due wait one more period
    assert box.pending(10) == []
    now[0] += 5
    box.confirm(["e2"])  # its backlog coming through
    assert box.pending(10) == []
    now[0] += 6
    left = {r.id for r in box.pending(10)}
    assert left == {ids[0], *ids[3:], fresh}, "answering again: every row due goes"
    box.ack(sorted(left))
    now[0] += 11  # and none of them answered: silent again
    assert len(box.pending(10)) <= 1
    # Without receipts there is no silence to wait out.
    plain = Outbox(tmp_path / "p.sqlite", quota_bytes=10_000_000)
    plain.put(Kind.EVENT, "e", _msg(Kind.EVENT, 1), 1, msg_id="x")
    assert len(plain.pending(10)) == 1


def test_a_long_silence_of_the_cloud_is_reported_naming_the_acl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An edge whose broker does not let it read its receipts looks like one whose cloud is away:
    its rows pile up. The warning says so after 10 min, again at 20, 40, …, and once when receipts
    come back; /health shows the silence and the rows waiting."""
    now = [5_000_000.0]
    monkeypatch.setattr("edge.outbox.time", type("Clock", (), {"time": staticmethod(lambda: now[0])}))
    box = Outbox(tmp_path / "o.sqlite", quota_bytes=10_000_000, await_receipts=True, resend_after_s=60)
    watch = SilenceWatch(box, "fabpm/v1/fab1/edge-1/receipt")
    ids = [box.put(Kind.EVENT, "e", _msg(Kind.EVENT, i), 1, msg_id=f"e{i}") for i in range(3)]
    box.ack(ids)
    notes = []
    for _ in range(50):  # 50 minutes of housekeeping, once a minute
        now[0] += 60
        notes.append(watch.check())
    said = [(i + 1, n) for i, n in enumerate(notes) if n]
    assert [minute for minute, _ in said] == [10, 20, 40]
    assert "fabpm/v1/fab1/edge-1/receipt" in said[0][1] and "3 message(s)" in said[0][1]
    stats = box.stats()
    assert stats["awaiting_receipt"] == 3 and stats["cloud_silent_s"] == 3000
    box.confirm(["e0"])
    assert "again" in (watch.check() or "") and watch.check() is None
    assert box.stats()["cloud_silent_s"] == 0


def test_with_receipts_a_row_stays_until_the_cloud_confirms_it(tmp_path: Path):
    """The broker's PUBACK only marks a row sent; the cloud's receipt deletes it; a sent row
    without a receipt goes again after resend_after_s; rows without a msg_id leave at PUBACK."""
    box = Outbox(tmp_path / "o.sqlite", quota_bytes=10_000_000, await_receipts=True, resend_after_s=0.3)
    alert = box.put(Kind.ALERT, "a", _msg(Kind.ALERT, 1), 1, msg_id="alert-1")
    tele = box.put(Kind.TELEMETRY, "t", _msg(Kind.TELEMETRY, 1), 0)
    assert {r.id for r in box.pending(10)} == {alert, tele}
    box.ack([alert, tele])  # PUBACK / socket write
    assert len(box) == 1 and box.pending(10) == [], "sent, waiting for its receipt"
    time.sleep(0.35)
    assert [r.id for r in box.pending(10)] == [alert], "no receipt in time: published again"
    box.ack([alert])  # still no receipt: the next wait is twice as long
    time.sleep(0.35)
    assert box.pending(10) == []
    time.sleep(0.3)
    assert [r.id for r in box.pending(10)] == [alert]
    assert box.confirm(["alert-1", "unknown"]) == 1 and len(box) == 0 and box.size_bytes == 0
    ledger = box.ledger()["alert"]
    assert (ledger["written"], ledger["acked"], ledger["confirmed"], ledger["queued"]) == (1, 2, 1, 0)
    # A receipt may come before the PUBACK is processed: the row goes all the same.
    early = box.put(Kind.EVENT, "e", _msg(Kind.EVENT, 2), 1, msg_id="event-2")
    assert box.confirm(["event-2"]) == 1
    box.ack([early])  # the late PUBACK finds nothing
    assert len(box) == 0
