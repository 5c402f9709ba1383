"""INT8 quantization with calibration and adaptive per-layer precision (DESIGN.md §5).

On CPUs without VNNI (AVX2 only) static QDQ INT8 is often *slower* than FP32 for small models and
loses accuracy (FACTS.md), so precision is chosen per op group from measurement on this CPU:

1. Group the graph's MatMul/Gemm nodes by the layer they come from (``/model/blocks.0/attn/qkv``,
   the attention products ``/model/blocks.0/attn``, …).
2. Speed: cut each group's nodes out into a micro-graph fed with the activations they really see
   (captured from the FP32 model on calibration windows), quantize it statically with the same
   settings, and time FP32 vs INT8 at batch 1 on one thread, the two in alternation.
3. Error: quantize the whole model with only that group in INT8 and measure the RUL and
   probability drift against the FP32 graph on held-out windows.
4. Keep INT8 for a group only where it is at least ``min_speedup`` faster, saves at least
   ``min_saving_us`` per call, and stays within the per-group
   error budget; build the mix (static QDQ on the chosen nodes only); if the mix exceeds the
   overall budget, drop the worst-error groups until it fits.

The report (``AdaptiveReport.to_dict()``) goes into the manifest's ``precision`` field.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.quant_utils import add_pre_process_metadata
from onnxruntime.quantization.shape_inference import quant_pre_process

from cloud.training.errors import QuantizeError

_logger = logging.getLogger(__name__)

QUANT_OPS = ("MatMul", "Gemm")


class WindowReader(CalibrationDataReader):
    """Feeds calibration windows to onnxruntime's calibrator in batches."""

    def __init__(self, x: np.ndarray, input_name: str = "x", batch: int = 64) -> None:
        self._batches = [x[i : i + batch].astype(np.float32) for i in range(0, len(x), batch)]
        self._name = input_name
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self._batches):
            return None
        self._pos += 1
        return {self._name: self._batches[self._pos - 1]}

    def rewind(self) -> None:
        self._pos = 0


def session(path: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(
        path if isinstance(path, bytes) else str(path), opts, providers=["CPUExecutionProvider"]
    )


def preprocess(fp32: Path, out: Path) -> Path:
    """onnxruntime's pre-quantization clean-up (symbolic shape inference skipped: FACTS.md)."""
    quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
    model = onnx.load(str(out))
    add_pre_process_metadata(model)  # so quantize_* does not warn that it was not pre-processed
    onnx.save(model, str(out))
    return out


def quantize_static_int8(
    fp32: Path, out: Path, calib: np.ndarray, nodes: list[str] | None = None, per_channel: bool = True
) -> Path:
    """Static QDQ INT8 (MinMax calibration on ``calib`` windows); only ``nodes`` when given."""
    try:
        quantize_static(
            str(fp32),
            str(out),
            WindowReader(calib),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS),
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True},
        )
    except (ValueError, RuntimeError, KeyError, onnx.checker.ValidationError) as exc:
        raise QuantizeError(f"static INT8 quantization of {fp32} failed: {exc}") from exc
    return out


def quantize_dynamic_int8(fp32: Path, out: Path) -> Path:
    """Dynamic INT8 (weights INT8, activations quantized at run time) on MatMul/Gemm."""
    try:
        quantize_dynamic(
            str(fp32), str(out), op_types_to_quantize=list(QUANT_OPS), weight_type=QuantType.QInt8
        )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise QuantizeError(f"dynamic INT8 quantization of {fp32} failed: {exc}") from exc
    return out


def layer_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """``{group: [node names]}`` for the MatMul/Gemm nodes, grouped by the layer that made them."""
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in QUANT_OPS:
            group = node.name.rsplit("/", 1)[0] or node.name
            groups.setdefault(group, []).append(node.name)
    return groups


