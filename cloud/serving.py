"""The full DGA model behind the verdicts, on the best device this machine has.

:func:`load_replicas` loads one replica per CUDA GPU (each pinned to its device, FP32 master
weights, autocast to BF16 where the GPU supports it, else FP16) or one replica on the CPU (FP32;
``torch.set_num_threads`` from the config, one thread by default because other processes share
small machines: FACTS.md). Each replica is a batch function for :class:`cloud.batcher.DynamicBatcher`:
a list of (T, F) windows in, a list of :class:`Prediction` out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud.errors import ModelError
from shared.errors import FabpmError
from shared.models.checkpoint import load_checkpoint

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prediction:
    probs: dict[str, float]  # per failure mode, probability of failure within the horizon
    rul_h: float
    rul_std_h: float


def pick_precision(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``device`` (None: plain FP32)."""
    if precision == "fp32" or device.type != "cuda":
        # CPU autocast to BF16 is slower than FP32 on CPUs without AMX/AVX-512 BF16 (FACTS.md's EPYC).
        return torch.bfloat16 if precision == "bf16" and device.type == "cpu" else None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def devices(kind: str) -> list[torch.device]:
    """The devices to put replicas on: every CUDA GPU for auto/cuda, else the CPU."""
    if kind in ("auto", "cuda") and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if kind == "cuda":
        raise ModelError("serving.device is cuda but torch sees no CUDA device")
    return [torch.device("cpu")]


def checkpoint_version(path: Path, meta: dict[str, Any]) -> str:
    """The model's version: ``meta["version"]`` when the trainer set one, else a content hash."""
    version = meta.get("version")
    if isinstance(version, str) and version:
        return version
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"full-{digest}"


class _Outputs(torch.nn.Module):
    """The DGA's verdict outputs as a tuple (what torch.jit.trace records)."""

    def __init__(self, model: torch.nn.Module, keep_ratio: float | None) -> None:
        super().__init__()
        self.model = model
        self.keep_ratio = keep_ratio

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(x, keep_ratio=self.keep_ratio)
        return out["probs"], out["rul"], out["rul_std"]


class FullModel:
    """One replica of the DGA on one device; :meth:`predict` is its batch function.

    With ``trace`` (the default) each window length gets a TorchScript trace on first use: a
    forward pass is then one call that releases the GIL throughout, instead of ~100 Python-level
    operator calls that each re-take it. With ingest threads busy in the same process, the eager
    model ran 3-4× slower from GIL hand-offs alone (measured for bench B5); the trace half as much.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: torch.device,
        autocast: torch.dtype | None,
        keep_ratio: float | None,
        version: str,
        trace: bool = True,
    ) -> None:
        self.model = model
        self.trace = trace
        self._traced: dict[int, torch.jit.ScriptModule] = {}
        self.meta = meta
        self.device = device
        self.autocast = autocast
        self.keep_ratio = keep_ratio
        self.version = version
        self.modes: list[str] = list(meta.get("modes") or [])
        self.window = int(meta["config"]["window"])
        self.n_features = int(meta["config"]["n_features"])
        if len(self.modes) != int(meta["config"]["n_modes"]):
            raise ModelError(
                f"checkpoint has {meta['config']['n_modes']} mode heads but {len(self.modes)} mode names"
            )

    def refuses(self, window: np.ndarray) -> str | None:
        """Why this model cannot answer the window (None: it can). Checked before batching, so one
        malformed case never fails a whole batch."""
        if window.ndim != 2 or window.shape[1] != self.n_features or window.shape[0] < 1:
            return f"window shape {window.shape}, the model takes (T ≤ {self.window}, {self.n_features})"
        return None

    def _fit(self, window: np.ndarray) -> np.ndarray:
        """Windows longer than the model's are cut to their newest steps; wrong widths are errors."""
        if window.ndim != 2 or window.shape[1] != self.n_features:
            raise ModelError(
                f"window shape {window.shape}, the model takes (T ≤ {self.window}, {self.n_features})"
            )
        return window[-self.window :]

    @torch.inference_mode()
    def predict(self, windows: Sequence[np.ndarray]) -> list[Prediction]:
        """(T, F) windows → predictions, one forward pass per distinct window length."""
        fitted = [self._fit(w) for w in windows]
        out: list[Prediction | None] = [None] * len(fitted)
        by_len: dict[int, list[int]] = {}
        for i, w in enumerate(fitted):
            by_len.setdefault(w.shape[0], []).append(i)
        for idx in by_len.values():
            x = torch.from_numpy(np.stack([fitted[i] for i in idx]).astype(np.float32)).to(self.device)
            ctx = (
                torch.autocast(self.device.type, dtype=self.autocast)
                if self.autocast is not None
                else contextlib.nullcontext()
            )
            with ctx:
                probs_t, rul_t, std_t = self._forward(x)
            probs = probs_t.float().cpu().numpy()  # (B, M)
            rul = rul_t.float().cpu().numpy()  # (B,)
            rul_std = std_t.float().cpu().numpy()  # (B,)
            for j, i in enumerate(idx):
                out[i] = Prediction(
                    probs={m: float(p) for m, p in zip(self.modes, probs[j], strict=True)},
                    rul_h=float(rul[j]),
                    rul_std_h=float(rul_std[j]),
                )
        return [p for p in out if p is not None]

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.trace:
            out = self.model(x, keep_ratio=self.keep_ratio)
            return out["probs"], out["rul"], out["rul_std"]
        steps = int(x.shape[1])
        fn = self._traced.get(steps)
        if fn is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on shape-derived Python values
                # Traced on a batch of 2 so the batch axis stays symbolic; outputs are checked below.
                example = x[:1].expand(2, *x.shape[1:]).contiguous()
                fn = torch.jit.trace(_Outputs(self.model, self.keep_ratio), example, check_trace=False)
            ref = _Outputs(self.model, self.keep_ratio)(x)
            got = fn(x)
            # Under autocast the trace and the eager pass may hand back different dtypes (BF16 vs
            # FP32 heads) and round differently: compare in FP32 with the precision's tolerance.
            tol = (1e-4, 1e-5) if self.autocast is None else (3e-2, 3e-2)
            if not all(
                torch.allclose(a.float(), b.float(), rtol=tol[0], atol=tol[1])
                for a, b in zip(ref, got, strict=True)
            ):
                _logger.warning("traced model disagrees with eager on %d steps; serving eager", steps)
                self.trace = False
                return ref
            self._traced[steps] = fn
        return fn(x)


def load_replicas(
    path: Path,
    device: str = "auto",
    precision: str = "auto",
    threads: int = 1,
    keep_ratio: float | None = None,
    trace: bool = True,
) -> list[FullModel]:
    """One :class:`FullModel` per device; ModelError when the checkpoint does not load."""
    torch.set_num_threads(threads)
    replicas = []
    version = ""
    for dev in devices(device):
        try:
            model, meta = load_checkpoint(path, map_location=dev)
        except FabpmError as exc:
            raise ModelError(f"serving.checkpoint: {exc}") from exc
        version = version or checkpoint_version(path, meta)
        replica = FullModel(model, meta, dev, pick_precision(dev, precision), keep_ratio, version, trace)
        replicas.append(replica)
    _logger.info(
        "full model %s: %d replica(s) on %s, autocast %s",
        version,
        len(replicas),
        ", ".join(str(r.device) for r in replicas),
        replicas[0].autocast,
    )
    return replicas
