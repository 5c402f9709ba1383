"""The dynamic batcher with small real batch functions: size and wait limits, overflow, failures."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from cloud.batcher import DynamicBatcher
from cloud.errors import QueueFullError


def test_batches_fill_up_to_max_batch_and_keep_order():
    gate = threading.Event()
    sizes: list[int] = []

    def square(xs: list[int]) -> list[int]:
        gate.wait(5)  # hold the first batch so the rest queue up behind it
        sizes.append(len(xs))
        return [x * x for x in xs]

    b = DynamicBatcher([square], max_batch=4, max_wait_s=0.2, queue_size=100)
    b.start()
    futures = [b.submit(i) for i in range(9)]
    time.sleep(0.05)
    gate.set()
    assert [f.result(5) for f in futures] == [i * i for i in range(9)]
    b.stop()
    assert sizes[0] == 4 and sum(sizes) == 9 and max(sizes) <= 4


def test_a_lone_item_waits_at_most_max_wait():
    b = DynamicBatcher([lambda xs: xs], max_batch=64, max_wait_s=0.05, queue_size=10)
    b.start()
    t0 = time.monotonic()
    assert b.submit("x").result(5) == "x"
    assert time.monotonic() - t0 < 1.0
    b.stop()


def test_full_queue_refuses_the_newest_and_failures_reach_the_futures():
    release = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        release.wait(5)
        if 13 in xs:
            raise ValueError("bad case")
        return xs

    b = DynamicBatcher([slow], max_batch=1, max_wait_s=0.0, queue_size=2)
    b.start()
    first = b.submit(1)
    time.sleep(0.05)  # the worker holds item 1; two more fill the queue
    queued = [b.submit(13), b.submit(3)]
    with pytest.raises(QueueFullError):
        b.submit(4)
    release.set()
    assert first.result(5) == 1
    with pytest.raises(ValueError, match="bad case"):
        queued[0].result(5)
    assert queued[1].result(5) == 3  # the worker survived the failing batch
    b.stop()
    with pytest.raises(QueueFullError):
        b.submit(5)


def test_two_replicas_share_the_queue():
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def replica(name: str):
        def fn(xs: list[int]) -> list[int]:
            time.sleep(0.01)
            with lock:
                seen[name] = seen.get(name, 0) + len(xs)
            return xs

        return fn

    b = DynamicBatcher([replica("a"), replica("b")], max_batch=2, max_wait_s=0.0, queue_size=100)
    b.start()
    futures = [b.submit(i) for i in range(40)]
    assert sorted(f.result(5) for f in futures) == list(range(40))
    b.stop()
    assert seen.get("a", 0) > 0 and seen.get("b", 0) > 0 and sum(seen.values()) == 40


def test_traced_serving_matches_eager_for_any_batch_and_length(tmp_path):
    import numpy as np

    from cloud.serving import load_replicas
    from cloud.testing import tiny_full_checkpoint

    ckpt = tiny_full_checkpoint(tmp_path / "full.pt", n_features=8, window=16)
    (traced,) = load_replicas(ckpt, "cpu", "fp32", 1, trace=True)
    (eager,) = load_replicas(ckpt, "cpu", "fp32", 1, trace=False)
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal((16 if i % 3 else 10, 8)).astype(np.float32) for i in range(7)]
    for batch in (windows[:1], windows, windows[2:5]):
        for a, b in zip(traced.predict(batch), eager.predict(batch), strict=True):
            assert a.rul_h == pytest.approx(b.rul_h, rel=1e-4, abs=1e-4)
            assert all(a.probs[m] == pytest.approx(b.probs[m], abs=1e-5) for m in a.probs)
    assert traced.trace and set(traced._traced) == {10, 16}  # one trace per window length


def test_bf16_autocast_on_the_cpu_serves_close_to_fp32(tmp_path):
    """``serving.precision = "bf16"`` on a CPU (AMX machines) traces and answers like FP32."""
    import numpy as np

    from cloud.serving import load_replicas
    from cloud.testing import tiny_full_checkpoint

    ckpt = tiny_full_checkpoint(tmp_path / "full.pt", n_features=8, window=16)
    (bf16,) = load_replicas(ckpt, "cpu", "bf16", 1)
    (fp32,) = load_replicas(ckpt, "cpu", "fp32", 1)
    assert bf16.autocast is torch.bfloat16 and fp32.autocast is None
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal((16, 8)).astype(np.float32) for _ in range(5)]
    for a, b in zip(bf16.predict(windows), fp32.predict(windows), strict=True):
        assert a.rul_h == pytest.approx(b.rul_h, rel=0.05, abs=0.5)
        assert all(a.probs[m] == pytest.approx(b.probs[m], abs=0.03) for m in a.probs)
    assert bf16.trace  # the trace passed its own check in BF16
