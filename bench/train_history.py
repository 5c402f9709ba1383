"""Per-epoch validation metrics of the simulator pipeline's full model (a diagnostic, not a target).

Trains the full DGA as ``PipelineConfig`` does (B2's sizes) on a ``fabpm sim export`` folder with
early stopping off, and prints each epoch's validation loss and its parts: the summed loss, the
failure-mode BCE, the RUL squared error, the RUL RMSE in hours and the Brier score of the mode
heads. This is what showed that the summed loss bottoms out after two epochs while the mode heads
keep improving (bench/results/models.md, B2).

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_history.py artifacts/b2/train_s101_d90 --epochs 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from b2_sim_warning import b2_config

from cloud.training.pipeline import sim_split
from cloud.training.trainer import fit, new_model


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path, help="a fabpm sim export folder")
    ap.add_argument("--epochs", type=int, default=12, help="length of the one-cycle schedule")
    ap.add_argument("--label-horizon", type=float, default=None)
    args = ap.parse_args()
    if not (args.dataset / "dataset.json").exists():
        ap.error(f"{args.dataset}: not a fabpm sim export (no dataset.json)")
    cfg = b2_config()
    cfg = replace(
        cfg,
        label_horizon_h=args.label_horizon,
        train=replace(cfg.train, epochs=args.epochs, patience=args.epochs + 1, progress=False),
    )
    train, val, _, info = sim_split(args.dataset, cfg)  # what train_full trains on
    horizon = args.label_horizon or info.horizon_h
    model = new_model(cfg.model_config(train.n_features, train.n_modes, horizon), cfg.train.seed)
    res = fit(model, train, val, cfg.train)
    for h in res.history:
        print(json.dumps({k: round(v, 4) for k, v in h.items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
