"""Fine-tuning under torchrun (DDP): ``python -m torch.distributed.run --nproc_per_node=N -m
cloud.ddp_finetune BASE.pt DATA.npz RESULT.json [--tiny]``.

Every rank loads the same arrays and calls :func:`cloud.training.pipeline.fine_tune`, whose
trainer shards the batches by rank and keeps the replicas in sync (DDP). Rank 0's checkpoint is
the result (written to RESULT.json); the other ranks' identical copies are removed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from cloud.training.pipeline import PipelineConfig, fine_tune
from cloud.training.windows import WindowSet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("data")
    parser.add_argument("result")
    parser.add_argument("--tiny", action="store_true")
    ns = parser.parse_args(argv)
    arrays = np.load(ns.data)

    def ws(prefix: str) -> WindowSet:
        return WindowSet(*(arrays[f"{prefix}_{k}"] for k in ("x", "rul", "labels", "groups")))

    cfg = PipelineConfig.tiny() if ns.tiny else PipelineConfig()
    ckpt = fine_tune(Path(ns.base), ws("new"), ws("replay"), cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(ns.result).write_text(json.dumps({"checkpoint": str(ckpt)}))
    else:
        ckpt.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
