"""The edge daemon: the parts wired together and supervised under one ``asyncio.TaskGroup``.

::

    tag source ──values──▶ Pipeline (windows, model, decisions) ──▶ Outbox ──▶ MqttRelay ──▶ broker
        ▲                                                                          │
        └── guarded writes ◀── Tuner ◀── approvals     Updater ◀── announcements ◀─┘── verdicts

Long-running loops (source, relay, inference) run under :func:`supervise`: an exception is
logged with its traceback and the loop restarts after a back-off that doubles to a cap and resets
after a healthy minute. Periodic jobs (health, telemetry, housekeeping, model checks, tuning) run
on APScheduler 3's asyncio scheduler. Shutdown is one cancel, and it ends within a bound: the
source's disconnect is bounded, cancelled background tasks get ``STOP_TASKS_S``, the relay its
stop timeout; no loop uses ``asyncio.wait_for``, which on Python 3.11 can lose a cancel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from edge import references
from edge.alarm_flood import AlarmFlood
from edge.config import EdgeConfig
from edge.control import SetpointControl
from edge.decisions import Decider, message
from edge.errors import ModelError, OutboxError
from edge.inference import RiskModel, TuningModel, load_verified
from edge.metrics import EdgeMetrics, serve
from edge.mqtt import MqttRelay
from edge.outbox import Outbox, SilenceWatch
from edge.pipeline import Pipeline
from edge.running_jobs import RunningJobs
from edge.source import AsyncuaSource, TagSource, tag_table
from edge.updates import ModelStore, Updater, slot_of
from edge.windows import ReadyWindow, features
from shared.errors import FabpmError, SchemaError
from shared.messages import (
    Event,
    HardCase,
    Message,
    ModelAnnouncement,
    Status,
    Telemetry,
    Tuning,
    Verdict,
    parse_payload,
)
from shared.signing import load_public_key, manifest_path
from shared.topics import CONFIRMED, QOS, RETAINED, Kind, topic

_logger = logging.getLogger(__name__)
Model = RiskModel | TuningModel
STOP_TASKS_S = 5.0  # how long a stop waits for cancelled background tasks (writes, update checks)


async def supervise(name: str, factory: Callable[[], Awaitable[None]], cap_s: float = 30.0) -> None:
    """Run ``factory()`` forever: log a crash with its traceback, back off (doubling to ``cap_s``)."""
    delay = 0.5
    while True:
        started = time.monotonic()
        try:
            await factory()
            _logger.warning("%s loop returned; restarting", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            _logger.exception("%s loop crashed; restarting in %.1f s", name, delay)
        if time.monotonic() - started > 60.0:
            delay = 0.5
        await asyncio.sleep(delay)
        delay = min(delay * 2, cap_s)


class EdgeDaemon:
    """One edge: see the module docstring. ``source`` may be injected (tests, benchmarks)."""

    def __init__(self, cfg: EdgeConfig, source: TagSource | None = None) -> None:
        self.cfg = cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = EdgeMetrics()
        self.outbox = Outbox(
            cfg.resolve(cfg.outbox.path),
            int(cfg.outbox.quota_mb * 1024 * 1024),
            cfg.outbox.synchronous,
            await_receipts=cfg.mqtt.receipts,
            resend_after_s=cfg.mqtt.receipt_timeout_s,
        )
        self.tags = tag_table(cfg.tools)
        self.source: TagSource = AsyncuaSource(cfg.opcua, self.tags) if source is None else source
        self.relay = MqttRelay(cfg.mqtt, cfg.site, cfg.edge_id, self.outbox, on_message=self._on_command)
        self.silence = SilenceWatch(self.outbox, topic(cfg.site, cfg.edge_id, Kind.RECEIPT))
        self.decider = Decider(cfg.decisions, cfg.site, cfg.edge_id, tools=len(cfg.tools))
        self.pipeline = Pipeline(
            self.tags,
            {t.id: t.type for t in cfg.tools},
            self.decider,
            self.emit,
            self.metrics,
            cfg.decisions.max_stale_steps,
            cfg.decisions.infer_every_steps,
            recent=max(64, cfg.models.check_windows),
            alarm_flood=AlarmFlood(
                cfg.alarms.per_tool_per_hour, cfg.alarms.burst, cfg.alarms.quiet_s, cfg.alarms.summary_every_s
            ),
        )
        self.models: dict[str, Model] = {}  # slot (edge-risk, edge-tuning/<type>) -> model
        self.store = ModelStore(cfg.resolve(cfg.models.store_dir))
        self.key = load_public_key(cfg.resolve(cfg.models.public_key)) if cfg.models.public_key else None
        self.updater: Updater | None = None
        if self.key is not None:
            self.updater = Updater(
                cfg.models,
                self.store,
                self.key,
                cfg.edge_id,
                self.models.get,
                self._swap,
                lambda: list(self.pipeline.recent),
                self._features_for,
            )
        self.control = SetpointControl(
            cfg, self.tags, self.source, self.pipeline, self.models, self.emit, self._spawn
        )
        self.tuner = self.control.tuner
        self.verdicts: dict[str, int] = {"matched": 0, "unmatched": 0}
        self.dead_letters = 0
        self._dead_reasons: set[str] = set()
        self._infer_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pool_jobs = RunningJobs()  # the scheduler's jobs in the thread pool (edge/running_jobs.py)
        self.started = time.time()
        self.references_path = cfg.state_dir / "references.json"
        self._told_rows: dict[str, int] = {}  # per tool, the grid rows written at its last telemetry

    # -- models -------------------------------------------------------------------------------

    def load_models(self) -> None:
        """Per slot, the stored current model if any, else the configured file."""
        if self.key is None:
            _logger.warning("no models.public_key: no model is loaded and updates are refused")
            return
        threads = self.cfg.models.intra_op_threads
        configured: dict[str, Path] = {}
        if self.cfg.models.risk is not None:
            configured["edge-risk"] = self.cfg.resolve(self.cfg.models.risk)
        for i, rel in enumerate(self.cfg.models.tuning):
            path = self.cfg.resolve(rel)
            try:
                configured[slot_of(json.loads(manifest_path(path).read_text())["manifest"])] = path
            except (OSError, ValueError, KeyError) as exc:
                raise ModelError(f"models.tuning.{i}: unreadable manifest beside {path}: {exc}") from exc
        slots = set(configured) | self.store.slots()
        for slot in sorted(slots):
            model: Model | None = None
            pointer = self.store.pointer(slot)
            if pointer.get("version"):
                try:
                    model = self.store.load(slot, str(pointer["version"]), self.key, threads)
                except (FabpmError, OSError) as exc:
                    _logger.error("stored %s model %s does not load (%s)", slot, pointer["version"], exc)
            source = configured.get(slot)
            if model is None and source is not None:
                try:
                    model = load_verified(source, self.key, threads)
                    # Keep a copy in the store, so the cloud can roll back to it by version.
                    doc = json.loads(manifest_path(source).read_text())
                    self.store.save(slot, model.manifest, doc["signature"], source.read_bytes())
                except (FabpmError, OSError) as exc:
                    raise ModelError(f"models ({slot}): {exc}") from exc
            if model is not None:
                self._swap(slot, model)

    def _swap(self, role: str, model: Model) -> None:
        self.models[role] = model
        if isinstance(model, RiskModel):
            self.pipeline.set_model(model)
        self.publish_status()

    def _features_for(self, win: ReadyWindow, model: RiskModel) -> Any:
        spec = model.spec
        if win.values.shape[0] != spec.window or win.tool_type not in spec.tool_types:
            return None
        return features(win, spec)

    # -- outgoing -----------------------------------------------------------------------------

    def emit(self, msg: Message) -> None:
        """Queue one message in the outbox (the relay publishes it)."""
        kind = msg.KIND
        try:
            self.outbox.put(
                kind,
                topic(self.cfg.site, self.cfg.edge_id, kind),
                msg.to_bytes(),
                QOS[kind],
                retain=kind in RETAINED,
                msg_id=msg.msg_id if kind in CONFIRMED else None,  # the cloud sends receipts for these
                # a tool's State read again after a restart, unchanged: already written, not again
                latest_key=f"state:{msg.tool_id}" if isinstance(msg, Event) and msg.state else None,
            )
        except OutboxError as exc:
            _logger.error("%s", exc)
            return
        if isinstance(msg, HardCase):
            self.outbox.remember_case(
                msg.case_id, msg.tool_id, msg.edge_prediction, self.cfg.decisions.pending_cases_max
            )
        self.relay.wake()

    def health(self) -> dict[str, Any]:
        risk = self.models.get("edge-risk")
        return {
            "healthy": self.source.connected and self.relay.connected and risk is not None,
            "opcua": self.source.connected,
            "mqtt": self.relay.connected,
            "mqtt_refused": self.relay.refused,  # the broker's reason while it refuses our login
            "uptime_s": round(time.time() - self.started, 1),
            "values": self.pipeline.values,
            "bad_values": self.pipeline.bad,
            "outbox": self.outbox.stats(),
            "waiting_cases": self.outbox.waiting_cases(),
            "verdicts": dict(self.verdicts),
            "decisions": dict(self.decider.counts),
            "dead_letters": self.dead_letters,
            "tuning": {
                "mode": self.cfg.tuning.mode,
                "applied": self.tuner.applied,
                "refused": self.tuner.refused,
            },
        }

    def publish_status(self) -> None:
        status = message(
            Status,
            edge_id=self.cfg.edge_id,
            site=self.cfg.site,
            state="online",
            models={role: m.version for role, m in self.models.items()},
            health={k: v for k, v in self.health().items() if k != "outbox"},
            last_update=self.updater.last if self.updater is not None else {},
        )
        self.relay.publish_status(status)

    # -- incoming -----------------------------------------------------------------------------

    def _on_command(self, kind: Kind, payload: bytes) -> None:
        try:
            msg = parse_payload(payload, kind)
        except SchemaError as exc:
            self.dead_letters += 1
            self.metrics.dead_letters.inc()
            reason = str(exc)[:80]
            if reason not in self._dead_reasons:
                self._dead_reasons.add(reason)
                _logger.warning("incoming %s payload set aside: %s", kind.value, exc)
            return
        if isinstance(msg, Verdict):
            self._on_verdict(msg)
        elif isinstance(msg, ModelAnnouncement):
            self._spawn(self._on_announcement(msg))
        elif isinstance(msg, Tuning) and msg.action in ("approval", "rejection"):
            self._spawn(self.control.on_command(msg))

    def _on_verdict(self, msg: Verdict) -> None:
        case = self.outbox.take_case(msg.case_id)
        if case is None:
            self.verdicts["unmatched"] += 1
            self.metrics.verdicts.labels("no").inc()
            _logger.info("verdict for unknown or expired case %s", msg.case_id)
            return
        tool, _created, prediction = case
        self.verdicts["matched"] += 1
        self.metrics.verdicts.labels("yes").inc()
        edge_probs = prediction.get("probs", {})
        gap = max((abs(float(edge_probs.get(m, 0.0)) - p) for m, p in msg.probs.items()), default=0.0)
        _logger.info(
            "verdict for %s case %s: model %s, largest |Δp| vs edge %.2f",
            tool,
            msg.case_id,
            msg.model_version,
            gap,
        )

    async def _on_announcement(self, msg: ModelAnnouncement) -> None:
        if self.updater is None:
            _logger.warning("model announcement ignored: no public key configured")
            return
        outcome = await self.updater.handle(msg)
        if outcome is not None:
            self.metrics.updates.labels(outcome["outcome"]).inc()
            self.publish_status()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- periodic jobs ------------------------------------------------------------------------

    def telemetry_once(self) -> None:
        """Each tool's summary over the grid rows closed since its previous telemetry (a simulator
        faster than real time closes many per period), its risk and its sensors' health."""
        first = 1  # the first telemetry: the rows of one period on the model's grid
        model = self.models.get("edge-risk")
        if isinstance(model, RiskModel):
            first = max(1, int(self.cfg.schedule.telemetry_s / model.spec.step_s))
        for tool, info in self.pipeline.tools.items():
            written = self.pipeline.rows_written(tool)
            told = self._told_rows.get(tool)
            rows = first if told is None else max(1, written - told)
            self._told_rows[tool] = written
            summary = self.pipeline.summary(tool, rows)
            if summary:
                # Per mode of the tool's type: the cloud keeps it as the tool's risk history.
                risk = dict(info.probs) if info.risk == info.risk else {}
                self.emit(
                    message(
                        Telemetry,
                        edge_id=self.cfg.edge_id,
                        site=self.cfg.site,
                        tool_id=tool,
                        period_s=self.cfg.schedule.telemetry_s,
                        summary=summary,
                        risk=risk,
                        tool_type=info.tool_type,
                        source_ts=self.pipeline.newest_ts(tool),
                        risk_trace=self.pipeline.take_trace(tool),
                    )
                )

    def housekeeping_once(self) -> None:
        expired = self.outbox.expire_cases(self.cfg.decisions.verdict_ttl_s)
        if expired:
            _logger.info(
                "%d hard cases got no verdict within %.0f s", expired, self.cfg.decisions.verdict_ttl_s
            )
        self.outbox.checkpoint()
        if self.cfg.mqtt.receipts and (note := self.silence.check()):
            _logger.warning("%s", note)
        self.tuner.expire()
        self.tuner.save_pools(force=False)
        self.save_references()

    def save_references(self) -> None:
        """Keep the tools' references on disk (``edge.references``)."""
        states = self.pipeline.reference_states()
        if states is None:
            return
        try:
            references.save(self.references_path, states)
        except OSError as exc:
            _logger.error("could not save the tools' references to %s: %s", self.references_path, exc)

    def restore_references(self) -> None:
        saved = references.load(self.references_path)
        if saved is not None:
            n = self.pipeline.restore_references(saved)
            _logger.info("references restored for %d of %d tools", n, len(saved["tools"]))

    def model_check_once(self) -> None:
        """Re-verify the running models' files on disk (a corrupted store is found before a restart)."""
        if self.key is None:
            return
        for role, model in self.models.items():
            pointer = self.store.pointer(role)
            if pointer.get("version") != model.version:
                continue
            try:
                self.store.load(role, model.version, self.key, 1)
            except (FabpmError, OSError) as exc:
                _logger.error("stored %s model %s no longer verifies: %s", role, model.version, exc)

    def refresh_gauges(self) -> None:
        stats = self.outbox.stats()
        self.metrics.outbox_messages.set(stats["messages"])
        self.metrics.outbox_bytes.set(stats["bytes"])
        self.metrics.outbox_dropped.set(sum(stats["dropped"].values()))
        self.metrics.opcua_up.set(1 if self.source.connected else 0)
        self.metrics.mqtt_up.set(1 if self.relay.connected else 0)

    def _scheduler(self) -> AsyncIOScheduler:
        sch = AsyncIOScheduler()
        s = self.cfg.schedule

        def health_job() -> None:
            self.refresh_gauges()
            self.publish_status()
            self.pipeline.send_alarm_summaries()

        # These run in the loop's thread pool; counted, so a stop waits for them before the
        # outbox closes (the scheduler's shutdown does not wait for pool jobs).
        track = self._pool_jobs.track
        opts: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": 30}
        sch.add_job(track(health_job), "interval", seconds=s.health_s, id="health", **opts)
        sch.add_job(track(self.telemetry_once), "interval", seconds=s.telemetry_s, id="telemetry", **opts)
        sch.add_job(
            track(self.housekeeping_once), "interval", seconds=s.housekeeping_s, id="housekeeping", **opts
        )
        sch.add_job(
            track(self.model_check_once), "interval", seconds=s.model_check_s, id="model_check", **opts
        )
        if self.cfg.tuning.mode != "off":
            sch.add_job(
                self.control.tune_once, "interval", seconds=self.cfg.tuning.interval_s, id="tuning", **opts
            )
        return sch

    # -- running ------------------------------------------------------------------------------

    def _on_values(self, batch: list[Any]) -> None:
        self.pipeline.on_values(batch)
        if self.pipeline._dirty:
            self._infer_wake.set()

    async def _infer_loop(self) -> None:
        while True:
            await self._infer_wake.wait()
            self._infer_wake.clear()
            try:
                self.pipeline.infer_ready()
            except ModelError as exc:
                _logger.error("inference failed: %s", exc)
            await asyncio.sleep(0)

    async def run(self) -> None:
        """Run until cancelled."""
        self.load_models()
        self.restore_references()
        self.relay.start()
        scheduler = self._scheduler()
        scheduler.start()
        self.publish_status()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    supervise("opcua", lambda: self.source.run(self._on_values, self.pipeline.on_event))
                )
                tg.create_task(supervise("mqtt", self.relay.run))
                tg.create_task(supervise("inference", self._infer_loop))
                if self.cfg.metrics.port:
                    m = self.cfg.metrics
                    tg.create_task(
                        supervise("metrics", lambda: serve(m.host, m.port, self.metrics, self.health))
                    )
        finally:
            scheduler.shutdown(wait=False)
            if not await asyncio.to_thread(self._pool_jobs.wait_idle, STOP_TASKS_S):
                _logger.warning("a scheduled job did not end within %.0f s of the stop", STOP_TASKS_S)
            spawned = list(self._tasks)
            for task in spawned:
                task.cancel()
            if spawned:
                # They write to the outbox, which closes next; bounded, so one that ignores its
                # cancel cannot hold up the stop.
                _, late = await asyncio.wait(spawned, timeout=STOP_TASKS_S)
                if late:
                    _logger.warning("%d background tasks did not stop within %.0f s", len(late), STOP_TASKS_S)
            self.pipeline.send_waiting()
            self.pipeline.send_alarm_summaries(force=True)
            self.save_references()
            self.tuner.save_pools()
            await self.relay.stop()
            self.outbox.close()
