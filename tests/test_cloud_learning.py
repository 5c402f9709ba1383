"""The incremental-learning state machine, the registry and the rollout, with small real steps.

The pipeline here is made of tiny real functions (files in, files out; the "model" is a JSON
artifact carrying its quality, signed like a real release), so the test exercises the rounds'
persistence, gate, lineage, signing, canary, promotion, rollback and resume, not training.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.config import LearningConfig, RegistryConfig, RolloutConfig
from cloud.errors import BrokerError, RegistryError
from cloud.ingest import Ingestor
from cloud.learning import LEASE, Learner, Pipeline, Windows
from cloud.metrics import CloudMetrics
from cloud.registry import Registry
from cloud.rollout import RolloutError, RolloutManager, disagreement
from cloud.storage import Repo, make_engine, migrate
from cloud.testing import failure, hardcase
from shared.messages import ModelAnnouncement, Status
from shared.signing import (
    generate_keypair,
    load_private_key,
    load_public_key,
    verify_artifact,
    verify_manifest,
    write_release,
)
from shared.topics import Kind, topic


class Clock:
    def __init__(self, t: float = 2_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the round catches it."""


class TinyPipeline:
    """Real little steps: each writes its file; the exported artifact's quality is ``quality``."""

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self.quality = 0.8
        self.calls: list[str] = []
        self.inits: list[Path | None] = []  # the running edge checkpoint each distil started from
        self.named: list[list[str]] = []  # the case ids each export fitted its mode namer on
        self.namer: dict | None = None  # the manifest's mode_namer, when set
        self.thresholds: dict[str, float] = {}  # the manifest's alert rule, when set
        self.shift = 0.0  # added to every risk of the exported artifact (its ranking unchanged)
        self.kill_in: str | None = None
        self.during: dict[str, Callable[[], None]] = {}  # runs inside a step (what others do meanwhile)

    def _maybe_die(self, step: str) -> None:
        self.calls.append(step)
        if step in self.during:
            self.during.pop(step)()
        if self.kill_in == step:
            self.kill_in = None
            raise Killed(step)

    def fine_tune(self, base: Path, new: Windows, replay: Windows, out: Path) -> Path:
        self._maybe_die("fine_tune")
        out.mkdir(parents=True, exist_ok=True)
        path = out / "full.json"
        path.write_text(json.dumps({"base": str(base), "new": len(new), "replay": len(replay)}))
        return path

    def distil(self, full: Path, data: Windows, out: Path, init: Path | None = None) -> Path:
        self._maybe_die("distil")
        self.inits.append(init)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "edge.json"
        path.write_text(json.dumps({"teacher": str(full), "n": len(data), "shape": list(data.x.shape)}))
        return path

    def export(
        self, edge: Path, calib: Windows, naming: Windows, out: Path, version: str, parent: str | None
    ) -> Path:
        self._maybe_die("export")
        self.named.append(list(naming.case_ids))
        out.mkdir(parents=True, exist_ok=True)
        artifact = out / f"risk-{version}.onnx"
        artifact.write_text(json.dumps({"quality": self.quality, "shift": self.shift, "from": edge.name}))
        fields = {
            "model_id": "risk",
            "version": version,
            "parent_version": parent,
            "role": "edge-risk",
            "created_ts": 0.0,
            "input_spec": {"input_name": "x"},
            "output_spec": {"modes": ["wear"], **({"mode_namer": self.namer} if self.namer else {})},
            "thresholds": self.thresholds,
        }
        write_release(artifact, fields, load_private_key(self.key_path))
        return artifact

    def risk(self, artifact: Path, data: Windows) -> np.ndarray:
        """Risks whose AUC is the artifact's quality q (0.5 ≤ q ≤ 1) to the nearest window: every
        failing window scores 1, and so does the first 2(1 − q) of the others (a tie counts half)."""
        assert len(data) > 0
        spec = json.loads(artifact.read_text())
        q = float(spec["quality"])
        neg = np.flatnonzero(~data.failed.astype(bool))
        out = data.failed.astype(float)
        out[neg[: round(2 * (1 - q) * len(neg))]] = 1.0
        return 0.5 * out + float(spec.get("shift", 0.0))

    def as_pipeline(self) -> Pipeline:
        return Pipeline(self.fine_tune, self.distil, self.export, self.risk)


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[dict]:
    engine = make_engine(db_url)
    migrate(engine)
    keys = tmp_path / "keys"
    generate_keypair(keys / "signing.key", keys / "signing.pub")
    yield {"url": db_url, "engine": engine, "tmp": tmp_path, "keys": keys}
    engine.dispose()


