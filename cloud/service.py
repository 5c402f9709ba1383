"""One cloud worker, wired: storage, MQTT ingest, verdicts, registry, rollout, learning, API.

:class:`CloudService` builds every part from one :class:`~cloud.config.CloudConfig`, starts them
(migrations first), and stops them in reverse order. Periodic work runs on one APScheduler
``BackgroundScheduler``: the verdict retry sweep, the rollout and learning ticks, and the
learning triggers (time interval, count of new labels). ``fabpm cloud run`` is :func:`run`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text

from cloud.api import ApiContext, create_app
from cloud.auth import Users
from cloud.config import ApiConfig, CloudConfig
from cloud.errors import BrokerError, CloudError, ModelError, StorageError
from cloud.field_report import LEAD_H, MATCH_H, field_report
from cloud.ingest import Ingestor
from cloud.labels import RESET_EVENTS, SURVIVAL, label_survivors
from cloud.learning import Learner, Pipeline
from cloud.login_throttle import LoginThrottle
from cloud.metrics import CloudMetrics
from cloud.mqtt import MqttLink, drain_session
from cloud.notify import LEASE as NOTIFY_LEASE
from cloud.notify import Notifier
from cloud.receipts import Receipts
from cloud.registry import Registry
from cloud.rollout import RolloutManager
from cloud.serving import load_replicas
from cloud.sessions import Roster
from cloud.storage import Repo, make_engine, migrate
from cloud.storage.models import (
    AuditEntry,
    DeadLetter,
    EventRow,
    LoginFailure,
    RiskPoint,
    SeenMessage,
    SensorIssueRow,
    ShelfRow,
)
from cloud.storage.repo import equipment_now
from cloud.verdicts import VerdictService

_logger = logging.getLogger(__name__)

FIELD_DAYS = 30.0  # the window of the fabpm_cloud_field gauges
SURVIVORS_LEASE = "survival-labels"
SURVIVORS_LEASE_S = 600.0  # far longer than one pass (at most 5,000 cases in one transaction)
JOB_WAIT_S = 10.0  # how long stop() waits for the scheduled jobs in flight (prune, notify, receipts)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class CloudService:
    """A cloud worker. ``pipeline`` overrides the training pipeline (tests inject small ones)."""

    def __init__(
        self,
        cfg: CloudConfig,
        pipeline: Pipeline | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.metrics = CloudMetrics()
        self.engine = make_engine(cfg.storage.url, cfg.storage.echo, cfg.storage.pool_size)
        self.repo = Repo(self.engine, clock)
        auth = cfg.api.auth
        throttle = LoginThrottle(
            self.repo, auth.login_free_failures, auth.login_lockout_s, auth.login_lockout_max_s
        )
        self.users = Users(self.repo, auth.token_ttl_s, auth.scrypt_n, clock, throttle)
        self.registry = Registry(self.repo, cfg.registry, clock)
        self.receipts = Receipts(self._publish)
        self.ingest = Ingestor(
            self.repo,
            self.metrics,
            cfg.horizon_h,
            on_case=self._on_case,
            clock=clock,
            on_stored=lambda m: self.receipts.add(m.site, m.edge_id, m.msg_id),
            sensor_limits=cfg.sensors,
        )
        self.link = MqttLink(cfg.mqtt, handler=self.ingest.handle)
        self.roster = Roster(self.repo, self.link.client_id, cfg.mqtt.share_group, clock)
        public_url = cfg.api.public_url or f"{cfg.api.scheme}://{cfg.api.host}:{cfg.api.port}"
        self.rollout = RolloutManager(
            self.repo, self.registry, self._publish, cfg.rollout, self.metrics, public_url, clock
        )
        self.verdicts: VerdictService | None = None
        self.model_version: str | None = None
        self._served: Path | None = None  # the full checkpoint the verdicts come from
        self.learner: Learner | None = None
        self._pipeline = pipeline
        self.scheduler = BackgroundScheduler(daemon=True)
        self._stopping = threading.Event()  # ends an adoption's drain early (the session stays)
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        # Alerts to webhooks: every worker ticks, the one holding the lease sends.
        self.notifier = (
            Notifier(self.repo, cfg.notify, self.link.client_id, self.metrics, clock=clock)
            if cfg.notify.webhooks
            else None
        )
        self.api_ctx = ApiContext(
            self.repo,
            self.users,
            self.registry,
            self.rollout,
            self._publish,
            self.metrics,
            None,
            self.health,
            clock,
            self.ingest.handle,
            self.notifier,
            cfg.sensors,
            cfg.storage.state_events_days,
        )
        self.app = create_app(self.api_ctx)

    # ---- parts -------------------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.link.publish(topic, payload, qos, retain, wait=retain)

    def _on_case(self, case: Any) -> None:
        if self.verdicts is not None:
            self.verdicts.on_case(case)

    def _start_serving(self) -> None:
        ckpt = self.cfg.serving.checkpoint
        if ckpt is None:
            _logger.warning("serving.checkpoint is not set: hard cases are stored but get no verdict")
            return
        s = self.cfg.serving
        active = self.registry.active()
        if active is not None and active.full_checkpoint and Path(active.full_checkpoint).exists():
            ckpt = Path(active.full_checkpoint)  # a learning round improved the full model since
        replicas = load_replicas(ckpt, s.device, s.precision, s.threads, s.keep_ratio, s.trace)
        self._served = ckpt
        self.model_version = replicas[0].version
        self.verdicts = VerdictService(
            self.repo,
            [r.predict for r in replicas],
            self._publish,
            self.model_version,
            self.metrics,
            s,
            self.clock,
            replicas[0].refuses,
        )
        self.verdicts.start()

    def base_checkpoint(self) -> Path:
        """The full model a round fine-tunes: the active model's, else the served one."""
        active = self.registry.active()
        if active is not None and active.full_checkpoint and Path(active.full_checkpoint).exists():
            return Path(active.full_checkpoint)
        if self.cfg.serving.checkpoint is None:
            raise ModelError("no full model to fine-tune: set serving.checkpoint")
        return self.cfg.serving.checkpoint

    def _start_learning(self) -> None:
        lc = self.cfg.learning
        if not lc.enabled:
            return
        pipeline = self._pipeline
        if pipeline is None:
            try:
                from cloud.pipeline_adapter import make_pipeline
            except ImportError as exc:
                _logger.warning("learning disabled: the training pipeline is not installed (%s)", exc)
                return
            pipeline = make_pipeline(self.cfg, self.registry)
        self.learner = Learner(
            self.repo,
            lc,
            pipeline,
            self.registry,
            self.rollout,
            self.metrics,
            self.base_checkpoint,
            self.clock,
        )
        self.api_ctx.learner = self.learner  # the API starts rounds on demand through it
        if lc.interval_h is not None:
            self.scheduler.add_job(
                self._background,
                "interval",
                hours=lc.interval_h,
                args=["time", 1],
                id="learn-time",
                max_instances=1,
            )
        self.scheduler.add_job(
            self._background,
            "interval",
            seconds=lc.check_labels_s,
            args=["labels", lc.min_new_labels],
            id="learn-labels",
            max_instances=1,
        )
        t = threading.Thread(target=self._resume, name="learning-resume", daemon=True)
        t.start()
        self._threads.append(t)

    def _resume(self) -> None:
        assert self.learner is not None
        try:
            self.learner.resume()
        except Exception:  # a broken round is recorded as failed by the learner; keep serving
            _logger.exception("resuming learning rounds failed")

    def _background(self, reason: str, min_labels: int) -> None:
        if self.learner is None:
            return
        try:
            self.learner.trigger(reason, min_labels)
        except CloudError as exc:
            _logger.warning("learning trigger %s: %s", reason, exc)

    def _tick(self) -> None:
        self.rollout.tick()
        if self.learner is not None:
            self.learner.tick()
        self._follow_active_model()

    def _follow_active_model(self) -> None:
        """Every worker serves the full model behind the active edge model (after a round)."""
        active = self.registry.active()
        if self.verdicts is None or active is None or not active.full_checkpoint:
            return
        ckpt = Path(active.full_checkpoint)
        if ckpt == self._served or not ckpt.exists():
            return
        s = self.cfg.serving
        try:
            replicas = load_replicas(ckpt, s.device, s.precision, s.threads, s.keep_ratio, s.trace)
        except ModelError as exc:
            _logger.warning("keeping full model %s: %s", self.model_version, exc)
            self._served = ckpt  # do not retry a broken checkpoint every tick
            return
        self.verdicts.swap([r.predict for r in replicas], replicas[0].version)
        self.verdicts.refuses = replicas[0].refuses
        self._served = ckpt
        self.model_version = replicas[0].version

    def _beat(self) -> None:
        """Renew this worker's row: its own job, so a long drain never makes this worker look gone."""
        try:
            self.roster.beat()
        except StorageError as exc:
            _logger.warning("worker_sessions: %s", exc)

    def _adopt(self) -> None:
        """Adopt, drain and end the sessions of workers that are gone (cloud/sessions.py)."""
        m = self.cfg.mqtt
        try:
            orphans = self.roster.orphans(m.orphan_after_s)
        except StorageError as exc:
            _logger.warning("worker_sessions: %s", exc)
            return
        for client_id, seen in orphans:
            try:
                claimed = self.roster.claim(client_id, seen, hold_s=m.drain_max_s + m.connect_timeout_s + 30)
                if claimed is None:
                    continue  # another worker took it, or its owner is back
                n = drain_session(m, client_id, self.ingest.handle, cancel=self._stopping)
                if n is None:  # its owner is back, or this worker stops: the session stays
                    _logger.warning("adopting the MQTT session of %s stopped before it was empty", client_id)
                    continue
                self.roster.forget(client_id, claimed)
            except (BrokerError, StorageError) as exc:  # the claim lapses; the row is tried again
                _logger.warning("could not adopt the MQTT session of %s: %s", client_id, exc)
                continue
            self.metrics.sessions_adopted.inc()
            _logger.warning(
                "adopted the MQTT session of worker %s (silent for %.0f s): %d message(s) it held handled, "
                "session ended",
                client_id,
                self.clock() - seen,
                n,
            )

    def _field_gauges(self) -> None:
        """Hourly: the last 30 days' field figures as gauges (NaN while undefined: no alerts decided)."""
        try:
            f = field_report(self.repo, self.clock(), FIELD_DAYS, LEAD_H, MATCH_H)
        except StorageError as exc:
            _logger.warning("field figures: %s", exc)
            return
        figures = {
            "precision": f["precision"],
            "warned_ge_72h": f["recall_ge_lead"],
            "median_lead_h": f["median_lead_h"],
            "alerts": f["alerts"],
            "failures": f["failures"],
        }
        for name, value in figures.items():
            self.metrics.field.labels(name).set(math.nan if value is None else value)

    def _label_survivors(self) -> int:
        """cloud/labels.label_survivors, on one worker at a time (a lease, so two never label a
        case twice); how many it labelled."""
        owner = self.link.client_id
        try:
            if not self.repo.take_lease(SURVIVORS_LEASE, owner, self.clock(), SURVIVORS_LEASE_S):
                return 0
            try:
                with self.repo.transaction() as s:
                    n = label_survivors(s, self.cfg.horizon_h, self.clock())
            finally:
                self.repo.release_lease(SURVIVORS_LEASE, owner)
        except StorageError as exc:
            _logger.warning("survival labels: %s", exc)
            return 0
        if n:
            self.metrics.labels.labels(SURVIVAL).inc(n)
            _logger.info("%d cases labelled: their tools ran %g h on without failure", n, self.cfg.horizon_h)
        return n

    def _prune(self) -> None:
        """Every hour: what ``storage``'s retention settings say is old goes (in chunks). Rows
        stamped on the equipment's clock (events) are aged by it (:func:`equipment_now`): the
        simulator's runs months off the cloud's, and its first hours of state changes were pruned
        as soon as they came."""
        st, now = self.cfg.storage, self.clock()
        day = 86400.0
        try:
            with self.repo.transaction() as s:
                # never later than the cloud's clock: one tool's clock set years ahead must not
                # make every other tool's history look old enough to delete
                on_equipment = min(equipment_now(s, now), now)
        except StorageError as exc:
            _logger.warning("pruning: %s", exc)
            return
        jobs = (
            ("risk points", RiskPoint.ts, st.risk_history_days, now, ()),
            ("de-duplication keys", SeenMessage.received_ts, st.dedup_days, now, ()),
            # failures and maintenance bound the labels (cloud/labels.py): never pruned
            (
                "state and alarm events",
                EventRow.source_ts,
                st.state_events_days,
                on_equipment,
                (EventRow.event.not_in(RESET_EVENTS),),
            ),
            ("dead letters", DeadLetter.received_ts, st.dead_letters_days, now, ()),
            # Sensor issues as state events are, by when they ended (a sensor's history of the same
            # age; closed_ts is the cloud's clock); open ones (closed_ts NULL) stay, as prune_older
            # leaves NULLs.
            ("ended sensor issues", SensorIssueRow.closed_ts, st.state_events_days, now, ()),
            ("audit rows", AuditEntry.ts, st.audit_days, now, ()),
            ("ended shelves", ShelfRow.end_ts, st.audit_days, now, ()),  # who shelved what: as the audit
            ("login failure counters", LoginFailure.last_ts, self.users.throttle.forget_s / day, now, ()),
        )
        for what, column, days, until, where in jobs:
            try:
                gone = self.repo.prune_older(column, until - days * day, *where)
            except StorageError as exc:
                _logger.warning("pruning %s: %s", what, exc)
                continue
            if gone:
                _logger.info("pruned %d %s older than %g days", gone, what, days)

    def _sweep(self) -> None:
        if self.verdicts is not None:
            self.verdicts.sweep(self.cfg.serving.retry_pending_s)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        # The API's settings first: a missing certificate stops the start before anything runs.
        api_config = api_server_config(self.app, self.cfg.api) if self.cfg.api.enabled else None
        migrate(self.engine)
        self._start_serving()
        self.link.start()
        if self.cfg.mqtt.share_group:
            self._beat()  # before any peer that stops now counts the live workers
            every = self.cfg.mqtt.heartbeat_s
            self.scheduler.add_job(self._beat, "interval", seconds=every, id="beat", max_instances=1)
            if self.cfg.mqtt.adopt_orphans:
                self.scheduler.add_job(
                    self._adopt,
                    "interval",
                    seconds=every,
                    id="adopt",
                    max_instances=1,
                    next_run_time=datetime.now(UTC),  # a session left under another id: drain it now
                )
        self.scheduler.add_job(
            self._tick, "interval", seconds=self.cfg.rollout.tick_s, id="tick", max_instances=1
        )
        self.scheduler.add_job(
            self._sweep, "interval", seconds=self.cfg.serving.retry_pending_s, id="sweep", max_instances=1
        )
        # The first prune a minute after start, then hourly: a worker restarted in a loop does not
        # prune at every start, and a start that is stopped at once has no prune in flight.
        soon = datetime.now(UTC) + timedelta(minutes=1)
        self.scheduler.add_job(
            self._prune, "interval", hours=1, id="prune", max_instances=1, next_run_time=soon
        )
        self.scheduler.add_job(
            self._field_gauges, "interval", hours=1, id="field", max_instances=1, next_run_time=soon
        )
        if (every_s := self.cfg.learning.label_survivors_s) is not None:
            self.scheduler.add_job(
                self._label_survivors, "interval", seconds=every_s, id="survivors", max_instances=1
            )
        if self.notifier is not None:
            every_s = self.cfg.notify.interval_s
            self.scheduler.add_job(
                self.notifier.tick, "interval", seconds=every_s, id="notify", max_instances=1
            )
        # Receipts go out twice a second: an edge waiting for them holds its rows that long more.
        self.scheduler.add_job(self.receipts.flush, "interval", seconds=0.5, id="receipts", max_instances=1)
        self._start_learning()
        self.scheduler.start()
        if api_config is not None:
            self._server = uvicorn.Server(api_config)
            t = threading.Thread(target=self._server.run, name="api", daemon=True)
            t.start()
            self._threads.append(t)
            deadline = time.monotonic() + 15
            while not self._server.started and time.monotonic() < deadline and t.is_alive():
                time.sleep(0.02)
            if not self._server.started:
                raise CloudError(f"API did not start on {self.cfg.api.host}:{self.cfg.api.port}")
            _logger.info(
                "API and console on %s://%s:%s/", self.cfg.api.scheme, self.cfg.api.host, self.cfg.api.port
            )

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._stopping.set()
        if self.scheduler.running:
            self._stop_scheduler()
        leaving = self._leave_group()
        with contextlib.suppress(Exception):  # best effort: unconfirmed messages come again anyway
            self.receipts.flush()
        self.link.stop(end_session=leaving)
        if leaving:
            with contextlib.suppress(StorageError):  # a row left behind is adopted: a no-op drain
                self.roster.left()
        if self.verdicts is not None:
            self.verdicts.stop()
        if self.notifier is not None:  # another worker sends from its next tick, not a lease later
            with contextlib.suppress(StorageError):
                self.repo.release_lease(NOTIFY_LEASE, self.notifier.owner)
        for t in self._threads:
            t.join(timeout=10)
        self.engine.dispose()

    def _stop_scheduler(self) -> None:
        """No job starts after this; the ones running get ``JOB_WAIT_S`` to end, so that none writes
        through the engine disposed below. A learning round can run for minutes: it is left to the
        process's end and resumes at the next start (cloud/learning.py)."""
        waiter = threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": True}, daemon=True)
        waiter.start()
        waiter.join(timeout=JOB_WAIT_S)
        if waiter.is_alive():
            _logger.warning(
                "a scheduled job still runs %g s after stop (a learning round resumes at the next start)",
                JOB_WAIT_S,
            )

    def _leave_group(self) -> bool:
        """Stopping while another worker is live: unsubscribe and handle what is in flight, so the
        session can end (cloud/sessions.py). The last worker keeps its session. True: leaving."""
        m = self.cfg.mqtt
        if not m.share_group or not self.link.connected.is_set():
            return False
        try:
            leaving = self.roster.leave(fresh_s=m.orphan_after_s)
        except StorageError as exc:  # cannot tell whether others run: keep the session, lose nothing
            _logger.warning("keeping the MQTT session: %s", exc)
            return False
        if not leaving:
            return False
        if not self.link.drain():
            # Still busy (or cut off): keep the session and its row, so that another worker adopts
            # what is left once the row goes stale.
            _logger.warning("messages still coming after %.0f s: keeping the MQTT session", m.drain_max_s)
            return False
        _logger.info("left share group %s; other workers take its messages", m.share_group)
        return True

    def health(self) -> dict[str, Any]:
        db_ok = True
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:  # any database failure is "not healthy", reported, not raised
            db_ok = False
        mqtt_ok = self.link.connected.is_set()
        return {
            "ok": db_ok and mqtt_ok,
            "database": db_ok,
            "mqtt": mqtt_ok,
            "model": self.model_version,
            "queue": self.verdicts.batcher.depth() if self.verdicts else 0,
            "dead_letters": self.ingest.dead,
        }


