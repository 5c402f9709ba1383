"""The training pipeline on tiny configs: labels, DDP, INT8 parity, the release, the tuning model, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port

from cloud.training import simdata
from cloud.training.errors import TrainingError
from cloud.training.parity import Tolerance, compare, run_onnx
from cloud.training.trainer import TrainConfig, fit, new_model
from cloud.training.windows import WindowSet, held_out_groups, split_by_group
from shared.dataset import ToolSeries
from shared.equipment import ALL_MODES, E10_CODES, E10State
from shared.features import FeatureSpec, build_features, fit_scaler
from shared.models.dga import DGA, DGAConfig
from shared.signing import generate_keypair, load_public_key, verify_release

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A small simulator export (the SIM helper's `fabpm sim export`)."""
    out = tmp_path_factory.mktemp("sim") / "set"
    cmd = [sys.executable, "-m", "fabpm.cli", "sim", "export", "--days", "30", "--tools", "8", "--seed", "7"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, timeout=240, env=ENV, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "k.pem", folder / "k.pub")
    return folder / "k.pem", folder / "k.pub"


def _series(rul: list[float], censor: list[float], mode: list[int], sudden: list[bool]) -> ToolSeries:
    n = len(rul)
    return ToolSeries(
        t_s=np.arange(n) * 600.0,
        values=np.zeros((n, 3), np.float32),
        setpoints=np.zeros((n, 1), np.float32),
        state=np.full(n, E10_CODES[E10State.PRODUCTIVE], np.int8),
        recipe=np.zeros(n, np.int8),
        rul_h=np.asarray(rul, np.float32),
        censor_h=np.asarray(censor, np.float32),
        fail_mode=np.asarray(mode, np.int16),
        sudden=np.asarray(sudden, bool),
    )


def test_labels_mark_unknowns_and_sudden_failures():
    nan = float("nan")
    s = _series(
        rul=[300.0, 50.0, 10.0, nan, nan, 30.0],
        censor=[400.0, 350.0, 340.0, 300.0, 20.0, 300.0],
        mode=[2, 2, 2, -1, -1, 3],
        sudden=[False, False, False, False, False, True],
    )
    rul, labels = simdata._labels(s, np.arange(6), horizon_h=72.0, cap_h=240.0)
    np.testing.assert_allclose(rul[:3], [240.0, 50.0, 10.0])
    assert rul[3] == 240.0 and np.isnan(rul[4]) and np.isnan(rul[5])  # censored ≥ cap; too short; sudden
    assert labels.shape == (6, len(ALL_MODES))
    assert labels[0].sum() == 0 and labels[1, 2] == 1 and labels[2, 2] == 1 and labels[1].sum() == 1
    assert (labels[3] == 0).all()  # censored past the horizon: known not to fail
    assert np.isnan(labels[4]).all()  # run ends inside the horizon: unknown
    assert labels[5, 3] == 1 and labels[5, 2] == 0  # sudden: labelled, its head learns the base rate


def test_split_is_by_group_never_by_window():
    rng = np.random.default_rng(0)
    ws = WindowSet(
        x=rng.normal(size=(100, 4, 3)).astype(np.float32),
        rul=np.ones(100, np.float32),
        labels=np.zeros((100, 1), np.float32),
        groups=np.repeat(np.arange(10), 10),
    )
    train, val = split_by_group(ws, 0.3, seed=1)
    assert len(train) + len(val) == 100
    assert not set(train.groups) & set(val.groups)
    assert len(set(val.groups)) == 3
    # what a benchmark finds without the windows: the same tools (bench/b7_sim.py relies on it)
    assert set(held_out_groups(np.arange(10), 0.3, seed=1)) == set(val.groups)


def test_early_stopping_watches_the_chosen_validation_metric():
    """monitor="mode" keeps the epoch of the lowest mode BCE, "loss" that of the summed loss.

    The RUL target is noise and weighs most in the loss, while the mode label follows the input
    and keeps improving: the criteria disagree on the best epoch (checked, so that a fit that
    ignored ``monitor`` would fail here).
    """
    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(size=(n, 6, 3)).astype(np.float32)
    labels = (x[:, :, 0].mean(axis=1) > 0).astype(np.float32)[:, None]
    rul = rng.uniform(0, 10, n).astype(np.float32)
    ws = WindowSet(x=x, rul=rul, labels=labels, groups=np.arange(n) % 20)
    train, val = split_by_group(ws, 0.3, seed=0)
    cfg = DGAConfig(
        n_features=3, window=6, n_modes=1, d_model=8, n_heads=2, n_layers=1, d_ff=16, rul_cap=10.0
    )
    base = TrainConfig(
        epochs=8, batch_size=32, patience=100, min_delta=0.0, progress=False, ema_decay=0.0, w_mode=0.01
    )
    chosen = {}
    for monitor, key in (("mode", "val_mode_bce"), ("loss", "val_loss"), ("rul", "val_rul_mse")):
        torch.manual_seed(0)
        res = fit(DGA(cfg), train, val, replace(base, monitor=monitor))
        watched = [h[key] for h in res.history]
        chosen[monitor] = res.metrics["epoch"]
        assert chosen[monitor] == float(np.argmin(watched)), (monitor, watched)
        assert all(np.isfinite(h["val_mode_bce"]) and np.isfinite(h["val_rul_mse"]) for h in res.history)
    assert chosen["mode"] != chosen["loss"], chosen
    with pytest.raises(TrainingError, match="monitor"):
        fit(DGA(cfg), train, val, replace(base, monitor="brier"))


