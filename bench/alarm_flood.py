"""What a chattering alarm puts in the edge's outbox, with and without the alarm budget (sizing, no
target).

One tool's alarm toggles ``--rate`` times a second for ``--hours`` (simulated: the budget's clock is
stepped, not waited for), while the cloud is away, so nothing leaves the outbox. Each alarm goes
the way ``edge.pipeline`` sends one: an ``alarm`` Event into a real outbox (SQLite, the default
quota), once through the budget of ``[alarms]`` (edge/alarm_flood.py, its defaults; the summaries
taken every 30 s as the daemon's health job does) and once without it. Reported: the rows and
bytes queued, what share of the quota that is, and the gate's cost per alarm.

    .venv/bin/python bench/alarm_flood.py [--rate 10] [--hours 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edge.alarm_flood import AlarmFlood
from edge.config import AlarmsConfig, OutboxConfig
from edge.outbox import Outbox
from shared.messages import Event
from shared.topics import Kind, topic

TOOL = "etch-01"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _event(ts: float, detail: dict[str, object]) -> bytes:
    msg = Event(edge_id="e1", site="s1", tool_id=TOOL, event="alarm", source_ts=ts, detail=detail)
    return msg.to_bytes()


def run(rate: float, hours: float, gated: bool, folder: Path) -> dict[str, float]:
    box = Outbox(folder / f"outbox-{gated}.sqlite", int(OutboxConfig().quota_mb * 1024 * 1024))
    cfg = AlarmsConfig()
    clock = Clock()
    gate = AlarmFlood(cfg.per_tool_per_hour, cfg.burst, cfg.quiet_s, cfg.summary_every_s, clock)
    where = topic("s1", "e1", Kind.EVENT)
    n = int(rate * hours * 3600)
    gate_s, next_summary = 0.0, 30.0
    for i in range(n):
        clock.t = i / rate
        text = f"{TOOL} RF reflected power {'high' if i % 2 == 0 else 'normal'}"
        t0 = time.perf_counter()
        admitted = not gated or gate.admit(TOOL, 1.7e9 + clock.t, text, 600)
        gate_s += time.perf_counter() - t0
        if admitted:
            box.put(
                Kind.EVENT,
                where,
                _event(1.7e9 + clock.t, {"message": text, "severity": 600}),
                1,
                msg_id=str(i),
            )
        if gated and clock.t >= next_summary:  # the health job's cadence
            next_summary += 30.0
            for _, ts, detail in gate.summaries():
                box.put(Kind.EVENT, where, _event(ts, detail), 1, msg_id=f"s{i}")
    if gated:
        for _, ts, detail in gate.summaries(force=True):  # the edge stops
            box.put(Kind.EVENT, where, _event(ts, detail), 1, msg_id="stop")
    stats = box.stats()
    rows, size = stats["messages"], stats["bytes"]
    box.close()
    return {"alarms": n, "rows": rows, "bytes": size, "gate_us": 1e6 * gate_s / n if gated else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=10.0, help="alarms a second, one tool")
    ap.add_argument("--hours", type=float, default=1.0)
    args = ap.parse_args()
    quota = OutboxConfig().quota_mb * 1024 * 1024  # as the daemon sizes it
    with tempfile.TemporaryDirectory() as tmp:
        free = run(args.rate, args.hours, False, Path(tmp))
        held = run(args.rate, args.hours, True, Path(tmp))
    for name, r in (("without the budget", free), ("with the budget", held)):
        print(
            f"{name:20s}: {r['alarms']:,} alarms -> {r['rows']:,} outbox rows, {r['bytes'] / 1e6:.2f} MB "
            f"({100 * r['bytes'] / quota:.2f}% of the {quota / 2**20:.0f} MiB quota)"
        )
    hours_to_fill = args.hours * quota / max(free["bytes"], 1)
    print(
        f"without the budget this one alarm fills the outbox's quota in {hours_to_fill:.0f} h of a cloud "
        f"outage (then telemetry and hard cases go to make room), its hard ceiling in "
        f"{1.25 * hours_to_fill:.0f} h (then alerts and failures are refused)"
    )
    print(f"the gate costs {held['gate_us']:.1f} us per alarm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
