"""The training loop for DGA models: losses, early stopping, checkpoints, CUDA autocast, DDP.

* Losses: RUL mean by MSE (normalised by ``rul_cap``), RUL variance by a Gaussian NLL on the
  *detached* mean (so learning the uncertainty never pulls the mean away from the MSE optimum),
  per-mode BCE; unknown labels (NaN) are masked out. With teacher targets (distillation) the RUL
  and mode targets are blended with the teacher's outputs (``distil_alpha``).
* Early stopping on the validation loss (validation split by unit/tool, see ``windows.py``); the
  best weights are restored and written as a checkpoint carrying config, feature spec, scaler,
  modes and metrics (``shared.models.checkpoint``).
* Precision: on CUDA, BF16 autocast where the device supports it, else FP16 with a GradScaler on
  compute capability ≥ 7.0, else FP32; on the CPU, FP32 (master weights are always FP32).
* Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP, gloo on the
  CPU and NCCL on GPUs; each rank trains on its shard of every epoch's permutation, validates on
  the whole (small) validation set so all ranks take the same early-stopping decision, and only
  rank 0 writes checkpoints and shows the progress bar.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cloud.training.errors import TrainingError
from cloud.training.windows import WindowSet
from shared.models.checkpoint import save_checkpoint
from shared.models.dga import DGA, DGAConfig

_logger = logging.getLogger(__name__)


# early-stopping criteria (TrainConfig.monitor) → the validation metric each watches
MONITORS = {"loss": "val_loss", "mode": "val_mode_bce", "rul": "val_rul_mse"}
KEEPS = ("best", "last")


@dataclass
class TrainConfig:
    epochs: int = 80  # upper bound; early stopping usually ends sooner
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 12  # epochs without validation improvement before stopping
    min_delta: float = 1e-4
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 1  # torch intra-op threads on the CPU (FACTS.md: one per process on small machines)
    w_rul: float = 1.0
    w_nll: float = 0.1
    w_mode: float = 0.5
    # Which mode: a cross-entropy over the mode logits on the windows whose failure within the
    # horizon is known (one label 1), so that the failing mode's head beats the type's others.
    # The per-mode BCE alone lets one head per tool type win on most degrading windows: on B2's
    # runs, in the last 24 h before a failure the most probable mode is the failing one in about
    # half the windows (etch: 23-40%), even on the training tools. Weight 0.5 brought that to
    # 77-79% on three training seeds, but the same heads carry the alert risk, whose ranking got
    # worse on two seeds of three (bench/results/models.md, "Which mode"), so it is off by
    # default: the release names the mode from the embedding instead. 0 is off; a model of one
    # mode (C-MAPSS) gets nothing from it.
    w_mode_ce: float = 0.0
    # Which mode, in the embedding: a cross-entropy, on the same windows, of a linear classifier
    # over the embedding that is trained beside the model and dropped after (never exported). It
    # shapes the trunk so that the modes lie apart in the embedding the release's namer reads
    # (shared.naming), and leaves the mode heads, which carry the alert risk, to their BCE.
    # 0 is off.
    w_name: float = 0.0
    distil_alpha: float = 0.5  # weight of the teacher's targets when present
    grad_clip: float = 1.0
    drop_prob: float = 0.0  # share of training batches run with random token dropping, so the
    drop_min_keep: float = 0.5  # model (and its gates) learn to work on the kept tokens only
    input_noise: float = 0.0  # std of Gaussian noise added to training windows (augmentation)
    w_gate: float = 0.0  # L1 pressure on the mean gate: gates close where tokens do not help
    # What early stopping watches on the validation split: "loss" (the weighted training loss
    # without the variance term), "mode" (the failure-mode BCE alone: what alerts are raised on)
    # or "rul" (the RUL squared error alone). On the simulator's fleet the validation RUL error
    # rises from the first epochs while the mode heads improve for ten, so the summed loss dipped
    # at epoch 2 and patience stopped training before the schedule annealed (models.md, B2).
    monitor: str = "loss"
    ema_decay: float = 0.99  # exponential moving average of the weights (0 = off): validation and
    # the saved model use the averaged weights, which are far less noisy epoch to epoch
    # Which weights fit() returns: "best" (lowest validation ``monitor``; early stopping applies)
    # or "last" (the end of the schedule, no early stopping; the validation split may be empty).
    # "last" is for a refit on every unit once cross-validation has fixed the schedule, so that
    # no unit is held out of training to pick an epoch.
    keep: str = "best"
    progress: bool = True
    max_minutes: float = 0.0  # 0 = no wall-clock limit
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    model: DGA
    metrics: dict[str, float]
    history: list[dict[str, float]]
    checkpoint: Path | None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """BF16 where the GPU supports it, FP16 on tensor-core GPUs without it, else None (FP32)."""
    if device.type != "cuda":
        return None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    major, _ = torch.cuda.get_device_capability(device)
    return torch.float16 if major >= 7 else None


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def losses(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], cfg: TrainConfig, nll: bool = True
) -> torch.Tensor:
    """The weighted training loss of one batch (targets already normalised by rul_cap).

    ``nll=False`` leaves out the variance term: that is the validation monitor, because the NLL can
    keep falling by shrinking the variance while the mean gets worse.
    """
    rul_t, lab_t = batch["rul"], batch["labels"]
    if "teacher_rul" in batch:
        a = cfg.distil_alpha
        rul_t = torch.where(
            torch.isnan(rul_t), batch["teacher_rul"], (1 - a) * rul_t + a * batch["teacher_rul"]
        )
        lab_t = torch.where(
            torch.isnan(lab_t), batch["teacher_probs"], (1 - a) * lab_t + a * batch["teacher_probs"]
        )
    mu, logvar = out["rul_norm"].float(), out["rul_logvar"].float()
    known = ~torch.isnan(rul_t)
    total = mu.new_zeros(())
    if known.any():
        err = mu[known] - rul_t[known]
        # a window's weight scales its RUL terms (WindowSet.weight: e.g. to match the windows a test
        # protocol scores); the set's weights have mean 1, so the loss keeps its scale
        w = batch["weight"][known] if "weight" in batch else torch.ones_like(err)
        total = total + cfg.w_rul * (w * err**2).mean()
        if nll:
            gauss = 0.5 * (logvar[known] + err.detach() ** 2 * torch.exp(-logvar[known]))
            total = total + cfg.w_nll * (w * gauss).mean()
    lab_known = ~torch.isnan(lab_t)
    if lab_known.any():
        bce = F.binary_cross_entropy_with_logits(
            out["mode_logits"].float()[lab_known], lab_t[lab_known], reduction="mean"
        )
        total = total + cfg.w_mode * bce
    if cfg.w_mode_ce > 0:
        total = total + cfg.w_mode_ce * naming_loss(out["mode_logits"], batch["labels"])
    return total


def naming_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, M) mode ``logits`` on the windows whose hard ``labels`` hold exactly one
    failing mode (the teacher's soft labels say no mode for sure); 0 when there are none."""
    one = (labels == 1.0).sum(dim=1) == 1  # NaN rows (unknown) compare False
    if not one.any():
        # zero, but still of the logits: each parameter gets a (zero) gradient, so DDP ranks with
        # and without such windows average the same tensors
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float()[one], labels[one].argmax(dim=1))


