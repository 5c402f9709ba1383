"""Export speed: simulated tool-days per second of wall time on one core (aim ≥ 100).

Compares, in one run, ``opcua_sim.export.export`` (each tool's event timeline once, then the
physics vectorized over time) against the server's path without OPC UA (every tool advanced
and read at each 10-minute step, vectorized over tools), on the same fab and days.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sim_export_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from opcua_sim.export import export  # noqa: E402
from opcua_sim.fab import Fab  # noqa: E402
from opcua_sim.scenario import default_scenario, scale_tools  # noqa: E402


def stepped(tools: int, days: float, period: float = 600.0) -> float:
    """The server's path: advance every tool and compute every reading at each sample time."""
    fab = Fab(scale_tools(default_scenario(), tools))
    started = time.perf_counter()
    t = 0.0
    while t < days * 86400.0:
        fab.advance_to(t)
        for name in fab.groups:
            fab.readings(name)
        t += period
    return time.perf_counter() - started


def exported(tools: int, days: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        export(scale_tools(default_scenario(), tools), days, Path(tmp) / "ds")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    cases = [(70, 10.0), (480, 3.0)] if ns.quick else [(70, 30.0), (480, 10.0), (10, 60.0)]
    print(
        f"# export speed — {platform.machine()}, 1 core, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print("| tools × days | export s | tool-days/s | stepped (server path) s | tool-days/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for tools, days in cases:
        e = exported(tools, days)
        s = stepped(tools, days)
        td = tools * days
        print(f"| {tools} × {days:g} | {e:.2f} | {td / e:,.0f} | {s:.2f} | {td / s:,.0f} | {s / e:.1f}× |")


if __name__ == "__main__":
    main()
