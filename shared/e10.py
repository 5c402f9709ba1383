"""SEMI E10 figures from a run: time per state, equipment uptime, MTBF, MTTR, unscheduled downtime.

Definitions (SEMI E10): *total time* is split into non-scheduled time and *operations time*;
*uptime* is productive + standby + engineering time; *equipment uptime* is uptime over
operations time; MTBF (productive) is productive time over the number of failures, MTBF
(uptime) is uptime over failures; MTTR is unscheduled downtime over failures. A failure is an
entry into the unscheduled-down state.

MTTR counts the repairs that ended: a tool still down when the record ends would bring its
hours so far (an hour after a failure, a 1-hour repair), so that stretch, and its failure when it
began inside the record, are left out of the MTTR alone (:func:`with_open_repair`); the hours and
the failure count as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from shared.equipment import E10_CODES, UPTIME_STATES, E10State


@dataclass(frozen=True)
class E10Metrics:
    hours: dict[str, float]  # per E10 state
    total_h: float
    operations_h: float
    uptime_h: float
    equipment_uptime_pct: float
    failures: int
    mtbf_productive_h: float  # inf without failures
    mtbf_uptime_h: float
    mttr_h: float  # nan without failures
    unscheduled_down_h: float
    # Time in a state that is not an E10 state (a plant's own State values the edge passed on),
    # left out of every figure above, which are over the E10 states' time alone.
    unmapped_h: float = 0.0
    # The stretch of unscheduled down still under way when the record ends, and the failures
    # among it counted above (0 or 1 per tool): left out of the MTTR (with_open_repair), kept
    # here so that pooled figures (pool) leave them out too.
    open_repair_h: float = 0.0
    open_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def from_hours(hours: Mapping[E10State, float], failures: int) -> E10Metrics:
    """Metrics from hours per state and a failure count (e.g. a live tool's tallies)."""
    return _metrics(hours, failures)


def _metrics(hours: Mapping[E10State, float], failures: int) -> E10Metrics:
    total = float(sum(hours.values()))
    operations = total - hours.get(E10State.NON_SCHEDULED, 0.0)
    uptime = float(sum(hours.get(s, 0.0) for s in UPTIME_STATES))
    unsched = hours.get(E10State.UNSCHEDULED_DOWN, 0.0)
    productive = hours.get(E10State.PRODUCTIVE, 0.0)
    return E10Metrics(
        hours={str(s): round(float(hours.get(s, 0.0)), 4) for s in E10State},
        total_h=total,
        operations_h=operations,
        uptime_h=uptime,
        equipment_uptime_pct=100.0 * uptime / operations if operations > 0 else float("nan"),
        failures=failures,
        mtbf_productive_h=productive / failures if failures else float("inf"),
        mtbf_uptime_h=uptime / failures if failures else float("inf"),
        mttr_h=unsched / failures if failures else float("nan"),
        unscheduled_down_h=unsched,
    )


def with_open_repair(m: E10Metrics, open_h: float, open_failures: int) -> E10Metrics:
    """``m`` with its MTTR over the repairs that ended, given ``open_h`` hours of unscheduled down
    still under way at the record's end and ``open_failures`` failures (entries) among them that
    ``m.failures`` counts; NaN when no repair ended."""
    ended = m.failures - open_failures
    mttr = (m.unscheduled_down_h - open_h) / ended if ended > 0 else float("nan")
    return replace(m, mttr_h=mttr, open_repair_h=open_h, open_failures=open_failures)


def pool(ms: Iterable[E10Metrics]) -> E10Metrics:
    """Figures of several tools together (a type, a fleet): hours, failures and repairs under way
    summed, the ratios taken from the sums."""
    ms = list(ms)
    hours = {s: sum(m.hours[str(s)] for m in ms) for s in E10State}
    total = replace(_metrics(hours, sum(m.failures for m in ms)), unmapped_h=sum(m.unmapped_h for m in ms))
    return with_open_repair(total, sum(m.open_repair_h for m in ms), sum(m.open_failures for m in ms))


def from_series(state: np.ndarray, period_s: float) -> E10Metrics:
    """Metrics of a sampled state series (``shared.equipment.E10_CODES``, one sample per period)."""
    codes = np.asarray(state, dtype=np.int64)
    hours = {s: float(np.count_nonzero(codes == c)) * period_s / 3600.0 for s, c in E10_CODES.items()}
    down = E10_CODES[E10State.UNSCHEDULED_DOWN]
    entered = (codes[1:] == down) & (codes[:-1] != down)
    failures = int(np.count_nonzero(entered)) + int(len(codes) > 0 and codes[0] == down)
    tail = len(codes) - (int(np.flatnonzero(codes != down)[-1]) + 1 if (codes != down).any() else 0)
    return with_open_repair(_metrics(hours, failures), tail * period_s / 3600.0, int(tail > 0))


def from_transitions(
    transitions: Iterable[tuple[float, str]], end_s: float, start_s: float = 0.0
) -> E10Metrics:
    """Metrics from (time, state) changes of one tool, e.g. the ``state`` ground-truth events or
    the state events an edge sends. Each state lasts until the next change or ``end_s``; only
    [``start_s``, ``end_s``] counts, so the last change before ``start_s`` gives the state then.
    A state that is not an E10 state counts as ``unmapped_h``."""
    hours: dict[E10State, float] = {}
    unmapped = 0.0
    failures = 0
    down = E10State.UNSCHEDULED_DOWN
    items = sorted((float(t), _e10(s)) for t, s in transitions)
    for k, (t, s) in enumerate(items):
        t0 = max(t, start_s)
        t1 = min(items[k + 1][0] if k + 1 < len(items) else end_s, end_s)
        if t1 > t0:
            if s is None:
                unmapped += (t1 - t0) / 3600.0
            else:
                hours[s] = hours.get(s, 0.0) + (t1 - t0) / 3600.0
        # a failure is an entry into unscheduled down (a repeated report of it is not another)
        entered = k == 0 or items[k - 1][1] != down
        if s == down and entered and start_s <= t <= end_s:
            failures += 1
    m = replace(_metrics(hours, failures), unmapped_h=unmapped)
    first = len(items)  # the first of the unscheduled-down changes the record ends with, if any
    while first > 0 and items[first - 1][1] == down:
        first -= 1
    if first == len(items):
        return m
    began = items[first][0]  # the record ends in a repair under way, entered then
    open_h = max(0.0, end_s - max(began, start_s)) / 3600.0
    return with_open_repair(m, open_h, int(start_s <= began <= end_s))


def _e10(state: str) -> E10State | None:
    try:
        return E10State(state)
    except ValueError:
        return None
