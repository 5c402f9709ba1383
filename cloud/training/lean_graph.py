"""The edge-risk graph of a DGA written node by node: the same function as the exporter's, fewer nodes.

At the edge model's sizes (d 32, a 48-step window) onnxruntime spends about a microsecond per node
whatever the node does, so the graph's node count sets much of its latency at batch 1 (B3). The
exporter's graph carries what a general tracer must: shape arithmetic at every reshape
(Shape/Gather/Unsqueeze/Concat), a bias Add after every 3-D MatMul, the concat and expand of the
gate's input. Here the algebra is done once, at build time:

- the input projection and the gate's first layer on ``[h ; mean h]`` share one MatMul: both are
  linear in ``x``, so ``h W_a + mean(h) W_b + b`` is ``x (W_in W_a) + mean(x) (W_in W_b)`` plus a
  (T, ·) constant that also holds the positional table and every bias;
- ``log sigmoid(z) = -softplus(-z)``: the sign is folded into the gate's last layer and the
  softplus subtracted where ``log g`` would be added;
- the tokens run as a (B·T, D) matrix, so every projection is a Gemm with its bias inside;
- attention: the scale is folded into the query weights, the key bias dropped (it adds
  ``q · b_k`` to every logit of a query alike, which the softmax ignores), the value bias folded
  into the output projection's bias (the attention weights sum to 1); reshape targets are
  constants (``-1`` for the batch);
- the pooling score's bias is dropped (softmax-invariant); the four heads are one Gemm, with the
  RUL scale, the 0.5 of ``exp(0.5 · logvar)`` and ``ln(rul_cap)`` folded into its weights, its bias
  and the clamp bounds.

Standard ONNX operators only (opset 17), so any runtime that reads the exporter's graph reads this
one; onnxruntime fuses its ``x · sigmoid(x)`` pairs into one kernel at load. Same input and outputs
as :func:`cloud.training.export.export_dga` (CONTRACTS.md order), dynamic batch axis, window fixed,
keep ratio 1 (token dropping stays with the exporter). The release ships this graph only after
checking it against the exporter's on held-out windows (:func:`cloud.training.release`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from shared.models.dga import DGA, INPUT_NAME, OUTPUT_NAMES

OPSET = 17


class _Graph:
    """Nodes and initialisers; each node named ``/<scope>/<Op>`` like the exporter's (the
    adaptive-precision step groups nodes by that scope)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray | float) -> str:
        arr = np.asarray(value)
        arr = arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float32)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, scope: str, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> list[str]:
        self._n += 1
        name = f"/{scope}/{op_type}_{self._n}"
        outs = [f"{name}:{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs

    def one(self, scope: str, op_type: str, inputs: list[str], **attrs: Any) -> str:
        return self.op(scope, op_type, inputs, 1, **attrs)[0]

    def silu(self, scope: str, x: str) -> str:
        return self.one(scope, "Mul", [x, self.one(scope, "Sigmoid", [x])])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()  # folded in float64, stored as float32


def lean_graph(model: DGA) -> onnx.ModelProto:
    """The edge graph of ``model`` in eval semantics (no dropout), keep ratio 1."""
    cfg = model.cfg
    t, d, heads, m, e = cfg.window, cfg.d_model, cfg.n_heads, cfg.n_modes, cfg.embed_dim
    dh = d // heads
    sd = {k: _np(v) for k, v in model.state_dict().items()}
    g = _Graph()

    def lin(prefix: str) -> tuple[np.ndarray, np.ndarray]:  # (in, out) weight, (out,) bias
        return sd[f"{prefix}.weight"].T, sd[f"{prefix}.bias"]

    eps = {name: float(mod.eps) for name, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)}

    def norm(scope: str, x: str, prefix: str) -> str:
        gamma, beta = (
            g.const(f"{prefix}.weight", sd[f"{prefix}.weight"]),
            g.const(f"{prefix}.bias", sd[f"{prefix}.bias"]),
        )
        return g.one(scope, "LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps[prefix])

    def shape(name: str, dims: list[int]) -> str:
        return g.const(name, np.array(dims, np.int64))

    # input projection and the gate's token part in one MatMul (see the module docstring)
    w_in, b_in = lin("inp")
    w1, b1 = lin("gate.fc1")  # (2D, hidden)
    w1a, w1b = w1[:d], w1[d:]
    hid = w1.shape[1]
    pos = b_in + sd["pos"][:t]  # (T, D)
    w_x = np.concatenate([w_in, w_in @ w1a], axis=1)  # (F, D + hidden)
    c_x = np.concatenate([pos, pos @ w1a + pos.mean(axis=0) @ w1b + b1], axis=1)  # (T, D + hidden)
    both = g.one(
        "inp", "Add", [g.one("inp", "MatMul", [INPUT_NAME, g.const("inp.w", w_x)]), g.const("inp.c", c_x)]
    )
    h3, token_part = g.op("inp", "Split", [both, shape("inp.split", [d, hid])], n_out=2, axis=2)
    x_mean = g.one("gate", "ReduceMean", [INPUT_NAME], axes=[1], keepdims=1)  # (B, 1, F)
    ctx_part = g.one("gate", "MatMul", [x_mean, g.const("gate.ctx_w", w_in @ w1b)])  # (B, 1, hidden)
    act = g.silu("gate", g.one("gate", "Add", [token_part, ctx_part]))
    w2, b2 = lin("gate.fc2")
    neg_logit = g.one(
        "gate",
        "Add",
        [g.one("gate", "MatMul", [act, g.const("gate.w2_neg", -w2)]), g.const("gate.b2_neg", -b2)],
    )
    minus_log_g = g.one("gate", "Softplus", [neg_logit])  # (B, T, 1): -log g
    key_penalty = g.one(
        "gate", "Reshape", [minus_log_g, shape("gate.key_shape", [-1, 1, 1, t])]
    )  # (B, 1, 1, T)

    h = g.one("inp", "Reshape", [h3, shape("tokens_2d", [-1, d])])  # (B·T, D)
    a = norm("blocks.0/ln1", h, "blocks.0.ln1")
    scale = 1.0 / math.sqrt(dh)
    for i in range(cfg.n_layers):
        p = f"blocks.{i}"
        w_qkv, b_qkv = lin(f"{p}.attn.qkv")
        w_qkv = w_qkv.copy()
        w_qkv[:, :d] *= scale
        bias = np.zeros(3 * d)
        bias[:d] = b_qkv[:d] * scale  # key bias dropped, value bias moved to the projection
        qkv = g.one(f"{p}/attn/qkv", "Gemm", [a, g.const(f"{p}.qkv.w", w_qkv), g.const(f"{p}.qkv.b", bias)])
        per_head = g.one(f"{p}/attn", "Reshape", [qkv, shape(f"{p}.heads", [-1, t, 3 * heads, dh])])
        per_head = g.one(f"{p}/attn", "Transpose", [per_head], perm=[0, 2, 1, 3])  # (B, 3H, T, Dh)
        q, k, v = g.op(f"{p}/attn", "Split", [per_head, shape(f"{p}.split", [heads] * 3)], n_out=3, axis=1)
        k_t = g.one(f"{p}/attn", "Transpose", [k], perm=[0, 1, 3, 2])
        logits = g.one(f"{p}/attn", "Sub", [g.one(f"{p}/attn/scores", "MatMul", [q, k_t]), key_penalty])
        y = g.one(
            f"{p}/attn/mix", "MatMul", [g.one(f"{p}/attn", "Softmax", [logits], axis=-1), v]
        )  # (B, H, T, Dh)
        y = g.one(f"{p}/attn", "Transpose", [y], perm=[0, 2, 1, 3])
        y = g.one(f"{p}/attn", "Reshape", [y, shape(f"{p}.merge", [-1, d])])  # (B·T, D)
        w_p, b_p = lin(f"{p}.attn.proj")
        b_p = b_p + b_qkv[2 * d :] @ w_p
        proj = g.one(f"{p}/attn/proj", "Gemm", [y, g.const(f"{p}.proj.w", w_p), g.const(f"{p}.proj.b", b_p)])
        h = g.one(f"{p}/attn", "Add", [proj, h])
        a2 = norm(f"{p}/ln2", h, f"{p}.ln2")
        w_f1, b_f1 = lin(f"{p}.ff.0")
        w_f2, b_f2 = lin(f"{p}.ff.2")
        f = g.one(f"{p}/ff/0", "Gemm", [a2, g.const(f"{p}.ff0.w", w_f1), g.const(f"{p}.ff0.b", b_f1)])
        f = g.one(
            f"{p}/ff/2",
            "Gemm",
            [g.silu(f"{p}/ff/act", f), g.const(f"{p}.ff2.w", w_f2), g.const(f"{p}.ff2.b", b_f2)],
        )
        h = g.one(f"{p}/ff", "Add", [f, h])
        last = i == cfg.n_layers - 1
        a = norm("ln_f" if last else f"blocks.{i + 1}/ln1", h, "ln_f" if last else f"blocks.{i + 1}.ln1")

    # attention pooling: softmax over the window of score + log g, then the weighted sum
    a3 = g.one("pool", "Reshape", [a, shape("tokens_3d", [-1, t, d])])
    w_pool, _ = lin("pool_score")
    score = g.one(
        "pool", "Sub", [g.one("pool/score", "MatMul", [a3, g.const("pool.w", w_pool)]), minus_log_g]
    )
    weights = g.one("pool", "Softmax", [score], axis=1)  # (B, T, 1)
    pooled = g.one(
        "pool", "ReduceSum", [g.one("pool", "Mul", [weights, a3]), shape("pool.axis", [1])], keepdims=0
    )

    w_t, b_t = lin("trunk.0")
    z = g.silu(
        "trunk/act", g.one("trunk", "Gemm", [pooled, g.const("trunk.w", w_t), g.const("trunk.b", b_t)])
    )
    # every head in one Gemm: [modes | rul · cap | 0.5 · logvar + ln cap | embedding]
    cap, log_cap = float(cfg.rul_cap), math.log(cfg.rul_cap)
    heads_w, heads_b = zip(*(lin(n) for n in ("mode_head", "rul_head", "var_head", "emb_head")), strict=True)
    scales = (1.0, cap, 0.5, 1.0)
    w_all = np.concatenate([w * s for w, s in zip(heads_w, scales, strict=True)], axis=1)
    b_all = np.concatenate([b * s for b, s in zip(heads_b, scales, strict=True)])
    b_all[m + 1] += log_cap
    out = g.one("heads", "Gemm", [z, g.const("heads.w", w_all), g.const("heads.b", b_all)])
    mode_l, rul_l, half_lv, emb = g.op(
        "heads", "Split", [out, shape("heads.split", [m, 1, 1, e])], n_out=4, axis=1
    )
    axis1 = shape("heads.axis", [1])
    rul = g.one("heads", "Clip", [rul_l, g.const("rul.lo", 0.0), g.const("rul.hi", cap)])
    half_lv = g.one(
        "heads",
        "Clip",
        [
            half_lv,
            g.const("lv.lo", 0.5 * cfg.logvar_min + log_cap),
            g.const("lv.hi", 0.5 * cfg.logvar_max + log_cap),
        ],
    )
    produced = {
        "probs": g.one("heads", "Sigmoid", [mode_l]),
        "rul": g.one("heads", "Squeeze", [rul, axis1]),
        "rul_std": g.one("heads", "Squeeze", [g.one("heads", "Exp", [half_lv]), axis1]),
        "embedding": g.one("heads", "LpNormalization", [emb], axis=1, p=2),
    }
    rename = {produced[n]: n for n in OUTPUT_NAMES}  # the contract's output names
    for node in g.nodes:
        node.output[:] = [rename.get(o, o) for o in node.output]
    dims: dict[str, list[str | int]] = {
        "probs": ["batch", m],
        "rul": ["batch"],
        "rul_std": ["batch"],
        "embedding": ["batch", e],
    }
    graph = helper.make_graph(
        g.nodes,
        "dga_edge_lean",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", t, cfg.n_features])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims[n]) for n in OUTPUT_NAMES],
        g.inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fabpm")
    proto.ir_version = 8  # read by onnxruntime releases back to 1.14
    onnx.checker.check_model(proto)
    return proto