def build(
    world: dict, pipe: TinyPipeline, clock: Clock, published: list, **learning: Any
) -> tuple[Learner, RolloutManager, Ingestor]:
    """A learner, its rollout manager and an ingestor over the world's database (fresh objects:
    building them again is what a restarted worker does)."""
    repo = Repo(world["engine"], clock)
    metrics = CloudMetrics()
    reg = Registry(
        repo,
        RegistryConfig(
            dir=world["tmp"] / "models",
            private_key=world["keys"] / "signing.key",
            public_key=world["keys"] / "signing.pub",
        ),
        clock,
    )
    ro = RolloutManager(
        repo,
        reg,
        lambda t, p, q, r: published.append((t, p, r)),
        RolloutConfig(watch_s=600, min_observations=0, confirm_timeout_s=300),
        metrics,
        clock=clock,
    )
    cfg = LearningConfig(
        work_dir=world["tmp"] / "learning", min_new_labels=4, holdout_fraction=0.3, replay_size=10, **learning
    )
    base = world["tmp"] / "base.pt"
    base.write_text("base")
    learner = Learner(repo, cfg, pipe.as_pipeline(), reg, ro, metrics, lambda: base, clock)
    return learner, ro, Ingestor(repo, metrics, clock=clock)


def feed(
    ingest: Ingestor, clock: Clock, tool: str, n: int = 12, edges: tuple[str, ...] = ("edge-1", "edge-2")
) -> None:
    """Status from each edge, n hard cases before a failure of ``tool`` on edge-1, then the failure."""
    clock.t += 60
    for e in edges:
        st = Status(edge_id=e, site="fab1", state="online", models={"risk": "v0"})
        assert ingest.handle(topic("fab1", e, Kind.STATUS), st.to_bytes())
    t_fail = clock.t
    for i in range(n):
        hc = hardcase(tool=tool, window_ts=t_fail - (i + 1) * 10 * 3600, seed=i, case_id=f"{tool}-case-{i}")
        assert ingest.handle(topic("fab1", "edge-1", Kind.HARDCASE), hc.to_bytes())
    ev = failure(tool, t_fail)
    assert ingest.handle(topic("fab1", "edge-1", Kind.EVENT), ev.to_bytes())
    clock.t += 60


def report(ingest: Ingestor, edge: str, models: dict, last_update: dict | None = None) -> None:
    st = Status(edge_id=edge, site="fab1", state="online", models=models, last_update=last_update or {})
    assert ingest.handle(topic("fab1", edge, Kind.STATUS), st.to_bytes())


def announced(published: list, edge: str) -> ModelAnnouncement:
    ((_, raw, retain),) = [p for p in published if p[0] == topic("fab1", edge, Kind.MODEL)][-1:]
    assert retain
    ann = ModelAnnouncement.model_validate_json(raw)
    return ann


