"""B8: incremental learning on the simulator's drift scenario (examples/scenarios/drift.toml:
etch chambers recalibrated and pumps wearing faster from day 20).

1. Export the scenario; windows per tool (the edge's features), tools split 70/30 into a
   training fleet (A) and an evaluation fleet (B); "old" windows end before the drift day,
   "new" ones a window length after it.
2. Train the full DGA on A-old, distil and release the edge model v0 (signed, registered, active).
3. Put A-new in the cloud database as labelled cases (as failure/maintenance events would label
   them) and earlier rounds' bookkeeping for A-old (replay) and B-old (the frozen old set).
4. Time one learning round (Learner + the real pipeline at the given sizes) from "labels are in"
   to "the canary edge runs the model": fine-tune, distil (a fresh student; with
   --warm-start it continues v0's weights; beside the round's windows, the 2,000 of A-old that
   train_full kept as the distillation pool, the teacher's outputs their target; --no-pool:
   without them), export + INT8 parity, gate (it rejects a candidate
   it is learning.gate_confidence sure lost more than the tolerance: cloud.gate), sign,
   register, announce, then what the edge does (verify the signature and hash, load it in
   onnxruntime).
5. Score v0 and the new model on B-old and B-new: ROC AUC of "fails within 72 h" (score: the
   highest mode probability), the gate's measure; a point is 0.01 of AUC. Targets: after the
   update, B-new within 2 points of v0's B-old; B-old loses at most 1 point. Also the mean of the
   AUC within each tool type, which leaves out how the types rank against each other, and 90%
   intervals (bootstrap over the evaluation tools) of the two targets' quantities. With
   ``--eval-tools N`` the evaluation also takes a second fleet of N tools (data seed + 1000,
   never trained on, outside the gate's frozen sets): B's ~14 tools resolve a few points only.
6. The reference the round is measured against: an edge-size model trained from scratch, on the
   labels only, on exactly the round's training windows (new + replay) with the round's
   distillation budget. What it scores on B-new is about as far as these labels take this model:
   a round that gets there lost nothing in fine-tuning, distillation, INT8 or the gate. With
   ``--joint`` the same recipe also trains on A-old alone and on A-old + A-new: whether the
   regimes themselves disagree.

    .venv/bin/python bench/b8_incremental.py [--quick] [--tools 24] [--days 40] [--epochs 10]
        [--seed N] [--warm-start] [--no-pool] [--joint] [--eval-tools N] [--gate-confidence C]
        [--holdout-fraction F]
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import onnxruntime as ort

from cloud.config import CloudConfig
from cloud.gate import AlarmScore, GateScore, WeightedAuc, roc_auc
from cloud.labels import Label, set_label
from cloud.learning import Learner
from cloud.metrics import CloudMetrics
from cloud.pipeline_adapter import make_pipeline, to_windowset
from cloud.registry import Registry
from cloud.rollout import RolloutManager
from cloud.storage import Repo, make_engine, migrate
from cloud.storage.models import Case, Edge, LearningRound
from cloud.training import simdata
from cloud.training.distil import edge_config, edge_heads
from cloud.training.pipeline import PipelineConfig, distil_edge, export_release, train_full
from cloud.training.release import window_types
from cloud.training.trainer import fit, new_model, predict
from cloud.training.windows import WindowSet, split_by_group
from edge.inference import RiskModel
from shared.dataset import ToolSeries
from shared.equipment import ALL_MODES, tool_type
from shared.messages import ModelAnnouncement
from shared.models.checkpoint import load_checkpoint
from shared.models.dga import DGA
from shared.signing import (
    generate_keypair,
    load_public_key,
    verify_artifact,
    verify_manifest,
    verify_release,
)

REPO = Path(__file__).resolve().parent.parent
from _results import add_row  # noqa: E402  (bench/ is the script's folder)

RESULTS = Path(__file__).resolve().parent / "results" / "cloud.md"
DRIFT_DAY = 20.0
DRIFTED_TYPES = ("plasma_etch", "vacuum_pump")  # what examples/scenarios/drift.toml changes


def risk(artifact: Path, ws: WindowSet) -> np.ndarray:
    """The released graph's highest mode probability for each window (the gate's score)."""
    sess = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    probs = np.concatenate([sess.run(["probs"], {"x": ws.x[i : i + 512]})[0] for i in range(0, len(ws), 512)])
    return probs.max(axis=1)


def truth(ws: WindowSet) -> tuple[np.ndarray, np.ndarray]:
    """(label known, failed within the horizon) for each window."""
    known = ~np.isnan(ws.labels).all(axis=1)
    return known, np.nan_to_num(ws.labels, nan=0.0).max(axis=1) >= 0.5


def score(artifact: Path, ws: WindowSet) -> float:
    """ROC AUC of "fails within 72 h" (the highest mode probability), as the learning gate scores."""
    known, failed = truth(ws)
    return roc_auc(risk(artifact, ws)[known], failed[known])


def naming(artifact: Path, pub: Path, ws: WindowSet, names: list[str]) -> tuple[float, int, list[str]]:
    """How an alert of this release names the mode, on the windows within the horizon of exactly
    one progressive failure of their type: (the share named right, those windows, the types its
    namer covers). Named as the edge names it: the namer's mode where the release has one for the
    type (``shared.naming``), else the most probable of the type's progressive modes."""
    manifest = verify_release(artifact, load_public_key(pub))
    model = RiskModel(artifact.read_bytes(), manifest, threads=1)
    types = window_types(ws.x, names)
    assert types is not None, "the simulator's features carry the tool type"
    modes = list(manifest.output_spec["modes"])
    right = total = 0
    for start in range(0, len(ws), 512):
        pred = model.predict(ws.x[start : start + 512])
        for k, (probs, emb) in enumerate(zip(pred.probs, pred.embedding, strict=True)):
            prog = [modes.index(m) for m in tool_type(str(types[start + k])).warnable_mode_names]
            lab = np.nan_to_num(ws.labels[start + k, prog], nan=0.0)
            if (lab == 1.0).sum() != 1:
                continue
            named = model.name_mode(str(types[start + k]), emb)
            best = modes.index(named) if named is not None else prog[int(np.argmax(probs[prog]))]
            right += int(best == prog[int(np.argmax(lab))])
            total += 1
    covered = sorted((manifest.output_spec.get("mode_namer") or {}).keys())
    return (right / total if total else float("nan")), total, covered


