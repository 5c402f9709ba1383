"""A chain of small learning rounds, replayed with and without the distillation pool, each model
scored on a fleet no round saw.

B8 times and scores one large round after a drift. A plant's rounds are many and small: each a
few hundred labelled hard cases (windows the edge was unsure of, from the tools that sent them).
This replays the rounds a ``fabpm demo`` run recorded (their training and replay cases, read from
its database) one after another, as the cloud runs them: the full model fine-tuned from the last
round's, the edge model distilled from it, continuing the last edge model's weights (the demo's
``warm_start_edge``), every candidate taken (the gate is left out: it is what is being informed).
Each arm's edge model and teacher are scored after every round on exports of the same fab with
other seeds (``--eval-seeds``, one fleet each, pooled): ROC AUC of "fails within the horizon" by
the highest probability of the modes the edge alerts on (the edge's own rule), over every window
with a known label.

    .venv/bin/fabpm demo --duration 1500          # records the rounds in runs/demo/cloud.db
    OMP_NUM_THREADS=1 .venv/bin/python bench/learning_chain.py --demo runs/demo [--rounds 8]

Arms: ``pool`` (the default: 2,000 of the training windows beside the round's, the teacher's
outputs their target; cloud/training/pool.py) and ``alone`` (the round's windows only, as before).
Raw results go to ``bench/results/raw/learning_chain.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud.config import load  # noqa: E402
from cloud.gate import roc_auc  # noqa: E402
from cloud.learning import Learner  # noqa: E402
from cloud.learning_data import Windows  # noqa: E402
from cloud.pipeline_adapter import alerting_probability, make_pipeline  # noqa: E402
from cloud.registry import Registry  # noqa: E402
from cloud.storage.db import make_engine  # noqa: E402
from cloud.storage.models import LearningRound  # noqa: E402
from cloud.storage.repo import Repo  # noqa: E402
from cloud.training import simdata  # noqa: E402
from shared.features import FeatureSpec  # noqa: E402
from shared.models.checkpoint import load_checkpoint  # noqa: E402


def eval_fleet(
    spec: dict, seed: int, tools: int, days: int, out: Path
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Windows of a fresh export (features, failed within the horizon, tool type), known labels only."""
    cmd = [sys.executable, "-m", "fabpm.cli", "sim", "export", "--days", str(days), "--tools", str(tools)]
    subprocess.run(
        [*cmd, "--seed", str(seed), "--out", str(out)], check=True, capture_output=True, timeout=1800
    )
    _, tws, _ = simdata.dataset_windows(out, spec=FeatureSpec.from_dict(spec), stride=6)
    xs, failed, types = [], [], []
    for tw in tws:
        known = ~np.isnan(tw.ws.labels).any(axis=1)
        xs.append(tw.ws.x[known])
        failed.append((tw.ws.labels[known] > 0.5).any(axis=1))
        types += [tw.tool_type] * int(known.sum())
    return np.concatenate(xs), np.concatenate(failed), types


def score(ckpt: Path, x: np.ndarray, failed: np.ndarray, types: list[str]) -> float:
    model, meta = load_checkpoint(ckpt)
    model.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(x), 512):
            probs.append(model(torch.from_numpy(x[i : i + 512].astype(np.float32)))["probs"].numpy())
    return roc_auc(alerting_probability(np.concatenate(probs), list(meta["modes"]), types), failed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--demo", type=Path, default=REPO / "runs" / "demo", help="a fabpm demo folder with rounds"
    )
    ap.add_argument("--rounds", type=int, default=8, help="the first N rounds recorded")
    ap.add_argument("--eval-seeds", type=int, nargs="+", default=[98, 99], help="one fleet per seed, pooled")
    ap.add_argument("--eval-tools", type=int, default=16, help="tools in each evaluation fleet")
    ap.add_argument("--eval-days", type=int, default=30)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "raw" / "learning_chain.json")
    ns = ap.parse_args()
    cfg = load(ns.demo / "cloud.toml")
    if cfg.serving.checkpoint is None:
        raise SystemExit(f"{ns.demo}/cloud.toml names no serving.checkpoint")
    full0 = Path(cfg.serving.checkpoint)
    edge0 = full0.with_name(f"{full0.stem}.edge.pt")
    repo = Repo(make_engine(cfg.storage.url))
    with repo.transaction() as s:
        rounds = [
            (r.id, dict(r.state))
            for r in s.scalars(select(LearningRound).order_by(LearningRound.id))
            if r.state and "train" in r.state
        ][: ns.rounds]
    if not rounds:
        raise SystemExit(f"{ns.demo}: no learning round recorded; run fabpm demo first")
    learner = Learner.__new__(Learner)  # only its windows(): case ids → windows from the database
    learner.repo = repo
    work = Path(tempfile.mkdtemp(prefix="fabpm-chain-"))
    t0 = time.perf_counter()
    spec = load_checkpoint(full0)[1]["feature_spec"]
    fleets = [eval_fleet(spec, k, ns.eval_tools, ns.eval_days, work / f"eval{k}") for k in ns.eval_seeds]
    x, failed = np.concatenate([f[0] for f in fleets]), np.concatenate([f[1] for f in fleets])
    types = [t for f in fleets for t in f[2]]
    took = time.perf_counter() - t0
    print(f"evaluation fleet: {len(x)} windows, {int(failed.sum())} before a failure ({took:.0f} s)")
    result: dict = {
        "demo": str(ns.demo),
        "eval": {
            "seeds": ns.eval_seeds,
            "tools": ns.eval_tools,
            "days": ns.eval_days,
            "windows": len(x),
            "failed": int(failed.sum()),
        },
        "start": {"edge": score(edge0, x, failed, types), "teacher": score(full0, x, failed, types)},
        "arms": {},
    }
    print(f"start: edge {result['start']['edge']:.3f}, teacher {result['start']['teacher']:.3f}")
    for arm, size in (("pool", 2000), ("alone", 0)):
        lc = cfg.learning.model_copy(update={"distil_pool_size": size})
        pipe = make_pipeline(cfg.model_copy(update={"learning": lc}), Registry(repo, cfg.registry))
        full, edge, rows = full0, edge0, []
        for rid, state in rounds:
            torch.manual_seed(rid)
            new, replay = learner.windows(state["train"]), learner.windows(state["replay"])
            t = time.perf_counter()
            full = pipe.fine_tune(full, new, replay, work / arm / f"r{rid}" / "full")
            edge = pipe.distil(full, Windows.concat([new, replay]), work / arm / f"r{rid}" / "edge", edge)
            row = {
                "round": rid,
                "windows": len(new) + len(replay),
                "seconds": round(time.perf_counter() - t, 1),
                "edge": score(edge, x, failed, types),
                "teacher": score(full, x, failed, types),
            }
            rows.append(row)
            said = f"{row['windows']} windows, {row['seconds']} s): edge {row['edge']:.3f}"
            print(f"{arm} round {rid} ({said}, teacher {row['teacher']:.3f}", flush=True)
        result["arms"][arm] = rows
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(f"raw: {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
