"""Would alerting on each tool's risk above its own level after a reset cut B2's false alarms?

B2's confident false alarms come from healthy tools that read high all the time (tool-to-tool
differences in gain and drift: bench/results/models.md, "Where the confident false alarms come
from"), and one rule's precision moves 7-11 points from one fleet to the next. This tries, on
finished B2 runs and without training, an alert on the risk less the tool's own baseline: the
median of its risk over ``--hours`` after it came back up from its last reset (failure or
maintenance; the edge knows these from the tool's state), once the window no longer holds the
down rows. Until a tool has a baseline, its risk is used as it is. The rule is chosen on the
validation tools, as B2 does, for the plain and the adjusted risk alike, and both are scored
on the test exports (exported when missing); in brackets, the most any grid rule warns there at
≥ 95% / ≥ 90% precision (read off the test run: the ranking apart from the choice).

    OMP_NUM_THREADS=1 .venv/bin/python bench/b2_risk_baseline.py artifacts/b2_rs0 [RUN...] \\
        [--hours 24 48] [--tests 202 303 505 606] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from b2_sim_warning import FinishedRun, export

from cloud.training.alert_choice import (
    GRID_N,
    ScoredTools,
    Series,
    choose_rule,
    evaluate,
    grid_scores,
    rule_for,
    scored_tools,
    unseen_tools,
)
from cloud.training.alert_eval import Truth
from cloud.training.parity import run_onnx
from cloud.training.trainer import predict

H = 3600.0
LOW_GRID = list(itertools.product((0.005, 0.01, 0.015), GRID_N))


def less_baseline(series: Series, truth: Truth, span_s: float, hours: float) -> Series:
    """Each tool's risk less the median of its risk over ``hours`` after each reset (from the
    first window free of the down rows: the tool back up after a failure's repair, or the median
    maintenance later, plus a window's span); the previous baseline (none: 0) until the new one
    is complete. Clipped at 0."""
    out = []
    for tool, ts, risk in series:
        base = np.zeros_like(risk)
        level = 0.0
        starts = sorted(truth.resets.get(tool, []))
        for i, r in enumerate(starts):
            nxt = starts[i + 1] if i + 1 < len(starts) else np.inf
            up = min([u for u in truth.back_up.get(tool, []) if r <= u < nxt], default=r + truth.pm_hours * H)
            lo, hi = up + span_s, up + span_s + hours * H
            inside = (ts >= lo) & (ts < min(hi, nxt))
            base[(ts >= r) & (ts < min(hi, nxt))] = level  # still collecting: the last baseline
            if inside.any() and hi <= nxt:
                level = float(np.median(risk[inside]))
                base[(ts >= hi) & (ts < nxt)] = level
        out.append((tool, ts, np.clip(risk - base, 0.0, None)))
    return out


def _choose_and_score(
    val: ScoredTools, val_series: Series, tests: dict[int, tuple[ScoredTools, Series]]
) -> dict[str, Any]:
    p, n, there = choose_rule(grid_scores(val, val_series))
    rule = rule_for(p, n)
    row: dict[str, Any] = {
        "threshold": p,
        "persistence": n,
        "validation": {"warned": there["recall_ge_lead"], "precision": there["precision"]},
    }
    for seed, (st, series) in tests.items():
        got = evaluate(series, st.truth, st.tool_days, st.span_s, rule)
        row[str(seed)] = {"warned": got["recall_ge_lead"], "precision": got["precision"]}
        # the ranking apart from the choice: the most warned by any rule at each precision, read
        # off the test run itself (optimistic, but alike for every variant); lower thresholds
        # too, since a risk less its baseline sits lower
        low = [
            (p, n, evaluate(series, st.truth, st.tool_days, st.span_s, rule_for(p, n))) for p, n in LOW_GRID
        ]
        grid = grid_scores(st, series) + low
        for floor in (0.95, 0.90):
            ok = [g[2]["recall_ge_lead"] for g in grid if g[2]["precision"] >= floor]
            row[str(seed)][f"best_at_{floor:.2f}"] = max(ok) if ok else None
    return row


def _pct(x: float | None) -> str:
    return "none" if x is None else f"{x:.0%}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+", help="bench/b2_sim_warning.py --out folders")
    ap.add_argument("--hours", type=float, nargs="+", default=[24.0, 48.0])
    ap.add_argument("--tests", type=int, nargs="+", default=[202, 303, 505, 606])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if any(h <= 0 for h in args.hours):
        ap.error("--hours must be positive")
    table = []
    for run in args.runs:
        done = FinishedRun.load(run)
        spec, edge, graph = done.spec, done.edge, done.graph
        val = scored_tools(done.train, spec, unseen_tools(done.train, done.meta))
        val_series = val.series(lambda x, m=edge: predict(m, x)["probs"])  # what B2 chose on
        tests = {}
        for seed in args.tests:
            st = scored_tools(export(run / f"test_s{seed}_d60", seed, 60, 30), spec)
            tests[seed] = (st, st.series(lambda x, g=graph: run_onnx(g, x)["probs"]))
        variants = {"plain": (val_series, tests)}
        for hours in args.hours:
            adj = {
                s: (st, less_baseline(series, st.truth, st.span_s, hours))
                for s, (st, series) in tests.items()
            }
            variants[f"less {hours:g} h baseline"] = (
                less_baseline(val_series, val.truth, val.span_s, hours),
                adj,
            )
        for name, (vs, ts) in variants.items():
            row = {"run": run.name, "variant": name} | _choose_and_score(val, vs, ts)
            table.append(row)
            cells = "  ".join(
                f"{s}: {row[str(s)]['warned']:.1%} at {row[str(s)]['precision']:.1%}"
                f" [{_pct(row[str(s)]['best_at_0.95'])} / {_pct(row[str(s)]['best_at_0.90'])}]"
                for s in args.tests
            )
            print(
                f"{run.name:10s} {name:20s} p {row['threshold']} × {row['persistence']}  {cells}", flush=True
            )
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
