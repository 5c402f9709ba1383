"""Alerts to webhooks (cloud/notify.py) against a real HTTP receiver: delivered once with a valid
signature, retried with back-off while the receiver fails, failed after the attempts, bounded
queue, one sender among workers, late alerts sent and old history not; SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from cloud.config import NotifyConfig
from cloud.errors import CloudError
from cloud.ingest import Ingestor
from cloud.metrics import CloudMetrics
from cloud.notify import Notifier, text_of
from cloud.shelving import shelve
from cloud.storage import Repo
from cloud.storage.models import AlertRow, NotificationRow, Tool
from shared.messages import Alert, Telemetry
from shared.topics import Kind, topic


class Receiver:
    """An HTTP endpoint that records what it is sent and answers ``status`` (settable)."""

    def __init__(self) -> None:
        self.got: list[tuple[dict, dict[str, str]]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append(
                    (json.loads(body), {k: v for k, v in self.headers.items()} | {"raw": body})
                )
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _alert(
    tool: str,
    probability: float,
    site: str = "fab1",
    ts: float = 1_000_000.0,
    evidence: list | None = None,
    likely_mode: str | None = None,
) -> bytes:
    msg = Alert(
        edge_id="edge-1", site=site, tool_id=tool, mode="rf_match_drift", probability=probability,
        rul_h=40.0, rul_std_h=9.0, model_version="r1", episode_start_ts=ts - 600, evidence=evidence,
        likely_mode=likely_mode,
    )  # fmt: skip
    return msg.model_copy(update={"ts": ts}).to_bytes()


def _cfg(url: str, hook: dict | None = None, **kw: object) -> NotifyConfig:
    hook = {"name": "teams", "url": url, "secret_env": "HOOK_KEY"} | (hook or {})
    return NotifyConfig.model_validate({"webhooks": [hook], "backoff_s": 10, "backoff_max_s": 40} | kw)


def _rows(repo: Repo) -> list[NotificationRow]:
    with repo.transaction() as s:
        return list(s.query(NotificationRow).order_by(NotificationRow.id))


def test_an_alert_is_posted_once_signed_and_retried_while_the_receiver_fails(repo: Repo, receiver: Receiver):
    clock = Clock()
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    notifier = Notifier(repo, _cfg(receiver.url), "w1", CloudMetrics(), clock=clock, env={"HOOK_KEY": "k3y"})
    # The tool's latest telemetry before the alert: its ESC temperature has had no good value for an hour.
    bad = {"mean": None, "min": None, "max": None, "last": None, "unchanged_s": 0.0, "bad_s": 3600.0}
    tel = Telemetry(edge_id="edge-1", site="fab1", tool_id="ETCH002", period_s=60, summary={"esc_temp": bad})
    assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), tel.to_bytes())
    moving = [
        {"sensor": "rf_reflected_power", "contribution": 0.41, "deviation": 4.2},
        {"sensor": "match_c1", "contribution": 0.05, "deviation": -1.04},
    ]  # what the edge found carries the risk (shared.evidence)
    assert ingest.handle(
        topic("fab1", "edge-1", Kind.ALERT),
        _alert("ETCH002", 0.83, evidence=moving, likely_mode="chamber_deposition"),
    )
    receiver.status = 503  # Teams is down
    assert notifier.tick() == 0
    clock.t += 5
    assert notifier.tick() == 0 and len(receiver.got) == 1, "not before its back-off (10 s)"
    clock.t += 6
    assert notifier.tick() == 0 and len(receiver.got) == 2
    receiver.status = 200
    clock.t += 20  # the second back-off is 20 s
    assert notifier.tick() == 1 and len(receiver.got) == 3
    clock.t += 60
    assert notifier.tick() == 0 and len(receiver.got) == 3, "delivered once"

    body, headers = receiver.got[-1]
    assert body["alert"]["tool_id"] == "ETCH002" and body["target"] == "teams"
    assert "ETCH002 (fab1) may fail by rf_match_drift, risk 0.83, RUL 40 h ± 9" in body["text"]
    assert (
        "; moving from the tool's reference: rf_reflected_power +4.2 sd, match_c1 -1.0 sd; those sensors "
        "point to chamber_deposition; check" in body["text"]
    )
    assert body["text"].endswith("; check these sensors first: esc_temp no good value 1.0 h")
    assert body["alert"]["evidence"] == moving and body["alert"]["likely_mode"] == "chamber_deposition"
    assert body["alert"]["sensor_issues"] == [{"sensor": "esc_temp", "issue": "no_good_value", "hours": 1.0}]
    assert [b["notification_id"] for b, _ in receiver.got] == [body["notification_id"]] * 3  # receivers dedup
    want = "sha256=" + hmac.new(b"k3y", headers["raw"], hashlib.sha256).hexdigest()
    assert headers["X-Fabpm-Signature"] == want
    (row,) = _rows(repo)
    assert row.status == "delivered" and row.attempts == 3 and row.last_error == ""


def test_attempts_run_out_the_queue_is_bounded_and_filters_apply(repo: Repo, receiver: Receiver):
    clock = Clock()
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    cfg = _cfg(receiver.url, {"min_probability": 0.5, "sites": ["fab1"]}, max_attempts=2, max_pending=3)
    receiver.status = 500
    notifier = Notifier(repo, cfg, "w1", CloudMetrics(), clock=clock, env={"HOOK_KEY": "k"})
    for i in range(5):
        assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), _alert(f"T{i}", 0.9))
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), _alert("QUIET", 0.2))  # below 0.5
    assert ingest.handle(topic("fab2", "edge-1", Kind.ALERT), _alert("ELSEWHERE", 0.9, site="fab2"))
    notifier.tick()
    rows = _rows(repo)
    assert [r.payload["alert"]["tool_id"] for r in rows] == [f"T{i}" for i in range(5)]
    assert [r.status for r in rows][:2] == ["dropped", "dropped"], "over max_pending: the oldest go"
    assert len(receiver.got) == 1, "a target that did not answer is not tried again for each row in one tick"
    for _ in range(6):
        clock.t += 60
        notifier.tick()
    assert [r.status for r in _rows(repo)] == ["dropped", "dropped", "failed", "failed", "failed"]
    assert all(r.last_error == "HTTP 500" for r in _rows(repo)[2:])
    clock.t += 8 * 86400  # done rows go after keep_days
    notifier.tick()
    assert _rows(repo) == []


def test_one_worker_sends_late_alerts_go_and_old_history_does_not(repo: Repo, receiver: Receiver):
    clock = Clock()
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), _alert("OLD", 0.9))
    clock.t += 2 * 3600  # the webhook is configured two hours later: the old alert is history
    late = _alert("LATE", 0.9, ts=clock.t - 5 * 3600)  # kept by its edge through a 5 h outage
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), late)
    env = {"HOOK_KEY": "k"}
    w1 = Notifier(repo, _cfg(receiver.url), "w1", CloudMetrics(), clock=clock, env=env)
    w2 = Notifier(repo, _cfg(receiver.url), "w2", CloudMetrics(), clock=clock, env=env)
    assert w1.tick() == 1 and w2.tick() == 0  # w2 waits: w1 holds the lease
    assert [b["alert"]["tool_id"] for b, _ in receiver.got] == ["LATE"]
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), _alert("NEXT", 0.9))
    clock.t += w1.lease_s + 1  # w1 died
    assert w2.tick() == 1 and [b["alert"]["tool_id"] for b, _ in receiver.got] == ["LATE", "NEXT"]


def test_a_sensor_that_begins_to_look_wrong_is_told_once_to_targets_that_ask(repo: Repo, receiver: Receiver):
    """kinds = ["sensor"]: each stretch in which a sensor looks stuck or Bad, once, when it opens;
    a target with the default kinds does not hear of it."""
    clock = Clock()
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    env = {"HOOK_KEY": "k"}
    techs = Notifier(
        repo, _cfg(receiver.url, {"kinds": ["sensor"]}), "w1", CloudMetrics(), clock=clock, env=env
    )

    def telemetry(still_h: float) -> bytes:
        valve = {"last": 40.0, "unchanged_s": still_h * 3600, "bad_s": 0.0}
        return Telemetry(
            edge_id="edge-1", site="fab1", tool_id="ETCH002", period_s=60, summary={"throttle_valve": valve},
            source_ts=clock.t,
        ).to_bytes()  # fmt: skip

    for still_h in (2.5, 2.6):  # opened, then extended: one stretch
        assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), telemetry(still_h))
        clock.t += 60
        techs.tick()
    ((body, _),) = receiver.got
    assert body["kind"] == "sensor" and body["sensor_issue"]["sensor"] == "throttle_valve"
    assert body["text"].startswith(
        "fabpm: ETCH002 (fab1) sensor throttle_valve unchanged while processing for 2.5 h"
    )
    others = Notifier(repo, _cfg(receiver.url), "w1", CloudMetrics(), clock=clock, env=env)
    assert others.tick() == 0 and len(receiver.got) == 1


def test_webhook_settings_are_checked():
    with pytest.raises(ValidationError, match="unique"):
        NotifyConfig.model_validate({"webhooks": [{"name": "a", "url": "https://x"}] * 2})
    with pytest.raises(ValidationError):
        NotifyConfig.model_validate({"webhooks": [{"name": "a", "url": "ftp://x"}]})
    with pytest.raises(CloudError, match="HOOK_KEY is not set"):
        Notifier(None, _cfg("https://x"), "w", CloudMetrics(), env={})  # type: ignore[arg-type]
    # A Teams or Slack URL is itself the credential: it may come from the environment instead.
    for both_or_none in ({"url_env": "HOOK_URL"}, {"url": None}):
        with pytest.raises(ValidationError, match="set url or url_env"):
            _cfg("https://x", both_or_none)
    from_env = _cfg("https://x", {"url": None, "url_env": "HOOK_URL"})
    with pytest.raises(CloudError, match="HOOK_URL holds no http"):
        Notifier(None, from_env, "w", CloudMetrics(), env={"HOOK_KEY": "k"})  # type: ignore[arg-type]
    env = {"HOOK_KEY": "k", "HOOK_URL": "https://example.webhook.office.com/abc"}
    notifier = Notifier(None, from_env, "w", CloudMetrics(), env=env)  # type: ignore[arg-type]
    assert notifier.urls == {"teams": "https://example.webhook.office.com/abc"}


def test_an_admin_sends_a_test_message_to_a_webhook(repo: Repo, receiver: Receiver, tmp_path):
    from conftest import login
    from test_cloud_auth import api_context, serve

    from cloud.api import create_app
    from cloud.auth import Users

    users = Users(repo, 3600, 2**4)
    notifier = Notifier(repo, _cfg(receiver.url), "w1", CloudMetrics(), env={"HOOK_KEY": "k3y"})
    ctx = api_context(repo, tmp_path, users, notifier=notifier)
    users.add("ada", "ada-password", "admin")
    users.add("olga", "olga-password", "operator")
    with serve(create_app(ctx)) as client:
        ada, olga = login(client, "ada"), login(client, "olga")
        assert client.post("/api/notifications/test?target=teams", headers=olga).status_code == 403
        assert client.post("/api/notifications/test?target=nope", headers=ada).status_code == 404
        answer = client.post("/api/notifications/test?target=teams", headers=ada).json()
        assert answer == {"target": "teams", "delivered": True, "outcome": "HTTP 200"}
        receiver.status = 404  # a URL that went stale: said so, not queued
        assert (
            client.post("/api/notifications/test?target=teams", headers=ada).json()["outcome"] == "HTTP 404"
        )
    body, headers = receiver.got[0]
    assert body["kind"] == "test" and "sent by ada" in body["text"]
    assert (
        headers["X-Fabpm-Signature"]
        == "sha256=" + hmac.new(b"k3y", headers["raw"], hashlib.sha256).hexdigest()
    )
    assert _rows(repo) == [], "a test message is not an alert's notification"


def test_a_rollback_is_sent_to_the_targets_that_want_rollbacks(repo: Repo, receiver: Receiver):
    from cloud.storage.models import ModelRow, RolloutRow

    clock = Clock()
    with repo.transaction() as s:
        s.add(
            ModelRow(
                version="r7", model_id="risk", role="edge-risk", parent_version="r6", round_id=7, manifest={},
                signature="", artifact_path="", status="rolled_back", created_ts=clock.t,
            )
        )  # fmt: skip
        s.flush()
        s.add(
            RolloutRow(
                version="r7", previous_version="r6", stage="rolled_back", canary_edges=["edge-1"],
                started_ts=clock.t - 900, updated_ts=clock.t - 60, reason="canary refused: disagreement 0.4",
            )
        )  # fmt: skip
    hooks = [
        {"name": "teams", "url": receiver.url, "kinds": ["alert", "rollback"]},
        {"name": "pager", "url": receiver.url, "kinds": ["alert"]},
    ]
    cfg = NotifyConfig.model_validate({"webhooks": hooks})
    assert Notifier(repo, cfg, "w1", CloudMetrics(), clock=clock, env={}).tick() == 1
    ((body, _),) = receiver.got
    assert body["kind"] == "rollback" and body["target"] == "teams"
    assert body["text"] == "fabpm: model r7 rolled back to r6 (rollout 1): canary refused: disagreement 0.4"
    assert body["rollout"]["canary_edges"] == ["edge-1"]
    assert [r.subject for r in _rows(repo)] == ["rollback:1"]


def test_a_failed_round_is_sent_and_a_rejected_one_is_not(repo: Repo, receiver: Receiver):
    from cloud.storage.models import LearningRound

    clock = Clock()
    with repo.transaction() as s:
        for status, error in (("failed", "distil: out of memory"), ("rejected", "")):
            s.add(
                LearningRound(
                    trigger="labels", step="distil", status=status, state={}, log=[], error=error,
                    label_watermark=clock.t, created_ts=clock.t - 600, updated_ts=clock.t - 60,
                )
            )  # fmt: skip
    cfg = NotifyConfig.model_validate({"webhooks": [{"name": "ops", "url": receiver.url}]})
    assert Notifier(repo, cfg, "w1", CloudMetrics(), clock=clock, env={}).tick() == 1
    ((body, _),) = receiver.got
    assert body["kind"] == "round_failed"
    assert body["text"] == "fabpm: learning round 1 (labels) failed at distil: distil: out of memory"


def test_a_candidate_the_gate_rejected_goes_only_to_targets_that_ask(repo: Repo, receiver: Receiver):
    from cloud.storage.models import LearningRound

    clock = Clock()
    why = "not promoted: old: AUC 0.71 vs 0.74, 95% sure it lost more than 0.01"
    with repo.transaction() as s:
        too_few = "3 new labels: too few for a training and a test part"
        for step, note in (("gate", why), ("collect", too_few)):
            s.add(
                LearningRound(
                    trigger="labels", step=step, status="rejected", state={}, log=[{"ts": 0, "msg": note}],
                    error="", label_watermark=clock.t, created_ts=clock.t - 600, updated_ts=clock.t - 60,
                )
            )  # fmt: skip
    ml = {"name": "ml", "url": receiver.url, "kinds": ["round_rejected"]}
    hooks = [{"name": "ops", "url": receiver.url}, ml]
    cfg = NotifyConfig.model_validate({"webhooks": hooks})
    assert Notifier(repo, cfg, "w1", CloudMetrics(), clock=clock, env={}).tick() == 1
    ((body, _),) = receiver.got  # to "ml" alone, and not the round that had too few labels to try
    assert body["kind"] == "round_rejected"
    assert body["text"] == f"fabpm: learning round 1 (labels): candidate {why}"
    assert [(r.target, r.subject) for r in _rows(repo)] == [("ml", "round:1")]


def test_an_alert_without_a_reference_says_since_when_its_sensors_moved():
    """A tool its edge has not seen come back up: the sensors moved since the edge began watching."""
    row = AlertRow(
        msg_id="m1", edge_id="edge-1", site="fab1", tool_id="PUMP1", mode="bearing_wear", probability=0.5,
        model_version="r1", episode_start_ts=0.0, ts=0.0, reference_known=False,
        evidence=[{"sensor": "vibration_rms", "contribution": 0.2, "deviation": 2.04}],
    )  # fmt: skip
    assert "; moving since the edge began watching: vibration_rms +2.0 sd" in text_of(row)


def test_an_alert_nobody_acknowledges_is_escalated_once_and_an_acknowledged_one_is_not(
    repo: Repo, receiver: Receiver
):
    """A target with kind escalation (a shift lead, the on-call phone) gets each alert nobody
    acknowledged within its ``escalate_after_min``, once; an alert acknowledged in time is not
    escalated, and one acknowledged while its escalation waits to go is withdrawn."""
    clock = Clock()
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    lead = {"name": "shift-lead", "kinds": ["escalation"], "escalate_after_min": 20, "min_probability": 0.5}
    cfg = _cfg(receiver.url, lead, lookback_h=1)
    notifier = Notifier(repo, cfg, "w1", CloudMetrics(), clock=clock, env={"HOOK_KEY": "k"})
    for tool, p in (("ETCH001", 0.9), ("ETCH002", 0.8), ("ETCH003", 0.3)):  # ETCH003: under its min
        assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), _alert(tool, p, ts=clock.t))
    with repo.transaction() as s:
        by_tool = {a.tool_id: a.msg_id for a in s.query(AlertRow)}
    clock.t += 10 * 60
    notifier.tick()
    with repo.transaction() as s:  # acknowledged in time
        s.get(AlertRow, by_tool["ETCH002"]).acknowledged_by = "olga"
    clock.t += 9 * 60
    assert notifier.tick() == 0 and not receiver.got, "not before 20 minutes"
    clock.t += 2 * 60
    assert notifier.tick() == 1
    ((body, _),) = receiver.got
    assert body["kind"] == "escalation" and body["alert"]["tool_id"] == "ETCH001" and body["after_min"] == 20
    assert body["text"].startswith("fabpm escalation: not acknowledged within 20 min: fabpm alert: ETCH001")
    clock.t += 3600
    assert notifier.tick() == 0 and len(receiver.got) == 1, "once"
    # The receiver is down when the next one is due; it is acknowledged before the retry: withdrawn.
    receiver.status = 503
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), _alert("ETCH004", 0.9, ts=clock.t))
    clock.t += 21 * 60
    assert notifier.tick() == 0 and len(receiver.got) == 2
    with repo.transaction() as s:
        s.query(AlertRow).filter(AlertRow.tool_id == "ETCH004").one().acknowledged_by = "vic"
    receiver.status = 200
    clock.t += 60
    assert notifier.tick() == 0 and len(receiver.got) == 2
    rows = {r.subject.split(":")[0] + ":" + r.payload["alert"]["tool_id"]: r for r in _rows(repo)}
    assert set(rows) == {"escalation:ETCH001", "escalation:ETCH004"}, "alert kinds go only where asked"
    assert rows["escalation:ETCH004"].status == "withdrawn"
    assert rows["escalation:ETCH004"].last_error == "acknowledged by vic first"


def test_an_escalation_lookback_does_not_page_old_history(repo: Repo, receiver: Receiver):
    """A target added later does not get escalations of alerts older than ``lookback_h`` before
    they became due."""
    clock = Clock()
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), _alert("ETCH001", 0.9, ts=clock.t))
    clock.t += 3 * 3600  # due 2 h 40 min ago, beyond the 1 h lookback
    lead = {"name": "shift-lead", "kinds": ["escalation"], "escalate_after_min": 20}
    notifier = Notifier(
        repo, _cfg(receiver.url, lead, lookback_h=1), "w1", CloudMetrics(), clock=clock, env={"HOOK_KEY": "k"}
    )
    assert notifier.tick() == 0 and not receiver.got and not _rows(repo)


def test_a_shelved_tools_alert_is_not_escalated(repo: Repo, receiver: Receiver):
    """An alert stored while its tool was shelved is held back from escalation targets too."""
    clock = Clock()
    ingest = Ingestor(repo, CloudMetrics(), clock=clock)
    lead = {"name": "shift-lead", "kinds": ["escalation"], "escalate_after_min": 20}
    notifier = Notifier(
        repo, _cfg(receiver.url, lead), "w1", CloudMetrics(), clock=clock, env={"HOOK_KEY": "k"}
    )
    assert ingest.handle(topic("fab1", "edge-1", Kind.ALERT), _alert("ETCH001", 0.9, ts=clock.t))
    with repo.transaction() as s:
        shelve(s, s.get(Tool, "ETCH001"), 8, "wet clean", "olga", clock.t - 60)
    clock.t += 21 * 60
    assert notifier.tick() == 0 and not receiver.got
    (row,) = _rows(repo)
    assert row.subject.startswith("escalation:") and row.status == "shelved"
