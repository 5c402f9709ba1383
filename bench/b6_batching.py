"""B6: cloud verdict throughput with dynamic batching vs batch size 1, at the same p99 budget.

The full DGA at its default size (PipelineConfig: d_model 64, 3 layers, 48-step windows of 34
features), one replica (TorchScript-traced, as served), torch threads from --threads, behind
cloud.batcher.DynamicBatcher. The run also prints the device's ceiling: the time of one case
alone over the time per case in a full batch (on a CPU the model is compute-bound, so batching
cannot gain more than that; on a GPU, where one case leaves the device idle, it gains far more). An
open-loop generator offers cases at a fixed rate (Poisson arrivals); latency is submit → answer.
For each policy we search the highest offered rate whose p99 stays within the budget and whose
answers keep up with the offered rate; the figure is the ratio of those rates, measured in one run.

    .venv/bin/python bench/b6_batching.py [--quick] [--budget-ms 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import torch
from _results import add_row

from cloud.batcher import DynamicBatcher
from cloud.serving import load_replicas
from cloud.testing import tiny_full_checkpoint

RESULTS = Path(__file__).resolve().parent / "results" / "cloud.md"


def trial(
    predict, rate: float, seconds: float, max_batch: int, max_wait_s: float, window: np.ndarray
) -> dict:
    """Offer ``rate`` cases/s for ``seconds``; latencies of the answered ones."""
    batcher = DynamicBatcher([predict], max_batch=max_batch, max_wait_s=max_wait_s, queue_size=100_000)
    batcher.start()
    rng = np.random.default_rng(0)
    lat: list[float] = []
    futures = []
    t0 = time.perf_counter()
    next_t = t0
    end = t0 + seconds
    while next_t < end:
        now = time.perf_counter()
        if now < next_t:
            time.sleep(min(next_t - now, 0.002))
            continue
        sent = time.perf_counter()
        fut = batcher.submit(window)
        fut.add_done_callback(lambda _f, s=sent: lat.append(time.perf_counter() - s))
        futures.append(fut)
        next_t += rng.exponential(1.0 / rate)
    for f in futures:
        f.result(timeout=120)
    elapsed = time.perf_counter() - t0
    batcher.stop()
    arr = np.array(lat) * 1000.0
    return {
        "rate": rate,
        "answered_per_s": len(arr) / elapsed,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_batch": batcher.items / max(1, batcher.batches),
        "kept_up": elapsed < seconds * 1.1,
    }


def max_rate(
    predict, budget_ms: float, seconds: float, max_batch: int, max_wait_s: float, window, start: float
) -> dict:
    """Highest offered rate (doubling, then bisection) with p99 ≤ budget and no backlog."""
    ok_trial = None
    lo, hi = 0.0, None
    rate = start
    for _ in range(14):
        t = trial(predict, rate, seconds, max_batch, max_wait_s, window)
        good = t["p99_ms"] <= budget_ms and t["kept_up"]
        print(
            f"  batch≤{max_batch:<3} rate {rate:8.1f}/s → p50 {t['p50_ms']:6.1f} ms, "
            f"p99 {t['p99_ms']:7.1f} ms, "
            f"mean batch {t['mean_batch']:5.1f} {'ok' if good else 'over'}",
            flush=True,
        )
        if good:
            lo, ok_trial = rate, t
        else:
            hi = rate
        if hi is None:
            rate *= 2
        elif hi / max(lo, 1e-9) < 1.1:
            break
        else:
            rate = (lo + hi) / 2 if lo else hi / 2
    assert ok_trial is not None, "even the lowest rate missed the budget"
    return ok_trial


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget-ms", type=float, default=50.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=64)
    ns = ap.parse_args()
    seconds = 2.0 if ns.quick else 5.0
    with TemporaryDirectory() as tmp:
        ckpt = tiny_full_checkpoint(
            Path(tmp) / "full.pt",
            n_features=34,
            window=48,
            d_model=64,
            n_heads=4,
            n_layers=3,
            d_ff=128,
            embed_dim=32,
            modes=tuple(f"m{i}" for i in range(20)),
        )
        (replica,) = load_replicas(ckpt, "cpu", "fp32", ns.threads)
    window = np.random.default_rng(1).standard_normal((48, 34)).astype(np.float32)
    for _ in range(20):
        replica.predict([window] * 8)  # warm-up
    t = time.perf_counter()
    for _ in range(50):
        replica.predict([window])
    single_ms = (time.perf_counter() - t) / 50 * 1000
    big = [window] * ns.max_batch
    t = time.perf_counter()
    for _ in range(10):
        replica.predict(big)
    per_case_big = (time.perf_counter() - t) / 10 / ns.max_batch * 1000
    ceiling = single_ms / per_case_big
    print(
        f"per case in a full batch of {ns.max_batch}: {per_case_big:.3f} ms → the most batching can gain on "
        f"this device is {ceiling:.1f}×"
    )
    print(
        f"one case alone: {single_ms:.2f} ms; budget p99 {ns.budget_ms} ms; "
        f"torch threads {torch.get_num_threads()}"
    )
    print("batch size 1:")
    one = max_rate(replica.predict, ns.budget_ms, seconds, 1, 0.0, window, start=0.25 * 1000 / single_ms)
    print("dynamic batching:")
    dyn = max_rate(
        replica.predict,
        ns.budget_ms,
        seconds,
        ns.max_batch,
        ns.budget_ms / 4000.0,
        window,
        start=one["rate"] * 2,
    )
    ratio = dyn["answered_per_s"] / one["answered_per_s"]
    cmd = (
        f".venv/bin/python bench/b6_batching.py{' --quick' if ns.quick else ''} --budget-ms {ns.budget_ms:g}"
    )
    line = (
        f"| B6 | `{cmd}` | batch 1: {one['answered_per_s']:.0f} cases/s "
        f"(p99 {one['p99_ms']:.1f} ms); dynamic (≤{ns.max_batch}, wait {ns.budget_ms / 4:g} ms): "
        f"{dyn['answered_per_s']:.0f} cases/s (p99 {dyn['p99_ms']:.1f} ms, "
        f"mean batch {dyn['mean_batch']:.1f}); "
        f"**{ratio:.1f}×** | {platform.machine()}, {os.cpu_count()} cores, {ns.threads} torch thread(s), "
        f"one case alone {single_ms:.2f} ms, in a full batch {per_case_big:.3f} ms/case (ceiling "
        f"{ceiling:.1f}×) | {datetime.now(UTC):%Y-%m-%d} |"
    )
    print(line)
    add_row(RESULTS, line)


if __name__ == "__main__":
    main()
