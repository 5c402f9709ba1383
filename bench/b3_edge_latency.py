"""B3: edge-model inference side by side in one run, batch 1 on one thread and batch 64 throughput.

Variants: torch FP32 eager, ONNX FP32 (the exporter's graph), ONNX INT8 dynamic, ONNX INT8 static
(QDQ, every MatMul), the adaptive mix (cloud.training.quantize) and what the release ships: the
adaptive mix, or, when that keeps every layer FP32, the lean graph (cloud.training.lean_graph).
Measurements are interleaved in rounds so a neighbour's load hits every variant alike; ratios are
the figures that count. Also: the FLOP floor (model FLOPs / this core's measured FP32 GEMM rate),
onnxruntime's own dispatch cost (fixed run() cost and cost per node, and the share of each graph's
latency they explain), file sizes, and the RSS a session adds.

    .venv/bin/python bench/b3_edge_latency.py [--checkpoint artifacts/b1/cmapss_edge_s0.pt] [--quick]
        [--shape cmapss|sim]   (without a checkpoint: an untrained model of that shape)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import onnx
import torch

from cloud.training.export import export_dga
from cloud.training.lean_graph import lean_graph
from cloud.training.parity import compare, run_onnx
from cloud.training.quantize import (
    adaptive_quantize,
    cpu_flags,
    preprocess,
    quantize_dynamic_int8,
    quantize_static_int8,
    session,
)
from shared.models.checkpoint import load_checkpoint
from shared.models.dga import DGA, DGAConfig, flops

REPO = Path(__file__).resolve().parent.parent


def gemm_rate(bursts: int = 30) -> float:
    """Single-thread FP32 GEMM rate (FLOP/s), torch on one thread: the best of many short bursts
    over a few square sizes, so a neighbour's load on the shared machine does not lower the floor."""
    best = 0.0
    for n in (128, 256, 512):
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        reps = max(1, int(2e8 / (2 * n**3)))
        for _ in range(bursts):
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def optimized_nodes(path: Path) -> int:
    """Nodes left after onnxruntime's graph optimisation (what a session really dispatches)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmpdir:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(Path(tmpdir) / "opt.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return len(onnx.load(opts.optimized_model_filepath).graph.node)


def dispatch_cost(repeats: int = 2000) -> tuple[float, float]:
    """onnxruntime's fixed ``run()`` cost and its cost per extra node, in µs, one thread: an
    Identity graph against a chain of 50 Relu nodes on a (1, 48, 32) tensor (best of 5 bursts)."""
    x = np.zeros((1, 48, 32), np.float32)

    def timed(nodes: list[onnx.NodeProto]) -> float:
        graph = onnx.helper.make_graph(
            nodes,
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 48, 32])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        )
        proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
        proto.ir_version = 8
        s = session(proto.SerializeToString())
        for _ in range(200):
            s.run(None, {"x": x})
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeats):
                s.run(None, {"x": x})
            best = min(best, (time.perf_counter() - t0) / repeats)
        return best * 1e6

    fixed = timed([onnx.helper.make_node("Identity", ["x"], ["y"])])
    chain = [onnx.helper.make_node("Relu", ["x" if i == 0 else f"r{i}"], [f"r{i + 1}"]) for i in range(50)]
    chain.append(onnx.helper.make_node("Identity", ["r50"], ["y"]))
    return fixed, (timed(chain) - fixed) / 51


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=REPO / "artifacts" / "b1" / "cmapss_edge_s0.pt")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--shape",
        choices=("cmapss", "sim"),
        default="cmapss",
        help="without a checkpoint: an untrained model of the C-MAPSS edge model's shape, or of the "
        "simulator's (window 48 x 34 features, 4 modes, d 32, 2 layers: 22,680 parameters)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "b3")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.checkpoint.exists():
        model, _ = load_checkpoint(args.checkpoint)
        assert isinstance(model, DGA)
        source = str(args.checkpoint)
    else:  # latency does not depend on the weights; accuracy figures then mean nothing
        torch.manual_seed(0)
        shape = (
            {"n_features": 14, "window": 30, "embed_dim": 16}
            if args.shape == "cmapss"
            else {"n_features": 34, "window": 48, "n_modes": 4, "embed_dim": 32}
        )
        model = DGA(DGAConfig(d_model=32, n_layers=2, d_ff=64, **shape)).eval()  # type: ignore[arg-type]
        source = f"untrained {args.shape}-shaped edge DGA (no checkpoint found)"
    cfg = model.cfg
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(256, cfg.window, cfg.n_features)).astype(np.float32)
    hold = rng.normal(size=(256, cfg.window, cfg.n_features)).astype(np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        fp32 = export_dga(model, args.out / "edge.fp32.onnx")
        pre = preprocess(fp32, tmp / "pre.onnx")
        dyn = quantize_dynamic_int8(pre, args.out / "edge.int8_dynamic.onnx")
        sta = quantize_static_int8(pre, args.out / "edge.int8_static.onnx", calib)
        mix, report = adaptive_quantize(fp32, args.out / "edge.released.onnx", calib, hold, cfg.rul_cap)
    paths = {"onnx_fp32": fp32, "onnx_int8_dynamic": dyn, "onnx_int8_static": sta, "adaptive_mix": mix}
    if report.to_dict()["int8_groups"]:
        paths["released"] = paths.pop("adaptive_mix")
    else:  # what cloud.training.release ships when every layer stays FP32: the lean graph
        paths["released"] = args.out / "edge.lean.onnx"
        onnx.save(lean_graph(model), str(paths["released"]))
    base_rss = rss_kb()
    sessions = {}
    for name, p in paths.items():
        before = rss_kb()
        sessions[name] = session(p)
        sessions[name].run(None, {"x": hold[:1]})
        sessions[name + "_rss_kb"] = rss_kb() - before  # type: ignore[assignment]
    x1, x64 = hold[:1], hold[:64]
    t1, t64 = torch.from_numpy(x1), torch.from_numpy(x64)

    def torch_run(x: torch.Tensor) -> None:
        with torch.inference_mode():
            model(x)

    runners = {"torch_eager_fp32": (lambda: torch_run(t1), lambda: torch_run(t64))}
    for name in paths:
        s = sessions[name]
        runners[name] = (lambda s=s: s.run(None, {"x": x1}), lambda s=s: s.run(None, {"x": x64}))
    rounds, per = (5, 100) if args.quick else (20, 200)
    lat: dict[str, list[float]] = {k: [] for k in runners}
    thr: dict[str, list[float]] = {k: [] for k in runners}
    for fn1, fn64 in runners.values():  # warm-up
        for _ in range(20):
            fn1()
        fn64()
    for _ in range(rounds):
        for name, (fn1, fn64) in runners.items():
            for _ in range(per):
                t0 = time.perf_counter()
                fn1()
                lat[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(5):
                fn64()
            thr[name].append(5 * 64 / (time.perf_counter() - t0))
    rate = gemm_rate()
    fixed_us, node_us = dispatch_cost()
    fl = flops(cfg, getattr(model, "keep_ratio", None))
    floor_us = fl / rate * 1e6
    ref = run_onnx(fp32, hold)
    rows = {}
    eager = float(np.median(lat["torch_eager_fp32"]))
    for name in runners:
        med = float(np.median(lat[name]))
        row = {
            "b1_median_us": med * 1e6,
            "b1_p99_us": float(np.quantile(lat[name], 0.99)) * 1e6,
            "b64_windows_per_s": float(np.median(thr[name])),
            "speedup_vs_torch_eager": eager / med,
            "x_flop_floor": med * 1e6 / floor_us,
        }
        if name in paths:
            row["file_bytes"] = paths[name].stat().st_size
            row["graph_nodes"] = len(onnx.load(str(paths[name])).graph.node)
            row["optimized_nodes"] = optimized_nodes(paths[name])
            row["dispatch_share"] = (fixed_us + node_us * row["optimized_nodes"]) / row["b1_median_us"]
            row["session_rss_kb"] = sessions[name + "_rss_kb"]
            d = compare(ref, run_onnx(paths[name], hold), cfg.rul_cap)
            row["rul_rms_diff_vs_fp32"] = d["rul_rms_diff"]
            row["prob_max_diff_vs_fp32"] = d["prob_max_diff"]
        rows[name] = row
    result = {
        "model": source,
        "config": cfg.to_dict(),
        "params": model.n_params(),
        "flops_per_window": fl,
        "gemm_gflops_1thread": rate / 1e9,
        "flop_floor_us": floor_us,
        "run_fixed_us": fixed_us,
        "per_node_us": node_us,
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "released_precision": {
            "int8_groups": report.to_dict()["int8_groups"],
            "fp32_groups": len(report.to_dict()["fp32_groups"]),  # type: ignore[arg-type]
            "group_speedups": {g.group: round(g.speedup, 2) for g in report.groups},
        },
        "process_rss_kb_before_sessions": base_rss,
        "variants": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (args.out / "b3.json").write_text(json.dumps(result, indent=1))
    print(
        f"B3 {source}: {model.n_params()} params, {fl / 1e6:.2f} MFLOP/window, GEMM {rate / 1e9:.1f} GFLOP/s"
    )
    print(
        f"{'variant':22s} {'b1 med µs':>10s} {'b1 p99 µs':>10s} {'b64 win/s':>10s} "
        f"{'vs eager':>9s} {'×floor':>7s} {'nodes':>6s} {'dispatch':>9s}"
    )
    for name, r in rows.items():
        share = f"{r['dispatch_share']:9.0%}" if "dispatch_share" in r else ""
        print(
            f"{name:22s} {r['b1_median_us']:10.1f} {r['b1_p99_us']:10.1f} {r['b64_windows_per_s']:10.0f} "
            f"{r['speedup_vs_torch_eager']:9.2f} {r['x_flop_floor']:7.1f} "
            f"{r.get('optimized_nodes', ''):>6} {share}"
        )
    print(f"onnxruntime run() fixed cost {fixed_us:.1f} µs, {node_us:.2f} µs per extra node (one thread)")
    print(
        f"FLOP floor {floor_us:.1f} µs; released INT8 groups: {result['released_precision']['int8_groups']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
