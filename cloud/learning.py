"""Incremental learning: a persisted state machine, one row of ``learning_rounds`` per round.

Steps, in order (``LearningRound.step`` is the next step to run; it is committed after each
step, so a worker killed mid-round re-runs only the step it was in)::

    collect → fine_tune → distil → export → gate → register → canary → watch → (done)
                                              │                          └─▶ rolled_back
                                              └─▶ rejected (worse on the old or the new frozen set)

- **collect** freezes the round's data: the labels that arrived since the last round, split by
  tool (:func:`split_holdout`) into training cases and the *new* frozen test set; the *old* frozen set is
  the union of earlier rounds' new sets; the replay set is up to ``replay_size`` earlier training
  cases (against forgetting). Case ids go into the round's state, the windows into ``data.npz``.
- **fine_tune** the full model on new + replay; **distil** the edge model from it (a fresh student,
  or with ``warm_start_edge`` the running edge model's weights continued); **export**
  to ONNX, INT8 with the parity check, signed (the pipeline's ``export_release``).
- **gate** scores the candidate and the running edge model on both frozen sets; a candidate is
  rejected (never registered or rolled out) when, on either, it is ``gate_confidence`` sure that
  it lost more than ``gate_tolerance`` of AUC (a bootstrap over the set's tools: :mod:`cloud.gate`),
  or, at the alert threshold it keeps from the running model, that its share of windows over it
  rose by more than ``gate_alarm_tolerance`` on those that did not fail or fell by as much on
  those that did (risks that all moved together leave the AUC unchanged).
- **register** with lineage (parent = the running version, the round, the full checkpoint);
  **canary** starts the rollout; **watch** follows it to ``all``/``done`` or ``rolled_back``.

The training work is injected (:class:`Pipeline`), so the state machine is tested with small
real functions and run in production with :mod:`cloud.pipeline_adapter`.
Any number of workers may run learning on one database: a round runs only under the ``learning``
lease (:class:`cloud.storage.models.Lease`), which one worker takes, renews from a heartbeat
thread while a step runs and with every committed step, and releases when the round finishes or
waits on its rollout. Each step's commit re-checks the lease in the same transaction, so a worker
that lost it (paused past the expiry while another took over) stops without writing. A worker that
dies keeps the lease until it expires (``lease_s``); then the next worker's tick takes it and
resumes the round from its persisted step.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.config import LearningConfig
from cloud.errors import BrokerError, CloudError, LearningError
from cloud.gate import compare, compare_alarms
from cloud.learning_data import Pipeline, Windows, split_holdout
from cloud.metrics import CloudMetrics
from cloud.registry import Registry
from cloud.rollout import RolloutManager
from cloud.storage.models import Case, LearningRound
from cloud.storage.repo import Repo
from shared.signing import manifest_path

_logger = logging.getLogger(__name__)
STEPS = ("collect", "fine_tune", "distil", "export", "gate", "register", "canary", "watch")
FINAL = ("done", "rejected", "failed", "rolled_back")
FAILED_BACKOFF_S = 3600.0
FAILED_BACKOFF_MAX_S = 86400.0
LEASE = "learning"
# A step that cannot reach the broker (the canary's announcement) stays where it is and the next
# tick (rollout.tick_s, 10 s by default) tries it again, this many times before the round fails:
# a broker restart is not a reason to throw a trained, gated, registered model away.
MAX_BROKER_RETRIES = 60
HEARTBEATS_PER_LEASE = 3  # renew three times per lease period: two renewals may fail before it lapses


def shipped_threshold(manifest: dict[str, Any]) -> float | None:
    """The alert probability a release ships (``thresholds.alert_probability``), which a round's
    candidate keeps; None when it ships none."""
    try:
        return float(manifest["thresholds"]["alert_probability"])
    except (KeyError, TypeError, ValueError):
        return None


class LeaseLost(LearningError):
    """Another worker holds the learning lease now: this one stops without writing."""


class Learner:
    """Creates, runs and resumes rounds. ``base_checkpoint()`` names the full model to fine-tune."""

    def __init__(
        self,
        repo: Repo,
        cfg: LearningConfig,
        pipeline: Pipeline,
        registry: Registry,
        rollout: RolloutManager,
        metrics: CloudMetrics,
        base_checkpoint: Callable[[], Path],
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self.repo = repo
        self.cfg = cfg
        self.pipeline = pipeline
        self.registry = registry
        self.rollout = rollout
        self.metrics = metrics
        self.base_checkpoint = base_checkpoint
        self.clock = clock
        self._lock = threading.Lock()  # one round runs at a time in this process
        # Who holds the lease: unique per Learner, so a restarted worker waits out its dead
        # predecessor's lease like any other worker would.
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # ---- rounds ------------------------------------------------------------------------------
    def rounds(self, limit: int = 50) -> list[LearningRound]:
        with self.repo.transaction() as s:
            return list(s.scalars(select(LearningRound).order_by(LearningRound.id.desc()).limit(limit)))

    def get(self, round_id: int) -> LearningRound:
        with self.repo.transaction() as s:
            row = s.get(LearningRound, round_id)
        if row is None:
            raise LearningError(f"no learning round {round_id}")
        return row

    def open_round(self) -> LearningRound | None:
        with self.repo.transaction() as s:
            return s.scalars(select(LearningRound).where(LearningRound.status == "running").limit(1)).first()

    def last_watermark(self) -> float | None:
        with self.repo.transaction() as s:
            return s.scalar(
                select(LearningRound.label_watermark)
                .where(LearningRound.status.in_(("done", "rolled_back", "rejected", "running")))
                .order_by(LearningRound.id.desc())
                .limit(1)
            )

    def new_labels(self) -> int:
        return self.repo.labels_since(self.last_watermark() or float("-inf"))

    def create(self, trigger: str) -> LearningRound | None:
        """Open a round unless one is running; None then."""
        now = self.clock()
        with self.repo.transaction() as s:
            if s.scalars(select(LearningRound).where(LearningRound.status == "running")).first():
                return None
            row = LearningRound(
                trigger=trigger,
                step=STEPS[0],
                status="running",
                state={},
                log=[{"ts": now, "msg": f"round opened by {trigger}"}],
                error="",
                label_watermark=now,
                created_ts=now,
                updated_ts=now,
            )
            s.add(row)
        _logger.info("learning round %d opened (%s)", row.id, trigger)
        return row

    def retry_wait_s(self) -> float:
        """After failed rounds, automatic triggers wait 1 h, doubling per consecutive failure up to a
        day (a broken pipeline must not retrain every minute); 0 when the last round did not fail."""
        failures, last_ts = 0, 0.0
        for r in self.rounds(20):
            if r.status != "failed":
                break
            failures += 1
            last_ts = max(last_ts, r.updated_ts)
        if failures == 0:
            return 0.0
        backoff = min(FAILED_BACKOFF_S * 2 ** (failures - 1), FAILED_BACKOFF_MAX_S)
        return max(0.0, last_ts + backoff - self.clock())

    def trigger(self, reason: str, min_labels: int = 1) -> int | None:
        """Open a round when there are at least ``min_labels`` new labels and run it to the canary.
        Automatic triggers (anything but ``manual``) respect :meth:`retry_wait_s`."""
        if self.open_round() is not None:
            return None
        if reason != "manual" and self.retry_wait_s() > 0:
            return None
        if self.new_labels() < min_labels:
            return None
        if not self._lock.acquire(blocking=False):
            return None  # a round is running in this worker
        try:
            if not self._take_lease():
                return None  # another worker is opening or running a round
            row = self.create(reason)
            if row is None:
                self.repo.release_lease(LEASE, self.owner)
                return None
        finally:
            self._lock.release()
        self.run(row.id)
        return row.id

    def resume(self) -> list[int]:
        """Continue every running round from its persisted step (call at start-up); returns the
        rounds this worker ran (not those another worker holds the lease for)."""
        ran = []
        for rid in [r.id for r in self.rounds(1000) if r.status == "running"]:
            _logger.info("resuming learning round %d at step %s", rid, self.get(rid).step)
            if self._run_leased(rid):
                ran.append(rid)
        return ran

    def run(self, round_id: int) -> LearningRound:
        """Run steps until the round finishes or waits for its rollout (``watch``); only under the
        lease: while another worker holds it, nothing runs and the round is returned as it is."""
        self._run_leased(round_id)
        return self.get(round_id)

    def _run_leased(self, round_id: int) -> bool:
        """True when this worker held the lease and ran the round as far as it goes now."""
        with self._lock:
            if not self._take_lease():
                _logger.info("learning round %d: another worker holds the lease", round_id)
                return False
            with self._heartbeat():
                try:
                    self._steps(round_id)
                except LeaseLost as exc:
                    _logger.warning("learning round %d: %s; stopping here", round_id, exc)
                    return False
            # Not in a finally: a worker that dies mid-step keeps the lease until it expires.
            self.repo.release_lease(LEASE, self.owner)
            return True

    def _steps(self, round_id: int) -> None:
        while True:
            row = self.get(round_id)
            if row.status != "running":
                return
            step = row.step
            try:
                outcome = getattr(self, f"_step_{step}")(row)
            except LeaseLost:
                raise
            except BrokerError as exc:
                tries = int(row.state.get("broker_retries", 0)) + 1
                if tries <= MAX_BROKER_RETRIES:
                    note = f"{step}: {exc}; tried again at the next tick ({tries}/{MAX_BROKER_RETRIES})"
                    _logger.warning("learning round %d, %s", round_id, note)
                    self._save(round_id, step, note, broker_retries=tries)
                    return
                self._finish(round_id, "failed", f"{step}: {exc} ({MAX_BROKER_RETRIES} tries)")
                return
            except Exception as exc:
                _logger.exception("learning round %d failed in %s", round_id, step)
                self._finish(round_id, "failed", f"{step}: {exc}", tb=traceback.format_exc(limit=5))
                return
            if outcome == "wait" or outcome in FINAL:
                return

    # ---- the lease ---------------------------------------------------------------------------
    def _take_lease(self) -> bool:
        return self.repo.take_lease(LEASE, self.owner, self.clock(), self.cfg.lease_s)

    def _hold_lease(self, s: Session) -> None:
        """Renew the lease inside the step's commit; LeaseLost (and the commit rolled back) if gone."""
        if not self.repo.hold_lease(s, LEASE, self.owner, self.clock(), self.cfg.lease_s):
            raise LeaseLost(f"the learning lease is no longer held by {self.owner}")

    @contextmanager
    def _heartbeat(self) -> Iterator[None]:
        """Renew the lease from a thread while a step runs (fine-tuning takes minutes)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.cfg.lease_s / HEARTBEATS_PER_LEASE):
                try:
                    if not self._take_lease():
                        _logger.warning("learning lease taken by another worker")
                        return  # the step's commit fails with LeaseLost
                except CloudError as exc:  # the database is down: retry next beat; the lease may lapse
                    _logger.warning("renewing the learning lease failed: %s", exc)

        t = threading.Thread(target=beat, name="learning-lease", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    # ---- persistence helpers -----------------------------------------------------------------
    def _save(self, round_id: int, step: str, note: str, **state: Any) -> None:
        with self.repo.transaction() as s:
            self._hold_lease(s)
            row = s.get(LearningRound, round_id)
            assert row is not None
            row.state = {**row.state, **state}
            row.step = step
            row.log = [*row.log, {"ts": self.clock(), "msg": note}]
            row.updated_ts = self.clock()

    def _finish(self, round_id: int, status: str, note: str, tb: str = "") -> str:
        with self.repo.transaction() as s:
            self._hold_lease(s)
            row = s.get(LearningRound, round_id)
            assert row is not None
            row.status = status
            row.log = [*row.log, {"ts": self.clock(), "msg": note}]
            row.error = tb or (note if status == "failed" else "")
            row.updated_ts = self.clock()
        self.metrics.rounds.labels(status).inc()
        _logger.info("learning round %d %s: %s", round_id, status, note)
        return status

    def _dir(self, row: LearningRound) -> Path:
        d = self.cfg.work_dir / f"round-{row.id:05d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _next(self, step: str) -> str:
        return STEPS[STEPS.index(step) + 1]

    # ---- data --------------------------------------------------------------------------------
    def windows(self, case_ids: list[str]) -> Windows:
        if not case_ids:
            return Windows.concat([])
        with self.repo.transaction() as s:
            rows = {c.case_id: c for c in s.scalars(select(Case).where(Case.case_id.in_(case_ids)))}
        cases = [rows[c] for c in case_ids if c in rows]
        return Windows(
            x=np.stack([self.repo.case_window(c) for c in cases]).astype(np.float32),
            failed=np.array([bool(c.label_failed) for c in cases]),
            modes=[c.label_mode for c in cases],
            rul_h=np.array(
                [np.nan if c.label_rul_h is None else c.label_rul_h for c in cases], dtype=np.float64
            ),
            case_ids=[c.case_id for c in cases],
            tools=[c.tool_id for c in cases],
            tool_types=[c.tool_type for c in cases],
        )

    def _earlier(self, key: str, before_id: int) -> list[str]:
        out: list[str] = []
        with self.repo.transaction() as s:
            for r in s.scalars(
                select(LearningRound).where(LearningRound.id < before_id, LearningRound.status.in_(FINAL))
            ):
                out.extend(r.state.get(key, []))
        return out

    # ---- steps -------------------------------------------------------------------------------
    def _step_collect(self, row: LearningRound) -> str:
        prev = self.last_watermark_before(row.id)
        cases = self.repo.labelled_cases(prev, row.label_watermark)
        ids = [c.case_id for c in cases]
        train, new_test = split_holdout([(c.case_id, c.tool_id) for c in cases], self.cfg.holdout_fraction)
        if not train or not new_test:
            return self._finish(
                row.id, "rejected", f"{len(ids)} new labels: too few for a training and a test part"
            )
        old_test = self._earlier("new_test", row.id)
        earlier_train = self._earlier("train", row.id)
        rng = np.random.default_rng(row.id)
        replay = (
            list(rng.choice(earlier_train, size=self.cfg.replay_size, replace=False))
            if len(earlier_train) > self.cfg.replay_size
            else earlier_train
        )
        self._save(
            row.id,
            self._next("collect"),
            f"collected {len(train)} training, {len(new_test)} new test, {len(old_test)} old test, "
            f"{len(replay)} replay cases",
            train=train,
            new_test=new_test,
            old_test=old_test,
            replay=[str(r) for r in replay],
        )
        return "next"

    def last_watermark_before(self, round_id: int) -> float | None:
        with self.repo.transaction() as s:
            return s.scalar(
                select(LearningRound.label_watermark)
                .where(
                    LearningRound.id < round_id, LearningRound.status.in_(("done", "rolled_back", "rejected"))
                )
                .order_by(LearningRound.id.desc())
                .limit(1)
            )

    def _step_fine_tune(self, row: LearningRound) -> str:
        base = self.base_checkpoint()
        new, replay = self.windows(row.state["train"]), self.windows(row.state["replay"])
        ckpt = self.pipeline.fine_tune(base, new, replay, self._dir(row) / "full")
        self._save(
            row.id, self._next("fine_tune"), f"fine-tuned {base.name} → {ckpt.name}", full_ckpt=str(ckpt)
        )
        return "next"

    def _step_distil(self, row: LearningRound) -> str:
        data = Windows.concat([self.windows(row.state["train"]), self.windows(row.state["replay"])])
        init, note = self._warm_start()
        edge = self.pipeline.distil(Path(row.state["full_ckpt"]), data, self._dir(row) / "edge", init)
        self._save(row.id, self._next("distil"), f"distilled {edge.name}{note}", edge_ckpt=str(edge))
        return "next"

    def _warm_start(self) -> tuple[Path | None, str]:
        """The running edge model's checkpoint to start the student from (``warm_start_edge``), and
        what the round log says about it; (None, note) where there is none to start from."""
        if not self.cfg.warm_start_edge:
            return None, ""
        running = self.registry.active("edge-risk")
        if running is None:
            return None, " (no running model: a fresh student)"
        path = Path(running.edge_checkpoint) if running.edge_checkpoint else None
        if path is None or not path.exists():
            return None, f" (no edge checkpoint of {running.version} on file: a fresh student)"
        return path, f" (from {running.version}'s weights)"

    def _step_export(self, row: LearningRound) -> str:
        running = self.registry.active("edge-risk")
        parent = running.version if running else None
        version = f"r{row.id}-{int(row.created_ts)}"
        k = self.cfg.calib_windows
        calib = self.windows(row.state["train"][:k])
        # The mode namer needs windows before failures of every mode of a type, far more than the
        # calibration subset holds: it is fitted on all the windows the round trained on (the
        # calibration subset is their first part, read once).
        naming = Windows.concat([calib, self.windows([*row.state["train"][k:], *row.state["replay"]])])
        artifact = self.pipeline.export(
            Path(row.state["edge_ckpt"]), calib, naming, self._dir(row) / "release", version, parent
        )
        self._save(
            row.id,
            self._next("export"),
            f"exported and signed {artifact.name}{_namer_note(artifact)}",
            artifact=str(artifact),
            version=version,
            parent=parent,
        )
        return "next"

    def _step_gate(self, row: LearningRound) -> str:
        artifact = Path(row.state["artifact"])
        running = self.registry.active("edge-risk")
        scores: dict[str, Any] = {}
        said: list[str] = []
        worse: list[str] = []
        moved: list[np.ndarray] = []  # |candidate - running| per frozen window
        extra: dict[str, Any] = {}  # beside the gate's scores, one per frozen set (its readers rely on it)
        for name in ("old_test", "new_test"):
            data = self.windows(row.state[name])
            if not len(data):
                continue
            base = self.pipeline.risk(Path(running.artifact_path), data) if running else None
            cand = self.pipeline.risk(artifact, data)
            if base is not None:
                moved.append(np.abs(np.asarray(cand, dtype=float) - np.asarray(base, dtype=float)))
            verdict = compare(
                cand,
                base,
                data.failed.astype(bool),
                data.tools,
                self.cfg.gate_tolerance,
                self.cfg.gate_confidence,
                self.cfg.gate_resamples,
            )
            scores[name] = verdict.as_dict()
            said.append(f"{name}: {verdict.describe(self.cfg.gate_confidence)}")
            if verdict.worse:
                worse.append(said[-1])
            threshold = shipped_threshold(running.manifest) if running else None
            if running is None or threshold is None or self.cfg.gate_alarm_tolerance is None:
                continue
            # the probability the edge's alert rule reads, which the AUC's risk need not be
            alerting = self.pipeline.alert_risk or self.pipeline.risk
            for alarm in compare_alarms(
                alerting(artifact, data),
                alerting(Path(running.artifact_path), data),
                data.failed.astype(bool),
                data.tools,
                threshold,
                self.cfg.gate_alarm_tolerance,
                self.cfg.gate_confidence,
                self.cfg.gate_resamples,
            ):
                scores[f"{name}_alarms_{alarm.kind}"] = alarm.as_dict()
                said.append(f"{name}: alerts {alarm.describe(self.cfg.gate_confidence)}")
                if alarm.worse:
                    worse.append(said[-1])
        if moved:
            # A round on a few labels can early-stop at its first epoch and change almost nothing
            # (the demo's rounds on ~100 labels moved no risk by 0.001): said, so that a pass
            # is not read as something learnt.
            d = np.concatenate(moved)
            extra["risk_moved"] = {"max": float(d.max()), "median": float(np.median(d)), "windows": len(d)}
            said.append(
                f"the candidate's risk differs from the running model's by at most {d.max():.4f} "
                f"(median {np.median(d):.4f}) on the {len(d)} frozen windows"
            )
        if worse:
            self._save(row.id, "gate", "gate: candidate is worse", gate=scores, **extra)
            return self._finish(row.id, "rejected", "not promoted: " + "; ".join(worse))
        self._save(row.id, self._next("gate"), "gate passed: " + "; ".join(said), gate=scores, **extra)
        return "next"

    def _step_register(self, row: LearningRound) -> str:
        model = self.registry.register(
            Path(row.state["artifact"]),
            Path(row.state["full_ckpt"]),
            row.id,
            edge_checkpoint=Path(row.state["edge_ckpt"]),
        )
        self._save(row.id, self._next("register"), f"registered {model.version}")
        return "next"

    def _step_canary(self, row: LearningRound) -> str:
        existing = row.state.get("rollout_id")
        if existing is None:
            busy = self.rollout.busy()
            if busy is not None and busy.version == row.state["version"]:
                # This round's own start, whose announcement failed (broker down): say it again.
                self.rollout.announce(busy.id)
                existing = busy.id
            elif busy is not None:
                return "wait"  # another model is at its canary; the tick tries again
            else:
                existing = self.rollout.start(row.state["version"]).id
        self._save(row.id, self._next("canary"), f"rollout {existing} to the canary", rollout_id=existing)
        return "next"

    def _step_watch(self, row: LearningRound) -> str:
        ro = self.rollout.get(int(row.state["rollout_id"]))
        if ro.stage in ("all", "done"):
            return self._finish(row.id, "done", f"{row.state['version']} running on every edge")
        if ro.stage == "rolled_back":
            return self._finish(row.id, "rolled_back", f"rolled back: {ro.reason}")
        return "wait"

    def tick(self) -> None:
        """Follow rounds waiting on their rollout, and take over a round whose worker died (its
        lease expired); scheduled with the rollout tick. A round another live worker runs is left."""
        row = self.open_round()
        if row is not None and not self._lock.locked():
            self._run_leased(row.id)


def _namer_note(artifact: Path) -> str:
    """What the round's log says of the release's mode namer: the types it names, or that alerts
    name the most probable mode (too few windows before failures of each mode)."""
    try:
        output = json.loads(manifest_path(artifact).read_text())["manifest"]["output_spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # the register step verifies the manifest and says what is wrong with it
    types = sorted(output.get("mode_namer") or {})
    if types:
        return f"; mode namer for {', '.join(types)}"
    return "; no mode namer (too few windows before failures of each mode): alerts name the most probable"
