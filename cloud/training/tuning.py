"""The tuning surrogate: trained on the lots of a simulator export, exported to ONNX, signed.

Rows come from ``ground_truth.jsonl`` lot records of one tool type: the lot's setpoints (the
tool type's tunable setpoints, in catalog order) then the context, which must be something the
edge can read at run time: the tool's ``last_lot_yield`` and ``last_lot_energy_kwh`` counters
(the previous lot's outcome on that tool, which carries the tool's current health and drift).
Targets: the lot's yield (%) and energy (kWh). Validation is split by tool.

The ONNX graph takes the raw row (normalisation is inside the model) and returns ``yield`` and
``energy``; the manifest (role ``edge-tuning``) lists ``setpoints``, ``context``, ``mean``,
``std`` (of the training rows, for information and range checks) and ``tool_type``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.training.errors import TrainingError
from cloud.training.export import export_module
from shared.dataset import read_info
from shared.equipment import tool_type
from shared.models.checkpoint import save_checkpoint
from shared.models.tuning_net import OUTPUT_NAMES, TuningConfig, TuningNet
from shared.signing import ModelManifest, write_release

_logger = logging.getLogger(__name__)

CONTEXT = ("last_lot_yield", "last_lot_energy_kwh")


@dataclass
class LotRows:
    x: np.ndarray  # (N, D) setpoints then context
    y: np.ndarray  # (N, 2) yield, energy
    tools: np.ndarray  # (N,) tool index (for the split)
    setpoints: list[str]
    context: list[str]


def tunable_setpoints(type_name: str) -> list[str]:
    return [sp.name for sp in tool_type(type_name).setpoints if sp.name != "idle_mode"]


def lot_rows(folder: Path, type_name: str) -> LotRows:
    """One row per lot of ``type_name`` tools that has a previous lot on the same tool."""
    info = read_info(Path(folder))
    ids = {t.tool_id: i for i, t in enumerate(info.tools) if t.tool_type == type_name}
    if not ids:
        raise TrainingError(f"{folder}: no {type_name} tools")
    names = tunable_setpoints(type_name)
    last: dict[str, tuple[float, float]] = {}
    xs, ys, tools = [], [], []
    path = Path(folder) / "ground_truth.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TrainingError(f"{path}: cannot read the ground truth: {exc}") from exc
    for line in lines:
        rec = json.loads(line)
        if rec.get("kind") != "lot" or rec.get("tool") not in ids:
            continue
        tool = rec["tool"]
        try:
            sp = [float(rec["setpoints"][n]) for n in names]
            outcome = (float(rec["yield"]), float(rec["energy_kwh"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainingError(f"{path}: malformed lot record {rec}: {exc}") from exc
        if tool in last:
            xs.append([*sp, *last[tool]])
            ys.append(outcome)
            tools.append(ids[tool])
        last[tool] = outcome
    if len(xs) < 10:
        raise TrainingError(f"{folder}: only {len(xs)} {type_name} lots; export more days")
    return LotRows(
        np.asarray(xs, np.float32), np.asarray(ys, np.float32), np.asarray(tools), names, list(CONTEXT)
    )


def train_surrogate(
    rows: LotRows, epochs: int = 200, hidden: int = 64, seed: int = 0, patience: int = 20
) -> tuple[TuningNet, dict[str, float]]:
    """Fit the MLP (full batch Adam, early stopping on held-out tools); returns it and metrics."""
    torch.manual_seed(seed)
    groups = np.unique(rows.tools)
    rng = np.random.default_rng(seed)
    val_g = rng.choice(groups, size=max(1, len(groups) // 4), replace=False) if len(groups) > 1 else groups
    is_val = np.isin(rows.tools, val_g) if len(groups) > 1 else rng.uniform(size=len(rows.x)) < 0.2
    xt, yt = rows.x[~is_val], rows.y[~is_val]
    cfg = TuningConfig(
        n_inputs=rows.x.shape[1],
        hidden=hidden,
        x_mean=xt.mean(0).tolist(),
        x_std=np.maximum(xt.std(0), 1e-6).tolist(),
        y_mean=yt.mean(0).tolist(),
        y_std=np.maximum(yt.std(0), 1e-6).tolist(),
    )
    net = TuningNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    xt_t, yt_t = torch.from_numpy(xt), torch.from_numpy((yt - yt.mean(0)) / np.maximum(yt.std(0), 1e-6))
    xv_t, yv = torch.from_numpy(rows.x[is_val]), rows.y[is_val]
    best, best_state, bad = math.inf, {k: v.clone() for k, v in net.state_dict().items()}, 0
    for _ in range(epochs):
        net.train()
        loss = ((net.normalised(xt_t) - yt_t) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        net.eval()
        with torch.no_grad():
            py, pe = net(xv_t)
        val = float(np.mean((py.numpy() - yv[:, 0]) ** 2) / max(yv[:, 0].var(), 1e-9))
        val += float(np.mean((pe.numpy() - yv[:, 1]) ** 2) / max(yv[:, 1].var(), 1e-9))
        if val < best - 1e-5:
            best, bad = val, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        py, pe = net(xv_t)
    metrics = {
        "val_yield_mae": float(np.mean(np.abs(py.numpy() - yv[:, 0]))),
        "val_energy_mae": float(np.mean(np.abs(pe.numpy() - yv[:, 1]))),
        "val_yield_r2": float(1 - np.mean((py.numpy() - yv[:, 0]) ** 2) / max(yv[:, 0].var(), 1e-9)),
        "val_energy_r2": float(1 - np.mean((pe.numpy() - yv[:, 1]) ** 2) / max(yv[:, 1].var(), 1e-9)),
        "rows": float(len(rows.x)),
    }
    return net, metrics


class _TupleOut(torch.nn.Module):
    def __init__(self, net: TuningNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)


def release_tuning(
    folder: Path,
    type_name: str,
    out_dir: Path,
    key: Ed25519PrivateKey,
    version: str,
    parent: str | None = None,
    epochs: int = 200,
) -> tuple[Path, ModelManifest]:
    """Train, export and sign the edge-tuning model of one tool type."""
    rows = lot_rows(folder, type_name)
    net, metrics = train_surrogate(rows, epochs=epochs)
    out_dir = Path(out_dir)
    save_checkpoint(
        out_dir / f"tuning_{type_name}_{version}.pt", net, {"metrics": metrics, "tool_type": type_name}
    )
    path = export_module(
        _TupleOut(net),
        torch.from_numpy(rows.x[:2]),
        out_dir / f"tuning_{type_name}_{version}.onnx",
        "x",
        OUTPUT_NAMES,
    )
    fields: dict[str, Any] = {
        "model_id": f"fabpm-edge-tuning-{type_name}",
        "version": version,
        "parent_version": parent,
        "role": "edge-tuning",
        "created_ts": time.time(),
        "input_spec": {
            "input_name": "x",
            "setpoints": rows.setpoints,
            "context": rows.context,
            "mean": rows.x.mean(0).astype(float).tolist(),
            "std": rows.x.std(0).astype(float).tolist(),
            "tool_type": type_name,
            "x_is_raw": True,  # normalisation is inside the graph
        },
        "output_spec": {"names": list(OUTPUT_NAMES), "units": {"yield": "%", "energy": "kWh"}},
        "metrics": metrics,
    }
    manifest, _ = write_release(path, fields, key)
    _logger.info("tuning model %s: %s", type_name, metrics)
    return path, manifest
