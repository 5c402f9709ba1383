"""B5: hard case → verdict round trip over a real Mosquitto, at 1 and at 200 cases per second.

A whole cloud worker (CloudService: MQTT 5 shared subscription, validation, SQLite storage with
de-duplication, dynamic batcher, the default-size full DGA on the CPU, verdict publish) and a
paho client in the role of the edge (its own process), which publishes hard cases (48 × 34
float32 windows, QoS 1) on a fixed schedule and times each verdict by its case id. Figures:
median and p99 in ms, and the part spent inside the cloud (the verdict's ``latency_ms``: stored
→ verdict published; the rest is MQTT both ways, validation and storage).

    .venv/bin/python bench/b5_roundtrip.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _results import add_row
from conftest import Broker, free_port, write_mosquitto_conf

from cloud.config import CloudConfig
from cloud.service import CloudService
from cloud.testing import hardcase, tiny_full_checkpoint
from shared.messages import HardCase, encode_array
from shared.topics import Kind, topic

RESULTS = Path(__file__).resolve().parent / "results" / "cloud.md"


def run_rate(port: int, rate: float, seconds: float, edge: str) -> dict[str, float]:
    sent: dict[str, float] = {}
    rtts: list[float] = []
    inside: list[float] = []
    lock = threading.Lock()
    done = threading.Event()
    n_total = max(1, int(rate * seconds))

    def on_message(_c, _u, msg) -> None:
        now = time.perf_counter()
        doc = json.loads(msg.payload)
        case_id = doc["case_id"]
        with lock:
            if case_id in sent:
                inside.append(float(doc.get("latency_ms") or 0.0))
                rtts.append((now - sent.pop(case_id)) * 1000.0)
                if len(rtts) >= n_total:
                    done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{edge}", protocol=paho.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(topic("fab1", edge, Kind.VERDICT), qos=1)
    time.sleep(0.3)
    rng = np.random.default_rng(0)
    window = rng.standard_normal((48, 34)).astype(np.float32)
    proto = hardcase(edge=edge, steps=48, n_features=34)
    payloads = []
    for i in range(n_total):
        msg = HardCase.model_validate(
            {
                **proto.model_dump(by_alias=True),
                "case_id": f"{edge}-{i}",
                "msg_id": f"{edge}-m{i}",
                "features": encode_array(window + i * 1e-3),
            }
        )
        payloads.append((msg.case_id, msg.to_bytes()))
    t_topic = topic("fab1", edge, Kind.HARDCASE)
    start = time.perf_counter()
    for i, (case_id, raw) in enumerate(payloads):
        due = start + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.005))
        with lock:
            sent[case_id] = time.perf_counter()
        client.publish(t_topic, raw, qos=1)
    done.wait(timeout=60)
    client.disconnect()
    client.loop_stop()
    arr = np.array(rtts)
    return {
        "n": len(arr),
        "sent": n_total,
        "p50": float(np.median(arr)),
        "p99": float(np.percentile(arr, 99)),
        "cloud_p50": float(np.median(inside)),
    }


def edge_process(port: int, rate: float, seconds: float, edge: str) -> dict[str, float]:
    """Run the edge side in its own process, as in production (it does not share our GIL)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(run_rate, (port, rate, seconds, edge))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ns = ap.parse_args()
    with TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        port = free_port()
        conf = write_mosquitto_conf(tmp / "broker", port)
        # As in deploy/mosquitto/mosquitto.conf: without it the broker's Nagle delay adds ~40 ms to
        # a verdict that follows the PUBACK of its hard case on the edge's connection.
        conf.write_text(conf.read_text() + "set_tcp_nodelay true\n")
        broker = Broker(port=port, conf=conf)
        broker.start()
        ckpt = tiny_full_checkpoint(
            tmp / "full.pt",
            n_features=34,
            window=48,
            d_model=64,
            n_heads=4,
            n_layers=3,
            d_ff=128,
            embed_dim=32,
            modes=tuple(f"m{i}" for i in range(20)),
        )
        cfg = CloudConfig.model_validate(
            {
                "storage": {"url": f"sqlite:///{tmp / 'cloud.db'}"},
                "mqtt": {"port": port, "client_id": "bench-cloud"},
                "serving": {"checkpoint": str(ckpt), "max_batch": 64, "max_wait_ms": 5.0},
                "api": {"enabled": False},
                "learning": {"enabled": False},
            }
        )
        service = CloudService(cfg)
        service.start()
        try:
            edge_process(port, 50.0, 1.0, "warmup")
            slow = edge_process(port, 1.0, 10.0 if ns.quick else 30.0, "edge-slow")
            fast = edge_process(port, 200.0, 5.0 if ns.quick else 15.0, "edge-fast")
        finally:
            service.stop()
            broker.stop()
    for name, r in (("1/s", slow), ("200/s", fast)):
        print(
            f"{name}: {r['n']}/{r['sent']} verdicts, median {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
            f"of which in the cloud after storing (median) {r['cloud_p50']:.1f} ms"
        )
    line = (
        f"| B5 | `.venv/bin/python bench/b5_roundtrip.py{' --quick' if ns.quick else ''}` | "
        f"1 case/s: median {slow['p50']:.1f} ms, p99 {slow['p99']:.1f} ms ({slow['n']}/{slow['sent']}, "
        f"model+batching {slow['cloud_p50']:.1f} ms); 200 cases/s: median {fast['p50']:.1f} ms, "
        f"p99 {fast['p99']:.1f} ms ({fast['n']}/{fast['sent']}, model+batching {fast['cloud_p50']:.1f} ms) | "
        f"{platform.machine()}, {os.cpu_count()} cores, Mosquitto (TCP_NODELAY) + SQLite + CPU DGA (d64×3), "
        f"batch ≤64, wait 5 ms | "
        f"{datetime.now(UTC):%Y-%m-%d} |"
    )
    print(line)
    add_row(RESULTS, line)


if __name__ == "__main__":
    main()
