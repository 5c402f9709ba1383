"""Sensor health: how the edge's measures, judged as the cloud judges them, find the simulator's
sensor faults (reported, no target).

The edge measures per sensor how long its value has not changed while the tool processed and how
long it had no good value while the tool's other sensors reported (``edge.windows.ToolWindow``);
the cloud flags a sensor past ``unchanged_h`` / ``bad_h`` (``cloud/sensor_health.py``, 2 h and
30 min by default). Here an exported simulator run (stuck values and dropouts applied as the server
applies them; their times in the ground truth) is replayed through a ``ToolWindow`` on the edge's
10-minute grid, every sample in time order, and after each row the flags are compared with the
faults:

* a fault is **found** when its sensor is flagged with its kind (stuck → unchanged, dropout → no
  good value) while it lasts or within one step after; **findable** when it lasted the threshold
  (for a stuck sensor: that much processing time after its first row, since idle time does not
  count and the first row still holds the true value);
* a **false flag** is a flagged stretch of a sensor that overlaps none of its faults (with one step
  of margin): counted per tool-month, with the sensor-hours flagged.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sensor_health.py [--tools 30] [--days 60] [--seed 11]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._results import add_row  # noqa: E402
from edge.windows import PROCESSING, ToolWindow  # noqa: E402
from opcua_sim.export import export  # noqa: E402
from opcua_sim.scenario import SensorFaults, default_scenario, scale_tools, with_seed  # noqa: E402
from shared.dataset import read_info, read_series  # noqa: E402
from shared.equipment import E10State  # noqa: E402

RESULTS = REPO / "bench" / "results" / "sensor_health.md"
STATES = list(E10State)
KIND = {"stuck": "unchanged", "dropout": "no_good_value"}


@dataclass
class Fault:
    tool: str
    sensor: str
    kind: str  # stuck/dropout
    start: float
    end: float
    processing_s: float = 0.0  # processing time within it, on the grid
    found_at: float | None = None


@dataclass
class Replay:
    """One tool's per-row health figures: (row times, unchanged_s, bad_s) per sensor."""

    sensors: list[str]
    t: np.ndarray
    unchanged: np.ndarray  # (rows, sensors)
    bad: np.ndarray
    processing: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def replay(tool_id: str, tool_type: str, t_s: np.ndarray, values: np.ndarray, state: np.ndarray) -> Replay:
    """Every sample of one tool through a ToolWindow, as the edge's source delivers them."""
    step = float(t_s[1] - t_s[0])
    win = ToolWindow(tool_id, tool_type, window=8, step_s=step, max_stale_steps=3.0)
    rows, unchanged, bad, proc = [], [], [], []
    for i, ts in enumerate(t_s):
        closed = win._count
        win.set_state(STATES[int(state[i])].value, float(ts))
        for s, v in enumerate(values[i]):
            win.update(s, float(v), float(ts))
        if win._count > closed:  # a row closed (the previous sample's): its health now
            rows.append(float(t_s[i - 1]))
            unchanged.append(win.unchanged_s.copy())
            bad.append(win.bad_s.copy())
            proc.append(STATES[int(state[i - 1])].value in PROCESSING)
    return Replay(list(win.sensors), np.array(rows), np.array(unchanged), np.array(bad), np.array(proc))


def spans(flag: np.ndarray, t: np.ndarray, step: float) -> list[tuple[float, float]]:
    """The stretches where ``flag`` holds, as (first row time, last row time + step)."""
    out: list[tuple[float, float]] = []
    start = None
    for i, on in enumerate(flag):
        if on and start is None:
            start = t[i]
        if not on and start is not None:
            out.append((start, t[i - 1] + step))
            start = None
    if start is not None:
        out.append((start, t[-1] + step))
    return out


def score(
    replays: dict[str, Replay],
    faults: list[Fault],
    unchanged_h: float,
    bad_h: float,
    step: float,
    months: float,
) -> dict[str, float]:
    by_sensor: dict[tuple[str, str], list[Fault]] = {}
    for f in faults:
        f.found_at = None
        by_sensor.setdefault((f.tool, f.sensor), []).append(f)
    false_spans, false_h = {"unchanged": 0, "no_good_value": 0}, 0.0
    for tool, r in replays.items():
        for j, sensor in enumerate(r.sensors):
            mine = by_sensor.get((tool, sensor), [])
            for issue, figure, limit in (
                ("unchanged", r.unchanged[:, j], unchanged_h),
                ("no_good_value", r.bad[:, j], bad_h),
            ):
                flag = figure >= limit * 3600.0
                for a, b in spans(flag, r.t, step):
                    hits = [f for f in mine if f.start - step <= b and a <= f.end + step]
                    if not hits:
                        false_spans[issue] += 1
                        false_h += (b - a) / 3600.0
                    for f in hits:
                        if KIND[f.kind] == issue and (f.found_at is None or a < f.found_at):
                            f.found_at = max(a, f.start)
    out: dict[str, float] = {
        "false_unchanged_per_tool_month": false_spans["unchanged"] / months,
        "false_bad_per_tool_month": false_spans["no_good_value"] / months,
        "false_sensor_h": false_h,
    }
    for kind, limit in (("stuck", unchanged_h), ("dropout", bad_h)):
        mine = [f for f in faults if f.kind == kind]
        need = limit * 3600.0
        # A stuck sensor counts only processing time, from its second row (the first row holds
        # the last true value, so nothing repeats yet); a dropout counts its whole length.
        findable = [
            f for f in mine if (f.processing_s - step if kind == "stuck" else f.end - f.start) >= need
        ]
        found = [f for f in mine if f.found_at is not None]
        delays = [(f.found_at - f.start) / 3600.0 for f in found if f.found_at is not None]
        out[f"{kind}_faults"] = len(mine)
        out[f"{kind}_findable"] = len(findable)
        out[f"{kind}_found"] = len(found)
        hit = sum(f.found_at is not None for f in findable)
        out[f"{kind}_found_of_findable"] = hit / len(findable) if findable else float("nan")
        out[f"{kind}_median_delay_h"] = statistics.median(delays) if delays else float("nan")
    return out


