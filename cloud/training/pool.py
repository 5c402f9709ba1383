"""The distillation pool: windows of the fleet's usual running, kept beside the full model, on which
every learning round's edge student also learns the teacher's outputs.

A learning round distils the edge model on its labelled windows, which are hard cases: windows the
edge was unsure of, from the few tools that sent them. Matched to the teacher there alone, the
small student drifts from it everywhere else. Replaying the demo's first ten rounds one after
another and scoring on 32 tools no round saw (bench/learning_chain.py), the edge model distilled
on each round's windows alone scored an AUC of 0.597-0.635 against its teachers' 0.704-0.725
(0.619 before the first round); with 2,000 of the training windows beside them, the teacher's
outputs their only target (no labels needed), 0.644-0.687: 1.6 to 8.4 points higher in every
round (bench/results/cloud.md, "distillation pool").

:func:`write_pool` samples the windows when the full model is trained (``train_full``) into
``<checkpoint>.pool.npz`` (float16: the features are z-scores, and the teacher reads the same
rounded values the student does); :func:`read_pool` gives them back as a window set with no
labels, checked against the teacher's feature spec.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cloud.training.errors import TrainingError
from cloud.training.windows import WindowSet

_logger = logging.getLogger(__name__)

POOL_SIZE = 2000  # windows kept: 9.6 MB as float16 at 48 steps × 50 features, about 2 MB compressed
F16_MAX = float(np.finfo(np.float16).max)
POOL_GROUP = 1_000_000  # the pool windows' group id, apart from any tool's


def pool_path(checkpoint: Path) -> Path:
    """Where the pool of the full model at ``checkpoint`` lives: ``<stem>.pool.npz`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.pool.npz")


def write_pool(
    path: Path, windows: WindowSet, feature_spec: dict[str, Any], size: int = POOL_SIZE, seed: int = 0
) -> Path:
    """Sample at most ``size`` of ``windows`` (their inputs only) into ``path`` with the feature spec
    they were made with; returns ``path``. Written to a temporary name first, so a crash leaves no
    half file under the real one."""
    if size < 1:
        raise TrainingError(f"pool size must be at least 1, got {size}")
    if not len(windows):
        raise TrainingError("no windows to keep in the distillation pool")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(windows), size=min(size, len(windows)), replace=False))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    spec = np.array(json.dumps(feature_spec, sort_keys=True))
    x = np.clip(windows.x[idx], -F16_MAX, F16_MAX).astype(np.float16)  # an outlier past it would be inf
    np.savez_compressed(tmp, x=x, feature_spec=spec)
    tmp.replace(path)
    _logger.info("distillation pool: %d of %d windows kept in %s", len(idx), len(windows), path)
    return path


def read_pool(path: Path, feature_spec: dict[str, Any], n_modes: int, size: int = POOL_SIZE) -> WindowSet:
    """The pool at ``path`` as unlabelled windows (NaN targets: the teacher's outputs are their whole
    target), at most ``size`` of them; a clear error when it was made with another feature spec
    than the teacher's (its numbers would mean other things) or is not a pool."""
    try:
        with np.load(Path(path), allow_pickle=False) as f:
            x = f["x"]
            spec = json.loads(str(f["feature_spec"]))
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise TrainingError(f"distillation pool {path}: not readable ({e})") from e
    if spec != json.loads(json.dumps(feature_spec, sort_keys=True)):
        raise TrainingError(
            f"distillation pool {path} was made with another feature spec than the teacher's "
            "(a model trained on other data or settings): write one for it with `fabpm train pool`"
        )
    if size < len(x):  # the file is in tool order: a spread of it, not its first tools
        x = x[np.sort(np.random.default_rng(0).choice(len(x), size=size, replace=False))]
    x = x.astype(np.float32)
    n = len(x)
    return WindowSet(
        x=x,
        rul=np.full(n, np.nan, dtype=np.float32),
        labels=np.full((n, n_modes), np.nan, dtype=np.float32),
        groups=np.full(n, POOL_GROUP, dtype=np.int64),
    )
