"""B4: sustained edge ingest, subscription → window → inference → decision, in values per CPU-second.

The simulator runs in separate processes (``fabpm sim serve``), so this process's CPU time is the
edge's alone. For each size, in one run:

- baseline: an asyncua subscription that only counts the values (the floor any client pays);
- edge: the same subscriptions feeding the edge pipeline (windows on the model grid, features,
  batched ONNX inference, the alert rule and hard-case picking, messages into the disk outbox).

Reported: monitored tags, values per second received, CPU share of one core, values per
CPU-second, decision latency per window (median, p99), and RSS.

    .venv/bin/python bench/b4_edge_ingest.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_edge_support import keys, release, spec  # noqa: E402

from edge.config import DecisionsConfig, OpcUaConfig, ToolConfig  # noqa: E402
from edge.decisions import Decider  # noqa: E402
from edge.discover import discover  # noqa: E402
from edge.inference import load_verified  # noqa: E402
from edge.metrics import EdgeMetrics  # noqa: E402
from edge.outbox import Outbox  # noqa: E402
from edge.pipeline import Pipeline  # noqa: E402
from edge.source import AsyncuaSource, tag_table  # noqa: E402
from shared.signing import load_public_key  # noqa: E402

STEP = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_sims(n_proc: int, tools_each: int) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    procs, endpoints = [], []
    for i in range(n_proc):
        port = free_port()
        endpoint = f"opc.tcp://127.0.0.1:{port}/fabpm/"
        cmd = [
            sys.executable,
            "-m",
            "fabpm.cli",
            "--log-level",
            "WARNING",
            "sim",
            "serve",
            "--tools",
            str(tools_each),
            "--seed",
            str(10 + i),
            "--endpoint",
            endpoint,
            "--speed",
            str(STEP),
            "--rate",
            "1",
        ]
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        endpoints.append(endpoint)
    return procs, endpoints


async def wait_up(endpoint: str, prefix: str, timeout: float = 300.0) -> list[ToolConfig]:
    """The simulator's tools, their ids prefixed: every simulator names its tools alike."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await discover(endpoint, timeout_s=30)
            return [ToolConfig(id=f"{prefix}{f.tool_id}", type=f.tool_type, path=f.path) for f in found]
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(2)


async def measure(
    endpoints: list[str], tools: list[list[ToolConfig]], with_pipeline: bool, seconds: float, tmp: Path
) -> dict[str, float]:
    cfg = OpcUaConfig(
        publishing_interval_ms=500,
        sampling_interval_ms=0,
        queue_size=4,
        watchdog_interval_s=20,
        request_timeout_s=30,
        silence_timeout_s=120,
        max_items_per_subscription=1000,
    )
    all_tools = [t for group in tools for t in group]
    received = [0]
    pipe: Pipeline | None = None
    if with_pipeline:
        priv, pub = keys(tmp / "keys")
        path = release(tmp / "rel", priv, "b4", spec(window=6, step_s=STEP))
        model = load_verified(path, load_public_key(pub), 1)
        box = Outbox(tmp / f"outbox-{time.time_ns()}.sqlite", 512 * 1024 * 1024)
        decider = Decider(DecisionsConfig(hardcase_per_hour=3600), "b4", "edge")

        def emit(msg) -> None:
            box.put(msg.KIND, f"fabpm/v1/b4/edge/{msg.KIND.value}", msg.to_bytes(), 1)

        # One pipeline over every tag of every simulator (tag indexes are per source: offset them).
        all_tags = [r for group in tools for r in tag_table(group)]
        pipe = Pipeline(all_tags, {t.id: t.type for t in all_tools}, decider, emit, EdgeMetrics(), 3.0, 1)
        pipe.set_model(model)  # type: ignore[arg-type]
    sources = []
    offset = 0
    for endpoint, group in zip(endpoints, tools, strict=True):
        tags = tag_table(group)
        src = AsyncuaSource(cfg.model_copy(update={"endpoint": endpoint}), tags)
        if pipe is not None:

            def sink(batch, off=offset) -> None:
                received[0] += len(batch)
                pipe.on_values([(i + off, v, ts, g) for i, v, ts, g in batch] if off else batch)
                pipe.infer_ready()
        else:

            def sink(batch) -> None:
                received[0] += len(batch)

        sources.append((src, sink))
        offset += len(tags)
    tasks = [asyncio.create_task(src.run(sink, lambda e: None)) for src, sink in sources]
    n_tags = offset
    try:
        deadline = time.monotonic() + 120
        while not all(s.connected for s, _ in sources):
            if time.monotonic() > deadline:
                raise RuntimeError("the edge did not connect to every simulator within 120 s")
            await asyncio.sleep(0.5)
        await asyncio.sleep(8.0)  # warm-up: initial values, first windows
        v0, c0, t0 = received[0], time.process_time(), time.monotonic()
        lat0 = len(pipe.latencies) if pipe else 0
        await asyncio.sleep(seconds)
        v1, c1, t1 = received[0], time.process_time(), time.monotonic()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lat = np.array(list(pipe.latencies)[lat0:]) if pipe else np.array([])
    cpu = c1 - c0
    return {
        "tags": n_tags,
        "values_per_s": (v1 - v0) / (t1 - t0),
        "cpu_share": cpu / (t1 - t0),
        "values_per_cpu_s": (v1 - v0) / cpu if cpu > 0 else float("nan"),
        "windows": float(len(lat)),
        "lat_p50_ms": float(np.median(lat) * 1e3) if len(lat) else float("nan"),
        "lat_p99_ms": float(np.quantile(lat, 0.99) * 1e3) if len(lat) else float("nan"),
        "rss_mb": rss_mb(),
    }


async def run_size(target_tags: int, seconds: float) -> list[tuple[str, dict[str, float]]]:
    tools_total = max(1, round(target_tags / 19.5))  # about 19.5 monitored tags per tool in the default fab
    n_proc = 1 if tools_total <= 150 else 4
    procs, endpoints = start_sims(n_proc, tools_total // n_proc)
    try:
        tools = [await wait_up(e, f"s{i}-") for i, e in enumerate(endpoints)]
        with tempfile.TemporaryDirectory() as tmp:
            base = await measure(endpoints, tools, False, seconds, Path(tmp))
            edge = await measure(endpoints, tools, True, seconds, Path(tmp))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
    return [("receive only", base), ("edge pipeline", edge)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1,200 tags only, 20 s")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--sizes", default=None, help="comma-separated tag counts (default 1200,10000)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    seconds = args.seconds or (20.0 if args.quick else 40.0)
    sizes = [1200] if args.quick else [1200, 10000]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    print(
        f"# B4 edge ingest, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s per run, sims at 1 Hz"
    )
    print(
        "| tags | run | values/s | CPU share of a core | values per CPU-s | windows | decision p50 ms "
        "| p99 ms | RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for name, r in asyncio.run(run_size(size, seconds)):
            print(
                f"| {int(r['tags'])} | {name} | {r['values_per_s']:.0f} | {r['cpu_share'] * 100:.1f}% | "
                f"{r['values_per_cpu_s']:.0f} | {int(r['windows'])} | {r['lat_p50_ms']:.2f} | "
                f"{r['lat_p99_ms']:.2f} | {r['rss_mb']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
