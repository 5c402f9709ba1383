"""Two hand-built ONNX graphs of a DGA's edge-risk function, for B3's question "is it dispatch-bound?".

The exporter's edge graph has 126 nodes after onnxruntime's optimiser; B3 measured it at ~11× the
FLOP floor and the notes put that down to per-node dispatch. These graphs test that by building the
same function with fewer nodes, constants folded where the algebra allows:

- the input bias and the positional table are one (T, D) constant;
- the gate MLP's first layer on ``[h ; mean h]`` is ``h W_a + mean(h) W_b + b``: no concat, no expand;
- ``log sigmoid(z) = -softplus(-z)``, the sign folded into the second gate layer;
- the attention scale goes into the query weights, the key bias is dropped (softmax-invariant), the
  value bias folded into the projection's bias; reshape targets are constants (no Shape/Gather/Concat
  arithmetic per call);
- the pooling score's bias is dropped (softmax-invariant); the four heads are one Gemm, the RUL scale
  and ``exp(0.5 · clamp(logvar)) · cap`` folded into its weights and the clamp bounds.

``fused_graph(model)`` uses standard operators only (76 nodes for the simulator's edge model);
``fused_graph(model, contrib=True)`` uses onnxruntime's ``com.microsoft`` kernels on top
(``Attention`` for projection, softmax and weighted sum; ``SkipLayerNormalization`` for residual, bias
and LayerNorm; 46 nodes). Same inputs and outputs as ``export_dga`` (CONTRACTS.md order), dynamic
batch axis, keep ratio 1 only. Bench code: the release keeps the exporter's graph (the findings are
in bench/results/models.md, B3).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from shared.models.dga import DGA, INPUT_NAME, OUTPUT_NAMES

MS_DOMAIN = "com.microsoft"
OPSET = 17


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


class _Graph:
    """Collects nodes and initialisers; names are generated so the builder reads like the model."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(
        self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs: object
    ) -> list[str]:
        self._n += 1
        outs = [f"{op_type.lower()}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self._n}", domain=domain, **attrs)
        )
        return outs

    def one(self, op_type: str, inputs: list[str], domain: str = "", **attrs: object) -> str:
        return self.op(op_type, inputs, 1, domain, **attrs)[0]


def _skip_norm(
    g: _Graph,
    contrib: bool,
    x: str,
    skip: str,
    norm: tuple[tuple[str, np.ndarray], tuple[str, np.ndarray]],
    bias: tuple[str, np.ndarray],
    eps: float,
) -> tuple[str, str]:
    """``s = x + bias + skip`` and ``LayerNorm(s)``; returns (normed, s)."""
    (gname, gamma), (bname, beta) = norm
    if contrib:
        normed, _, _, total = g.op(
            "SkipLayerNormalization",
            [x, skip, g.const(gname, gamma), g.const(bname, beta), g.const(*bias)],
            n_out=4,
            domain=MS_DOMAIN,
            epsilon=float(eps),
        )
        return normed, total
    total = g.one("Add", [g.one("Add", [x, g.const(*bias)]), skip])
    return g.one(
        "LayerNormalization",
        [total, g.const(gname, gamma), g.const(bname, beta)],
        axis=-1,
        epsilon=float(eps),
    ), total


def _attention(
    g: _Graph, a: str, key_bias: str, w_qkv: np.ndarray, b_qkv: np.ndarray, i: int, t: int, d: int, heads: int
) -> str:
    """Gated self-attention in standard operators, (B, T, D) before the output projection.

    The scale goes into the query weights; the key bias is dropped (it adds ``q · b_k`` to every
    logit of a query alike, which the softmax ignores); the value bias is the caller's to fold
    into the projection's bias. Reshape targets are constants (``-1`` for the batch), so no
    Shape/Gather/Concat arithmetic runs per call as in the exporter's graph.
    """
    dh = d // heads
    scale = 1.0 / math.sqrt(dh)
    w = w_qkv.copy()
    w[:, :d] *= scale
    bias = np.zeros(3 * d, np.float32)
    bias[:d] = b_qkv[:d] * scale
    qkv = g.one("Add", [g.one("MatMul", [a, g.const(f"b{i}_qkv_w", w)]), g.const(f"b{i}_q_b", bias)])
    split = g.one(
        "Transpose",
        [g.one("Reshape", [qkv, g.const(f"b{i}_heads_shape", np.array([-1, t, 3 * heads, dh], np.int64))])],
        perm=[0, 2, 1, 3],
    )  # (B, 3H, T, Dh)
    q, k, v = g.op("Split", [split, g.const(f"b{i}_split", np.array([heads] * 3, np.int64))], n_out=3, axis=1)
    logits = g.one("Add", [g.one("MatMul", [q, g.one("Transpose", [k], perm=[0, 1, 3, 2])]), key_bias])
    y = g.one("MatMul", [g.one("Softmax", [logits], axis=-1), v])  # (B, H, T, Dh)
    return g.one(
        "Reshape",
        [
            g.one("Transpose", [y], perm=[0, 2, 1, 3]),
            g.const(f"b{i}_merge_shape", np.array([-1, t, d], np.int64)),
        ],
    )