def wait_for(stop: threading.Event, poll_s: float = 0.5) -> None:
    """Wait in the main thread until ``stop`` is set by a signal handler. Woken every ``poll_s``:
    Linux may deliver SIGTERM to another thread (a training or torch thread), and then nothing
    interrupts a plain wait, so the Python handler that sets ``stop`` would not run until the main
    thread woke on its own (the demo killed a worker that had not stopped in 15 s)."""
    while not stop.wait(poll_s):
        pass


def run(cfg: CloudConfig) -> int:
    """Run until SIGTERM or SIGINT."""
    service = CloudService(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    try:
        wait_for(stop)
    finally:
        _logger.info("stopping")
        service.stop()
    return 0


def api_server_config(app: Any, api: ApiConfig) -> uvicorn.Config:
    """uvicorn's settings for ``app``: HTTPS when ``api`` names a certificate (checked here, so that
    a missing file is one clear error, not an API thread that dies), and the client address from
    X-Forwarded-For only when the connection comes from one of ``api.trusted_proxies``."""
    tls: dict[str, str] = {}
    if api.tls_cert_file is not None and api.tls_key_file is not None:
        for name, path in (("tls_cert_file", api.tls_cert_file), ("tls_key_file", api.tls_key_file)):
            if not path.is_file():
                raise CloudError(f"api.{name}: {path} is not a file")
        tls = {"ssl_certfile": str(api.tls_cert_file), "ssl_keyfile": str(api.tls_key_file)}
    elif not _loopback(api.host):
        _logger.warning(
            "the console and API listen on %s without TLS: passwords and tokens cross the network "
            "in clear; set api.tls_cert_file and api.tls_key_file, or put an HTTPS proxy in front",
            api.host,
        )
    return uvicorn.Config(
        app,
        host=api.host,
        port=api.port,
        log_level="warning",
        # the config's list, never uvicorn's FORWARDED_ALLOW_IPS environment default
        forwarded_allow_ips=list(api.trusted_proxies),
        **tls,  # type: ignore[arg-type]
    )
