"""The DGA (Dynamic Gated Attention) transformer of DESIGN.md §5, in one file.

A window of ``T`` time steps with ``F`` features each becomes ``T`` tokens. Every token gets a
gate computed from itself and the window's mean token::

    g_t = sigmoid(MLP([h_t ; mean_s h_s]))        MLP: d → d/4 → 1 with SiLU

and ``log g_t`` is added to the attention logits of key ``t`` in every layer, and to the logits of
the attention pooling that summarises the window. A token whose gate is near 0 therefore receives
no attention and contributes nothing; at inference the ``k = ceil(keep_ratio · T)`` tokens with the
highest gates can be kept and the others dropped before the first layer (``torch.topk`` + gather,
both exportable to ONNX) which gives exactly the same result as masking them, at less compute.
The gates are computed once, from the embedded input, so they decide which tokens enter the stack.

Heads on the pooled vector: per-mode probability of failure within the horizon (sigmoid, one per
mode: modes are not exclusive when a tool has several progressive faults), RUL mean and log
variance (trained with a Gaussian NLL, reported as hours/cycles and a standard deviation), and an
L2-normalised embedding used for novelty (distance to training centroids, ``shared.uncertainty``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OUTPUT_NAMES = ("probs", "rul", "rul_std", "embedding")
INPUT_NAME = "x"


@dataclass
class DGAConfig:
    n_features: int = 14  # F: features per time step
    window: int = 30  # T: steps per window (positional table size; the export fixes T to it)
    n_modes: int = 1  # M: per-mode failure-probability heads (order = the manifest's modes)
    d_model: int = 64  # D: token width
    n_heads: int = 4  # attention heads (D must divide by it)
    n_layers: int = 2  # transformer blocks
    d_ff: int = 128  # feed-forward width inside a block
    embed_dim: int = 32  # E: novelty embedding width
    dropout: float = 0.1  # in attention and feed-forward (training only)
    rul_cap: float = 125.0  # RUL scale: the RUL head predicts rul / rul_cap
    horizon: float = 72.0  # the probability heads mean "fails within this many hours/cycles"
    logvar_min: float = -9.0  # clamp of the RUL log variance (normalised units) for a stable NLL
    logvar_max: float = 2.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if min(self.n_features, self.window, self.n_modes, self.d_model, self.n_layers) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DGAConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown DGAConfig keys: {sorted(unknown)}")
        return cls(**data)


class TokenGate(nn.Module):
    """g = sigmoid(MLP([token ; mean of tokens])); returns the gate logit (B, T)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        hidden = max(1, d_model // 4)
        self.fc1 = nn.Linear(2 * d_model, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        # Start with gates near sigmoid(2) ≈ 0.88: every token attended at first, the model learns
        # to close the gates that do not help rather than to open them from nothing.
        nn.init.constant_(self.fc2.bias, 2.0)

    def forward(self, h: Tensor) -> Tensor:  # h: (B, T, D)
        ctx = h.mean(dim=1, keepdim=True).expand_as(h)  # (B, T, D)
        z = self.fc2(F.silu(self.fc1(torch.cat([h, ctx], dim=-1))))  # (B, T, 1)
        return z.squeeze(-1)  # (B, T)


class GatedSelfAttention(nn.Module):
    """Multi-head self-attention with a per-key additive bias (log of the key's gate)."""

    def __init__(self, cfg: DGAConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.d_head = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h: Tensor, key_bias: Tensor) -> Tensor:  # h: (B, T, D), key_bias: (B, T)
        b, t, d = h.shape
        q, k, v = self.qkv(h).split(d, dim=-1)  # 3 × (B, T, D)
        q = q.reshape(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        k = k.reshape(b, t, self.n_heads, self.d_head).transpose(1, 2)
        v = v.reshape(b, t, self.n_heads, self.d_head).transpose(1, 2)
        bias = key_bias[:, None, None, :]  # (B, 1, 1, T): log g of each key, for every query
        if torch.onnx.is_in_onnx_export():
            # Spelled out for the edge graph: the exporter's SDPA adds shape arithmetic nodes,
            # and the edge model is dispatch-bound (B3), so every node counts there.
            logits = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head)) + bias  # (B, H, T, T)
            y = torch.softmax(logits, dim=-1) @ v
        else:
            # The fused kernel: same result (to float rounding), verdicts ~20% faster on the CPU (B6 notes).
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.drop.p if self.training else 0.0
            )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class Block(nn.Module):
    """Pre-norm transformer block: gated attention, then a SiLU feed-forward."""

    def __init__(self, cfg: DGAConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = GatedSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff),
            nn.SiLU(),
            nn.Linear(cfg.d_ff, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, h: Tensor, key_bias: Tensor) -> Tensor:  # (B, T, D), (B, T)
        h = h + self.attn(self.ln1(h), key_bias)
        return h + self.ff(self.ln2(h))