def test_activating_a_model_retires_the_one_active_before(world):
    """`fabpm cloud model register --active` on an older release (the demo did it on every start)
    left two active models, and the cloud kept the newer: one active model per role now."""
    clock, pipe, published = Clock(), TinyPipeline(world["keys"] / "signing.key"), []
    learner, _, _ = build(world, pipe, clock, published)
    reg = learner.registry
    empty = Windows.concat([])
    for v in ("v1", "v2"):
        clock.t += 60
        reg.register(pipe.export(Path(f"{v}.json"), empty, empty, world["tmp"] / v, v, None))
    reg.activate("v1")
    reg.activate("v2")
    assert reg.active().version == "v2" and reg.require("v1").status == "retired"
    reg.activate("v1")  # back to the older one, by hand
    assert reg.active().version == "v1" and reg.require("v2").status == "retired"
    with pytest.raises(RegistryError, match="no model version"):
        reg.activate("v9")


def test_round_to_canary_then_all_with_a_signed_model(world):
    clock, pipe, published = Clock(), TinyPipeline(world["keys"] / "signing.key"), []
    learner, ro, ingest = build(world, pipe, clock, published)
    feed(ingest, clock, "etch-01")
    assert learner.new_labels() == 12
    rid = learner.trigger("labels", min_labels=4)
    row = learner.get(rid)
    assert row.status == "running" and row.step == "watch", row.log
    version = row.state["version"]
    # The canary (first edge) got the signed model; it verifies with the edge's public key.
    assert [p[0] for p in published] == [topic("fab1", "edge-1", Kind.MODEL)]
    ann = announced(published, "edge-1")
    manifest = verify_manifest(ann.manifest, ann.signature, load_public_key(world["keys"] / "signing.pub"))
    verify_artifact(manifest, base64.b64decode(ann.artifact_b64))
    assert manifest.version == version and ann.target_edges == ["edge-1"]
    # Not promoted before the canary confirms and the watch time has passed.
    ro.tick()
    assert ro.get(row.state["rollout_id"]).stage == "canary"
    report(ingest, "edge-1", {"risk": version}, {"version": version, "outcome": "accepted"})
    clock.t += 601
    ro.tick()
    learner.tick()
    assert ro.get(row.state["rollout_id"]).stage == "all"
    assert announced(published, "edge-2").manifest["version"] == version
    assert learner.get(rid).status == "done"
    model = learner.registry.active()
    assert model is not None and model.version == version and model.round_id == rid
    assert [m.version for m in learner.registry.lineage(version)] == [version]
    assert learner.new_labels() == 0 and learner.trigger("labels") is None  # nothing new to learn
    n_published = len(published)
    again = ro.start(version)  # a start retried (its answer lost): the same rollout, nothing sent
    assert again.id == row.state["rollout_id"] and again.stage == "all" and len(published) == n_published


def test_a_start_retried_while_at_the_canary_returns_that_rollout(world):
    clock, pipe, published = Clock(), TinyPipeline(world["keys"] / "signing.key"), []
    learner, ro, ingest = build(world, pipe, clock, published)
    feed(ingest, clock, "etch-01")
    empty = Windows.concat([])
    for v in ("v1", "v2"):
        learner.registry.register(pipe.export(Path(f"{v}.json"), empty, empty, world["tmp"] / v, v, None))
    first = ro.start("v1")
    n_published = len(published)
    again = ro.start("v1")
    assert again.id == first.id and again.stage == "canary" and len(ro.rollouts()) == 1
    assert len(published) == n_published, "a retried start announces nothing twice"
    with pytest.raises(RolloutError, match="still at its canary"):
        ro.start("v2")  # another version waits for this one


