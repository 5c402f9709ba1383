"""B7 on the simulator: token dropping on a finished B2 run's models, scored the way B2 scores them.

``bench/b7_token_drop.py`` measures token dropping on C-MAPSS; DESIGN.md's B7 also names the
simulator. This takes the folder of a finished ``bench/b2_sim_warning.py`` run (its ``--out``) and,
for the cloud's full DGA and the edge's distilled one, at each keep ratio:

* analytic FLOPs per window, and the ONNX FP32 graph with the dropping baked in, timed at batch 1
  and batch 64 on one thread, all ratios in interleaved rounds (``b7_token_drop.time_onnx``);
* on each test export (seeds never trained on): failures warned ≥ 72 h ahead, alert precision and
  false alarms per tool-month under the alert rule chosen *for that graph* on the training
  export's validation tools, as B2 chooses it (a release picks the rule for the graph it ships);
  the same under B2's rule (the released edge graph's, at keep 1); the most warned by any rule of
  B2's grid at precision ≥ 95% on the test export itself (optimistic, but free of the noise of
  choosing a rule on six validation tools); and the ROC AUC of the per-window risk (max over the tool
  type's progressive modes) against "a progressive failure of the tool within the horizon".

The test exports choose nothing: each graph's rule comes from the validation tools; the best-rule
column only reads them.

    OMP_NUM_THREADS=1 .venv/bin/python bench/b7_sim.py artifacts/b2_s0 [artifacts/b2_s1 ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from b2_sim_warning import b2_config
from b7_token_drop import time_onnx

from cloud.gate import roc_auc
from cloud.training.alert_choice import (
    ScoredTools,
    choose_rule,
    evaluate,
    grid_scores,
    rule_for,
    scored_tools,
)
from cloud.training.alert_eval import progressive_modes
from cloud.training.export import export_dga
from cloud.training.quantize import session
from cloud.training.windows import held_out_groups
from shared.dataset import read_info
from shared.features import FeatureSpec
from shared.models.checkpoint import load_checkpoint
from shared.models.dga import DGA, flops

REPO = Path(__file__).resolve().parent.parent
RATIOS = (1.0, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)
MODELS = {"full": "full.pt", "edge": "full.edge.pt"}


def onnx_probs(s: Any) -> Any:
    """windows → per-mode probabilities of one ONNX session, in batches of 512."""
    return lambda x: np.concatenate(
        [s.run(["probs"], {"x": x[i : i + 512]})[0] for i in range(0, len(x), 512)]
    )


def window_auc(st: ScoredTools, series: list[tuple[str, np.ndarray, np.ndarray]]) -> float:
    """ROC AUC of the risk against "a progressive failure within the horizon"; unknown labels out."""
    scores, truth = [], []
    for tw, (_, _, risk) in zip(st.tools, series, strict=True):
        lab = tw.ws.labels[:, progressive_modes(tw.tool_type)]
        known = ~np.isnan(lab).any(axis=1)
        scores.append(risk[known])
        truth.append(lab[known].max(axis=1))
    return roc_auc(np.concatenate(scores), np.concatenate(truth))


def best_warned(st: ScoredTools, series: list, precision: float = 0.95) -> float:
    """The most failures warned ≥ 72 h by any rule of the grid at ``precision`` on this export:
    chosen on the test export, so optimistic, but free of the rule choice's noise (B2's --oracle)."""
    ok = [g[2]["recall_ge_lead"] for g in grid_scores(st, series) if g[2]["precision"] >= precision]
    return max(ok, default=0.0)


def measure(run_dir: Path, quick: bool) -> dict[str, Any]:
    b2 = json.loads((run_dir / "b2.json").read_text())
    seed = int(b2["args"]["seed"])
    tests = sorted(run_dir.glob("test_s*_d*"))
    if not tests:
        raise SystemExit(f"{run_dir}: no test export (test_s*_d*) beside b2.json")
    train_dir = Path(b2["train"])
    train_dir = train_dir if train_dir.is_absolute() else REPO / train_dir
    b2_rule = rule_for(b2["rule"]["threshold"], b2["rule"]["persistence"])  # the edge's, at keep 1
    out: dict[str, Any] = {"run": str(run_dir), "rule_b2": b2["rule"], "models": {}}
    for name, file in MODELS.items():
        model, meta = load_checkpoint(run_dir / "ckpt" / file)
        assert isinstance(model, DGA)
        spec = FeatureSpec.from_dict(meta["feature_spec"])
        graphs = {
            r: export_dga(model, run_dir / "b7" / f"{name}_keep{int(r * 100)}.onnx", None if r >= 1 else r)
            for r in RATIOS
        }
        sessions = {r: session(p) for r, p in graphs.items()}

        # the validation tools of the training export: the same split as train_full's
        n_tools = len(read_info(train_dir).tools)
        val_groups = held_out_groups(np.arange(n_tools), b2_config().val_fraction, seed)
        val = scored_tools(train_dir, spec, {int(g) for g in val_groups})
        rules = {r: choose_rule(grid_scores(val, val.series(onnx_probs(sessions[r]))))[:2] for r in RATIOS}
        del val
        if name == "edge" and rules[1.0] != (b2_rule.threshold, b2_rule.persistence):
            print(f"note: B2 chose {b2['rule']} for the released graph, this choice {rules[1.0]}")
        rows = {
            r: {
                "keep_ratio": r,
                "kept_tokens": math.ceil(r * model.cfg.window),
                "flops": flops(model.cfg, None if r >= 1 else r),
                "rule": rules[r],
            }
            for r in RATIOS
        }
        for folder in tests:
            st = scored_tools(folder, spec, set(range(8)) if quick else None)
            sample = np.concatenate([tw.ws.x[:64] for tw in st.tools])[:64]
            for r in RATIOS:
                series = st.series(onnx_probs(sessions[r]))
                scored = (series, st.truth, st.tool_days, st.span_s)
                rows[r][folder.name] = {
                    "auc": window_auc(st, series),
                    "own_rule": evaluate(*scored, rule_for(*rules[r])),
                    "b2_rule": evaluate(*scored, b2_rule),
                    "best_warned_at_95": best_warned(st, series),
                }
            del st
        lat, thr = time_onnx(sessions, sample[:1], sample, *((4, 100) if quick else (15, 200)))
        base = rows[1.0]
        for r, row in rows.items():
            row["b1_median_us"], row["b64_windows_per_s"] = lat[r] * 1e6, thr[r]
            row["flops_saved"] = 1 - row["flops"] / base["flops"]
            row["time_saved_b1"] = 1 - lat[r] / lat[1.0]
            row["time_saved_b64"] = 1 - thr[1.0] / thr[r]
        out["models"][name] = {
            "params": model.n_params(),
            "window": model.cfg.window,
            "rows": list(rows.values()),
        }
        print_model(run_dir, name, out["models"][name], [t.name for t in tests])
    return out


def print_model(run_dir: Path, name: str, res: dict[str, Any], tests: list[str]) -> None:
    print(f"B7 simulator {run_dir} {name} DGA ({res['params']} params, window {res['window']})")
    head = "  ".join(f"{t[5:9]:>4s}: AUC    own rule     | B2's rule    | best@95" for t in tests)
    print(f"{'keep':>5s} {'FLOPs':>6s} {'t b1':>6s} {'t b64':>6s} {'rule':>10s}  {head}")
    for row in res["rows"]:
        cells = []
        for t in tests:
            m = row[t]
            cells.append(
                f"{m['auc']:.4f} {m['own_rule']['recall_ge_lead']:5.1%} {m['own_rule']['precision']:5.1%} | "
                f"{m['b2_rule']['recall_ge_lead']:5.1%} {m['b2_rule']['precision']:5.1%} | "
                f"{m['best_warned_at_95']:5.1%}"
            )
        p, n = row["rule"]
        print(
            f"{row['keep_ratio']:5.2f} {row['flops_saved']:6.1%} {row['time_saved_b1']:6.1%} "
            f"{row['time_saved_b64']:6.1%} {f'p≥{p} ×{n}':>10s}  " + "  ".join(cells),
            flush=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="folders of finished bench/b2_sim_warning.py runs")
    ap.add_argument("--quick", action="store_true", help="8 tools per test export, fewer timing rounds")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "b7_sim")
    args = ap.parse_args()
    for run_dir in args.runs:
        if not (run_dir / "b2.json").exists():
            ap.error(f"{run_dir}: no b2.json; run bench/b2_sim_warning.py --out {run_dir} first")
    args.out.mkdir(parents=True, exist_ok=True)
    results = [measure(run_dir, args.quick) for run_dir in args.runs]
    (args.out / ("b7_sim_quick.json" if args.quick else "b7_sim.json")).write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
