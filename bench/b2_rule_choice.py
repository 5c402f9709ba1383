"""How B2's alert-rule choice carries over to fleets it never saw, on finished B2 runs.

B2 picks the rule (threshold, persistence) that warns the most failures ≥ 72 h ahead at ≥ 95%
precision on the training export's validation tools (about 32 failures). ``--rule-seed`` runs
(``bench/b2_sim_warning.py --rule-seed 404``) also score the whole grid on an export of another
seed (about 113). This script takes the grids those runs saved and, for each place the rule was
chosen (the validation tools, the rule export) and each precision asked for there
(``--targets``), prints the rule chosen and what it does on every test export, scored with the
released graph. The test exports only score; a choice made by reading this table has to be
checked on exports of seeds it did not read (``--tests`` with fresh seeds, exported here when
missing).

    OMP_NUM_THREADS=1 .venv/bin/python bench/b2_rule_choice.py artifacts/b2_rs0 artifacts/b2_rs1 \\
        [--targets 0.95 0.97] [--tests 202 303] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from b2_sim_warning import FinishedRun, export

from cloud.training.alert_choice import (
    Scored,
    choose_rule,
    evaluate,
    risks,
    rule_for,
    scored_tools,
    tool_interval,
    unseen_tools,
)
from cloud.training.parity import run_onnx
from cloud.training.trainer import predict


def _grid(rows: list[dict[str, Any]]) -> list[Scored]:
    """A grid saved in b2.json (rows of p, n and the score) as choose_rule's scored points."""
    return [(float(r["p"]), int(r["n"]), {k: v for k, v in r.items() if k not in ("p", "n")}) for r in rows]


def _span(sure: dict[str, float], name: str) -> str:
    return f"[{sure[name + '_lo']:.0%}-{sure[name + '_hi']:.0%}]"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+", help="bench/b2_sim_warning.py --out folders")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.96, 0.97, 0.98])
    ap.add_argument(
        "--tests", type=int, nargs="+", default=[202, 303], help="simulator seeds of the test exports"
    )
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--tools", type=int, default=30)
    ap.add_argument("--json", type=Path, help="write the table here too")
    args = ap.parse_args()
    if any(not 0.5 <= t <= 1.0 for t in args.targets):
        ap.error("--targets are precisions between 0.5 and 1")
    if set(args.tests) & {101, 404}:
        ap.error("--tests must not be the training seed 101 or the rule seed 404")
    table = []
    for run in args.runs:
        done = FinishedRun.load(run)
        b2, spec, edge, graph = done.b2, done.spec, done.edge, done.graph
        # each place: its grid (scored when the run chose there) and its tools, for the intervals
        places = {"validation tools": (_grid(b2["grid"]), done.train, unseen_tools(done.train, done.meta))}
        if b2.get("rule_by_seed"):
            by_seed = b2["rule_by_seed"]
            places[by_seed["export"]] = (_grid(by_seed["grid"]), run / by_seed["export"], None)
        tests = {}
        for seed in args.tests:
            folder = export(run / f"test_s{seed}_d{args.days}", seed, args.days, args.tools)
            tests[seed] = risks(folder, spec, lambda x, g=graph: run_onnx(g, x)["probs"])
        for place, (grid, folder, groups) in places.items():
            st = scored_tools(folder, spec, groups)
            chosen_on = st.series(lambda x, m=edge: predict(m, x)["probs"])  # what B2 chose on
            for target in args.targets:
                p, n, there = choose_rule(grid, target)
                sure = tool_interval(chosen_on, st.truth, st.span_s, rule_for(p, n))
                row = {
                    "run": run.name,
                    "chosen_on": place,
                    "target": target,
                    "threshold": p,
                    "persistence": n,
                    "there": {"warned": there["recall_ge_lead"], "precision": there["precision"]} | sure,
                    "tests": {},
                }
                for seed, series in tests.items():
                    got = evaluate(*series, rule_for(p, n))
                    row["tests"][seed] = {"warned": got["recall_ge_lead"], "precision": got["precision"]}
                table.append(row)
                cells = "  ".join(
                    f"{s}: {t['warned']:.1%} at {t['precision']:.1%}" for s, t in row["tests"].items()
                )
                print(
                    f"{run.name:12s} {place:18s} ≥{target:.0%}: p {p} × {n} "
                    f"({there['recall_ge_lead']:.1%} {_span(sure, 'recall_ge_lead')}"
                    f" at {there['precision']:.1%} {_span(sure, 'precision')} there)  {cells}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