def tool_bootstrap(
    v0: Path, cand: Path, old: WindowSet, new: WindowSet, n: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """90% intervals, over the evaluation tools resampled whole with replacement, of the two
    targets' quantities: candidate − v0 on the old regime, and candidate on the new regime − v0 on
    the old one. The old and new windows come from the same tools, so one draw picks both."""
    scores = {
        ("v0", "old"): risk(v0, old),
        ("cand", "old"): risk(cand, old),
        ("cand", "new"): risk(cand, new),
    }
    tools = sorted(set(np.unique(old.groups)) & set(np.unique(new.groups)))
    index = {g: i for i, g in enumerate(tools)}
    parts = {}  # per regime: each scored row's tool (its index in ``tools``, -1: not in both) and AUCs
    for name, ws in (("old", old), ("new", new)):
        known, failed = truth(ws)
        row_tool = np.array([index.get(g, -1) for g in ws.groups[known]], dtype=np.int64)
        parts[name] = (
            row_tool,
            {m: WeightedAuc(sc[known], failed[known]) for (m, r), sc in scores.items() if r == name},
        )
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {"old loss": [], "recovery": []}
    for _ in range(n):
        counts = np.bincount(rng.choice(len(tools), len(tools), replace=True), minlength=len(tools))
        auc = {}
        for regime, (row_tool, aucs) in parts.items():
            weight = np.where(row_tool >= 0, counts[row_tool], 0).astype(float)  # the draw as row weights
            auc.update({(m, regime): f(weight) for m, f in aucs.items()})
        diffs["old loss"].append(auc[("cand", "old")] - auc[("v0", "old")])
        diffs["recovery"].append(auc[("cand", "new")] - auc[("v0", "old")])
    out = {}
    for k, v in diffs.items():
        arr = np.array(v)
        arr = arr[~np.isnan(arr)]
        out[k] = (
            (float(np.percentile(arr, 5)), float(np.percentile(arr, 95))) if len(arr) else (np.nan, np.nan)
        )
    return out


def evaluate(auc: Callable[[WindowSet], float], data: WindowSet | list[WindowSet]) -> float:
    """``auc`` on one set, or its mean over several (those with both classes)."""
    if isinstance(data, WindowSet):
        return auc(data)
    values = [auc(ws) for ws in data if len(ws)]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def gate_summary(gate: dict[str, dict], confidence: float) -> str:
    """The round's gate record in a line (what the round's log says): each frozen set's AUC and,
    where the running model ships an alert threshold, its alarms there (``*_alarms_*``)."""
    said = [
        f"{k} {(AlarmScore if 'kind' in v else GateScore).from_dict(v).describe(confidence)}"
        for k, v in gate.items()
    ]
    return "gate: " + "; ".join(said)


def auc_torch(model: DGA, ws: WindowSet) -> float:
    """The same measure as :func:`score` on a torch model (FP32)."""
    known, failed = truth(ws)
    return roc_auc(predict(model, ws.x)["probs"][known].max(axis=1), failed[known])


def subset(tools: list[simdata.ToolWindows], ids: set[str], old: bool, window_s: float) -> WindowSet:
    parts = []
    for t in tools:
        if t.tool_id not in ids or not len(t.ws):
            continue
        cut = DRIFT_DAY * 86400.0
        keep = t.t_end_s < cut if old else t.t_end_s >= cut + window_s
        parts.append(t.ws.take(np.flatnonzero(keep)))
    return WindowSet.concat([p for p in parts if len(p)])


def store_cases(repo: Repo, ws: WindowSet, prefix: str, now: float) -> list[str]:
    """Labelled windows as cases, labelled as the failure/maintenance events would have."""
    ids = []
    with repo.transaction() as s:
        for i in range(len(ws)):
            row = ws.labels[i]
            if np.isnan(row).all():
                continue
            failed = bool(np.nan_to_num(row).max() >= 0.5)
            mode = ALL_MODES[int(np.nanargmax(row))] if failed else None
            cid = f"{prefix}-{i}"
            case = Case(
                case_id=cid,
                msg_id=cid,
                edge_id="edge-1",
                site="fab1",
                tool_id=f"tool-{ws.groups[i]}",
                tool_type="mixed",
                window_ts=now,
                features=ws.x[i].astype("<f4").tobytes(),
                steps=ws.x.shape[1],
                n_features=ws.x.shape[2],
                edge_prediction={},
                reasons=[],
                model_version="v0",
                received_ts=now,
            )
            s.add(case)
            rul = None if np.isnan(ws.rul[i]) else float(ws.rul[i])
            set_label(s, case, Label(failed, mode, rul, "failure", "bench"), now)
            ids.append(cid)
    return ids


def export(out: Path, tools: int, days: float, seed: int) -> None:
    """The drift scenario's export (``fabpm sim export``) into ``out``."""
    scenario = REPO / "examples/scenarios/drift.toml"
    cmd = [sys.executable, "-m", "fabpm.cli", "sim", "export", "--scenario", str(scenario)]
    cmd += ["--tools", str(tools), "--days", f"{days:g}", "--seed", str(seed), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny models and a small fleet (minutes → seconds)")
    ap.add_argument("--tools", type=int, default=24)
    ap.add_argument("--days", type=float, default=40.0)
    ap.add_argument("--epochs", type=int, default=30, help="cap of the initial training (early stopping)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--fine-tune-epochs", type=int, help="learning.fine_tune_epochs (default: the config's)")
    ap.add_argument("--distil-epochs", type=int, help="learning.distil_epochs (default: the config's)")
    ap.add_argument("--replay-size", type=int, help="learning.replay_size (default: the config's)")
    ap.add_argument(
        "--holdout-fraction",
        type=float,
        help="learning.holdout_fraction: the new labels' share (by tool) frozen as the new test set",
    )
    ap.add_argument(
        "--gate-confidence",
        type=float,
        help="learning.gate_confidence (default: the config's; 0.5 is about comparing point estimates)",
    )
    ap.add_argument(
        "--warm-start",
        action="store_true",
        help="learning.warm_start_edge on: the round's student continues v0's weights (default: a fresh one)",
    )
    ap.add_argument(
        "--no-pool",
        action="store_true",
        help="learning.distil_pool_size 0: the round's student learns its labelled windows alone, "
        "not the training windows train_full kept (cloud/training/pool.py)",
    )
    ap.add_argument(
        "--eval-tools",
        type=int,
        default=0,
        help="also score on a second fleet of this many tools (data seed + 1000, never trained on)",
    )
    ap.add_argument(
        "--joint",
        action="store_true",
        help="also train the from-scratch reference on every training window of both regimes, and of the old",
    )
    ap.add_argument(
        "--reference-rows",
        type=int,
        help="rows of each tool's own reference (shared.reference; 0: none; default: the pipeline's)",
    )
    ns = ap.parse_args()
    if ns.eval_tools < 0:
        ap.error(f"--eval-tools must be >= 0, got {ns.eval_tools}")
    pcfg = PipelineConfig.tiny() if ns.quick else PipelineConfig()
    if ns.reference_rows is not None:
        if ns.reference_rows < 0:
            ap.error(f"--reference-rows must be >= 0, got {ns.reference_rows}")
        pcfg = replace(pcfg, reference_rows=ns.reference_rows)
    pcfg = replace(pcfg, train=replace(pcfg.train, epochs=ns.epochs if not ns.quick else 2, progress=False))
    with TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "export"
        export(data, ns.tools, ns.days, ns.seed)
        info, series = simdata.load(data)
        # The scaler is fitted before the drift, as it was for the deployed model.
        pre_drift = {
            k: ToolSeries(**{f.name: getattr(v, f.name)[v.t_s < DRIFT_DAY * 86400.0] for f in fields(v)})
            for k, v in series.items()
        }
        spec = simdata.fit_spec(info, pre_drift, pcfg.window, pcfg.step_s, pcfg.reference_rows)
        _, tools, _ = simdata.dataset_windows(data, spec=spec, stride=pcfg.stride, cap_h=pcfg.rul_cap_h)
        ids = sorted(t.tool_id for t in tools)
        rng = np.random.default_rng(ns.seed)
        b_ids = set(rng.choice(ids, size=max(2, round(0.3 * len(ids))), replace=False))
        a_ids = set(ids) - b_ids
        win_s = pcfg.window * pcfg.step_s
        a_old, a_new = subset(tools, a_ids, True, win_s), subset(tools, a_ids, False, win_s)
        b_old, b_new = subset(tools, b_ids, True, win_s), subset(tools, b_ids, False, win_s)
        print(f"windows: A old {len(a_old)}, A new {len(a_new)}, B old {len(b_old)}, B new {len(b_new)}")
        # What the benchmark scores on: B, plus with --eval-tools a second fleet of the same
        # scenario (another seed, never trained on, not in the gate's frozen sets), so that the
        # figures resolve finer than B's ~14 tools can.
        ev_tools = [t for t in tools if t.tool_id in b_ids]
        if ns.eval_tools:
            export(tmp / "export-eval", ns.eval_tools, ns.days, ns.seed + 1000)
            _, eval_fleet, _ = simdata.dataset_windows(
                tmp / "export-eval", spec=spec, stride=pcfg.stride, cap_h=pcfg.rul_cap_h
            )
            offset = int(max(t.ws.groups.max() for t in tools if len(t.ws))) + 1
            ev_tools += [
                replace(t, tool_id=f"eval-{t.tool_id}", ws=replace(t.ws, groups=t.ws.groups + offset))
                for t in eval_fleet
                if len(t.ws)
            ]
        ev_ids = {t.tool_id for t in ev_tools}

        keys = tmp / "keys"
        generate_keypair(keys / "signing.key", keys / "signing.pub")
        n = len(a_old)
        val_idx = rng.permutation(n)[: n // 5]
        mask = np.zeros(n, bool)
        mask[val_idx] = True
        t0 = time.perf_counter()
        full = train_full(
            (a_old.take(np.flatnonzero(~mask)), a_old.take(np.flatnonzero(mask)), spec.to_dict()),
            pcfg,
            tmp / "v0",
        )
        edge = distil_edge(full, a_old, pcfg)
        v0, _ = export_release(edge, a_old, tmp / "v0" / "release", keys / "signing.key", "v0", None, pcfg)
        print(f"initial model trained and released in {time.perf_counter() - t0:.0f} s")

        caps = {
            k: v
            for k, v in (
                ("fine_tune_epochs", ns.fine_tune_epochs),
                ("distil_epochs", ns.distil_epochs),
                ("replay_size", ns.replay_size),
                ("gate_confidence", ns.gate_confidence),
                ("holdout_fraction", ns.holdout_fraction),
            )
            if v is not None  # 0 is a setting (no replay), not "unset"; the config validates it
        }
        cfg = CloudConfig.model_validate(
            {
                "storage": {"url": f"sqlite:///{tmp / 'cloud.db'}"},
                "serving": {"checkpoint": str(full)},
                "registry": {
                    "dir": str(tmp / "models"),
                    "private_key": str(keys / "signing.key"),
                    "public_key": str(keys / "signing.pub"),
                },
                "learning": {
                    **caps,
                    "work_dir": str(tmp / "learn"),
                    "size": "tiny" if ns.quick else "default",
                    "min_new_labels": 1,
                    "calib_windows": 512,
                    "warm_start_edge": ns.warm_start,
                    "distil_pool_size": 0 if ns.no_pool else 2000,
                },
                "rollout": {"min_observations": 0},
            }
        )
        engine = make_engine(cfg.storage.url)
        migrate(engine)
        repo, metrics, published = Repo(engine), CloudMetrics(), []
        registry = Registry(repo, cfg.registry)
        registry.register(v0, full, None, edge_checkpoint=edge)
        registry.set_status("v0", "active")
        rollout = RolloutManager(repo, registry, lambda t, p, q, r: published.append(p), cfg.rollout, metrics)
        learner = Learner(
            repo, cfg.learning, make_pipeline(cfg, registry), registry, rollout, metrics, lambda: full
        )
        now = time.time()
        with repo.transaction() as s:
            s.add(
                Edge(
                    edge_id="edge-1",
                    site="fab1",
                    state="online",
                    models={"risk": "v0"},
                    health={},
                    last_update={},
                    last_seen_ts=now,
                )
            )
        old_train = store_cases(repo, a_old, "a-old", now - 10)
        old_test = store_cases(repo, b_old, "b-old", now - 10)
        with repo.transaction() as s:
            s.add(
                LearningRound(
                    trigger="initial",
                    step="watch",
                    status="done",
                    log=[],
                    error="",
                    state={"train": old_train, "new_test": old_test},
                    label_watermark=now - 5,
                    created_ts=now - 10,
                    updated_ts=now - 10,
                )
            )
        store_cases(repo, a_new, "a-new", now)  # the new labels

        t_start = time.perf_counter()
        rid = learner.trigger("labels")
        assert rid is not None, "the round did not open"
        row = learner.get(rid)
        seconds = time.perf_counter() - t_start
        promoted = row.status == "running"
        if promoted:  # what the canary edge then does: verify signature and hash, load the graph
            ann = ModelAnnouncement.model_validate_json(published[-1])
            manifest = verify_manifest(ann.manifest, ann.signature, load_public_key(keys / "signing.pub"))
            blob = base64.b64decode(ann.artifact_b64 or "")
            verify_artifact(manifest, blob)
            ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
            seconds = time.perf_counter() - t_start
        cand = Path(row.state["artifact"])
        drifted = {t.tool_id for t in ev_tools if t.tool_type in DRIFTED_TYPES}
        ev_old, ev_new = subset(ev_tools, ev_ids, True, win_s), subset(ev_tools, ev_ids, False, win_s)
        sets: dict[str, WindowSet | list[WindowSet]] = {
            "old": ev_old,
            "new": ev_new,
            "old, drifted types": subset(ev_tools, drifted, True, win_s),
            "new, drifted types": subset(ev_tools, drifted, False, win_s),
        }
        # Within one tool type: the pooled AUC also ranks tool types against each other, so a model
        # that learnt "pumps fail more often now" loses pooled AUC on the old regime even where it
        # ranks each type's windows as well as before. The mean over types tells the two apart.
        b_types = sorted({t.tool_type for t in ev_tools})
        by_type = {
            (ty, old): subset(ev_tools, {t.tool_id for t in ev_tools if t.tool_type == ty}, old, win_s)
            for ty in b_types
            for old in (True, False)
        }
        for name, old in (("old, within a type", True), ("new, within a type", False)):
            sets[name] = [by_type[(ty, old)] for ty in b_types]
        before = {k: evaluate(lambda ws: score(v0, ws), v) for k, v in sets.items()}
        after = {k: evaluate(lambda ws: score(cand, ws), v) for k, v in sets.items()}
        ci = tool_bootstrap(v0, cand, ev_old, ev_new)
        names = list(spec.names)
        pub = keys / "signing.pub"
        named = {
            f"{who} {regime}": naming(path, pub, ws, names)
            for who, path in (("v0", v0), ("candidate", cand))
            for regime, ws in (("old", ev_old), ("new", ev_new))
        }
        n_eval = len(np.unique(ev_old.groups))
        # The reference: labels only, from scratch, the round's windows and distillation budget.
        teacher, teacher_meta = load_checkpoint(full)
        assert isinstance(teacher, DGA)
        modes = list(teacher_meta.get("modes") or [])
        round_ws = to_windowset(
            learner.windows([*row.state["train"], *row.state["replay"]]), modes, teacher.cfg.rul_cap
        )
        heads = edge_heads(pcfg.edge_d_model)

        def from_scratch(ws: WindowSet) -> dict[str, float]:
            """An edge-size model trained on ``ws``'s labels only, the round's distillation
            budget; its AUC on each evaluation set."""
            ref_train, ref_val = split_by_group(ws, pcfg.val_fraction, pcfg.train.seed)
            t_ref = time.perf_counter()
            student = edge_config(teacher.cfg, pcfg.edge_d_model, pcfg.edge_layers, heads)
            ref = fit(
                new_model(student, pcfg.train.seed),
                ref_train,
                ref_val,
                replace(pcfg.train, epochs=cfg.learning.distil_epochs or pcfg.train.epochs),
            ).model
            print(f"reference trained on {len(ws)} windows in {time.perf_counter() - t_ref:.0f} s")
            return {k: evaluate(lambda w: auc_torch(ref, w), v) for k, v in sets.items()}

        reference = from_scratch(round_ws)
        # Every label of both regimes in one model, against the same recipe on the old regime
        # alone: if the first loses on the old regime (scored on enough tools: --eval-tools), the
        # regimes disagree (the same features mean different risks), which no replay set fixes.
        joint = from_scratch(WindowSet.concat([a_old, a_new])) if ns.joint else {}
        old_only = from_scratch(a_old) if ns.joint else {}  # the same recipe on v0's data: the control
    print(f"round: {[(e['msg'][:70], round(e['ts'] - row.created_ts)) for e in row.log]}")
    print(f"gate {row.state.get('gate')}")
    print(f"90% intervals over the evaluation tools: {ci}")
    print(f"mode named right (share, windows, namer's types): {named}")
    for k in sets:
        both = f"  both regimes {joint[k]:.3f}  old only {old_only[k]:.3f}" if joint else ""
        print(f"  {k:20s} v0 {before[k]:.3f}  candidate {after[k]:.3f}  reference {reference[k]:.3f}{both}")
    size = (
        "tiny models"
        if ns.quick
        else (
            f"default sizes, round caps: fine-tune {cfg.learning.fine_tune_epochs} / distil "
            f"{cfg.learning.distil_epochs} epochs, replay {cfg.learning.replay_size}, edge student "
            f"{'from v0' if cfg.learning.warm_start_edge else 'fresh'}; initial training "
            f"≤{ns.epochs} epochs; reference rows {pcfg.reference_rows}"
        )
    )
    outcome = (
        f"promoted to the canary; labels → model verified and loaded on the canary edge {seconds:.0f} s"
        if promoted
        else f"**{row.status} by the gate** after {seconds:.0f} s ({row.log[-1]['msg']})"
    )
    figures = "; ".join(
        f"{k}: v0 {before[k]:.3f} → candidate {after[k]:.3f}"
        for k in ("old", "new", "new, drifted types", "old, within a type", "new, within a type")
    )
    figures += (
        f"; reference (edge size, from scratch on the round's windows, labels only, FP32): "
        f"old {reference['old']:.3f}, new {reference['new']:.3f}"
    )
    if joint:
        figures += (
            f"; the same on every training window of both regimes (A old + A new): old {joint['old']:.3f}, "
            f"new {joint['new']:.3f}, within a type old {joint['old, within a type']:.3f}; on A old only: "
            f"old {old_only['old']:.3f}, new {old_only['new']:.3f}, within a type old "
            f"{old_only['old, within a type']:.3f}"
        )
    figures += "; the mode an alert names, right on the windows within 72 h of a progressive failure: " + (
        ", ".join(
            f"{k} {share:.1%} of {n} (namer for {len(types)} types)" for k, (share, n, types) in named.items()
        )
    )
    figures += "; " + gate_summary(row.state.get("gate") or {}, cfg.learning.gate_confidence)
    figures += (
        f"; 90% interval over the {n_eval} evaluation tools (bootstrap): candidate − v0 "
        f"on old [{ci['old loss'][0]:+.3f}, {ci['old loss'][1]:+.3f}], candidate new − v0 old "
        f"[{ci['recovery'][0]:+.3f}, {ci['recovery'][1]:+.3f}]"
    )
    extra = "".join(f" --{k.replace('_', '-')} {v}" for k, v in caps.items())
    extra += "" if ns.reference_rows is None else f" --reference-rows {ns.reference_rows}"
    extra += "" if ns.seed == 3 else f" --seed {ns.seed}"
    extra += " --warm-start" if ns.warm_start else ""
    extra += " --no-pool" if ns.no_pool else ""
    extra += " --joint" if ns.joint else ""
    extra += f" --eval-tools {ns.eval_tools}" if ns.eval_tools else ""
    line = (
        f"| B8 | `.venv/bin/python bench/b8_incremental.py{' --quick' if ns.quick else ''} "
        f"--tools {ns.tools} --days {ns.days:g}{extra}` | ROC AUC (fails within 72 h) on the evaluation "
        f"tools, "
        f"before (old) and after (new) the drift day — {figures}. Round: {outcome}; {len(a_new)} new "
        f"labelled windows | {platform.machine()}, {os.cpu_count()} cores, {size} | "
        f"{datetime.now(UTC):%Y-%m-%d} |"
    )
    print(line)
    add_row(RESULTS, line)


if __name__ == "__main__":
    main()