def test_a_broker_down_at_the_canary_step_is_tried_again_not_the_end_of_the_round(world):
    """The demo's third round failed at shutdown: the broker went first, the announcement raised,
    and a trained, gated, registered model was thrown away with a rollout left at its canary."""
    clock, pipe, published = Clock(), TinyPipeline(world["keys"] / "signing.key"), []
    down = {"left": 2}

    def publish(t: str, payload: bytes, qos: int, retain: bool) -> None:
        if down["left"]:
            down["left"] -= 1
            raise BrokerError(f"publish to {t}: the client is not currently connected")
        published.append((t, payload, retain))

    learner, ro, ingest = build(world, pipe, clock, published)
    ro.publish = publish
    feed(ingest, clock, "etch-01")
    rid = learner.trigger("labels", min_labels=4)
    row = learner.get(rid)
    assert row.status == "running" and row.step == "canary" and row.state["broker_retries"] == 1, row.log
    learner.tick()  # still down: the same rollout is announced again, not a second one started
    assert learner.get(rid).state["broker_retries"] == 2 and len(ro.rollouts()) == 1
    learner.tick()  # the broker is back
    row = learner.get(rid)
    assert row.status == "running" and row.step == "watch", row.log
    assert row.state["rollout_id"] == ro.rollouts()[0].id and len(ro.rollouts()) == 1
    assert announced(published, "edge-1").manifest["version"] == row.state["version"]


def test_worse_model_is_not_promoted_and_rollback_restores_the_previous(world):
    clock, pipe, published = Clock(), TinyPipeline(world["keys"] / "signing.key"), []
    learner, ro, ingest = build(world, pipe, clock, published, warm_start_edge=True)
    feed(ingest, clock, "etch-01")
    r1 = learner.get(learner.trigger("manual"))
    v1 = r1.state["version"]
    report(ingest, "edge-1", {"risk": v1})
    clock.t += 601
    ro.tick()
    learner.tick()
    assert learner.registry.active().version == v1
    edge1 = Path(learner.registry.require(v1).edge_checkpoint)  # kept in the registry's folder
    assert edge1.parent == world["tmp"] / "models" / v1
    assert edge1.read_bytes() == Path(r1.state["edge_ckpt"]).read_bytes()
    assert pipe.inits == [None]  # nothing ran before v1: a fresh student
    gone = world["tmp"] / "gone.pt"
    with pytest.raises(RegistryError, match="does not exist"):  # a wrong path is refused, not kept
        learner.registry.register(Path(learner.registry.require(v1).artifact_path), None, None, gone)
    # Round 2: a worse candidate (quality 0.5 < 0.8) is rejected at the gate, never registered.
    # Its 40 cases give a new frozen set large enough for the gate to be sure of that.
    pipe.quality = 0.5
    feed(ingest, clock, "etch-02", n=40)
    n_published = len(published)
    r2 = learner.get(learner.trigger("manual"))
    assert r2.status == "rejected" and "new_test" in r2.log[-1]["msg"], r2.log
    new_test = r2.state["gate"]["new_test"]
    assert new_test["running"] == pytest.approx(0.8, abs=0.05) and new_test["candidate"] == pytest.approx(0.5)
    assert new_test["unit"] == "window" and new_test["p_worse"] > 0.95  # one tool: resampled by window
    assert "at 95% confidence at most" in r2.log[-1]["msg"] and r2.log[-1]["msg"].endswith(": worse")
    assert learner.registry.get(r2.state["version"], missing_ok=True) is None
    assert len(published) == n_published
    # Round 3: a better model; the canary refuses it → automatic rollback to v1.
    pipe.quality = 0.9
    pipe.namer = {"plasma_etch": {}, "cvd": {}}
    feed(ingest, clock, "etch-03")
    r3 = learner.get(learner.trigger("manual"))
    v3 = r3.state["version"]
    # Its mode namer is fitted on every window it trained on, new and replayed, not the few
    # calibration windows; the log says which types it names.
    assert r3.state["replay"] and pipe.named[-1] == [*r3.state["train"], *r3.state["replay"]]
    assert any(e["msg"].endswith("; mode namer for cvd, plasma_etch") for e in r3.log), r3.log
    assert any("no mode namer (too few windows" in e["msg"] for e in r1.log), r1.log
    assert learner.registry.require(v3).parent_version == v1
    assert [m.version for m in learner.registry.lineage(v3)] == [v3, v1]
    report(
        ingest, "edge-1", {"risk": v1}, {"version": v3, "outcome": "refused", "reason": "disagreement 0.4"}
    )
    ro.tick()
    learner.tick()
    assert ro.get(r3.state["rollout_id"]).stage == "rolled_back"
    assert learner.get(r3.id).status == "rolled_back"
    assert announced(published, "edge-1").manifest["version"] == v1  # the previous model again
    assert learner.registry.active().version == v1
    assert learner.registry.require(v3).status == "rolled_back"
    # Rounds 2 and 3 both distilled from v1's weights, the model running while they ran.
    assert pipe.inits == [None, edge1, edge1]
    assert any(f"from {v1}'s weights" in e["msg"] for e in r3.log)