@pytest.mark.parametrize("epochs", [1, 2, 9, 10, 11])
def test_a_schedule_of_any_length_trains(epochs: int):
    """A run of ten steps (ten epochs of one batch: a learning round on a few labels) ended the
    warm-up on step 0, and torch's one-cycle schedule divided by zero there."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6, 3)).astype(np.float32)
    labels = (x[:, :, 0].mean(axis=1) > 0).astype(np.float32)[:, None]
    ws = WindowSet(
        x=x, rul=rng.uniform(0, 10, 40).astype(np.float32), labels=labels, groups=np.arange(40) % 4
    )
    cfg = DGAConfig(
        n_features=3, window=6, n_modes=1, d_model=8, n_heads=2, n_layers=1, d_ff=16, rul_cap=10.0
    )
    tcfg = TrainConfig(epochs=epochs, batch_size=64, progress=False, keep="last")
    res = fit(new_model(cfg, 0), ws, ws.take(np.array([], dtype=np.int64)), tcfg)
    assert len(res.history) == epochs


def test_keep_last_runs_the_whole_schedule_and_needs_no_validation_split():
    """keep="last" (a refit on every unit) returns the end of the schedule, never early-stops, and
    trains the same weights whether or not a validation split is there to be reported on."""
    rng = np.random.default_rng(1)
    n = 400
    x = rng.normal(size=(n, 6, 3)).astype(np.float32)
    ws = WindowSet(
        x=x,
        rul=rng.uniform(0, 10, n).astype(np.float32),  # noise: validation stops improving early
        labels=(x[:, :, 0].mean(axis=1) > 0).astype(np.float32)[:, None],
        groups=np.arange(n) % 20,
    )
    train, val = split_by_group(ws, 0.3, seed=0)
    cfg = DGAConfig(
        n_features=3, window=6, n_modes=1, d_model=8, n_heads=2, n_layers=1, d_ff=16, rul_cap=10.0
    )
    base = TrainConfig(
        epochs=6, batch_size=32, patience=1, min_delta=0.0, progress=False, ema_decay=0.0, monitor="rul"
    )
    best = fit(new_model(cfg, 0), train, val, base)
    assert best.metrics["epoch"] < 5 and len(best.history) < 6  # early stopping did end this one
    last = fit(new_model(cfg, 0), train, val, replace(base, keep="last"))
    alone = fit(new_model(cfg, 0), train, val.take(np.array([], dtype=np.int64)), replace(base, keep="last"))
    assert len(last.history) == len(alone.history) == 6
    assert last.metrics["epoch"] == alone.metrics["epoch"] == 5.0 and "val_loss" not in alone.metrics
    sl, sa, sb = last.model.state_dict(), alone.model.state_dict(), best.model.state_dict()
    assert all(torch.equal(sl[k], sa[k]) for k in sl)
    assert not all(torch.equal(sl[k], sb[k]) for k in sl)
    empty = val.take(np.array([], dtype=np.int64))
    with pytest.raises(TrainingError, match="empty split"):
        fit(new_model(cfg, 0), train, empty, base)  # "best" has nothing to pick an epoch on
    with pytest.raises(TrainingError, match="keep"):
        fit(new_model(cfg, 0), train, val, replace(base, keep="first"))


def test_gate_pressure_closes_the_gates_of_tokens_that_do_not_help():
    """TrainConfig.w_gate (B1's default since the twenty-sixth session): the target is read off the
    last step only, so with the pressure the other steps' gates close and dropping them moves the
    output less than without it."""
    from cloud.training.trainer import predict

    rng = np.random.default_rng(3)
    n = 600
    x = rng.normal(size=(n, 8, 2)).astype(np.float32)
    ws = WindowSet(
        x=x,
        rul=(5 + 4 * np.tanh(x[:, -1, 0])).astype(np.float32),  # the last step alone decides
        labels=np.full((n, 1), np.nan, np.float32),
        groups=np.arange(n) % 30,
    )
    empty = ws.take(np.array([], dtype=np.int64))
    cfg = DGAConfig(
        n_features=2, window=8, n_modes=1, d_model=16, n_heads=2, n_layers=1, d_ff=32, rul_cap=10.0
    )
    base = TrainConfig(
        epochs=8, batch_size=32, lr=3e-3, progress=False, ema_decay=0.0, keep="last", w_mode=0.0
    )
    kept: dict[float, tuple[float, float]] = {}
    for w in (0.0, 0.05):
        model = fit(new_model(cfg, 0), ws, empty, replace(base, w_gate=w)).model
        full, half = predict(model, x), predict(model, x, keep_ratio=0.5)
        kept[w] = (float(full["gates"].mean()), float(np.abs(half["rul"] - full["rul"]).mean()))
    assert kept[0.05][0] < 0.5 * kept[0.0][0], kept  # the gates close under the pressure
    assert kept[0.05][1] < kept[0.0][1], kept  # and dropping half the tokens moves the output less


def test_a_windows_weight_scales_its_rul_error_in_the_loss():
    """WindowSet.weight: a window weighted 0 adds nothing to the RUL terms, one weighted 2 counts as
    two; the mode term is not weighted."""
    from cloud.training.trainer import losses

    out = {
        "rul_norm": torch.tensor([0.2, 0.9]),
        "rul_logvar": torch.tensor([0.1, -0.3]),
        "mode_logits": torch.zeros(2, 1),
    }
    batch = {"rul": torch.tensor([0.5, 0.1]), "labels": torch.full((2, 1), float("nan"))}
    cfg = TrainConfig(w_mode=0.0)
    first = {k: v[:1] for k, v in out.items()}
    alone = losses(first, {k: v[:1] for k, v in batch.items()}, cfg)
    weighted = losses(out, {**batch, "weight": torch.tensor([2.0, 0.0])}, cfg)
    assert torch.allclose(weighted, alone)
    assert not torch.allclose(losses(out, batch, cfg), alone)  # unweighted, the second one counts
    ws = WindowSet(
        x=np.zeros((3, 2, 1), np.float32),
        rul=np.zeros(3, np.float32),
        labels=np.zeros((3, 1), np.float32),
        groups=np.arange(3),
        weight=np.array([1.0, 0.5, 1.5], np.float32),
    )
    assert ws.take(np.array([2, 0])).weight.tolist() == [1.5, 1.0]
    both = WindowSet.concat([ws, replace(ws, weight=None)])
    assert both.weight is not None and both.weight.tolist() == [1.0, 0.5, 1.5, 1.0, 1.0, 1.0]
    with pytest.raises(TrainingError, match="weight"):
        replace(ws, weight=np.array([1.0, -1.0, 1.0], np.float32))


def test_the_naming_term_ranks_the_failing_modes_head_above_the_others():
    """w_mode_ce: a cross-entropy over the mode logits where one mode is known to fail (a hard
    label 1, whatever the teacher's soft targets say); windows with no failure or an unknown label
    add nothing, and a one-mode model gets nothing from it."""
    from cloud.training.trainer import losses

    cfg = TrainConfig(w_rul=0.0, w_nll=0.0, w_mode=0.0, w_mode_ce=1.0)
    labels = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [float("nan")] * 3])
    batch = {"rul": torch.full((3,), float("nan")), "labels": labels}

    def loss(first: list[float], others: float = 0.0, c: TrainConfig = cfg, b: dict = batch) -> float:
        logits = torch.tensor([first, [others, 3.0, 0.0], [0.0, others, 5.0]])
        zeros = torch.zeros(len(logits))
        return float(losses({"rul_norm": zeros, "rul_logvar": zeros, "mode_logits": logits}, b, c))

    wrong, right = loss([0.0, 0.0, 2.0]), loss([0.0, 2.0, 0.0])
    assert right < wrong and right == pytest.approx(np.log(1 + 2 * np.exp(-2.0)), rel=1e-5)
    assert loss([0.0, 2.0, 0.0], others=4.0) == pytest.approx(right)  # the other rows: nothing
    soft = {**batch, "teacher_rul": batch["rul"], "teacher_probs": torch.full((3, 3), 0.3)}
    assert loss([0.0, 2.0, 0.0], c=replace(cfg, distil_alpha=1.0), b=soft) == pytest.approx(right)
    assert loss([0.0, 0.0, 2.0], c=replace(cfg, w_mode_ce=0.0)) == 0.0
    one = {"rul": torch.full((1,), float("nan")), "labels": torch.ones(1, 1)}
    single = {"rul_norm": torch.zeros(1), "rul_logvar": torch.zeros(1), "mode_logits": torch.tensor([[-4.0]])}
    assert float(losses(single, one, cfg)) == 0.0


def test_the_naming_head_trains_the_embedding_and_is_dropped_after(tmp_path):
    """w_name: a classifier over the embedding, trained beside the model on the windows with one
    known failing mode, bends the trunk (the embedding's projection is frozen, its gradient is
    not) and is not in the checkpoint, which loads as any other; off, training is as before."""
    from cloud.training.trainer import fit, new_model, predict
    from shared.models.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    n = 240
    x = rng.normal(size=(n, 8, 4)).astype(np.float32)
    labels = np.zeros((n, 3), np.float32)
    labels[np.arange(n), rng.integers(0, 3, n)] = 1.0
    labels[::4] = 0.0  # no failure within the horizon: nothing for the naming head
    ws = WindowSet(x=x, rul=np.full(n, np.nan, np.float32), labels=labels, groups=np.arange(n))
    mcfg = DGAConfig(
        n_features=4, window=8, n_modes=3, d_model=16, n_heads=2, n_layers=1, d_ff=32, embed_dim=8
    )
    base = TrainConfig(epochs=2, batch_size=32, patience=5, progress=False, seed=0, w_rul=0.0, w_nll=0.0)

    def trained(c: TrainConfig, path: Path | None = None) -> DGA:
        return fit(new_model(mcfg, 0), ws.take(np.arange(200)), ws.take(np.arange(200, n)), c, path).model

    off, again = trained(base), trained(base)
    named = trained(replace(base, w_name=1.0), tmp_path / "named.pt")
    emb = {k: predict(m, x)["embedding"] for k, m in (("off", off), ("again", again), ("named", named))}
    assert np.array_equal(emb["off"], emb["again"])
    assert not np.allclose(emb["off"], emb["named"], atol=1e-4), "the naming loss moved the trunk"
    assert torch.equal(off.emb_head.weight, named.emb_head.weight), "the projection stays frozen"
    loaded, _ = load_checkpoint(tmp_path / "named.pt")
    assert sorted(loaded.state_dict()) == sorted(off.state_dict())
    np.testing.assert_array_equal(predict(loaded, x)["embedding"], emb["named"])


def test_one_ddp_step_with_two_gloo_processes(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), "-m", "cloud.training.cli", "ddp-check", "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["before"] == r1["before"]
    np.testing.assert_allclose(r0["digest"], r1["digest"], rtol=0, atol=1e-9)  # ranks stay in sync
    assert abs(sum(r0["digest"]) - r0["before"]) > 1e-6  # and the step changed the weights


def test_static_int8_parity_within_stated_tolerance(tmp_path):
    from cloud.training.export import export_dga
    from cloud.training.quantize import adaptive_quantize, preprocess, quantize_static_int8

    torch.manual_seed(0)
    model = DGA(
        DGAConfig(n_features=6, window=10, n_modes=2, d_model=16, n_heads=2, n_layers=1, d_ff=32)
    ).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 10, 6)).astype(np.float32)
    fp32 = export_dga(model, tmp_path / "m.onnx")
    q = quantize_static_int8(preprocess(fp32, tmp_path / "pre.onnx"), tmp_path / "q.onnx", x[:100])
    res = compare(run_onnx(fp32, x[100:]), run_onnx(q, x[100:]), model.cfg.rul_cap)
    tol = Tolerance()
    assert res["rul_rms_diff_rel_cap"] <= tol.rul_rms
    assert res["prob_max_diff"] <= tol.prob_max
    assert res["emb_cos_min"] >= tol.emb_cos_min
    assert res["rul_rms_diff"] > 0  # it really is quantized
    mix, report = adaptive_quantize(
        fp32, tmp_path / "mix.onnx", x[:100], x[100:], model.cfg.rul_cap, repeats=50
    )
    assert report.final_rul_drift <= 0.01
    assert {g.group for g in report.groups} >= {"/model/blocks.0/attn/qkv", "/model/inp"}
    assert all(g.why for g in report.groups)  # every decision says why
    got = compare(run_onnx(fp32, x[100:]), run_onnx(mix, x[100:]), model.cfg.rul_cap)
    assert got["rul_rms_diff_rel_cap"] <= 0.01
    # a group whose INT8 saves less than min_saving_us per call stays FP32, whatever its ratio
    mix, report = adaptive_quantize(
        fp32,
        tmp_path / "mix2.onnx",
        x[:100],
        x[100:],
        model.cfg.rul_cap,
        min_speedup=0.0,
        min_saving_us=1e9,
        repeats=20,
    )
    assert not any(g.int8 for g in report.groups)
    assert all("not faster" in g.why for g in report.groups if not g.why.startswith("error"))
    assert compare(run_onnx(fp32, x[100:]), run_onnx(mix, x[100:]), model.cfg.rul_cap)["rul_rms_diff"] < 1e-4


def test_the_same_seed_trains_the_same_model_and_another_seed_another(export_dir, tmp_path):
    """The initial weights are seeded too: two runs of one command give one model."""
    from cloud.training.pipeline import PipelineConfig, train_full
    from shared.models.checkpoint import load_checkpoint

    cfg = PipelineConfig.tiny()
    torch.manual_seed(1234)  # whatever the global RNG holds before, the run seeds itself
    a, _ = load_checkpoint(train_full(export_dir, cfg, tmp_path / "a"))
    torch.rand(7)
    b, _ = load_checkpoint(train_full(export_dir, cfg, tmp_path / "b"))
    other = replace(cfg, train=replace(cfg.train, seed=1))
    c, _ = load_checkpoint(train_full(export_dir, other, tmp_path / "c"))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_pipeline_tiny_end_to_end(export_dir, keys, tmp_path):
    from cloud.training.pipeline import PipelineConfig, distil_edge, export_release, fine_tune, train_full
    from shared.models.checkpoint import load_checkpoint

    cfg = PipelineConfig.tiny()
    full = train_full(export_dir, cfg, tmp_path)
    model, meta = load_checkpoint(full)
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    assert meta["modes"] == list(ALL_MODES) and "val_rmse" in meta["metrics"]
    _, tools, _ = simdata.dataset_windows(export_dir, spec=spec, stride=cfg.stride)
    ws = simdata.merge(tools)
    tuned = fine_tune(
        full, ws.take(np.flatnonzero(ws.groups < 3)), ws.take(np.flatnonzero(ws.groups >= 3)), cfg
    )
    assert tuned != full and "replay_rmse_after" in load_checkpoint(tuned)[1]["metrics"]
    edge = distil_edge(tuned, ws, cfg)
    edge_model, _ = load_checkpoint(edge)
    assert isinstance(edge_model, DGA) and edge_model.n_params() < model.n_params()
    path, manifest = export_release(edge, ws, tmp_path / "rel", keys[0], "v1", None, cfg)
    assert verify_release(path, load_public_key(keys[1])).version == "v1"
    assert manifest.role == "edge-risk" and manifest.input_spec["input_name"] == "x"
    assert FeatureSpec.from_dict(manifest.input_spec) == spec
    out = manifest.output_spec
    assert out["modes"] == list(ALL_MODES) and out["horizon_h"] == 72.0 and out["rul_cap_h"] > 0
    assert (
        np.asarray(out["embedding_centroids"]).shape[1] == edge_model.cfg.embed_dim
        and out["novelty_scale"] > 0
    )
    # the RUL interval's scale, fitted on held-out units, travels to the edge and is applied there
    assert out["rul_std_scale"] > 0
    calib = manifest.metrics["calibration"]
    assert calib["rul_std_scale"] == out["rul_std_scale"]
    assert set(manifest.thresholds) >= {
        "alert_probability", "alert_persistence_steps", "alert_clear_probability",
        "hard_margin", "hard_rul_std_h", "hard_novelty",
    }  # fmt: skip
    assert manifest.precision["fp32_groups"] or manifest.precision["int8_groups"]
    # every layer FP32 here: the release ships the lean graph, held to the exporter's by parity
    assert manifest.precision["graph"] == ("exported" if manifest.precision["int8_groups"] else "lean")
    assert manifest.metrics["parity"]["rul_rms_diff_rel_cap"] < 1e-5
    # the edge's path: raw values → shared.features → the released graph
    import onnxruntime as ort

    from shared.equipment import tool_type

    tt = "plasma_etch"
    raw = np.full((spec.window, len(tool_type(tt).sensors)), np.nan)
    raw[:, :] = np.asarray(spec.scaler.mean[tt])
    assert spec.reference_rows > 0  # the default: each tool against its own reference
    unknown = np.full(spec.window, np.nan)  # a tool not yet seen coming back up: reference unknown
    feats = build_features(raw, np.ones(spec.window), tt, spec, np.full_like(raw, np.nan), unknown)[None]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, rul, rul_std, emb = sess.run(None, {"x": feats})
    assert probs.shape == (1, len(ALL_MODES)) and rul.shape == (1,) and rul_std.shape == (1,)
    assert emb.shape == (1, edge_model.cfg.embed_dim)
    from edge.inference import RiskModel

    pred = RiskModel(path.read_bytes(), manifest).predict(feats.astype(np.float32))
    assert np.allclose(pred.rul_std, rul_std * out["rul_std_scale"], rtol=1e-5)
    # A learning round calibrates on a few hundred windows with few failures: the mode namer is
    # fitted on the windows it names on instead (here etch's, MIN_WINDOWS before each of its modes).
    from cloud.training.release import window_types
    from shared.naming import MIN_WINDOWS

    etch = np.flatnonzero(window_types(ws.x, list(spec.names)) == tt)
    etch_modes = tool_type(tt).warnable_mode_names
    assert len(etch) >= MIN_WINDOWS * len(etch_modes), "the export holds enough etch windows"
    named = ws.take(etch[: MIN_WINDOWS * len(etch_modes)])
    named.labels[:] = 0.0
    for k, mode in enumerate(etch_modes):
        named.labels[k * MIN_WINDOWS : (k + 1) * MIN_WINDOWS, ALL_MODES.index(mode)] = 1.0
    calib = replace(ws, labels=np.zeros_like(ws.labels))  # no failure within the horizon
    _, plain = export_release(edge, calib, tmp_path / "rel2", keys[0], "v2", None, cfg)
    _, round_release = export_release(
        edge, calib, tmp_path / "rel3", keys[0], "v3", None, cfg, naming_windows=named
    )
    assert "mode_namer" not in plain.output_spec
    namer = round_release.output_spec["mode_namer"]
    assert set(namer) == {tt} and namer[tt]["windows"] == [MIN_WINDOWS] * len(etch_modes)


def test_distil_edge_warm_start_continues_the_running_edge_model(export_dir, tmp_path):
    from cloud.training.pipeline import PipelineConfig, distil_edge, train_full
    from shared.models.checkpoint import load_checkpoint, save_checkpoint

    cfg = PipelineConfig.tiny()
    full = train_full(export_dir, cfg, tmp_path)
    spec = FeatureSpec.from_dict(load_checkpoint(full)[1]["feature_spec"])
    _, tools, _ = simdata.dataset_windows(export_dir, spec=spec, stride=cfg.stride)
    ws = simdata.merge(tools)
    running = distil_edge(full, ws, cfg)
    run_model, run_meta = load_checkpoint(running)
    (tmp_path / "round").mkdir()
    teacher = tmp_path / "round" / "full.pt"
    teacher.write_bytes(full.read_bytes())
    # The student is the running model continued, whatever size the config asks for now: with a
    # learning rate of 0 it comes out with exactly the running weights (a fresh one would not).
    frozen = replace(cfg, fine_tune_lr=0.0, edge_d_model=2 * cfg.edge_d_model)
    warm, meta = load_checkpoint(distil_edge(teacher, ws, frozen, init=running))
    assert meta["warm_start"] == str(running) and warm.cfg == run_model.cfg
    ref = run_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in warm.state_dict().items())
    # A running model whose scaler differs from the teacher's reads other numbers: fresh student.
    other_spec = {**run_meta["feature_spec"], "reference_rows": spec.reference_rows + 1}
    stale = save_checkpoint(tmp_path / "stale.pt", run_model, {**run_meta, "feature_spec": other_spec})
    fresh, meta = load_checkpoint(distil_edge(teacher, ws, cfg, init=stale))
    assert "warm_start" not in meta and fresh.cfg.d_model == cfg.edge_d_model
    # One that takes other inputs cannot be continued on these windows: a clear error.
    wrong = new_model(replace(run_model.cfg, n_features=run_model.cfg.n_features + 1), 0)
    bad = save_checkpoint(tmp_path / "wrong.pt", wrong, run_meta)
    with pytest.raises(TrainingError, match="n_features"):
        distil_edge(teacher, ws, cfg, init=bad)


def test_tuning_model_release_and_step(export_dir, keys, tmp_path):
    import onnxruntime as ort

    from cloud.training.tuning import release_tuning
    from shared.signing import load_private_key
    from shared.tuning import propose_step

    path, manifest = release_tuning(
        export_dir, "plasma_etch", tmp_path, load_private_key(keys[0]), "t1", epochs=30
    )
    assert verify_release(path, load_public_key(keys[1])).role == "edge-tuning"
    spec = manifest.input_spec
    assert spec["tool_type"] == "plasma_etch" and spec["setpoints"] and spec["context"]
    # the energy it predicts is an average lot's of the export's recipe mix, each recipe's factor kept
    assert set(manifest.output_spec["energy_recipe_scale"]) == {"oxide_etch", "poly_etch", "metal_etch"}
    # and its view of a step was checked against the held-out tools' setpoint changes
    assert manifest.metrics["val_step_pairs"] >= 0
    from cloud.training.tuning import describe

    said = describe(manifest.metrics)  # what the log says of it, in words
    assert said.startswith("held-out tools: yield R² ") and "held-out setpoint changes: " in said
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["yield", "energy"]

    def predict(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, e = sess.run(None, {"x": x.astype(np.float32)})
        return y, e

    current = {n: float(m) for n, m in zip(spec["setpoints"], spec["mean"], strict=False)}
    context = {n: float(m) for n, m in zip(spec["context"], spec["mean"][len(current) :], strict=True)}
    env = {n: (v * 0.9, v * 1.1) for n, v in current.items()}
    step = {n: abs(v) * 0.02 for n, v in current.items()}
    prop = propose_step(predict, current, context, env, step, {"yield": 1.0, "energy": 0.1})
    for n, v in prop.items():
        assert env[n][0] - 1e-6 <= v <= env[n][1] + 1e-6 and abs(v - current[n]) <= step[n] + 1e-6


def test_the_tuning_energy_target_is_an_average_lot_of_the_recipe_mix():
    """A lot's energy is mostly its recipe's, which the edge does not know for the next lot: the
    target scales each lot to the mix, and a setpoint the lots never moved gets a floor on its
    std (1% of its range) so a step of it does not reach the network thousands of stds out."""
    from cloud.training.tuning import LotRows, input_std, mix_energy, recipe_scale

    recipes = np.array(["oxide_etch", "poly_etch"] * 4)
    energy = np.where(recipes == "oxide_etch", 10.0, 30.0).astype(np.float32)
    x = np.column_stack([np.full(8, 1200.0), np.linspace(30.0, 50.0, 8), np.full(8, 90.0)]).astype(np.float32)
    rows = LotRows(
        x, np.column_stack([np.full(8, 90.0), energy]).astype(np.float32), np.arange(8) % 2,
        ["rf_power_sp", "pressure_sp"], ["last_lot_yield"], recipes, "plasma_etch",
    )  # fmt: skip
    scale = recipe_scale(energy, recipes)
    assert scale == pytest.approx({"oxide_etch": 2.0, "poly_etch": 2.0 / 3.0})
    assert mix_energy(rows, scale)[:, 1] == pytest.approx(np.full(8, 20.0))
    assert mix_energy(rows, {})[:, 1] == pytest.approx(energy)  # a recipe not trained on keeps its kWh
    std = input_std(rows, x)
    assert std[0] == pytest.approx(0.01 * (2000.0 - 600.0))  # rf power never moved: 1% of its range
    assert std[1] == pytest.approx(x[:, 1].std())  # pressure moved more than its floor
    assert std[2] == pytest.approx(1e-6)  # context: no range to floor by


def test_a_held_out_tool_s_own_energy_level_does_not_stop_the_training_early(tmp_path):
    """The demo's export (16 tools, 60 days, seed 1007): its held-out etch tool draws more energy
    than the two it trains on, which no training can know. Judged on the raw error, that offset
    stopped the training before the yield was learned (held-out yield R² −0.04); judged on each
    held-out tool's lot-to-lot variation, the model learns it."""
    from cloud.training.tuning import lot_rows, train_surrogate, within_tool
    from opcua_sim.export import export
    from opcua_sim.scenario import load_scenario, scale_tools, with_seed

    assert within_tool(np.array([1.0, 3.0, 10.0, 14.0]), np.array([0, 0, 1, 1])).tolist() == [-1, 1, -2, 2]
    export(scale_tools(with_seed(load_scenario(None), 1007), 16), 60.0, tmp_path / "export")
    _, metrics, _ = train_surrogate(lot_rows(tmp_path / "export", "plasma_etch"))
    assert metrics["val_yield_r2_within_tool"] > 0.8 and metrics["val_yield_r2"] > 0.8, metrics
    assert metrics["val_energy_r2_within_tool"] > 0.3, metrics


def test_the_step_check_compares_predicted_changes_with_what_followed():
    """Each lot that ran with other setpoints than its tool's lot before: the model's change for
    that step against the measured one. A model that has yield rise with power is right about
    lots whose yield rose with power; one whose energy falls with it is wrong every time."""
    from cloud.training.tuning import LotRows, step_check

    class Slope(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x[:, 0] / 100.0, -x[:, 0] / 100.0

    power = np.array([1200.0, 1200.0, 1250.0, 1250.0, 1150.0, 1300.0, 1300.0, 1200.0])
    lot_yield = 80.0 + (power - 1200.0) / 50.0  # yield and energy both rise with power
    tools = np.array([0, 0, 0, 0, 0, 0, 0, 1])  # tool 1's one lot has no lot before it
    rows = LotRows(
        np.column_stack([power, np.zeros(8)]).astype(np.float32),
        np.column_stack([lot_yield, lot_yield]).astype(np.float32), tools,
        ["rf_power_sp"], ["last_lot_yield"], np.array(["oxide_etch"] * 8), "plasma_etch",
    )  # fmt: skip
    got = step_check(Slope(), rows, rows.y, np.arange(8))  # type: ignore[arg-type]
    assert got["val_step_pairs"] == 3  # 1200→1250, 1250→1150, 1150→1300; unchanged lots are no step
    assert got["val_step_yield_sign"] == 1.0 and got["val_step_yield_r"] == pytest.approx(1.0)
    assert got["val_step_energy_sign"] == 0.0 and got["val_step_energy_r"] == pytest.approx(-1.0)
    assert step_check(Slope(), rows, rows.y, np.arange(3)) == {"val_step_pairs": 1.0}  # too few to say


def test_cli_cmapss_tiny(data_dir, tmp_path):
    cmd = [sys.executable, "-m", "fabpm.cli", "train", "cmapss", "--tiny", "--epochs", "1", "--no-progress"]
    cmd += ["--far-weight", "0.5"]
    proc = subprocess.run(
        [*cmd, "--data", str(data_dir), "--out", str(tmp_path)], capture_output=True, text=True, timeout=240,
        env=ENV, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    assert len(res["full_pred"]) == 100 and np.isfinite(res["full"]["rmse"]) and res["full"]["score"] > 0
    assert Path(res["full_checkpoint"]).exists()
    from shared.models.checkpoint import load_checkpoint

    _, meta = load_checkpoint(Path(res["full_checkpoint"]))
    assert meta["far_weight"] == 0.5  # the checkpoint says how its windows were weighted


def test_fit_scaler_matches_features():
    # the scaler simdata fits is the one shared.features applies: z of the mean is 0
    vals = np.random.default_rng(0).normal(5, 2, (50, 14))
    spec = FeatureSpec(window=4, step_s=600.0, scaler=fit_scaler({"plasma_etch": vals}))
    f = build_features(vals[:4], np.ones(4), "plasma_etch", spec)
    assert np.isfinite(f).all() and abs(float(f[:, :14].mean())) < 1.5


def test_cmapss_padded_training_windows_match_how_test_units_are_padded(data_dir):
    from cloud.training import cmapss

    data = cmapss.load_fd001(data_dir)
    plain = cmapss.train_windows(data, window=40, smooth=0.2)
    padded = cmapss.train_windows(data, window=40, smooth=0.2, first_end=31)
    unit1 = np.flatnonzero(padded.groups == 1)
    life = int(np.sum(data.train[:, 0] == 1))
    # nine more windows per unit (ends at cycles 31..39), the first one padded by 9 copies of cycle 1
    assert len(padded) == len(plain) + 9 * 100 and len(unit1) == life - 30
    first = padded.x[unit1[0]]
    assert np.array_equal(first[:10], np.repeat(first[:1], 10, axis=0)) and not np.array_equal(
        first[9], first[10]
    )
    assert padded.rul[unit1[0]] == min(life - 31, cmapss.RUL_CAP) and padded.rul[unit1[-1]] == 0
    # a test unit of 31 cycles is shown to the model exactly like the training window ending at 31
    short = cmapss._pad(cmapss._units(data.train, data, 0.2)[0][1][:31], 40)
    assert np.array_equal(short, first)
    assert np.array_equal(plain.x, padded.x[_not_padded(padded, 40, 31)])  # the rest is unchanged


def test_cmapss_own_reference_sees_no_cycle_after_the_window_end(data_dir):
    from cloud.training import cmapss

    data = cmapss.load_fd001(data_dir)
    ws = cmapss.train_windows(data, window=40, smooth=0.2, first_end=31, reference=30)
    assert ws.x.shape[2] == cmapss.n_features(30) == 28
    plain = cmapss.train_windows(data, window=40, smooth=0.2, first_end=31)
    assert np.array_equal(ws.x[..., :14], plain.x)  # the sensors themselves unchanged
    unit1 = np.flatnonzero(ws.groups == 1)
    z = ((data.train[data.train[:, 0] == 1][:, list(cmapss.SENSOR_COLS)] - data.mean) / data.std).astype(
        np.float32
    )
    last = ws.x[unit1[-1]]  # the unit's last window: the deviation from its first 30 raw cycles
    np.testing.assert_allclose(last[:, 14:], last[:, :14] - z[:30].mean(0), atol=1e-5)
    # The first window (ending at cycle 31) is the same when the unit's life is cut there:
    # nothing after its end went into it.
    cut = replace(
        data,
        train=np.concatenate([data.train[data.train[:, 0] == 1][:31], data.train[data.train[:, 0] == 2]]),
    )
    alone = cmapss.train_windows(cut, window=40, smooth=0.2, first_end=31, reference=30)
    assert np.array_equal(alone.x[alone.groups == 1][0], ws.x[unit1[0]])
    # A reference longer than the first window end, or than a test unit's whole history, would
    # see the future.
    with pytest.raises(ValueError, match="reference"):
        cmapss.train_windows(data, window=40, first_end=31, reference=32)
    from shared.errors import DatasetError

    with pytest.raises(DatasetError, match="fewer than the 32-cycle reference"):
        cmapss.last_windows(data, window=40, reference=32)  # the shortest test unit has 31
    assert cmapss.last_windows(data, window=40, reference=31).x.shape == (100, 40, 28)


def _not_padded(ws, window: int, first_end: int) -> np.ndarray:
    """Indices of the windows that end at cycle ≥ window (the unpadded ones), unit by unit."""
    keep = []
    for unit in np.unique(ws.groups):
        idx = np.flatnonzero(ws.groups == unit)
        keep.extend(idx[window - first_end :].tolist())
    return np.asarray(keep)


def test_cmapss_windows_beyond_the_test_range_can_be_weighted_down(data_dir):
    """far_weighted: windows further from failure than any test truth (145 cycles) get the given
    weight relative to the others, the mean stays 1; the uncapped RUL is rebuilt per unit."""
    from cloud.training import cmapss

    data = cmapss.load_fd001(data_dir)
    ws = cmapss.train_windows(data, window=40, smooth=0.2, first_end=31)
    rul = cmapss.cycles_to_failure(ws)
    assert np.array_equal(np.minimum(rul, cmapss.RUL_CAP), ws.rul)
    life1 = int((data.train[:, 0] == 1).sum())
    assert rul[0] == life1 - 31 and rul[np.flatnonzero(ws.groups == 1)[-1]] == 0
    far = rul > 145
    assert 0.1 < far.mean() < 0.4
    w = cmapss.far_weighted(ws, 0.25).weight
    assert w is not None and abs(float(w.mean()) - 1.0) < 1e-5
    assert np.allclose(w[far] / w[~far].mean(), 0.25) and np.allclose(w[~far], w[~far][0])
    mask = cmapss.in_test_range(ws)
    assert np.array_equal(mask, (rul >= 7) & (rul <= 145))
    with pytest.raises(ValueError, match="far_weight"):
        cmapss.far_weighted(ws, 1.5)
    with pytest.raises(ValueError, match="grouped by unit"):
        cmapss.cycles_to_failure(ws.take(np.random.default_rng(0).permutation(len(ws))))


def test_the_release_chooses_its_alert_rule_on_tools_it_was_not_trained_on(export_dir, keys, tmp_path):
    """``fabpm train release`` picks threshold and persistence on the export's tools the model
    never trained on (its validation tools when the export is its training export) and ships
    them with the figures of the choice; a later round keeps its parent's rule."""
    from cloud.training.alert_choice import (
        GRID_N,
        GRID_P,
        INTERVAL_FIGURES,
        RULE_FIGURES,
        choose_rule,
        evaluate,
        release_rule,
        rule_for,
        scored_tools,
        tool_counts,
        unseen_tools,
    )
    from cloud.training.pipeline import PipelineConfig, distil_edge, export_release, train_full
    from cloud.training.trainer import predict
    from shared.models.checkpoint import load_checkpoint

    cfg = PipelineConfig.tiny()
    full = train_full(export_dir, cfg, tmp_path)
    _, meta = load_checkpoint(full)
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    _, tools, _ = simdata.dataset_windows(export_dir, spec=spec, stride=cfg.stride)
    ws = simdata.merge(tools)
    _, val = split_by_group(ws, cfg.val_fraction, cfg.train.seed)  # what train_full held out
    edge = distil_edge(full, ws, cfg)
    edge_model, edge_meta = load_checkpoint(edge)
    assert unseen_tools(export_dir, edge_meta) == {int(g) for g in np.unique(val.groups)}
    elsewhere = {**edge_meta, "source": {"dataset": str(tmp_path / "another_export")}}
    assert unseen_tools(export_dir, elsewhere) is None  # an export never trained on: every tool
    # the training export moved (or made again) is still the one trained on: its held-out tools
    shutil.copytree(export_dir, tmp_path / "moved")
    assert unseen_tools(tmp_path / "moved", edge_meta) == unseen_tools(export_dir, edge_meta)
    found = release_rule(export_dir, spec, elsewhere, lambda x: predict(edge_model, x)["probs"])
    assert found is not None, "the seeded export holds warnable failures"
    th, figures = found
    assert th.alert_probability in GRID_P and th.alert_persistence_steps in GRID_N
    assert (
        set(figures) <= {f"alert_rule_{k}" for k in RULE_FIGURES + INTERVAL_FIGURES}
        and figures["alert_rule_warnable_failures"] > 0
        and all(np.isfinite(v) for v in figures.values())  # NaN has no JSON: left out
    )
    assert (
        figures["alert_rule_recall_ge_lead_lo"]
        <= figures["alert_rule_recall_ge_lead"]
        <= figures["alert_rule_recall_ge_lead_hi"]
    ), "Wilson's interval holds the share it is about"
    # the interval's per-tool counts add up to the figures of the choice
    st = scored_tools(export_dir, spec)
    series = st.series(lambda x: predict(edge_model, x)["probs"])
    rule = rule_for(th.alert_probability, th.alert_persistence_steps)
    got = evaluate(series, st.truth, st.tool_days, st.span_s, rule)
    counts = tool_counts(series, st.truth, st.span_s, rule)
    assert figures["alert_rule_tools"] == len(counts) == len(series)
    assert figures["alert_rule_alerts"] == got["alerts"]
    assert counts.sum(axis=0).tolist() == [
        got["warned_ge_lead"],
        got["warnable_failures"],
        round(got["precision"] * got["alerts"]) if got["alerts"] else 0,
        got["alerts"],
    ]
    _, manifest = export_release(
        edge, ws, tmp_path / "rel", keys[0], "v1", None, replace(cfg, thresholds=th), figures
    )
    assert manifest.thresholds["alert_probability"] == th.alert_probability
    assert manifest.metrics["alert_rule_precision"] == figures["alert_rule_precision"]
    # The order of preference: recall at >= 95% precision, then precision, then fewer alerts.
    a = {"recall_ge_lead": 0.6, "precision": 0.96, "alerts": 9.0}
    b = {"recall_ge_lead": 0.9, "precision": 0.80, "alerts": 5.0}
    c = {"recall_ge_lead": 0.6, "precision": 0.99, "alerts": 20.0}
    assert choose_rule([(0.1, 2, a), (0.05, 2, b), (0.2, 4, c)])[:2] == (0.2, 4)
    assert choose_rule([(0.05, 2, b)])[:2] == (0.05, 2), "nothing reaches 95%: the best of the rest"
    assert choose_rule([(0.1, 2, a), (0.05, 2, b)], min_precision=0.8)[:2] == (0.05, 2)


def test_the_rule_interval_draws_whole_tools_and_never_reads_narrower_than_the_counts() -> None:
    """Tools that all behave alike leave the bootstrap no doubt, but 6 of 6 is still few: Wilson's
    interval is kept. One tool's false alarm widens the precision's interval and leaves the warned
    share's alone."""
    from cloud.intervals import wilson
    from cloud.training.alert_choice import rule_for, tool_bootstrap, tool_counts, tool_interval
    from cloud.training.alert_eval import Truth

    h = 3600.0
    ts = np.arange(0, 400) * h
    warns = np.where((ts >= 150 * h) & (ts < 300 * h), 0.9, 0.0)  # from 150 h, a failure at 300 h

    def tools(n: int, false_alarm: bool) -> tuple[list, Truth]:
        series = [(f"T{i}", ts, warns) for i in range(n)]
        truth = Truth({f"T{i}": [(300 * h, "wear", False)] for i in range(n)})
        truth.resets = {f"T{i}": [300 * h] for i in range(n)}
        truth.episodes = {f"T{i}": [(100 * h, 300 * h)] for i in range(n)}
        if false_alarm:
            series.append(("TX", ts, np.where(ts >= 120 * h, 0.9, 0.0)))  # never fails
        return series, truth

    rule = rule_for(0.5, 2)
    alike = tools(6, False)
    assert tool_counts(*alike, 0.0, rule).tolist() == [[1, 1, 1, 1]] * 6
    assert tool_bootstrap(tool_counts(*alike, 0.0, rule), draws=500)["precision"] == (1.0, 1.0)
    got = tool_interval(*alike, 0.0, rule, draws=500)
    assert got["tools"] == 6 and got["precision_hi"] == got["recall_ge_lead_hi"] == 1.0
    assert got["precision_lo"] == got["recall_ge_lead_lo"] == pytest.approx(wilson(6, 6)[0])
    assert 0.6 < wilson(6, 6)[0] < 0.8
    one_off = tools(6, True)
    boot = tool_bootstrap(tool_counts(*one_off, 0.0, rule), draws=500)
    assert boot["precision"][0] < 6 / 7 < boot["precision"][1] == 1.0
    assert boot["recall_ge_lead"] == (1.0, 1.0)
    got = tool_interval(*one_off, 0.0, rule, draws=500)
    assert got["tools"] == 7
    assert got["precision_lo"] == min(boot["precision"][0], wilson(6, 7)[0])
    assert np.isnan(tool_interval([], Truth(), 0.0, rule)["precision_lo"])
    assert np.isnan(wilson(0, 0)[0])


def test_a_round_keeps_the_alert_rule_its_parent_shipped() -> None:
    from types import SimpleNamespace

    from cloud.pipeline_adapter import parent_thresholds
    from cloud.training.release import AlertThresholds

    shipped = {"alert_probability": 0.07, "alert_persistence_steps": 8.0, "alert_clear_probability": 0.035}
    rows = {"v1": SimpleNamespace(manifest={"thresholds": shipped}), "v0": SimpleNamespace(manifest={})}
    registry = SimpleNamespace(get=lambda v, missing_ok=False: rows.get(v))
    default = AlertThresholds()
    got = parent_thresholds(registry, "v1", default)  # type: ignore[arg-type]
    assert (got.alert_probability, got.alert_persistence_steps, got.alert_clear_probability) == (
        0.07,
        8,
        0.035,
    )
    assert got.hard_margin == default.hard_margin
    assert parent_thresholds(registry, "v0", default) == default  # type: ignore[arg-type]
    assert parent_thresholds(registry, None, default) == default  # type: ignore[arg-type]


def test_train_full_keeps_a_distillation_pool_and_fabpm_train_pool_writes_one(export_dir, tmp_path):
    """train_full keeps a sample of its training windows beside the checkpoint, inputs only; read
    back, they carry no labels; another feature spec is refused with the fix; `fabpm train pool`
    writes one for a checkpoint from before."""
    from cloud.training.cli import main as train_cli
    from cloud.training.pipeline import PipelineConfig, sim_split, train_full
    from cloud.training.pool import POOL_GROUP, pool_path, read_pool
    from shared.models.checkpoint import load_checkpoint

    cfg = PipelineConfig.tiny()
    full = train_full(export_dir, cfg, tmp_path)
    spec = load_checkpoint(full)[1]["feature_spec"]
    train, _, _, _ = sim_split(export_dir, cfg)
    pool = read_pool(pool_path(full), spec, train.n_modes)
    assert len(pool) == min(2000, len(train)) and pool.x.shape[1:] == train.x.shape[1:]
    assert np.isnan(pool.labels).all() and np.isnan(pool.rul).all() and (pool.groups == POOL_GROUP).all()
    assert np.abs(pool.x).max() <= np.abs(train.x).max() * (1 + 1e-3) + 1e-3  # float16 on disk
    with pytest.raises(TrainingError, match="fabpm train pool"):
        read_pool(pool_path(full), {**spec, "window": spec["window"] + 1}, train.n_modes)
    pool_path(full).unlink()
    assert train_cli(["pool", "--checkpoint", str(full), "--dataset", str(export_dir), "--size", "50"]) == 0
    kept = read_pool(pool_path(full), spec, train.n_modes)
    assert len(kept) == 50
    some = read_pool(pool_path(full), spec, train.n_modes, size=10)  # a spread, not the first tools
    assert len(some) == 10 and not np.array_equal(some.x, kept.x[:10])
    pool_path(full).write_bytes(b"")  # a file cut short: a clear error, not a traceback from numpy
    with pytest.raises(TrainingError, match="not readable"):
        read_pool(pool_path(full), spec, train.n_modes)


def test_a_student_distilled_on_one_sided_hard_cases_follows_its_teacher_only_with_the_pool(tmp_path):
    """A round's labelled windows are hard cases, not the fleet: here all on one side of the
    teacher's boundary. A student distilled on them alone learns "always high" (the demo's edge
    model forgot this way); with the pool beside them it follows the teacher everywhere."""
    from cloud.training.pipeline import PipelineConfig, distil_edge
    from cloud.training.pool import pool_path, read_pool, write_pool
    from cloud.training.trainer import predict
    from shared.models.checkpoint import load_checkpoint, save_checkpoint

    rng = np.random.default_rng(0)

    def windows(n: int) -> WindowSet:
        x = rng.normal(size=(n, 6, 3)).astype(np.float32)
        y = (x[:, :, 0].mean(axis=1) > 0).astype(np.float32)[:, None]
        return WindowSet(x=x, rul=np.full(n, np.nan, np.float32), labels=y, groups=np.arange(n) % 20)

    fleet, unseen = windows(800), windows(400)
    mcfg = DGAConfig(
        n_features=3, window=6, n_modes=1, d_model=16, n_heads=2, n_layers=1, d_ff=32, rul_cap=10.0
    )
    plain = TrainConfig(epochs=20, batch_size=64, keep="last", progress=False)
    teacher = fit(new_model(mcfg, 0), fleet, fleet.take(np.array([], dtype=np.int64)), plain).model
    spec = {"window": 6}
    full = save_checkpoint(tmp_path / "full.pt", teacher, {"feature_spec": spec, "modes": ["m"]})
    taught = predict(teacher, unseen.x)["probs"][:, 0]
    assert ((taught > 0.5) == unseen.labels[:, 0]).mean() > 0.9
    write_pool(pool_path(full), fleet, spec)
    hard = fleet.take(np.flatnonzero(fleet.x[:, :, 0].mean(axis=1) > 0.2))
    cfg = PipelineConfig(edge_d_model=8, edge_layers=1, train=replace(plain, epochs=30))
    gap = {}
    for name, pool in (("alone", None), ("with pool", read_pool(pool_path(full), spec, 1))):
        (tmp_path / name).mkdir()
        shutil.copyfile(full, tmp_path / name / "full.pt")
        student, meta = load_checkpoint(distil_edge(tmp_path / name / "full.pt", hard, cfg, pool=pool))
        assert meta["distil_pool_windows"] == (0 if pool is None else len(fleet))
        gap[name] = float(np.abs(predict(student, unseen.x)["probs"][:, 0] - taught).mean())
    assert gap["with pool"] < 0.1 < 0.3 < gap["alone"], gap
