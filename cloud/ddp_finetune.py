"""Fine-tuning under torchrun (DDP): ``python -m torch.distributed.run --nproc_per_node=N -m
cloud.ddp_finetune BASE.pt DATA.npz RESULT.json [--size default|small|tiny] [--epochs N]``.

Every rank loads the same arrays and calls :func:`cloud.training.pipeline.fine_tune`, whose
trainer shards the batches by rank and keeps the replicas in sync (DDP). Rank 0's checkpoint is
the result (written to RESULT.json); the other ranks work on their own copies, removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from cloud.training.pipeline import SIZES, PipelineConfig, fine_tune
from cloud.training.windows import WindowSet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("data")
    parser.add_argument("result")
    parser.add_argument("--size", choices=SIZES, default="default")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the pipeline's)")
    ns = parser.parse_args(argv)
    arrays = np.load(ns.data)

    def ws(prefix: str) -> WindowSet:
        return WindowSet(*(arrays[f"{prefix}_{k}"] for k in ("x", "rul", "labels", "groups")))

    cfg = PipelineConfig.sized(ns.size)
    if ns.epochs:
        cfg = replace(cfg, fine_tune_epochs=ns.epochs)
    rank = int(os.environ.get("RANK", "0"))
    base = Path(ns.base)
    if rank != 0:
        # fine_tune names its output after its input and the time: other ranks start from their own
        # copy so that no two ranks can ever write (or delete) the same file.
        own = base.with_name(f"{base.stem}.rank{rank}{base.suffix}")
        shutil.copyfile(base, own)
        base = own
    ckpt = fine_tune(base, ws("new"), ws("replay"), cfg)
    if rank == 0:
        Path(ns.result).write_text(json.dumps({"checkpoint": str(ckpt)}))
    else:
        ckpt.unlink(missing_ok=True)
        base.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