def test_a_candidate_whose_risks_all_rose_is_not_promoted_though_its_auc_ties(world):
    """The candidate keeps the running model's alert threshold; risks that all moved up by 0.45
    rank the windows as before (the AUC gate passes it) but cross that threshold on every window
    that did not fail: the gate rejects it on its false alarms, and says so."""
    clock, pipe, published = Clock(), TinyPipeline(world["keys"] / "signing.key"), []
    pipe.thresholds = {"alert_probability": 0.4, "alert_persistence_steps": 2, "alert_clear_probability": 0.2}
    learner, ro, ingest = build(world, pipe, clock, published)
    feed(ingest, clock, "etch-01")
    v1 = learner.get(learner.trigger("manual")).state["version"]
    report(ingest, "edge-1", {"risk": v1}, {"version": v1, "outcome": "accepted"})
    clock.t += 601
    ro.tick()
    learner.tick()
    assert learner.registry.active().version == v1
    pipe.shift = 0.45
    feed(ingest, clock, "etch-02", n=40)
    r2 = learner.get(learner.trigger("manual"))
    assert r2.status == "rejected", r2.log
    gate = r2.state["gate"]
    assert gate["new_test"]["change"] == pytest.approx(0.0) and not gate["new_test"]["worse"]
    moved = r2.state["risk_moved"]  # beside the gate's scores, which are one per frozen set
    assert moved["max"] == pytest.approx(0.45) and moved["windows"] > 0 and "risk_moved" not in gate
    alarms = gate["new_test_alarms_healthy"]
    assert (
        alarms["worse"]
        and alarms["candidate"] == 1.0
        and alarms["running"] < 0.5
        and alarms["threshold"] == 0.4
    )
    assert not gate["new_test_alarms_failing"]["worse"]
    msg = r2.log[-1]["msg"]
    assert "alerts at p ≥ 0.4 on the" in msg and "did not fail" in msg and msg.endswith(": worse"), msg
    assert learner.registry.active().version == v1
    # the same candidate, with the check turned off, is promoted as before
    learner, ro, ingest = build(world, pipe, clock, published, gate_alarm_tolerance=None)
    feed(ingest, clock, "etch-03", n=40)
    r3 = learner.get(learner.trigger("manual"))
    assert r3.status == "running" and r3.step == "watch" and "new_test_alarms_healthy" not in r3.state["gate"]


def test_warm_start_off_or_without_a_checkpoint_distils_a_fresh_student(world):
    """Off (the default): a fresh student every round. On, but the running model's checkpoint is
    gone: a fresh student too, and the round's log says why."""
    clock, pipe, published = Clock(), TinyPipeline(world["keys"] / "signing.key"), []
    learner, ro, ingest = build(world, pipe, clock, published)  # off: the default
    feed(ingest, clock, "etch-01")
    v1 = learner.get(learner.trigger("manual")).state["version"]
    report(ingest, "edge-1", {"risk": v1})
    clock.t += 601
    ro.tick()
    learner.tick()
    pipe.quality = 0.5  # rejected at the gate: the round ends without waiting on a rollout
    feed(ingest, clock, "etch-02")
    assert learner.get(learner.trigger("manual")).status == "rejected"
    assert pipe.inits == [None, None]  # off: never the running model's weights
    # On, but the running model's checkpoint is gone (a registry moved without it): fresh, and said so.
    Path(learner.registry.require(v1).edge_checkpoint).unlink()
    learner, ro, ingest = build(world, pipe, clock, published, warm_start_edge=True)
    feed(ingest, clock, "etch-03")
    r3 = learner.get(learner.trigger("manual"))
    assert pipe.inits == [None, None, None]
    assert any(f"no edge checkpoint of {v1}" in e["msg"] for e in r3.log), r3.log