def _pct(share: float) -> str:
    return "–" if share != share else f"{100 * share:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=int, default=30)
    parser.add_argument("--days", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--stuck-median-min", type=float, help="scenario sensor_faults.stuck_median_min (default 60)"
    )
    parser.add_argument(
        "--dropout-median-min", type=float, help="scenario sensor_faults.dropout_median_min (default 20)"
    )
    parser.add_argument("--quick", action="store_true", help="8 tools, 10 days: to check that it runs")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/results alone")
    ns = parser.parse_args()
    tools, days = (8, 10.0) if ns.quick else (ns.tools, ns.days)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ds"
        scenario = with_seed(scale_tools(default_scenario(), tools), ns.seed)
        asked = {"stuck_median_min": ns.stuck_median_min, "dropout_median_min": ns.dropout_median_min}
        faults = scenario.sensor_faults.model_dump() | {k: v for k, v in asked.items() if v is not None}
        scenario = scenario.model_copy(update={"sensor_faults": SensorFaults.model_validate(faults)})
        export(scenario, days, folder)
        info = read_info(folder)
        step = info.sample_period_s
        replays: dict[str, Replay] = {}
        for tool in info.tools:
            s = read_series(folder, tool)
            replays[tool.tool_id] = replay(tool.tool_id, tool.tool_type, s.t_s, s.values, s.state)
        faults = []
        with (folder / "ground_truth.jsonl").open() as fh:
            for line in fh:
                e = json.loads(line)
                if e["kind"] == "sensor_fault" and e["tool"] in replays:
                    faults.append(Fault(e["tool"], e["sensor"], e["fault"], e["t_s"], e["end_t_s"]))
    for f in faults:
        r = replays[f.tool]
        inside = (r.t >= f.start) & (r.t < f.end)
        f.processing_s = float(r.processing[inside].sum() * step)
    months = len(replays) * days / 30.0
    sf = scenario.sensor_faults
    durations = (
        ""
        if (sf.stuck_median_min, sf.dropout_median_min) == (60.0, 20.0)
        else (f"; faults' medians: stuck {sf.stuck_median_min:g} min, dropout {sf.dropout_median_min:g} min")
    )
    print(
        f"# sensor health — {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{len(replays)} tools × {days:g} days, seed {ns.seed}, {len(faults)} faults "
        f"(replayed in {time.perf_counter() - started:.0f} s)"
    )
    header = (
        "| date | tools × days, seed | unchanged_h / bad_h | stuck: found of findable (all found / all) "
        "| median delay h | dropouts: found of findable (all found / all) | median delay h "
        "| false flags per tool-month: unchanged / no good value | false sensor-hours |"
    )
    print(header)
    print("|---|---|---|---|---:|---|---:|---:|---:|")
    for unchanged_h, bad_h in ((1.0, 0.25), (2.0, 0.5), (4.0, 1.0)):
        r = score(replays, faults, unchanged_h, bad_h, step, months)
        row = (
            f"| {time.strftime('%Y-%m-%d')} | {len(replays)} × {days:g}, {ns.seed}{durations} "
            f"| {unchanged_h:g} / {bad_h:g} "
            f"| {_pct(r['stuck_found_of_findable'])} of {r['stuck_findable']:.0f} "
            f"({r['stuck_found']:.0f} / {r['stuck_faults']:.0f}) | {r['stuck_median_delay_h']:.1f} "
            f"| {_pct(r['dropout_found_of_findable'])} of {r['dropout_findable']:.0f} "
            f"({r['dropout_found']:.0f} / {r['dropout_faults']:.0f}) | {r['dropout_median_delay_h']:.1f} "
            f"| {r['false_unchanged_per_tool_month']:.2f} / {r['false_bad_per_tool_month']:.2f} "
            f"| {r['false_sensor_h']:.1f} |"
        )
        print(row)
        if not ns.quick and not ns.no_record:
            add_row(RESULTS, row)


if __name__ == "__main__":
    main()
