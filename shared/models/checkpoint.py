"""Checkpoints that rebuild their model alone: weights plus config, feature spec, modes, metrics.

File layout (``torch.save`` of a plain dict, loaded with ``weights_only=True``)::

    {"format": "fabpm-ckpt/1", "kind": "dga" | "tuning", "config": {...}, "state_dict": {...},
     "meta": {"feature_spec": FeatureSpec.to_dict(), "modes": [...], "metrics": {...}, ...}}
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.errors import FabpmError
from shared.models.dga import DGA, DGAConfig

_logger = logging.getLogger(__name__)

FORMAT = "fabpm-ckpt/1"


class CheckpointError(FabpmError):
    """A checkpoint is missing, of an unknown format, or does not match its own config."""


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model`` (a DGA or a TuningNet, unwrapped from DDP) with ``meta`` atomically."""
    inner = getattr(model, "module", model)  # DistributedDataParallel keeps the model in .module
    cfg = getattr(inner, "cfg", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise CheckpointError(f"{type(inner).__name__} has no config to save")
    kind = "dga" if isinstance(inner, DGA) else "tuning"
    state = {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    doc = {"format": FORMAT, "kind": kind, "config": cfg.to_dict(), "state_dict": state, "meta": meta}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(doc, tmp)
    tmp.replace(path)
    _logger.debug("saved %s checkpoint %s", kind, path)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from the checkpoint alone; returns ``(model in eval mode, meta)``.

    ``meta["config"]`` is set to the model config dict as well, so callers need only ``meta``.
    """
    path = Path(path)
    try:
        doc = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such checkpoint") from exc
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {doc.get('format') if isinstance(doc, dict) else '?'!r}")
    model: nn.Module
    try:
        if doc["kind"] == "dga":
            model = DGA(DGAConfig.from_dict(doc["config"]))
        elif doc["kind"] == "tuning":
            from shared.models.tuning_net import TuningConfig, TuningNet

            model = TuningNet(TuningConfig.from_dict(doc["config"]))
        else:
            raise CheckpointError(f"{path}: unknown model kind {doc['kind']!r}")
        model.load_state_dict(doc["state_dict"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: does not rebuild its model: {exc}") from exc
    model.to(map_location).eval()
    meta = dict(doc.get("meta") or {})
    meta["config"] = doc["config"]
    meta["kind"] = doc["kind"]
    return model, meta