def test_a_worker_killed_mid_round_resumes_from_the_persisted_step(world):
    clock, pipe, published = Clock(), TinyPipeline(world["keys"] / "signing.key"), []
    learner, _, ingest = build(world, pipe, clock, published)
    feed(ingest, clock, "etch-01")
    pipe.kill_in = "distil"
    with pytest.raises(Killed):
        learner.trigger("manual")
    (row,) = learner.rounds()
    assert row.status == "running" and row.step == "distil"
    # A new worker process: fresh objects over the same database. It waits out the dead one's lease.
    learner2, ro2, _ = build(world, pipe, clock, published)
    assert learner2.resume() == []
    clock.t += learner2.cfg.lease_s
    assert learner2.resume() == [row.id]
    row = learner2.get(row.id)
    assert row.step == "watch" and ro2.get(row.state["rollout_id"]).stage == "canary"
    assert pipe.calls == ["fine_tune", "distil", "distil", "export"]  # fine-tuning was not redone


def test_one_worker_runs_a_round_and_another_takes_over_when_the_holder_dies(world):
    clock, published = Clock(), []
    pipe_a, pipe_b = TinyPipeline(world["keys"] / "signing.key"), TinyPipeline(world["keys"] / "signing.key")
    a, _, ingest = build(world, pipe_a, clock, published)
    b, ro_b, _ = build(world, pipe_b, clock, published)
    feed(ingest, clock, "etch-01")
    pipe_a.kill_in = "distil"
    with pytest.raises(Killed):
        a.trigger("manual")  # worker A dies inside distil, holding the lease
    (row,) = a.rounds()
    assert row.step == "distil" and a.repo.lease(LEASE).owner == a.owner
    # While A's lease runs, B neither opens a round nor runs this one, whatever asks it to.
    clock.t += a.cfg.lease_s - 1
    assert b.trigger("manual") is None and b.resume() == []
    b.tick()
    assert b.run(row.id).step == "distil" and pipe_b.calls == []
    # A never renewed it: once expired, B's tick takes the lease and resumes at the persisted step.
    clock.t += 1
    b.tick()
    row = b.get(row.id)
    assert row.step == "watch" and ro_b.get(row.state["rollout_id"]).stage == "canary"
    assert pipe_a.calls == ["fine_tune", "distil"] and pipe_b.calls == ["distil", "export"]
    assert b.repo.lease(LEASE).expires_ts <= clock.t  # let go while the round waits on its rollout


def test_a_worker_that_lost_the_lease_stops_without_writing(world):
    clock, published = Clock(), []
    pipe_a, pipe_b = TinyPipeline(world["keys"] / "signing.key"), TinyPipeline(world["keys"] / "signing.key")
    a, _, ingest = build(world, pipe_a, clock, published)
    b, _, _ = build(world, pipe_b, clock, published)
    feed(ingest, clock, "etch-01")

    def stalled_past_the_lease() -> None:  # A hangs in distil (no heartbeat gets through) and B takes over
        clock.t += a.cfg.lease_s + 1
        assert b.repo.take_lease(LEASE, b.owner, clock(), b.cfg.lease_s)

    pipe_a.during["distil"] = stalled_past_the_lease
    rid = a.trigger("manual")
    row = a.get(rid)
    assert row.status == "running" and row.step == "distil"
    assert "edge_ckpt" not in row.state  # A wrote nothing
    assert a.repo.lease(LEASE).owner == b.owner  # and did not release B's lease
    assert b.run(rid).step == "watch" and pipe_b.calls == ["distil", "export"]