def fused_graph(model: DGA, contrib: bool = False) -> onnx.ModelProto:
    """Build the edge graph of ``model`` (eval semantics: no dropout, keep ratio 1).

    ``contrib``: use onnxruntime's ``Attention`` and ``SkipLayerNormalization`` kernels.
    """
    cfg = model.cfg
    t, d, heads = cfg.window, cfg.d_model, cfg.n_heads
    g = _Graph()
    sd = {k: _np(v) for k, v in model.state_dict().items()}

    def lin(prefix: str) -> tuple[np.ndarray, np.ndarray]:  # (in, out) weight, (out,) bias
        return sd[f"{prefix}.weight"].T.copy(), sd[f"{prefix}.bias"]

    # input projection + positions; the first block's LayerNorm in the same kernel
    w_in, b_in = lin("inp")
    x_proj = g.one("MatMul", [INPUT_NAME, g.const("inp_w", w_in)])
    ln1 = (("b0_ln1_g", sd["blocks.0.ln1.weight"]), ("b0_ln1_b", sd["blocks.0.ln1.bias"]))
    pos = ("inp_b_pos", (b_in + sd["pos"][:t])[None])  # (1, T, D)
    if contrib:
        a, _, _, h = g.op(
            "SkipLayerNormalization",
            [x_proj, g.const(*pos), g.const(*ln1[0]), g.const(*ln1[1])],
            n_out=4,
            domain=MS_DOMAIN,
            epsilon=float(model.blocks[0].ln1.eps),
        )
    else:
        h = g.one("Add", [x_proj, g.const(*pos)])
        a = g.one(
            "LayerNormalization",
            [h, g.const(*ln1[0]), g.const(*ln1[1])],
            axis=-1,
            epsilon=float(model.blocks[0].ln1.eps),
        )

    # gate: log g = -softplus(-(W2 silu(h Wa + mean(h) Wb + b1) + b2))
    w1, b1 = lin("gate.fc1")  # (2D, hidden)
    ctx = g.one("ReduceMean", [h], axes=[1], keepdims=1)  # (B, 1, D)
    ctx_part = g.one("Add", [g.one("MatMul", [ctx, g.const("gate_w1b", w1[d:])]), g.const("gate_b1", b1)])
    pre = g.one("Add", [g.one("MatMul", [h, g.const("gate_w1a", w1[:d])]), ctx_part])
    act = g.one("QuickGelu", [pre], domain=MS_DOMAIN, alpha=1.0)  # x · sigmoid(x) = SiLU
    w2, b2 = lin("gate.fc2")
    neg_logit = g.one(
        "Add", [g.one("MatMul", [act, g.const("gate_w2_neg", -w2)]), g.const("gate_b2_neg", -b2)]
    )
    log_g = g.one("Neg", [g.one("Softplus", [neg_logit])])  # (B, T, 1)
    key_bias4 = g.one(
        "Reshape", [log_g, g.const("key_shape", np.array([-1, 1, 1, t], np.int64))]
    )  # (B, 1, 1, T)
    if contrib:  # the Attention kernel wants (B, 1, T, T): log g of each key, for every query
        key_bias = g.one("Expand", [key_bias4, g.const("bias_shape", np.array([1, 1, t, t], np.int64))])

    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}"
        w_qkv, b_qkv = lin(f"{p}.attn.qkv")
        w_p, b_p = lin(f"{p}.attn.proj")
        if contrib:
            att = g.one(
                "Attention",
                [a, g.const(f"b{i}_qkv_w", w_qkv), g.const(f"b{i}_qkv_b", b_qkv), "", "", key_bias],
                domain=MS_DOMAIN,
                num_heads=heads,
            )
        else:
            att = _attention(g, a, key_bias4, w_qkv, b_qkv, i, t, d, heads)
            # the value bias passes through the attention unchanged (its weights sum to 1)
            b_p = b_p + b_qkv[2 * d :] @ w_p
        proj = g.one("MatMul", [att, g.const(f"b{i}_proj_w", w_p)])
        ln2 = (f"b{i}_ln2_g", sd[f"{p}.ln2.weight"]), (f"b{i}_ln2_b", sd[f"{p}.ln2.bias"])
        a2, h = _skip_norm(g, contrib, proj, h, ln2, (f"b{i}_proj_b", b_p), block.ln2.eps)
        w_f1, b_f1 = lin(f"{p}.ff.0")
        f = g.one("Add", [g.one("MatMul", [a2, g.const(f"b{i}_ff1_w", w_f1)]), g.const(f"b{i}_ff1_b", b_f1)])
        f = g.one("QuickGelu", [f], domain=MS_DOMAIN, alpha=1.0)
        w_f2, b_f2 = lin(f"{p}.ff.2")
        f = g.one("MatMul", [f, g.const(f"b{i}_ff2_w", w_f2)])
        last = i == len(model.blocks) - 1
        norm = "ln_f" if last else f"blocks.{i + 1}.ln1"
        eps = model.ln_f.eps if last else model.blocks[i + 1].ln1.eps
        nxt = (f"{norm}_g", sd[f"{norm}.weight"]), (f"{norm}_b", sd[f"{norm}.bias"])
        a, h = _skip_norm(g, contrib, f, h, nxt, (f"b{i}_ff2_b", b_f2), eps)

    # attention pooling over the final LayerNorm's tokens (a): softmax over T of score + log g
    w_pool, _ = lin("pool_score")
    score = g.one("Add", [g.one("MatMul", [a, g.const("pool_w", w_pool)]), log_g])  # (B, T, 1)
    weights = g.one("Softmax", [score], axis=1)
    pooled = g.one(
        "ReduceSum", [g.one("Mul", [weights, a]), g.const("axis1", np.array([1], np.int64))], keepdims=0
    )

    w_t, b_t = lin("trunk.0")
    z = g.one(
        "QuickGelu",
        [g.one("Gemm", [pooled, g.const("trunk_w", w_t), g.const("trunk_b", b_t)])],
        domain=MS_DOMAIN,
        alpha=1.0,
    )
    # every head in one Gemm: [modes | rul·cap | 0.5·logvar + ln cap | embedding]
    cap, m, e = float(cfg.rul_cap), cfg.n_modes, cfg.embed_dim
    w_m, b_m = lin("mode_head")
    w_r, b_r = lin("rul_head")
    w_v, b_v = lin("var_head")
    w_e, b_e = lin("emb_head")
    w_all = np.concatenate([w_m, w_r * cap, 0.5 * w_v, w_e], axis=1)
    b_all = np.concatenate([b_m, b_r * cap, 0.5 * b_v + math.log(cap), b_e])
    out = g.one("Gemm", [z, g.const("heads_w", w_all), g.const("heads_b", b_all)])
    mode_l, rul_l, half_lv, emb = g.op(
        "Split", [out, g.const("split", np.array([m, 1, 1, e], np.int64))], n_out=4, axis=1
    )
    squeeze_axis = g.const("axis1_sq", np.array([1], np.int64))
    lo, hi = 0.5 * cfg.logvar_min + math.log(cap), 0.5 * cfg.logvar_max + math.log(cap)
    outputs = {
        "probs": g.one("Sigmoid", [mode_l]),
        "rul": g.one(
            "Squeeze",
            [
                g.one(
                    "Clip",
                    [
                        rul_l,
                        g.const("zero", np.array(0.0, np.float32)),
                        g.const("cap", np.array(cap, np.float32)),
                    ],
                ),
                squeeze_axis,
            ],
        ),
        "rul_std": g.one(
            "Squeeze",
            [
                g.one(
                    "Exp",
                    [
                        g.one(
                            "Clip",
                            [
                                half_lv,
                                g.const("lv_lo", np.array(lo, np.float32)),
                                g.const("lv_hi", np.array(hi, np.float32)),
                            ],
                        )
                    ],
                ),
                squeeze_axis,
            ],
        ),
        "embedding": g.one("LpNormalization", [emb], axis=1, p=2),
    }
    # name the graph outputs as the contract says: rename the producing nodes' outputs
    for name in OUTPUT_NAMES:
        produced = outputs[name]
        for node in g.nodes:
            node.output[:] = [name if o == produced else o for o in node.output]
    shapes = {"probs": ["batch", m], "rul": ["batch"], "rul_std": ["batch"], "embedding": ["batch", e]}
    graph = helper.make_graph(
        g.nodes,
        "dga_edge_fused",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", t, cfg.n_features])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in OUTPUT_NAMES],
        g.inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="fabpm-fused",
    )
    proto.ir_version = 8
    return proto
