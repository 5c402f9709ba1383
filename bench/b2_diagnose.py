"""B2 diagnostics on a finished ``bench/b2_sim_warning.py`` run (its ``--out`` folder).

Not a result and not for choosing anything: it looks at the *test* exports, which B2 itself only
scores. Two questions:

* ``--oracle``: how far is the model from the target, whatever the rule? The whole threshold ×
  persistence grid on each test export, and the best "warned ≥ 72 h" reached at alert precision
  ≥ 95%, 90% and 85%. If even this (chosen on the test set, so optimistic) stays far below 95%, the
  model's ranking is the limit, not the choice of the rule on validation tools.
* ``--false-alarms P N``: the false alarms of the rule (threshold P, persistence N) on each test
  export, with what the ground truth says around them: hours since the tool's last failure or
  maintenance, since its last setpoint change, sensor faults within the window, and hours until
  the next degradation onset.
* ``--feasibility``: what the physics leaves to see ``--lead`` hours before each progressive
  failure. The simulator's health index grows linearly from the episode's onset to the failure
  and its signature with the square of it, so h² at the lead time is the fraction of the full
  signature a model can see then. Ground truth only, no model.
* ``--after-first-reset``: both of the above only from each tool's first failure or maintenance
  in the run on (its windows after it, the failures after it; tool-days counted from it). A model
  that compares each tool with its own reference (``--reference-rows``) has none before that
  point on a freshly started edge; this is what an edge that has run for a maintenance cycle sees.
  It also prints the run's chosen rule on that part.

    OMP_NUM_THREADS=1 .venv/bin/python bench/b2_diagnose.py artifacts/b2 --oracle
    OMP_NUM_THREADS=1 .venv/bin/python bench/b2_diagnose.py artifacts/b2 --false-alarms 0.2 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/b2_diagnose.py artifacts/b2 --oracle --after-first-reset
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from cloud.training.alert_choice import GRID_N, GRID_P, evaluate, risks, rule_for
from cloud.training.alert_eval import Truth, run_rule
from cloud.training.parity import run_onnx
from shared.features import FeatureSpec
from shared.models.checkpoint import load_checkpoint

H = 3600.0
TESTS = ("test_s202_d60", "test_s303_d60")
FINER_P = (0.01, 0.015, 0.04, 0.06, 0.08, 0.12)


def oracle(series: tuple) -> None:
    pairs = itertools.product(sorted(GRID_P + FINER_P), GRID_N)
    grid = [(p, n, evaluate(*series, rule_for(p, n))) for p, n in pairs]
    for floor in (0.95, 0.90, 0.85):
        ok = [g for g in grid if g[2]["precision"] >= floor]
        if not ok:
            print(f"  precision ≥ {floor:.0%}: no rule of the grid gets there")
            continue
        p, n, r = max(ok, key=lambda g: (g[2]["recall_ge_lead"], g[2]["precision"]))
        print(
            f"  precision ≥ {floor:.0%}: best warned ≥ 72 h {r['recall_ge_lead']:.1%} "
            f"(precision {r['precision']:.1%}, {int(r['alerts'])} alerts; threshold {p}, persistence {n})"
        )


def false_alarms(folder: Path, series: tuple, p: float, n: int) -> None:
    tool_series, truth, _, span_s = series
    setpoints: dict[str, list[float]] = defaultdict(list)
    faults: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for line in (folder / "ground_truth.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "setpoint":
            setpoints[r["tool"]].append(float(r["t_s"]))
        elif r["kind"] == "sensor_fault":
            faults[r["tool"]].append((float(r["t_s"]), float(r.get("end_t_s", r["t_s"])), r["fault"]))

    def since(times: list[float], t: float) -> str:
        before = [x for x in times if x <= t]
        return f"{(t - max(before)) / H:.0f}" if before else "-"

    print("  tool      hour  h since reset  h since setpoint  faults in window     h to next onset")
    for tool, ts, risk in tool_series:
        fails = [f[0] for f in truth.failures.get(tool, []) if not f[2]]
        eps = truth.episodes.get(tool, [])
        for a in run_rule(rule_for(p, n), ts, risk, truth.resets.get(tool, []), span_s):
            if any(0 <= f - a.ts <= 240 * H for f in fails) or any(s <= a.ts < e for s, e in eps):
                continue  # a true alert (alert_eval's definition)
            in_window = sorted({k for s, e, k in faults[tool] if s <= a.ts and e >= a.ts - span_s})
            onsets = [s for s, _ in eps if s > a.ts]
            print(
                f"  {tool:8s} {a.ts / H:6.0f} {since(truth.resets.get(tool, []), a.ts):>14s} "
                f"{since(setpoints[tool], a.ts):>17s}  {','.join(in_window) or '-':18s} "
                f"{(min(onsets) - a.ts) / H if onsets else float('nan'):16.0f}"
            )


def feasibility(folder: Path, lead_h: float, warmup_h: float = 96.0) -> None:
    """Per progressive failure scored by B2 (after the warm-up), h² at ``lead_h`` before it."""
    recs = [json.loads(line) for line in (folder / "ground_truth.jsonl").read_text().splitlines()]
    onsets: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in recs:
        if r["kind"] == "onset":
            onsets[(r["tool"], r["mode"])].append(float(r["t_s"]))
    h2, before_run = [], 0
    for r in recs:
        if r["kind"] != "failure" or r["sudden"] or float(r["t_s"]) < warmup_h * H:
            continue
        ft = float(r["t_s"])
        mine = [t for t in onsets[(r["tool"], r["mode"])] if t < ft]
        if not mine:
            before_run += 1  # the episode began before the run: its onset is not in the log
            continue
        ttf = ft - max(mine)
        h = max(0.0, (ttf - lead_h * H) / ttf)
        h2.append(h * h)
    a = np.array(h2)
    pct = ", ".join(
        f"{q}%: {v:.3f}" for q, v in zip((5, 10, 25, 50), np.percentile(a, [5, 10, 25, 50]), strict=True)
    )
    print(
        f"  {len(a)} failures with their onset in the run ({before_run} began before it); "
        f"h² at {lead_h:.0f} h before failure: {pct}; "
        f"below 0.05: {np.mean(a < 0.05):.1%}, below 0.1: {np.mean(a < 0.1):.1%}, "
        f"onset later than that: {np.mean(a == 0.0):.1%}"
    )


def after_first_reset(series: tuple) -> tuple:
    """The part of each tool's run after its first failure or maintenance (see the docstring)."""
    tool_series, truth, _, span_s = series
    kept, days = [], 0.0
    failures: dict[str, list[tuple[float, str, bool]]] = {}
    for tool, ts, risk in tool_series:
        resets = sorted(truth.resets.get(tool, []))
        if not resets:
            continue
        keep = ts > resets[0]
        kept.append((tool, ts[keep], risk[keep]))
        days += (ts[-1] - resets[0]) / 86400.0
        failures[tool] = [f for f in truth.failures.get(tool, []) if f[0] > resets[0]]
    part = Truth(
        failures=failures,
        resets=truth.resets,
        episodes=truth.episodes,
        back_up=truth.back_up,
        pm_hours=truth.pm_hours,
    )
    return kept, part, days, span_s


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a b2_sim_warning.py --out folder (ckpt/, release/, test exports)")
    ap.add_argument("--oracle", action="store_true")
    ap.add_argument("--false-alarms", nargs=2, type=float, metavar=("P", "N"))
    ap.add_argument("--feasibility", action="store_true", help="h² at the lead time (ground truth only)")
    ap.add_argument("--lead", type=float, default=72.0, help="lead time for --feasibility (h)")
    ap.add_argument(
        "--after-first-reset", action="store_true", help="only each tool's run after its first reset"
    )
    args = ap.parse_args()
    if args.feasibility:
        for name in TESTS:
            print(f"{name}:")
            feasibility(args.run / name, args.lead)
        if not args.oracle and not args.false_alarms:
            return 0
    if not args.oracle and not args.false_alarms:
        ap.error("ask for --oracle, --false-alarms P N and/or --feasibility")
    _, meta = load_checkpoint(args.run / "ckpt" / "full.pt")
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    graphs = sorted((args.run / "release").glob("*.onnx"))
    if not graphs:
        ap.error(f"{args.run / 'release'}: no released graph (has the B2 run finished?)")
    for name in TESTS:
        folder = args.run / name
        series = risks(folder, spec, lambda x: run_onnx(graphs[0], x)["probs"])
        if args.after_first_reset:
            series = after_first_reset(series)
            rule = json.loads((args.run / "b2.json").read_text())["rule"]
            chosen = evaluate(*series, rule_for(rule["threshold"], int(rule["persistence"])))
            print(f"{name} after each tool's first reset ({series[2]:.0f} tool-days), chosen rule: {chosen}")
        print(f"{name} (released edge graph):")
        if args.oracle:
            oracle(series)
        if args.false_alarms:
            false_alarms(folder, series, args.false_alarms[0], int(args.false_alarms[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