def test_lease_is_taken_by_exactly_one_owner(db_url: str):
    engine = make_engine(db_url)
    migrate(engine)
    try:
        repo = Repo(engine)
        assert repo.take_lease("x", "a", now=0.0, ttl_s=10.0)
        assert not repo.take_lease("x", "b", now=5.0, ttl_s=10.0)
        assert repo.take_lease("x", "a", now=5.0, ttl_s=10.0)  # renewed to 15
        assert not repo.take_lease("x", "b", now=14.0, ttl_s=10.0)
        repo.release_lease("x", "b")  # not b's: nothing happens
        assert not repo.take_lease("x", "b", now=14.0, ttl_s=10.0)
        repo.release_lease("x", "a")
        assert repo.take_lease("x", "b", now=14.0, ttl_s=10.0)
        # Eight workers (each its own Repo, as separate processes would be) race for the expired lease.
        barrier, won = threading.Barrier(8), []

        def race(i: int) -> None:
            worker = Repo(engine)
            barrier.wait()
            if worker.take_lease("x", f"w{i}", now=100.0, ttl_s=10.0):
                won.append(i)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and repo.lease("x").owner == f"w{won[0]}"
    finally:
        engine.dispose()


def test_failed_rounds_back_off_automatic_triggers(world):
    clock, pipe, published = Clock(), TinyPipeline(world["keys"] / "signing.key"), []
    learner, _, ingest = build(world, pipe, clock, published)
    feed(ingest, clock, "etch-01")

    def broken(*_args):
        raise RuntimeError("disk full")

    learner.pipeline.distil = broken
    r1 = learner.get(learner.trigger("labels"))
    assert r1.status == "failed" and r1.step == "distil" and "disk full" in r1.error
    assert learner.trigger("labels") is None  # backing off: 1 h after the first failure
    clock.t += 3601
    r2 = learner.get(learner.trigger("labels"))
    assert r2.status == "failed"
    clock.t += 3601
    assert learner.trigger("time") is None  # 2 h after the second
    assert learner.get(learner.trigger("manual")).status == "failed"  # an operator may always retry


def test_holdout_is_split_by_tool():
    from cloud.learning import split_holdout

    cases = [(f"c{t}-{i}", f"tool-{t}") for t in range(10) for i in range(5)]
    train, test = split_holdout(cases, 0.3)
    tool_of = dict(cases)
    assert train and test and set(train) | set(test) == {c for c, _ in cases}
    assert not {tool_of[c] for c in train} & {tool_of[c] for c in test}  # no tool on both sides
    assert split_holdout(cases, 0.3) == (train, test)  # stable
    two = [("a", "t1"), ("b", "t2")]
    assert sorted(map(len, split_holdout(two, 0.99))) == [1, 1]  # one tool each way, always
    one_tool = [(f"c{i}", "t") for i in range(40)]
    tr, te = split_holdout(one_tool, 0.3)
    assert tr and te  # a single tool: split by case


def test_edges_old_and_new_disagree_alike_over_the_tool_types_modes():
    """Edges used to send every mode's probability in a hard case, now only their tool type's: the
    canary's disagreement must read the same for both, or an upgrade alone would look like a
    regression (the other modes' near-zero agreement diluted the old cases' mean)."""
    verdict = {"probs": {"wear": 0.1, "arcing": 0.0, "leak": 0.0, "clog": 0.0}}
    old_edge = {"probs": {"wear": 0.5, "arcing": 0.0, "leak": 0.0, "clog": 0.0}}
    new_edge = {"probs": {"wear": 0.5, "arcing": 0.0}}
    own = ["wear", "arcing"]
    assert disagreement(old_edge, verdict, own) == pytest.approx(0.2)
    assert disagreement(new_edge, verdict, own) == pytest.approx(0.2)
    assert disagreement(old_edge, verdict) == pytest.approx(0.1)  # diluted by modes the tool lacks
    assert disagreement(new_edge, verdict, ["leak"]) is None
