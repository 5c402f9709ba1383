"""B4 (server side): OPC UA value changes per second the simulator delivers to one subscriber.

Runs, one after the other, each server in its own process pinned to one core (``taskset``
when present) and one asyncua client in this process (pinned to another core) that subscribes to
every tag and counts the notifications it receives:

  baseline   a plain asyncua server: 1,200 Double variables (folders of 100) updated 10× per
             second with ``server.write_attribute_value`` per node, yielding every 200 writes
  sim-1200   ``fabpm sim serve`` with the default fab (1,468 tags), speed 3600×
  sim-10000  ``fabpm sim serve --tools 480`` (10,069 tags), speed 3600×

For each: changes the server produced per second (its own counter for the simulator, node
updates for the baseline), notifications delivered per second, the delivered share, and the CPU
the server and the client used (cores). Figures are ratios against the baseline of the same run.

    .venv/bin/python bench/b4_sim_server.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from asyncua import Client, Server, ua

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from opcua_sim.fab import Fab  # noqa: E402
from opcua_sim.scenario import default_scenario, scale_tools, tag_count  # noqa: E402
from shared.equipment import NAMESPACE_URI  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"server on {port} did not come up in {timeout} s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


# ---------------------------------------------------------------------------------------- baseline
async def baseline_server(port: int, n: int, rate: float) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/fabpm/")
    idx = await server.register_namespace(NAMESPACE_URI)
    root = await server.nodes.objects.add_folder(ua.NodeId("Base", idx), "Base")
    nodes = []
    for f in range(n // 100):
        folder = await root.add_folder(ua.NodeId(f"Base/F{f}", idx), f"F{f}")
        for k in range(100):
            nodes.append(await folder.add_variable(ua.NodeId(f"Base/F{f}/V{k}", idx), f"V{k}", 0.0))
    counter = await root.add_variable(ua.NodeId("Base/ValueChanges", idx), "ValueChanges", 0)
    ids = [v.nodeid for v in nodes]
    written = 0
    async with server:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        tick = 0
        while True:
            tick += 1
            for k, nid in enumerate(ids):
                await server.write_attribute_value(
                    nid, ua.DataValue(ua.Variant(float(tick + k), ua.VariantType.Double))
                )
                written += 1
                if written % 200 == 0:
                    await asyncio.sleep(0)
            await server.write_attribute_value(
                counter.nodeid, ua.DataValue(ua.Variant(written, ua.VariantType.Int64))
            )
            deadline += 1.0 / rate
            await asyncio.sleep(max(0.0, deadline - loop.time()))


# ---------------------------------------------------------------------------------------- client side
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def datachange_notification(self, node: object, val: object, data: object) -> None:
        self.n += 1

    def status_change_notification(self, status: object) -> None:
        print(f"subscription status change: {status}", file=sys.stderr)


async def measure(
    port: int, node_ids: list[str], counter_id: str, warmup: float, seconds: float, pid: int
) -> dict:
    # FACTS.md: the 1 s default watchdog disconnects during large subscribes on a busy machine
    client = Client(f"opc.tcp://127.0.0.1:{port}/fabpm/", timeout=60, watchdog_intervall=60.0)
    async with client:
        idx = await client.get_namespace_index(NAMESPACE_URI)
        nodes = [client.get_node(ua.NodeId(s, idx)) for s in node_ids]
        counter_node = client.get_node(ua.NodeId(counter_id, idx))
        handler = Counter()
        sub = await client.create_subscription(100, handler)
        for i in range(0, len(nodes), 2000):
            await sub.subscribe_data_change(nodes[i : i + 2000])
        await asyncio.sleep(warmup)
        produced0, delivered0 = await counter_node.read_value(), handler.n
        cpu_s0, cpu_c0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        produced1, delivered1 = await counter_node.read_value(), handler.n
        cpu_s1, cpu_c1, t1 = cpu_seconds(pid), time.process_time(), time.monotonic()
        await sub.delete()
    wall = t1 - t0
    produced = (produced1 - produced0) / wall
    delivered = (delivered1 - delivered0) / wall
    return {
        "tags": len(node_ids),
        "produced_per_s": produced,
        "delivered_per_s": delivered,
        "delivered_share": delivered / produced if produced else float("nan"),
        "server_cores": (cpu_s1 - cpu_s0) / wall,
        "client_cores": (cpu_c1 - cpu_c0) / wall,
    }


def sim_tags(tools: int | None) -> list[str]:
    sc = default_scenario() if tools is None else scale_tools(default_scenario(), tools)
    fab = Fab(sc)
    out = []
    for t in fab.tools:
        base = f"Fab/{t.area}/{t.tool_id}"
        out += [f"{base}/Sensors/{s}" for s in t.tt.tool.sensor_names]
        out += [f"{base}/Setpoints/{s}" for s in t.tt.tool.setpoint_names]
        out += [
            f"{base}/Counters/{c}"
            for c in ("wafers", "lots", "energy_kwh", "last_lot_yield", "last_lot_energy_kwh")
        ]
        out += [f"{base}/State", f"{base}/Recipe"]
    assert len(out) == tag_count(sc)
    return out


def run_case(
    name: str, cmd: list[str], port: int, tags: list[str], counter: str, warmup: float, seconds: float
) -> dict:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    proc = subprocess.Popen(pin + cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        started = time.monotonic()
        wait_port(port)
        ready_s = time.monotonic() - started
        result = asyncio.run(measure(port, tags, counter, warmup, seconds, proc.pid))
        result["start_s"] = ready_s
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
    result["case"] = name
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short windows (about a minute in all)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate-1200", type=float, default=15.0, help="updates/s of the default fab")
    parser.add_argument("--rate-10000", type=float, default=2.0, help="updates/s of the 10,000-tag fab")
    parser.add_argument(
        "--baseline-server", nargs=3, type=float, metavar=("PORT", "N", "RATE"), help=argparse.SUPPRESS
    )
    ns = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # asyncua logs each late publish at WARNING
    if ns.baseline_server:
        port, n, rate = ns.baseline_server
        asyncio.run(baseline_server(int(port), int(n), rate))
        return
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    seconds, warmup = (6.0, 3.0) if ns.quick else (ns.seconds, 5.0)
    py = sys.executable
    load0 = os.getloadavg()[0]
    results = []
    port = free_port()
    base_tags = [f"Base/F{f}/V{k}" for f in range(12) for k in range(100)]
    results.append(
        run_case(
            "baseline plain asyncua, 1,200 tags @10 Hz",
            [py, __file__, "--baseline-server", str(port), "1200", "10"],
            port,
            base_tags,
            "Base/ValueChanges",
            warmup,
            seconds,
        )
    )
    cases: list[tuple[int | None, float]] = [(None, ns.rate_1200), (480, ns.rate_10000)]
    if not ns.quick:
        cases.append((480, 2 * ns.rate_10000))  # past the ceiling: how much one core delivers
    for tools, rate in cases:
        port = free_port()
        cmd = [
            py,
            "-m",
            "fabpm.cli",
            "--log-level",
            "WARNING",
            "sim",
            "serve",
            "--security",
            "none",
            "--speed",
            "3600",
            "--rate",
            str(rate),
            "--endpoint",
            f"opc.tcp://127.0.0.1:{port}/fabpm/",
        ]
        if tools is not None:
            cmd += ["--tools", str(tools)]
        tags = sim_tags(tools)
        label = f"fabpm sim, {len(tags):,} tags @{rate:g} Hz, speed 3600×"
        results.append(run_case(label, cmd, port, tags, "FabSimulator/ValueChanges", warmup, seconds))
    base = results[0]["delivered_per_s"]
    print(
        f"# B4 server side — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, window {seconds:g} s, "
        f"load average before/after {load0:.1f}/{os.getloadavg()[0]:.1f}"
    )
    print(
        "| case | tags | produced/s | delivered/s | delivered share | vs baseline "
        "| server cores | delivered per server CPU-s | client cores | start s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['case']} | {r['tags']:,} | {r['produced_per_s']:,.0f} | {r['delivered_per_s']:,.0f} | "
            f"{r['delivered_share']:.0%} | {r['delivered_per_s'] / base:.2f}× | {r['server_cores']:.2f} | "
            f"{r['delivered_per_s'] / max(r['server_cores'], 1e-9):,.0f} | "
            f"{r['client_cores']:.2f} | {r['start_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