def _capture(fp32: Path, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Run the FP32 model and return the values of the named intermediate tensors."""
    model = onnx.load(str(fp32))
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = session(model.SerializeToString())
    outs = sess.run(names, {"x": x.astype(np.float32)})
    return dict(zip(names, outs, strict=True))


def _micro_graph(model: onnx.ModelProto, nodes: list[str], feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The named nodes alone: their activation inputs become graph inputs, weights are copied."""
    inits = {i.name: i for i in model.graph.initializer}
    chosen = [n for n in model.graph.node if n.name in set(nodes)]
    produced = {o for n in chosen for o in n.output}
    graph_inputs, used_inits, seen = [], [], set()
    for n in chosen:
        for name in n.input:
            if not name or name in seen or name in produced:
                continue
            seen.add(name)
            if name in inits:
                used_inits.append(inits[name])
            else:
                arr = feeds[name]
                graph_inputs.append(
                    helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(arr.shape))
                )
    outputs = [helper.make_empty_tensor_value_info(o) for n in chosen for o in n.output]
    graph = helper.make_graph(chosen, "micro", graph_inputs, outputs, used_inits)
    micro = helper.make_model(graph, opset_imports=list(model.opset_import))
    micro.ir_version = model.ir_version
    add_pre_process_metadata(micro)  # cut from the pre-processed graph
    return micro


class _FeedReader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self._feeds):
            return None
        self._pos += 1
        return self._feeds[self._pos - 1]

    def rewind(self) -> None:
        self._pos = 0


def time_session(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], repeats: int) -> float:
    """Median seconds per run (after a warm-up)."""
    for _ in range(max(3, repeats // 10)):
        sess.run(None, feeds)
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times[i] = time.perf_counter() - t0
    return float(np.median(times))


def time_pair(
    a: ort.InferenceSession, b: ort.InferenceSession, feeds: dict[str, np.ndarray], repeats: int
) -> tuple[float, float]:
    """Median seconds per run of two sessions timed in alternation, run by run.

    Timed one after the other, a change in the machine's load between the two runs reads as a
    speed difference (a B1 rerun with a second job on the other core released groups in INT8
    that every other run on that CPU measured slower); alternating puts any load on both alike.
    """
    for _ in range(max(3, repeats // 10)):
        a.run(None, feeds)
        b.run(None, feeds)
    ta, tb = np.empty(repeats), np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        a.run(None, feeds)
        t1 = time.perf_counter()
        b.run(None, feeds)
        tb[i] = time.perf_counter() - t1
        ta[i] = t1 - t0
    return float(np.median(ta)), float(np.median(tb))


def _run_overhead(tmp: Path, x: np.ndarray, repeats: int) -> float:
    """Median time of an Identity graph: the per-call cost that is not the op's."""
    inp = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))
    out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(x.shape))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "noop", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp / "noop.onnx"
    onnx.save(model, str(path))
    return time_session(session(path), {"x": x.astype(np.float32)}, repeats)


@dataclass
class GroupMeasure:
    group: str
    nodes: list[str]
    fp32_us: float  # op-group median at batch 1, one thread (micro-graph minus session.run cost)
    int8_us: float
    speedup: float  # fp32 / int8
    rul_drift: float  # RMS of (INT8-only-this-group − FP32) RUL / rul_cap on held-out windows
    prob_drift: float  # max |Δ probability|
    int8: bool = False  # chosen for INT8
    why: str = ""


@dataclass
class AdaptiveReport:
    cpu_flags: dict[str, bool]
    groups: list[GroupMeasure]
    int8_nodes: list[str] = field(default_factory=list)
    final_rul_drift: float = 0.0
    final_prob_drift: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "method": "per layer: static QDQ INT8 where measured faster and within budget, else FP32",
            "cpu_flags": self.cpu_flags,
            "int8_groups": [g.group for g in self.groups if g.int8],
            "fp32_groups": [g.group for g in self.groups if not g.int8],
            "groups": [asdict(g) for g in self.groups],
            "final_rul_drift": self.final_rul_drift,
            "final_prob_drift": self.final_prob_drift,
        }


