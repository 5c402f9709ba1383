"""B2: early warning on simulator runs never used in training, with the edge's released model.

1. Exports (``fabpm sim export``): training seed 101 and test seeds 202 (default scenario) and
   303; the test seeds are never seen in training, threshold choice or early stopping.
2. Full DGA trained on the training export (validation = 20% of its tools), the edge DGA
   distilled from it, released (ONNX, adaptive INT8, signed manifest) by the pipeline API.
3. The alert rule (threshold, persistence) is chosen on the *validation tools of the training
   export* to maximise failures warned ≥ 72 h ahead subject to alert precision ≥ 95%.
4. On each test export: the released ONNX graph on every 30-min window of every tool, the
   shared alert rule re-armed at failures and maintenance, scored by cloud.training.alert_eval.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/b2_sim_warning.py [--quick]

Variants (fifth session, bench/results/models.md): ``--train-tools`` (a larger training fleet),
``--step-min``/``--window``/``--stride`` (what a window sees), ``--label-horizon`` (the heads'
horizon, for the full model and the distillation alike), ``--monitor`` (early stopping).
Sixth session: ``--reference-rows`` (each tool compared with its own readings after it last came
back up, ``shared.reference``) and ``--seed``. Eleventh: ``--drop-prob`` (training with token
dropping, for ``bench/b7_sim.py``). Twenty-second: ``--mode-ce`` (the naming term's weight; 0
trains the mode heads as before). Twenty-fourth: ``--rule-seed`` (the rule also chosen on a
whole export of another seed, about three times the validation tools' failures). Until the sixth
session the full model's initial weights were not seeded, so two runs of one command differed
(run E kept epoch 10 once, epoch 6 the next time); runs are now repeatable, and variants are
compared over several seeds.
``bench/b2_diagnose.py`` looks at a finished run's test exports (the whole rule grid, and the
context of each false alarm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from cloud.training import simdata
from cloud.training.alert_choice import choose_rule, evaluate, grid_scores, risks, rule_for, scored_tools
from cloud.training.parity import run_onnx
from cloud.training.pipeline import PipelineConfig, distil_edge, export_release, train_full
from cloud.training.release import AlertThresholds
from cloud.training.trainer import MONITORS, predict
from cloud.training.windows import split_by_group
from shared.features import FeatureSpec
from shared.models.checkpoint import load_checkpoint
from shared.models.dga import DGA
from shared.signing import generate_keypair

REPO = Path(__file__).resolve().parent.parent


def b2_config() -> PipelineConfig:
    """B2's model sizes (full d 64 × 2 layers, edge d 32 × 2), the pipeline's defaults otherwise."""
    return PipelineConfig(d_model=64, n_layers=2, dropout=0.1, edge_d_model=32, edge_layers=2)


@dataclass
class FinishedRun:
    """What a finished run (``--out`` folder) left: its b2.json, the full model's checkpoint
    metadata and feature spec, the distilled edge model (torch, what the rule was chosen with)
    and the released ONNX graph (what the test runs are scored with)."""

    b2: dict[str, Any]
    meta: dict[str, Any]
    spec: FeatureSpec
    edge: DGA
    graph: Path
    train: Path  # the training export

    @classmethod
    def load(cls, run: Path) -> FinishedRun:
        if not (run / "b2.json").exists():
            raise SystemExit(f"{run}: no b2.json (has the B2 run finished?)")
        b2 = json.loads((run / "b2.json").read_text())
        _, meta = load_checkpoint(run / "ckpt" / "full.pt")
        edge, _ = load_checkpoint(run / "ckpt" / "full.edge.pt")
        assert isinstance(edge, DGA)
        graphs = sorted((run / "release").glob("*.onnx"))
        if not graphs:
            raise SystemExit(f"{run / 'release'}: no released graph")
        spec = FeatureSpec.from_dict(meta["feature_spec"])
        return cls(b2, meta, spec, edge, graphs[0], run / Path(b2["train"]).name)


def export(out: Path, seed: int, days: int, tools: int, scenario: Path | None = None) -> Path:
    if not (out / "dataset.json").exists():
        cmd = [sys.executable, "-m", "fabpm.cli", "sim", "export", "--days", str(days), "--tools", str(tools)]
        cmd += ["--scenario", str(scenario)] if scenario is not None else []
        subprocess.run([*cmd, "--seed", str(seed), "--out", str(out)], check=True, cwd=REPO, timeout=1800)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "b2")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--train-days", type=int, default=90)
    ap.add_argument("--test-days", type=int, default=60)
    ap.add_argument("--tools", type=int, default=30, help="tools of each test export")
    ap.add_argument("--train-tools", type=int, default=30, help="tools of the training export")
    ap.add_argument("--reuse", action="store_true", help="reuse the checkpoints in --out/ckpt when present")
    ap.add_argument(
        "--label-horizon", type=float, default=None, help="train the probability heads on this horizon (h)"
    )
    ap.add_argument("--step-min", type=float, default=30.0, help="minutes per window step (a multiple of 10)")
    ap.add_argument("--window", type=int, default=48, help="steps per window (48 × 30 min = the last 24 h)")
    ap.add_argument("--stride", type=int, default=4, help="steps between training windows")
    ap.add_argument(
        "--scenario", type=Path, help="scenario file for every export (default: the built-in fab)"
    )
    ap.add_argument("--monitor", choices=sorted(MONITORS), help="early stopping (default: the pipeline's)")
    ap.add_argument(
        "--seed", type=int, default=0, help="training seed: initial weights, batches, validation tools"
    )
    ap.add_argument(
        "--reference-rows",
        type=int,
        default=None,
        help="rows of each state after a tool comes back up that form its own reference (0: none; "
        "default: the pipeline's)",
    )
    ap.add_argument(
        "--drop-prob",
        type=float,
        default=None,
        help="share of training batches run with random token dropping, for the full model and the "
        "distillation (default: the pipeline's; B1 trains with 0.5)",
    )
    ap.add_argument(
        "--mode-ce",
        type=float,
        default=None,
        help="weight of the naming term (TrainConfig.w_mode_ce: which mode fails, a cross-entropy "
        "over the mode heads; 0: the heads as before the twenty-second session; default: the pipeline's)",
    )
    ap.add_argument(
        "--name-weight",
        type=float,
        default=None,
        help="weight of the naming classifier on the embedding (TrainConfig.w_name, training only: "
        "the release's mode namer reads the embedding; default: the pipeline's)",
    )
    ap.add_argument(
        "--rule-seed",
        type=int,
        default=None,
        help="also choose the rule on a whole export of this simulator seed (--tools tools, --test-days "
        "days; never trained on, not a test seed) and score the test runs under that rule too",
    )
    args = ap.parse_args()
    if args.rule_seed in (101, 202, 303):
        ap.error("--rule-seed must differ from the training seed 101 and the test seeds 202 and 303")
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    days_train, days_test = (30, 20) if args.quick else (args.train_days, args.test_days)
    train_name = f"train_s101_d{days_train}" + (f"_t{args.train_tools}" if args.train_tools != 30 else "")
    train_dir = export(args.out / train_name, 101, days_train, args.train_tools, args.scenario)
    tests = [
        export(args.out / f"test_s{s}_d{days_test}", s, days_test, args.tools, args.scenario)
        for s in (202, 303)
    ]
    cfg = b2_config()
    cfg = replace(
        cfg,
        window=args.window,
        step_s=args.step_min * 60.0,
        stride=args.stride,
        label_horizon_h=args.label_horizon,  # the full model's heads too, not only the distillation's
        reference_rows=cfg.reference_rows if args.reference_rows is None else args.reference_rows,
        train=replace(
            cfg.train,
            epochs=3 if args.quick else args.epochs,
            patience=6,
            progress=False,
            monitor=args.monitor or cfg.train.monitor,
            seed=args.seed,
            drop_prob=cfg.train.drop_prob if args.drop_prob is None else args.drop_prob,
            w_mode_ce=cfg.train.w_mode_ce if args.mode_ce is None else args.mode_ce,
            w_name=cfg.train.w_name if args.name_weight is None else args.name_weight,
        ),
    )
    full_ckpt = train_full(train_dir, cfg, args.out / "ckpt")
    full, meta = load_checkpoint(full_ckpt)
    assert isinstance(full, DGA)
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    _, tools, _ = simdata.dataset_windows(
        train_dir, spec=spec, stride=cfg.stride, horizon_h=args.label_horizon
    )
    windows = simdata.merge(tools)
    edge_ckpt = args.out / "ckpt" / "full.edge.pt"
    if not (args.reuse and edge_ckpt.exists()):
        edge_ckpt = distil_edge(full_ckpt, windows, cfg)
    edge, _ = load_checkpoint(edge_ckpt)
    assert isinstance(edge, DGA)
    # the validation tools of the training export (the same split as train_full's)
    _, val = split_by_group(windows, cfg.val_fraction, cfg.train.seed)
    val_groups = {int(g) for g in np.unique(val.groups)}
    edge_probs = lambda x: predict(edge, x)["probs"]  # noqa: E731
    val = scored_tools(train_dir, spec, val_groups)
    choices = grid_scores(val, val.series(edge_probs))
    p, n, val_score = choose_rule(choices)
    rule = rule_for(p, n)
    print(f"rule chosen on validation tools: threshold {p}, persistence {n}: {val_score}", flush=True)
    keyf = args.out / "keys" / "release.pem"
    if not keyf.exists():
        generate_keypair(keyf, keyf.with_suffix(".pub"))
    th = AlertThresholds(
        alert_probability=p, alert_persistence_steps=n, alert_clear_probability=rule.clear_threshold
    )
    onnx_path, manifest = export_release(
        edge_ckpt, windows, args.out / "release", keyf, "b2", None, replace(cfg, thresholds=th)
    )
    released = lambda x: run_onnx(onnx_path, x)["probs"]  # noqa: E731
    full_probs = lambda x: predict(full, x)["probs"]  # noqa: E731
    results = {}
    released_risks = {folder.name: risks(folder, spec, released) for folder in tests}
    for folder in tests:
        results[folder.name] = {
            "released_edge": evaluate(*released_risks[folder.name], rule),
            "full_model": evaluate(*risks(folder, spec, full_probs), rule),
        }
        print(folder.name, json.dumps(results[folder.name], indent=1), flush=True)
    by_seed = None
    if args.rule_seed is not None:
        # 20% of 30 training tools hold ~34 failures, so one alert more or less flips the choice
        # between rules that then differ by 10 points on the test runs; a whole export holds ~110
        rule_name = f"rule_s{args.rule_seed}_d{days_test}"
        rule_dir = export(args.out / rule_name, args.rule_seed, days_test, args.tools, args.scenario)
        st = scored_tools(rule_dir, spec)
        seed_grid = grid_scores(st, st.series(edge_probs))
        p2, n2, score2 = choose_rule(seed_grid)
        rule2 = rule_for(p2, n2)
        print(f"rule chosen on {rule_dir.name}: threshold {p2}, persistence {n2}: {score2}", flush=True)
        by_seed = {
            "export": rule_dir.name,
            "threshold": p2,
            "persistence": n2,
            "clear": rule2.clear_threshold,
            "chosen_on": score2,
            "grid": [{"p": c[0], "n": c[1], **c[2]} for c in seed_grid],
            "tests": {name: evaluate(*series, rule2) for name, series in released_risks.items()},
        }
        print(json.dumps(by_seed["tests"], indent=1), flush=True)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "train": str(train_dir),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        # the weights the run trained with (an option left at None reads the pipeline's default)
        "train_config": {
            k: getattr(cfg.train, k) for k in ("epochs", "seed", "drop_prob", "w_mode", "w_mode_ce", "w_name")
        },
        "rule": {"threshold": p, "persistence": n, "clear": rule.clear_threshold, "validation": val_score},
        "grid": [{"p": c[0], "n": c[1], **c[2]} for c in choices],
        "release": {
            "file": str(onnx_path),
            "bytes": manifest.size,
            "int8_groups": manifest.precision.get("int8_groups"),
        },
        "calibration": manifest.metrics.get("calibration"),
        # the kept epoch and its validation metrics (early stopping's choice, see --monitor)
        "training": {"full": meta.get("metrics"), "edge": load_checkpoint(edge_ckpt)[1].get("metrics")},
        "tests": results,
        # --rule-seed: the rule chosen on that export, and the released edge under it (not shipped)
        "rule_by_seed": by_seed,
        "seconds": time.monotonic() - t_start,
    }
    (args.out / ("b2_quick.json" if args.quick else "b2.json")).write_text(
        json.dumps(out, indent=1, default=float)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
