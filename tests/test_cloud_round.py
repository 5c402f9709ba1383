"""One whole incremental-learning round with the real training pipeline on its tiny config:
labels from failures → fine-tune → distil → ONNX + INT8 parity → gate → signed release →
registry → canary announcement that verifies with the edge's public key."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np
import pytest

from cloud.config import CloudConfig
from cloud.errors import LearningError
from cloud.ingest import Ingestor
from cloud.learning import Learner
from cloud.metrics import CloudMetrics
from cloud.pipeline_adapter import balanced_accuracy, distil_pool_file, make_pipeline
from cloud.registry import Registry
from cloud.rollout import RolloutManager
from cloud.storage import Repo, make_engine, migrate
from cloud.testing import failure, hardcase, maintenance
from cloud.training.pool import pool_path, write_pool
from cloud.training.windows import WindowSet
from shared.features import FeatureSpec, Scaler, feature_names
from shared.messages import HardCase, ModelAnnouncement, Status, encode_array
from shared.models.checkpoint import load_checkpoint
from shared.signing import generate_keypair, load_public_key, verify_artifact, verify_manifest, verify_release
from shared.topics import Kind, topic

WINDOW = 12


def base_checkpoint(path: Path, n_features: int) -> Path:
    """An untrained tiny full DGA with the metadata a trained one carries (feature spec, modes)."""
    import torch

    from shared.models.checkpoint import save_checkpoint
    from shared.models.dga import DGA, DGAConfig

    torch.manual_seed(0)
    cfg = DGAConfig(
        n_features=n_features,
        window=WINDOW,
        n_modes=2,
        d_model=16,
        n_heads=2,
        n_layers=1,
        d_ff=32,
        embed_dim=8,
        rul_cap=200.0,
        horizon=72.0,
    )
    spec = FeatureSpec(window=WINDOW, step_s=600.0, scaler=Scaler(mean={}, std={}))
    meta = {"feature_spec": spec.to_dict(), "modes": ["wear", "leak"], "metrics": {}, "version": "full-0"}
    return save_checkpoint(path, DGA(cfg), meta)


async def test_a_real_tiny_round_produces_a_model_the_edge_accepts(tmp_path: Path):
    n_features = len(feature_names())
    keys = tmp_path / "keys"
    generate_keypair(keys / "signing.key", keys / "signing.pub")
    cfg = CloudConfig.model_validate(
        {
            "storage": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
            "serving": {"checkpoint": str(base_checkpoint(tmp_path / "full.pt", n_features))},
            "registry": {
                "dir": str(tmp_path / "models"),
                "private_key": str(keys / "signing.key"),
                "public_key": str(keys / "signing.pub"),
            },
            "learning": {
                "work_dir": str(tmp_path / "learn"),
                "size": "tiny",
                "min_new_labels": 10,
                "holdout_fraction": 0.3,
                "calib_windows": 64,
            },
            "rollout": {"min_observations": 0},
        }
    )
    # The served model's distillation pool (as `fabpm train sim` writes it beside its checkpoint):
    # every round's edge student also learns the teacher on these windows.
    pool_x = np.random.default_rng(1).standard_normal((100, WINDOW, n_features)).astype(np.float32)
    spec = load_checkpoint(cfg.serving.checkpoint)[1]["feature_spec"]
    pool_ws = WindowSet(
        x=pool_x, rul=np.zeros(100), labels=np.zeros((100, 2)), groups=np.zeros(100, dtype=int)
    )
    write_pool(pool_path(cfg.serving.checkpoint), pool_ws, spec)
    engine = make_engine(cfg.storage.url)
    migrate(engine)
    repo, metrics, published = Repo(engine), CloudMetrics(), []
    registry = Registry(repo, cfg.registry)
    rollout = RolloutManager(
        repo, registry, lambda t, p, q, r: published.append((t, p)), cfg.rollout, metrics
    )
    learner = Learner(
        repo,
        cfg.learning,
        make_pipeline(cfg, registry),
        registry,
        rollout,
        metrics,
        lambda: cfg.serving.checkpoint,
    )
    ingest = Ingestor(repo, metrics)
    ingest.handle(
        topic("fab1", "edge-1", Kind.STATUS), Status(edge_id="edge-1", site="fab1", state="online").to_bytes()
    )
    rng = np.random.default_rng(0)
    t_end = 10_000_000.0
    for k in range(4):  # four tools: two fail (degrading windows), two are maintained (healthy windows)
        tool = f"tool-{k}"
        for i in range(16):
            hours_before = 6.0 * (i + 1)
            x = rng.standard_normal((WINDOW, n_features)).astype(np.float32) * 0.3
            if k < 2:
                x[:, 0] += 3.0 * np.exp(-hours_before / 40.0)  # a drifting sensor before the failure
            base = hardcase(
                tool=tool, window_ts=t_end - hours_before * 3600, steps=WINDOW, n_features=n_features
            )
            msg = HardCase.model_validate(
                {**base.model_dump(by_alias=True), "features": encode_array(x), "case_id": f"{tool}-{i}"}
            )
            assert ingest.handle(topic("fab1", "edge-1", Kind.HARDCASE), msg.to_bytes())
        ev = failure(tool, t_end, mode="wear") if k < 2 else maintenance(tool, t_end + 200 * 3600)
        assert ingest.handle(topic("fab1", "edge-1", Kind.EVENT), ev.to_bytes())
    assert learner.new_labels() == 64

    rid = learner.trigger("labels", min_labels=cfg.learning.min_new_labels)
    row = learner.get(rid)
    assert row.status == "running" and row.step == "watch", (row.error, row.log)
    artifact = Path(row.state["artifact"])
    pub = load_public_key(keys / "signing.pub")
    manifest = verify_release(artifact, pub)  # what the edge checks before loading a model
    assert manifest.role == "edge-risk" and manifest.version == row.state["version"]
    assert manifest.input_spec["input_name"] == "x" and manifest.output_spec["modes"] == ["wear", "leak"]
    # The gate's alarm check reads the release's modes from its signed manifest; "wear" and "leak"
    # are modes of no catalog type, so every mode's probability counts, as the edge would count it.
    frozen = learner.windows(row.state["new_test"])
    alerting = learner.pipeline.alert_risk
    assert alerting is not None and len(frozen) and len(frozen.tool_types) == len(frozen)
    assert np.allclose(alerting(artifact, frozen), learner.pipeline.risk(artifact, frozen))
    ((t, raw),) = published
    assert t == topic("fab1", "edge-1", Kind.MODEL)
    ann = ModelAnnouncement.model_validate_json(raw)
    verify_artifact(verify_manifest(ann.manifest, ann.signature, pub), base64.b64decode(ann.artifact_b64))
    assert registry.require(manifest.version).full_checkpoint == row.state["full_ckpt"]
    # The edge's own update path (edge.updates.Updater) accepts it: signature, hash, load, checks.
    from edge.config import ModelsConfig
    from edge.updates import ModelStore, Updater

    swapped: list = []
    updater = Updater(
        ModelsConfig(store_dir=tmp_path / "edge-models"),
        ModelStore(tmp_path / "edge-models"),
        pub,
        "edge-1",
        lambda _slot: None,
        # What the edge's status would say at the swap (the daemon publishes it from there).
        lambda slot, model: swapped.append((slot, model, dict(updater.last))),
        lambda: [],
        lambda _w, _m: None,
    )
    outcome = await updater.handle(ann)
    assert outcome is not None and outcome["outcome"] == "accepted", outcome
    assert outcome["version"] == manifest.version and len(swapped) == 1
    assert swapped[0][2]["outcome"] == "accepted" and swapped[0][2]["version"] == manifest.version
    assert "new_test" in row.state["gate"]
    assert load_checkpoint(Path(row.state["edge_ckpt"]))[1]["distil_pool_windows"] == 100
    engine.dispose()


def test_the_distillation_pool_is_found_or_missed_aloud(tmp_path: Path, caplog):
    """learning.distil_pool names one (missing: an error at start, not a failed round each time);
    unset, the one beside serving.checkpoint; none there, a warning that says what is lost."""
    full = base_checkpoint(tmp_path / "full.pt", len(feature_names()))

    def cfg(**learning: object) -> CloudConfig:
        return CloudConfig.model_validate({"serving": {"checkpoint": str(full)}, "learning": learning})

    with pytest.raises(LearningError, match="no such file"):
        distil_pool_file(cfg(distil_pool=str(tmp_path / "nowhere.npz")))
    with caplog.at_level(logging.WARNING, logger="cloud.pipeline_adapter"):
        assert distil_pool_file(cfg()) is None
    assert "no distillation pool" in caplog.text and "forgets" in caplog.text
    pool_path(full).write_bytes(b"")  # found by name; read_pool judges its content
    assert distil_pool_file(cfg()) == pool_path(full)
    assert distil_pool_file(cfg(distil_pool_size=0)) is None


def test_scores():
    from cloud.gate import roc_auc

    truth = np.array([True, False, True, False])
    assert roc_auc(np.array([0.9, 0.1, 0.8, 0.2]), truth) == pytest.approx(1.0)
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), truth) == pytest.approx(0.5)
    assert roc_auc(np.array([0.1, 0.9, 0.2, 0.8]), truth) == pytest.approx(0.0)
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([True, True])))
    truth = np.array([True, True, False, False, False, False])
    assert balanced_accuracy(np.array([True, False, False, False, False, False]), truth) == pytest.approx(
        0.75
    )
    assert balanced_accuracy(np.zeros(6, bool), truth) == pytest.approx(0.5)


def test_fine_tuning_under_torchrun_ddp(tmp_path: Path):
    """learning.ddp_nproc > 1: two gloo ranks fine-tune in sync; rank 0's checkpoint comes back."""
    import torch

    from cloud.pipeline_adapter import _fine_tune_ddp
    from cloud.training.windows import WindowSet
    from shared.models.checkpoint import load_checkpoint

    n_features = len(feature_names())
    base = base_checkpoint(tmp_path / "full.pt", n_features)
    rng = np.random.default_rng(0)
    n = 64
    ws = WindowSet(
        x=rng.standard_normal((n, WINDOW, n_features)).astype(np.float32),
        rul=rng.uniform(0, 200, n).astype(np.float32),
        labels=(rng.uniform(size=(n, 2)) < 0.2).astype(np.float32),
        groups=np.arange(n) % 4,
    )
    out = _fine_tune_ddp(base, ws.take(np.arange(48)), ws.take(np.arange(48, n)), 2, "tiny", tmp_path / "ddp")
    tuned, meta = load_checkpoint(out)
    original, _ = load_checkpoint(base)
    assert meta["fine_tuned_on"] == 48
    changed = [
        not torch.equal(a, b)
        for a, b in zip(tuned.state_dict().values(), original.state_dict().values(), strict=True)
    ]
    assert any(changed)
    assert len(list((tmp_path).glob("full.ft*.pt"))) == 1  # the other rank's copy was removed