def _tensors(ws: WindowSet, idx: np.ndarray, cap: float, device: torch.device) -> dict[str, torch.Tensor]:
    batch = {
        "x": torch.from_numpy(ws.x[idx]).to(device),
        "rul": torch.from_numpy(ws.rul[idx] / cap).float().to(device),
        "labels": torch.from_numpy(ws.labels[idx]).float().to(device),
    }
    if ws.weight is not None:
        batch["weight"] = torch.from_numpy(ws.weight[idx]).float().to(device)
    if ws.teacher_rul is not None and ws.teacher_probs is not None:
        batch["teacher_rul"] = torch.from_numpy(ws.teacher_rul[idx] / cap).float().to(device)
        batch["teacher_probs"] = torch.from_numpy(ws.teacher_probs[idx]).float().to(device)
    return batch


@torch.no_grad()
def predict(
    model: DGA, x: np.ndarray, batch_size: int = 1024, keep_ratio: float | None = None
) -> dict[str, np.ndarray]:
    """Model outputs on (N, T, F) windows as numpy arrays (eval mode, FP32, model's device)."""
    model.eval()
    device = next(model.parameters()).device
    keys = ("probs", "rul", "rul_std", "embedding", "gates")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for start in range(0, len(x), batch_size):
        out = model(torch.from_numpy(x[start : start + batch_size]).to(device), keep_ratio=keep_ratio)
        for k in keys:
            parts[k].append(out[k].float().cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def evaluate(model: DGA, ws: WindowSet, cfg: TrainConfig) -> dict[str, float]:
    """Validation loss and plain metrics (RUL RMSE on known targets, mode BCE, Brier)."""
    model.eval()
    device = next(model.parameters()).device
    cap = model.cfg.rul_cap
    total, mode_bce, rul_mse, n = 0.0, 0.0, 0.0, 0
    # the BCE alone: what alerts are raised on and early stopping on "mode" watches
    only_mode = replace(cfg, w_rul=0.0, w_mode=1.0, w_mode_ce=0.0)
    only_rul = replace(cfg, w_rul=1.0, w_mode=0.0, w_mode_ce=0.0)
    with torch.no_grad():
        for start in range(0, len(ws), 1024):
            idx = np.arange(start, min(start + 1024, len(ws)))
            batch = _tensors(ws, idx, cap, device)
            batch.pop("teacher_rul", None)
            batch.pop("teacher_probs", None)
            out = model(batch["x"])
            total += float(losses(out, batch, cfg, nll=False)) * len(idx)
            mode_bce += float(losses(out, batch, only_mode, nll=False)) * len(idx)
            rul_mse += float(losses(out, batch, only_rul, nll=False)) * len(idx)
            n += len(idx)
    pred = predict(model, ws.x)
    known = np.isfinite(ws.rul)
    rmse = float(np.sqrt(np.mean((pred["rul"][known] - ws.rul[known]) ** 2))) if known.any() else math.nan
    lab = np.isfinite(ws.labels)
    brier = float(np.mean((pred["probs"][lab] - ws.labels[lab]) ** 2)) if lab.any() else math.nan
    return {
        "val_loss": total / max(n, 1),
        "val_mode_bce": mode_bce / max(n, 1),
        "val_rul_mse": rul_mse / max(n, 1),
        "val_rmse": rmse,
        "val_brier": brier,
    }


def new_model(config: DGAConfig, seed: int) -> DGA:
    """A DGA whose initial weights are drawn from ``seed``.

    :func:`fit` seeds torch for the batches, but only once the model exists; a model built
    before that draws its weights from whatever the global RNG holds, and two runs of one command
    then train different models. Every trainer builds its model here.
    """
    torch.manual_seed(seed)
    return DGA(config)


def _naming_head(model: DGA, cfg: TrainConfig) -> torch.nn.Linear:
    """The w_name classifier: embedding → mode logits, drawn from its own generator so that the
    model's batches and dropout see the same random stream as without it."""
    head = torch.nn.Linear(model.cfg.embed_dim, model.cfg.n_modes)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    bound = 1.0 / math.sqrt(model.cfg.embed_dim)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.uniform_(-bound, bound, generator=gen)
    return head


def _average_grads(module: torch.nn.Module | None, world: int) -> None:
    """Under DDP, average the gradients of a module DDP does not wrap (the naming head), so every
    rank takes the same step."""
    if module is None or world <= 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def fit(
    model: DGA,
    train: WindowSet,
    val: WindowSet,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    meta: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model``; returns the model (on CPU) and its metrics.

    With ``cfg.keep == "best"``: early stopping on ``val``, the best epoch's weights returned. With
    ``"last"``: the whole schedule, the final weights returned; ``val`` (may be empty) is only
    reported.
    """
    if cfg.keep not in KEEPS:
        raise TrainingError(f"train.keep: {cfg.keep!r} is not one of {sorted(KEEPS)}")
    if len(train) == 0 or (len(val) == 0 and cfg.keep == "best"):
        raise TrainingError(f"empty split: {len(train)} training and {len(val)} validation windows")
    if cfg.monitor not in MONITORS:
        raise TrainingError(f"train.monitor: {cfg.monitor!r} is not one of {sorted(MONITORS)}")
    watched = MONITORS[cfg.monitor]
    if train.window > model.cfg.window or train.n_features != model.cfg.n_features:
        raise TrainingError(
            f"windows are {train.window}×{train.n_features}, model expects "
            f"≤{model.cfg.window}×{model.cfg.n_features}"
        )
    rank, world, local_rank = dist_env()
    device = pick_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    if device.type == "cpu":
        torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    started_pg = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        started_pg = True
    model.to(device)
    net: torch.nn.Module = model
    if world > 1:
        # find_unused_parameters: a batch whose RUL (or mode) labels are all unknown leaves that
        # head without a gradient on one rank; DDP must not wait for it.
        net = DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None, find_unused_parameters=True
        )
    amp = autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 else None
    # The training-only naming classifier over the embedding (TrainConfig.w_name); outside the
    # model, so checkpoints and exports are as without it. Seeded apart from the model's weights.
    namer = _naming_head(model, cfg) if cfg.w_name > 0 else None
    trained = [p for p in model.parameters() if p.requires_grad]
    trained += list(namer.parameters()) if namer is not None else []
    opt = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if namer is not None:
        namer.to(device)
    steps_per_epoch = max(1, math.ceil(len(train) / world / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    # A tenth of the steps warm up, except at exactly 10 steps: torch's schedule then ends the
    # warm-up on step 0 and divides by zero (a learning round of 10 epochs on under one batch).
    pct = 0.1 if total != 10 else 0.2
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct)
    _logger.info(
        "training %d params on %d windows (val %d), device %s, autocast %s, world %d",
        model.n_params(),
        len(train),
        len(val),
        device,
        amp,
        world,
    )
    # The average's horizon (1 / (1 - decay) steps) is kept within the run: a learning round's
    # fine-tune of 16 steps at 0.99 returned weights still 85% its first step's and moved the
    # risk a tenth as far as without the average. Runs of 100 steps or more (B1, B2, B8's
    # rounds, the demo's first training) keep ema_decay as set.
    decay = min(cfg.ema_decay, 1.0 - 1.0 / total) if total > 1 else 0.0
    average = torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=average) if decay > 0 else None
    rng = np.random.default_rng(cfg.seed)
    best = math.inf
    best_state = copy.deepcopy(model.state_dict())
    best_metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    bad_epochs = 0
    t0 = time.monotonic()
    bar = tqdm(range(cfg.epochs), desc="train", disable=not cfg.progress or rank != 0, leave=False)
    for epoch in bar:
        net.train()
        perm = rng.permutation(len(train))  # the same on every rank (same seed): shards are disjoint
        shard = perm[rank::world]
        running, count = 0.0, 0
        for s in range(steps_per_epoch):
            idx = shard[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            if len(idx) == 0:
                idx = shard[: cfg.batch_size]  # keep every rank stepping the same number of times
            batch = _tensors(train, idx, model.cfg.rul_cap, device)
            if cfg.input_noise > 0:
                batch["x"] = batch["x"] + cfg.input_noise * torch.randn_like(batch["x"])
            ctx = torch.autocast("cuda", dtype=amp) if amp is not None else nullcontext()
            keep = None
            if cfg.drop_prob > 0 and rng.uniform() < cfg.drop_prob:
                keep = float(rng.uniform(cfg.drop_min_keep, 1.0))
            with ctx:
                out = net(batch["x"], keep_ratio=keep)
            loss = losses(out, batch, cfg)
            if namer is not None:
                loss = loss + cfg.w_name * naming_loss(namer(out["embedding"].float()), batch["labels"])
            if cfg.w_gate > 0:
                loss = loss + cfg.w_gate * out["gates"].float().mean()
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                _average_grads(namer, world)
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                _average_grads(namer, world)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            running += float(loss.detach()) * len(idx)
            count += len(idx)
        scored: DGA = ema.module if ema is not None else model  # type: ignore[assignment]
        metrics = evaluate(scored, val, cfg) if len(val) else {}
        metrics.update(epoch=float(epoch), train_loss=running / max(count, 1))
        history.append(metrics)
        val_rmse = metrics.get("val_rmse", math.nan)  # none without a validation split (keep="last")
        bar.set_postfix(loss=f"{metrics['train_loss']:.4f}", val_rmse=f"{val_rmse:.2f}")
        if cfg.keep == "best":  # with "last", the weights after the loop are kept, whatever ended it
            if metrics[watched] < best - cfg.min_delta:
                best, bad_epochs = metrics[watched], 0
                best_state = copy.deepcopy(scored.state_dict())
                best_metrics = dict(metrics)
            else:
                bad_epochs += 1
        if bad_epochs >= cfg.patience:  # never with keep="last": it counts no bad epochs
            _logger.info("early stop after epoch %d (best %s %.5f)", epoch, watched, best)
            break
        if cfg.max_minutes and time.monotonic() - t0 > 60 * cfg.max_minutes:
            _logger.info("wall-clock limit after epoch %d", epoch)
            break
    bar.close()
    if cfg.keep == "last":
        best_state, best_metrics = copy.deepcopy(scored.state_dict()), dict(history[-1])
    model.load_state_dict(best_state)
    model.cpu().eval()
    best_metrics["train_seconds"] = time.monotonic() - t0
    best_metrics["epochs_run"] = float(len(history))
    path = None
    if checkpoint is not None and rank == 0:
        doc = dict(meta or {})
        doc.setdefault("metrics", {}).update(best_metrics)
        doc["train_config"] = asdict(cfg)
        path = save_checkpoint(checkpoint, model, doc)
    if world > 1:
        dist.barrier()
    if started_pg:
        dist.destroy_process_group()
    return FitResult(model=model, metrics=best_metrics, history=history, checkpoint=path)
