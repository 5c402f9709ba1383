"""SEMI E10 availability of the fleet from the state changes the edges report: per tool and for the
whole fleet, the hours in each E10 state, equipment uptime, failures, MTBF and MTTR over the last
``days``, the figures a fab's equipment engineers already run their tools by, and what predictive
maintenance is meant to move (unscheduled down time, MTTR).

Times are on the equipment's clock, as in the field report (:mod:`cloud.field_report`): "now" is
the newest source time the cloud holds (state events, telemetry), so a simulator's clock works as
a plant's does. A tool's state before its first change in the window is the last change before
the window; a tool's time after its last report (its edge silent) is not counted, and neither is
time before the first state the cloud knows of it (an edge sends each tool's state when it
starts watching it): ``known_h`` says how much of the window each figure stands on. Plain
state events are pruned after ``storage.state_events_days``, so a window longer than that would
lose the changes in between: :func:`e10_report` refuses it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import Select, and_, case, func, literal, or_, select, union_all

from cloud.storage.models import EventRow, Tool
from cloud.storage.repo import Repo, equipment_now
from shared.e10 import E10Metrics, from_hours, pool, with_open_repair
from shared.equipment import E10State

H = 3600.0
E10_NAMES = frozenset(s.value for s in E10State)
CACHE_S = 60.0  # a report is reused this long: a month's figures barely move in a minute
CACHE_ENTRIES = 8  # windows kept (days is a query parameter: any number of them could be asked)


def e10_report(repo: Repo, clock_now: float, days: float, max_days: float) -> dict[str, Any]:
    """Per tool and fleet E10 figures over the last ``days`` (at most ``max_days``, the state
    events' retention); non-finite figures (MTBF without failures) are None."""
    if not 0 < days <= max_days:
        raise ValueError(
            f"days must be more than 0 and at most {max_days:g}: state changes are kept "
            f"{max_days:g} days (storage.state_events_days)"
        )
    with repo.transaction() as s:
        now = equipment_now(s, clock_now)
        since = now - days * 86400
        spans = list(s.execute(_spans(since, now)))
        # only what the report reads: not each tool's telemetry summary and risk (JSON)
        tools = {
            t.tool_id: t
            for t in s.execute(select(Tool.tool_id, Tool.tool_type, Tool.site, Tool.last_source_ts))
        }
    hours: dict[str, dict[str, float]] = {}
    failures: dict[str, int] = {}
    last: dict[str, tuple[str, float, float]] = {}  # tool → its last state, when it began, clipped
    for tool_id, state, seconds, entered, last_ts, last_start in spans:
        per = hours.setdefault(tool_id, {})
        per[state] = per.get(state, 0.0) + float(seconds or 0.0) / H
        failures[tool_id] = failures.get(tool_id, 0) + int(entered or 0)
        if last_ts is not None:
            last[tool_id] = (state, float(last_ts), float(last_start))
    rows = []
    per_tool: list[E10Metrics] = []
    for tool_id in sorted(set(hours) | set(tools)):
        tool = tools.get(tool_id)
        per = hours.get(tool_id, {})
        down_now: tuple[float, int] | None = None  # a repair under way: its hours, 1 if it began inside
        if tool_id in last:  # the state it is in now lasts to its last report (its edge may be silent)
            state, began, start = last[tool_id]
            heard = tool.last_source_ts if tool is not None else None
            reported = began if heard is None else max(began, heard)
            stretch = max(0.0, min(reported, now) - start) / H
            per[state] = per.get(state, 0.0) + stretch
            if state == E10State.UNSCHEDULED_DOWN.value:
                down_now = (stretch, int(began >= since))
        m = with_open_repair(_metrics_of(per, failures.get(tool_id, 0)), *(down_now or (0.0, 0)))
        per_tool.append(m)
        about = {"tool_id": tool_id, "tool_type": None, "site": None}
        if tool is not None:
            about |= {"tool_type": tool.tool_type, "site": tool.site}
        rows.append(about | _figures(m) | {"down_now": down_now is not None})
    return {
        "now_ts": now,
        "since_ts": since,
        "days": days,
        "tools": rows,
        "fleet": _figures(pool(per_tool)) | {"tools": len(rows)},
    }


def _spans(since: float, now: float) -> Select[Any]:
    """Per tool and state: the seconds spent in it in [since, now] up to the tool's last change,
    the failures (entries into unscheduled down from another state), and for the tool's last
    state when that change came and when it counts from (``since`` at the latest). In SQL with
    window functions (SQLite ≥ 3.25, PostgreSQL), so that a month of 1,000 tools' changes comes
    back as a few rows a tool rather than as every change (``bench/e10_report_scale.py``)."""
    states = EventRow.state.is_not(None)
    before = (  # each tool's last change before the window: its state when the window opens
        select(EventRow.tool_id, func.max(EventRow.source_ts).label("ts"))
        .where(states, EventRow.source_ts < since)
        .group_by(EventRow.tool_id)
        .subquery()
    )
    cols = (EventRow.tool_id, EventRow.source_ts.label("ts"), EventRow.state)
    opening = (
        select(*cols)
        .join(before, (EventRow.tool_id == before.c.tool_id) & (EventRow.source_ts == before.c.ts))
        .where(states)
    )
    inside = select(*cols).where(states, EventRow.source_ts >= since, EventRow.source_ts <= now)
    u = union_all(opening, inside).subquery()
    w = select(
        u.c.tool_id,
        u.c.ts,
        u.c.state,
        func.lead(u.c.ts).over(partition_by=u.c.tool_id, order_by=u.c.ts).label("next_ts"),
        func.lag(u.c.state).over(partition_by=u.c.tool_id, order_by=u.c.ts).label("prev"),
    ).subquery()
    start = case((w.c.ts < since, literal(since)), else_=w.c.ts)
    down = E10State.UNSCHEDULED_DOWN.value
    entered = and_(w.c.state == down, or_(w.c.prev.is_(None), w.c.prev != down), w.c.ts >= since)
    is_last = w.c.next_ts.is_(None)
    return select(
        w.c.tool_id,
        w.c.state,
        func.sum(case((is_last, literal(0.0)), else_=w.c.next_ts - start)),
        func.sum(case((entered, literal(1)), else_=literal(0))),
        func.max(case((is_last, w.c.ts))),
        func.max(case((is_last, start))),
    ).group_by(w.c.tool_id, w.c.state)


def _metrics_of(hours: dict[str, float], failures: int) -> E10Metrics:
    """E10 figures of hours by state name; names that are not E10 states count as unmapped."""
    e10 = {E10State(k): v for k, v in hours.items() if k in E10_NAMES}
    unmapped = sum(v for k, v in hours.items() if k not in E10_NAMES)
    return replace(from_hours(e10, failures), unmapped_h=unmapped)


class CachedReports:
    """:func:`e10_report` per window, each reused for :data:`CACHE_S` seconds (monotonic time).

    Why: the console's Fleet tab asks every 5 s, and a month of state changes of 1,000 tools is
    hundreds of thousands of rows (``bench/e10_report_scale.py``). One worker's users share the
    cached figures; at most :data:`CACHE_ENTRIES` windows are kept, the oldest computed going
    first (overflow policy)."""

    def __init__(self, repo: Repo, max_days: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.repo, self.max_days, self.monotonic = repo, max_days, monotonic
        self._lock = threading.Lock()
        self._kept: dict[float, tuple[float, dict[str, Any]]] = {}

    def get(self, clock_now: float, days: float) -> dict[str, Any]:
        now = self.monotonic()
        with self._lock:
            hit = self._kept.get(days)
            if hit is not None and now - hit[0] < CACHE_S:
                return hit[1]
        report = e10_report(self.repo, clock_now, days, self.max_days)  # outside the lock: reads only
        with self._lock:
            self._kept[days] = (now, report)
            while len(self._kept) > CACHE_ENTRIES:
                del self._kept[min(self._kept, key=lambda k: self._kept[k][0])]
        return report


def _figures(m: E10Metrics) -> dict[str, Any]:
    out = {
        "hours": m.hours,
        "known_h": m.total_h + m.unmapped_h,
        "unmapped_h": m.unmapped_h,
        "equipment_uptime_pct": m.equipment_uptime_pct,
        "failures": m.failures,
        "mtbf_productive_h": m.mtbf_productive_h,
        "mtbf_uptime_h": m.mtbf_uptime_h,
        "mttr_h": m.mttr_h,
        "unscheduled_down_h": m.unscheduled_down_h,
    }
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}


def describe_fleet(report: dict[str, Any]) -> str:
    """The fleet's figures in words (``fabpm cloud report``)."""
    f = report["fleet"]
    if not f["known_h"]:
        return "no state changes reported in the window"
    mtbf = "n/a (no failure)" if f["mtbf_productive_h"] is None else f"{f['mtbf_productive_h']:.0f} h"
    mttr = "n/a" if f["mttr_h"] is None else f"{f['mttr_h']:.1f} h"
    uptime = "n/a" if f["equipment_uptime_pct"] is None else f"{f['equipment_uptime_pct']:.1f}%"
    return (
        f"equipment uptime {uptime} (SEMI E10, {f['tools']} tools, {f['known_h']:.0f} tool-hours known), "
        f"{f['failures']} failures, {f['unscheduled_down_h']:.1f} h unscheduled down, "
        f"{f['hours']['scheduled_down']:.1f} h scheduled down, MTBF {mtbf}, MTTR {mttr}"
    )
