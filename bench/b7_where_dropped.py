"""B7 diagnostic: which tokens does DGA token dropping remove, and would keeping the most recent
ones kept regardless help the metric?

For a B1 full model on C-MAPSS FD001: at keep 0.8, the share of the dropped tokens that are among
the window's last 8 and 16 positions, and that are left padding (a short test unit's first cycle
repeated); then RUL RMSE at several keep ratios, with the last ``r`` tokens always kept (the same
number of tokens kept, so the same FLOPs), against keeping everything. Dropping is done as the
equivalent mask (``DGA.forward(token_mask=…)``, tested equal to dropping), so no graph is built.

    OMP_NUM_THREADS=1 .venv/bin/python bench/b7_where_dropped.py artifacts/b1_refit/cmapss_full_s0.pt
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from cloud.training import cmapss
from shared.models.checkpoint import load_checkpoint
from shared.models.dga import DGA

REPO = Path(__file__).resolve().parent.parent
KEEPS = (0.85, 0.8, 0.7)
PROTECT = (0, 4, 8, 16)


def rul(model: DGA, x: np.ndarray, keep: float, protect: int) -> np.ndarray:
    """RUL with the ``ceil(keep·T)`` highest-gate tokens kept, the last ``protect`` always among them."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), 512):
            xb = torch.from_numpy(x[i : i + 512])
            if keep >= 1.0:
                outs.append(model(xb)["rul"])
                continue
            g = model(xb)["gates"].clone()
            if protect:
                g[:, -protect:] = 2.0  # above any gate (gates are in (0, 1))
            idx = torch.topk(g, max(1, math.ceil(keep * g.shape[1])), dim=1).indices
            mask = torch.zeros_like(g, dtype=torch.bool).scatter_(1, idx, True)
            outs.append(model(xb, token_mask=mask)["rul"])
    return torch.cat(outs).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", type=Path, nargs="+", help="B1 full-model checkpoints")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = cmapss.load_fd001(args.data)
    lengths = np.array([int((data.test[:, 0] == u).sum()) for u in np.unique(data.test[:, 0])])
    for path in args.checkpoints:
        model, meta = load_checkpoint(path)
        if not isinstance(model, DGA):
            sys.exit(f"{path}: not a DGA checkpoint")
        model.eval()
        t = model.cfg.window
        smooth, reference = cmapss.preprocessing(meta["feature_spec"])
        last = cmapss.last_windows(data, t, cmapss.RUL_CAP, smooth, reference)
        every = cmapss.all_test_windows(data, t, cmapss.RUL_CAP, smooth, reference)
        base = {"last": cmapss.rmse(rul(model, last.x, 1.0, 0), last.rul)}
        base["all"] = cmapss.rmse(rul(model, every.x, 1.0, 0), every.rul)
        print(f"{path}: RMSE, every token kept: last cycle {base['last']:.3f}, all {base['all']:.3f}")
        with torch.no_grad():
            gates = model(torch.from_numpy(last.x))["gates"].numpy()
        dropped = np.argsort(-gates, axis=1)[:, math.ceil(0.8 * t) :]  # positions, per test unit
        recent = {n: float(np.mean(dropped >= t - n)) for n in (8, 16)}
        padding = float(np.mean(dropped < (t - np.minimum(lengths, t))[:, None]))
        pad_share = float(np.mean(np.maximum(0, t - lengths) / t))
        print(
            f"  keep 0.8, the test units' last windows: of the dropped tokens {recent[8]:.1%} are among "
            f"the last 8, {recent[16]:.1%} the last 16 (uniform: {8 / t:.1%}, {16 / t:.1%}); "
            f"{padding:.1%} are padding (padding is {pad_share:.1%} of all tokens)"
        )
        for keep in KEEPS:
            for protect in PROTECT:
                lost = {
                    k: cmapss.rmse(rul(model, ws.x, keep, protect), ws.rul) / base[k] - 1
                    for k, ws in (("last", last), ("all", every))
                }
                print(
                    f"  keep {keep}, last {protect:2d} always kept: RMSE last cycle {lost['last']:+.2%}, "
                    f"every window {lost['all']:+.2%}"
                )


if __name__ == "__main__":
    main()
