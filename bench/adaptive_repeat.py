"""Repeat the adaptive-precision step on one edge model and print each run's per-group times.

The release's INT8/FP32 choice per op group comes from timing; this shows whether it is stable.
Run it with another job on the machine (e.g. a training run on the other core) to see the
decision under load.

    OMP_NUM_THREADS=1 .venv/bin/python bench/adaptive_repeat.py \
        --checkpoint artifacts/b1/cmapss_edge_s0.pt [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from cloud.training import cmapss
from cloud.training.export import export_dga
from cloud.training.quantize import adaptive_quantize
from shared.models.checkpoint import load_checkpoint
from shared.models.dga import DGA

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, required=True, help="a C-MAPSS edge checkpoint (bench/b1)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    data = cmapss.load_fd001(args.data)
    model, meta = load_checkpoint(args.checkpoint)
    assert isinstance(model, DGA)
    smooth, reference = cmapss.preprocessing(meta["feature_spec"])
    ws = cmapss.train_windows(data, model.cfg.window, cmapss.RUL_CAP, smooth, 31, reference)
    x = ws.x[np.random.default_rng(0).choice(len(ws.x), 512, replace=False)]
    with tempfile.TemporaryDirectory() as tmpdir:
        fp32 = export_dga(model.eval(), Path(tmpdir) / "edge.onnx")
        for run in range(args.runs):
            t0 = time.monotonic()
            _, rep = adaptive_quantize(fp32, Path(tmpdir) / "mix.onnx", x[:256], x[256:], cmapss.RUL_CAP)
            chosen = [g.group for g in rep.groups if g.int8]
            print(f"run {run}: INT8 groups {chosen or 'none'} ({time.monotonic() - t0:.0f} s)")
            for g in rep.groups:
                print(f"   {g.group:30s} FP32 {g.fp32_us:7.2f} us INT8 {g.int8_us:7.2f} us {g.speedup:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