class DGA(nn.Module):
    """The DGA transformer. ``forward(x (B, T, F)) -> dict`` (see :meth:`forward`)."""

    def __init__(self, cfg: DGAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.n_features, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(cfg.window, cfg.d_model) * 0.02)  # (T, D)
        self.gate = TokenGate(cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.pool_score = nn.Linear(cfg.d_model, 1)  # attention pooling: one learned query
        self.trunk = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.SiLU())
        self.mode_head = nn.Linear(cfg.d_model, cfg.n_modes)
        self.rul_head = nn.Linear(cfg.d_model, 1)  # mean (normalised by rul_cap)
        self.var_head = nn.Linear(cfg.d_model, 1)  # log variance, on detached features (below)
        # The embedding is a fixed random projection of the trunk features (no loss trains it):
        # random projections preserve distances (Johnson-Lindenstrauss), which is all novelty needs,
        # and a frozen head cannot drift between fine-tunes, so centroids stay comparable.
        self.emb_head = nn.Linear(cfg.d_model, cfg.embed_dim)
        self.emb_head.requires_grad_(False)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, x: Tensor, keep_ratio: float | None = None, token_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Run the model on ``x`` (B, T, F) with T ≤ cfg.window.

        ``keep_ratio`` in (0, 1): keep only the ``ceil(keep_ratio · T)`` highest-gate tokens.
        ``token_mask`` (B, T) bool: attend only to the True tokens (the masked equivalent of
        dropping; used by tests and by evaluation of what dropping would do).

        Returns ``probs`` (B, M) in (0, 1), ``rul`` (B,) in [0, rul_cap] in the target's units, ``rul_std``
        (B,), ``embedding`` (B, E) unit-norm, ``gates`` (B, T) in (0, 1) for all input tokens, and
        for the losses ``mode_logits`` (B, M), ``rul_norm`` (B,) and ``rul_logvar`` (B,).
        """
        b, t, _ = x.shape
        h = self.inp(x) + self.pos[:t]  # (B, T, D)
        gate_logit = self.gate(h)  # (B, T)
        gates = torch.sigmoid(gate_logit)  # (B, T)
        log_g = F.logsigmoid(gate_logit)  # (B, T), exact even where g underflows
        if token_mask is not None:
            log_g = log_g.masked_fill(~token_mask, float("-inf"))
        if keep_ratio is not None and keep_ratio < 1.0:
            k = max(1, math.ceil(keep_ratio * t))
            idx = torch.topk(gate_logit, k, dim=1).indices  # (B, k); order is irrelevant: the
            # positions are already in the tokens and attention/pooling are permutation-invariant
            h = torch.gather(h, 1, idx.unsqueeze(-1).expand(b, k, h.shape[-1]))  # (B, k, D)
            log_g = torch.gather(log_g, 1, idx)  # (B, k)
        for block in self.blocks:
            h = block(h, log_g)
        h = self.ln_f(h)  # (B, T', D)
        w = torch.softmax(self.pool_score(h).squeeze(-1) + log_g, dim=1)  # (B, T')
        pooled = (w.unsqueeze(-1) * h).sum(dim=1)  # (B, D)
        z = self.trunk(pooled)  # (B, D)
        mode_logits = self.mode_head(z)  # (B, M)
        rul_norm = self.rul_head(z).squeeze(-1)  # (B,)
        # the variance head reads detached features: learning the uncertainty must not bend the
        # representation the mean (and the mode heads) rely on
        rul_logvar = self.var_head(z.detach()).squeeze(-1).clamp(self.cfg.logvar_min, self.cfg.logvar_max)
        return {
            "probs": torch.sigmoid(mode_logits),
            # every target is min(RUL, cap), so a mean outside [0, cap] is never right: bounding
            # it can only bring each prediction closer to its truth (training reads rul_norm)
            "rul": rul_norm.clamp(0.0, 1.0) * self.cfg.rul_cap,
            "rul_std": torch.exp(0.5 * rul_logvar) * self.cfg.rul_cap,
            "embedding": F.normalize(self.emb_head(z), dim=-1),
            "gates": gates,
            "mode_logits": mode_logits,
            "rul_norm": rul_norm,
            "rul_logvar": rul_logvar,
        }


class ExportWrapper(nn.Module):
    """The edge's view of a DGA: ``x`` → (probs, rul, rul_std, embedding), CONTRACTS.md order."""

    def __init__(self, model: DGA, keep_ratio: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.keep_ratio = keep_ratio

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.model(x, keep_ratio=self.keep_ratio)
        return out["probs"], out["rul"], out["rul_std"], out["embedding"]


def flops(cfg: DGAConfig, keep_ratio: float | None = None, seq: int | None = None) -> int:
    """Multiply-adds × 2 of one window's forward pass (matmuls only; norms and softmax are small)."""
    t = seq or cfg.window
    d, f = cfg.d_model, cfg.n_features
    total = 2 * t * f * d  # input projection
    total += 2 * t * (2 * d * max(1, d // 4) + max(1, d // 4))  # gate MLP, always on every token
    k = t if keep_ratio is None or keep_ratio >= 1.0 else max(1, math.ceil(keep_ratio * t))
    per_layer = 2 * k * d * 3 * d + 2 * 2 * k * k * d + 2 * k * d * d + 2 * 2 * k * d * cfg.d_ff
    total += cfg.n_layers * per_layer
    total += 2 * k * d  # pooling scores
    total += 2 * d * d + 2 * d * (cfg.n_modes + 2 + cfg.embed_dim)  # heads
    return int(total)
