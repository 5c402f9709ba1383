"""The learning gate's cost as the frozen set grows (the old set gains every round's new set).

Synthetic frozen sets (a fifth of the windows failing, risks = label + Gaussian noise, 250
windows a tool) of growing size; :func:`cloud.gate.compare` (the resamples scored as weights over
one ranking) against the plain way, a sort of the drawn rows per resample, in the same run, with
the same draws: the two bounds must agree.

    OMP_NUM_THREADS=1 .venv/bin/python bench/gate_speed.py [--sizes 3000 30000 100000] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from cloud.gate import compare, roc_auc

PER_TOOL = 250


def plain_upper(cand: np.ndarray, run: np.ndarray, failed: np.ndarray, group: np.ndarray, n: int) -> float:
    """The 95% bound the way a first version did it: concatenate the drawn rows, sort per AUC."""
    n_groups = int(group.max()) + 1
    rows = [np.flatnonzero(group == g) for g in range(n_groups)]
    rng = np.random.default_rng(0)  # compare()'s seed: the same draws
    diffs = []
    for _ in range(n):
        idx = np.concatenate([rows[g] for g in rng.integers(0, n_groups, n_groups)])
        diffs.append(roc_auc(cand[idx], failed[idx]) - roc_auc(run[idx], failed[idx]))
    d = np.array(diffs)
    return float(np.quantile(d[~np.isnan(d)], 0.95))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 30000, 100000])
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    if min(args.sizes) < 2 * PER_TOOL or args.resamples < 100:
        ap.error(f"sizes must be >= {2 * PER_TOOL} windows (two tools) and resamples >= 100")
    rng = np.random.default_rng(0)
    print("| windows | tools | compare() | sort per resample | ratio | bounds agree |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        failed = rng.random(n) < 0.2
        group = np.arange(n) // PER_TOOL
        tools = np.array([f"tool-{g:05d}" for g in group])  # sorted names: np.unique keeps the order
        cand, run = failed + rng.normal(0, 1, n), failed + rng.normal(0, 1, n)
        t0 = time.perf_counter()
        verdict = compare(cand, run, failed, tools, 0.01, 0.95, args.resamples)
        fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        upper = plain_upper(cand, run, failed, group, args.resamples)
        slow = time.perf_counter() - t0
        agree = abs(upper - verdict.upper) < 1e-9
        print(f"| {n} | {group.max() + 1} | {fast:.2f} s | {slow:.2f} s | {slow / fast:.1f}× | {agree} |")


if __name__ == "__main__":
    main()