def cpu_flags() -> dict[str, bool]:
    """The SIMD features that decide whether INT8 pays (Linux /proc/cpuinfo; all False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "amx_int8": "amx_int8" in flags,
    }


def drift(ref: list[np.ndarray], got: list[np.ndarray], rul_cap: float) -> tuple[float, float]:
    """(RMS RUL difference / rul_cap, max |Δ probability|) between two output lists."""
    rul = float(np.sqrt(np.mean((got[1] - ref[1]) ** 2))) / rul_cap
    prob = float(np.max(np.abs(got[0] - ref[0]))) if ref[0].size else 0.0
    return rul, prob


def adaptive_quantize(
    fp32: Path,
    out: Path,
    calib: np.ndarray,
    holdout: np.ndarray,
    rul_cap: float,
    group_budget: float = 0.005,
    total_budget: float = 0.01,
    prob_budget: float = 0.05,
    min_speedup: float = 1.05,
    repeats: int = 300,
    min_saving_us: float = 0.5,
) -> tuple[Path, AdaptiveReport]:
    """Write the adaptive-precision graph to ``out`` (a copy of the FP32 graph if no group pays).

    A group goes INT8 only if it is ``min_speedup`` times faster AND saves at least
    ``min_saving_us`` per call: for a group of a few hundred nanoseconds the ratio of two times
    near the timer's noise says nothing, and INT8 always costs some accuracy.
    """
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        pre = preprocess(fp32, tmp / "pre.onnx")
        model = onnx.load(str(pre))
        groups = layer_groups(model)
        ref = session(pre).run(None, {"x": holdout.astype(np.float32)})
        # activations each group's nodes see, on a few calibration windows (for the micro-graphs)
        inits = {i.name for i in model.graph.initializer}
        act_names = sorted(
            {i for n in model.graph.node if n.op_type in QUANT_OPS for i in n.input if i and i not in inits}
        )
        captured = [_capture(pre, calib[i : i + 1], act_names) for i in range(min(16, len(calib)))]
        overhead = _run_overhead(tmp, captured[0]["x"] if "x" in captured[0] else calib[:1], repeats)
        measures: list[GroupMeasure] = []
        for gname, nodes in groups.items():
            micro = _micro_graph(model, nodes, captured[0])
            micro_path = tmp / "micro.onnx"
            onnx.save(micro, str(micro_path))
            feed_names = [i.name for i in micro.graph.input]
            feeds = [{k: c[k] for k in feed_names} for c in captured]
            try:
                quantize_static(
                    str(micro_path),
                    str(tmp / "micro_q.onnx"),
                    _FeedReader(feeds),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANT_OPS),
                    per_channel=True,
                    extra_options={"ActivationSymmetric": True},
                )
                # op time = micro-graph time minus the fixed cost of one session.run call
                t_fp, t_q = time_pair(session(micro_path), session(tmp / "micro_q.onnx"), feeds[0], repeats)
                t_fp, t_q = max(t_fp - overhead, 1e-8), max(t_q - overhead, 1e-8)
            except Exception as exc:  # a group ORT cannot quantize stays FP32, with the reason
                _logger.warning("group %s: cannot quantize alone (%s); kept FP32", gname, exc)
                measures.append(GroupMeasure(gname, nodes, 0.0, 0.0, 0.0, 0.0, 0.0, False, f"error: {exc}"))
                continue
            q_path = quantize_static_int8(pre, tmp / "one.onnx", calib, nodes=nodes)
            got = session(q_path).run(None, {"x": holdout.astype(np.float32)})
            rd, pd = drift(ref, got, rul_cap)
            m = GroupMeasure(gname, nodes, t_fp * 1e6, t_q * 1e6, t_fp / max(t_q, 1e-12), rd, pd)
            if m.speedup < min_speedup or m.fp32_us - m.int8_us < min_saving_us:
                m.why = f"INT8 not faster here ({m.speedup:.2f}x, {m.fp32_us - m.int8_us:+.2f} us saved)"
            elif rd > group_budget or pd > prob_budget:
                m.why = f"INT8 loses too much (RUL drift {rd:.4f}, prob drift {pd:.3f})"
            else:
                m.int8, m.why = True, f"INT8 {m.speedup:.2f}x faster, drift {rd:.4f}"
            _logger.info("group %s: %s", gname, m.why)
            measures.append(m)
        report = AdaptiveReport(cpu_flags=cpu_flags(), groups=measures)
        while True:
            chosen = [g for g in measures if g.int8]
            if not chosen:
                out.write_bytes(pre.read_bytes())
                report.final_rul_drift = report.final_prob_drift = 0.0
                break
            nodes = [n for g in chosen for n in g.nodes]
            quantize_static_int8(pre, out, calib, nodes=nodes)
            got = session(out).run(None, {"x": holdout.astype(np.float32)})
            rd, pd = drift(ref, got, rul_cap)
            report.final_rul_drift, report.final_prob_drift = rd, pd
            if rd <= total_budget and pd <= prob_budget:
                break
            worst = max(chosen, key=lambda g: g.rul_drift)
            worst.int8, worst.why = False, f"dropped: the mix drifted {rd:.4f} over the budget"
        report.int8_nodes = [n for g in measures if g.int8 for n in g.nodes]
    return out, report
