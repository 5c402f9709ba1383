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

    OMP_NUM_THREADS=1 .venv/bin/python bench/b2_diagnose.py artifacts/b2 --oracle
    OMP_NUM_THREADS=1 .venv/bin/python bench/b2_diagnose.py artifacts/b2 --false-alarms 0.2 2
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

from b2_sim_warning import GRID_N, GRID_P, evaluate, risks, rule_for

from cloud.training.alert_eval import run_rule
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a b2_sim_warning.py --out folder (ckpt/, release/, test exports)")
    ap.add_argument("--oracle", action="store_true")
    ap.add_argument("--false-alarms", nargs=2, type=float, metavar=("P", "N"))
    args = ap.parse_args()
    if not args.oracle and not args.false_alarms:
        ap.error("ask for --oracle and/or --false-alarms P N")
    _, meta = load_checkpoint(args.run / "ckpt" / "full.pt")
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    graphs = sorted((args.run / "release").glob("*.onnx"))
    if not graphs:
        ap.error(f"{args.run / 'release'}: no released graph (has the B2 run finished?)")
    for name in TESTS:
        folder = args.run / name
        series = risks(folder, spec, lambda x: run_onnx(graphs[0], x)["probs"])
        print(f"{name} (released edge graph):")
        if args.oracle:
            oracle(series)
        if args.false_alarms:
            false_alarms(folder, series, args.false_alarms[0], int(args.false_alarms[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
