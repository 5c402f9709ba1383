"""Shelving a tool: its notifications held back for a while, the way alarm management (ISA-18.2,
IEC 62682) shelves a known alarm, e.g. while the tool is down for planned maintenance and
everyone knows it.

What shelving changes and what it does not:

- the notifier (:mod:`cloud.notify`) does not send a shelved tool's alerts and sensor issues to
  the webhooks; it records each as ``shelved`` in the notifications table instead, so the console
  shows what was held back, and unshelving does not send them late;
- the edge still raises its alerts and the cloud still stores them, labels cases with them and
  counts them in the field report (the model's precision does not depend on who was paged).

A shelf always ends: at most :data:`MAX_HOURS` after it starts, or earlier when someone unshelves
the tool. A forgotten shelf would silence a tool for good, which is what ISA-18.2's time limit on
shelving guards against. Shelving a tool that is already shelved ends the old shelf and starts a
new one (a new reason, a new end). Times are on the cloud's clock, as notifications are queued by.

A shelf may also be planned ahead (a PM on the maintenance calendar), to start up to
:data:`MAX_AHEAD_DAYS` from now. A planned shelf may not overlap another shelf of the tool that
has not ended (cancel that one first: two plans for one stretch would leave the notifications to
whichever was set last); :func:`cancel` takes a planned shelf back before it starts, or ends an
active one as unshelving does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.errors import ShelvingError
from cloud.storage.models import ShelfRow, Tool

MAX_HOURS = 7 * 24.0  # a week covers a PM with its qualification runs; longer needs a new shelf
MAX_AHEAD_DAYS = 31.0  # how far ahead a shelf may be planned: a month's maintenance calendar


def in_force(start_ts: float, end_ts: float, ts: float) -> bool:
    """Whether a shelf from ``start_ts`` to ``end_ts`` holds notifications back at ``ts``."""
    return start_ts <= ts < end_ts


def planned(start_ts: float, end_ts: float, now: float) -> bool:
    """Whether a shelf is still to start at ``now`` (a cancelled one, ending where it began, is not)."""
    return now < start_ts < end_ts


def active(s: Session, tool_id: str, now: float) -> ShelfRow | None:
    """The shelf ``tool_id`` is under at ``now``, if any."""
    q = select(ShelfRow).where(ShelfRow.tool_id == tool_id, ShelfRow.start_ts <= now, ShelfRow.end_ts > now)
    return s.scalars(q.order_by(ShelfRow.start_ts.desc()).limit(1)).first()


def shelve(
    s: Session, tool: Tool, hours: float, reason: str, by: str, now: float, start_ts: float | None = None
) -> ShelfRow:
    """Shelve ``tool`` for ``hours`` (0 < hours ≤ :data:`MAX_HOURS`) with a reason, from now or
    from ``start_ts`` (at most :data:`MAX_AHEAD_DAYS` ahead; a time already past means now). An
    active shelf of the tool ends when this one starts; a planned one in the way is refused."""
    if not 0 < hours <= MAX_HOURS:
        raise ShelvingError(f"hours must be more than 0 and at most {MAX_HOURS:g} (a week), got {hours:g}")
    reason = reason.strip()
    if not reason:
        raise ShelvingError("a shelf needs a reason (what the others should know: 'PM until Friday')")
    start = now if start_ts is None else max(now, start_ts)
    if start > now + MAX_AHEAD_DAYS * 86400:
        raise ShelvingError(f"a shelf can be planned at most {MAX_AHEAD_DAYS:g} days ahead")
    end = start + hours * 3600.0
    planned = select(ShelfRow).where(  # the tool's planned shelves that overlap [start, end)
        ShelfRow.tool_id == tool.tool_id,
        ShelfRow.start_ts > now,
        ShelfRow.start_ts < end,
        ShelfRow.end_ts > start,
    )
    clash = s.scalars(planned.order_by(ShelfRow.start_ts).limit(1)).first()
    old = active(s, tool.tool_id, now)
    if clash is None and old is not None and start > now and old.end_ts > start:
        clash = old  # a planned shelf would cut into the one in force: end that one first
    if clash is not None:
        raise ShelvingError(
            f"{tool.tool_id} already has shelf {clash.id} from {_when(clash.start_ts)} to "
            f"{_when(clash.end_ts)} (UTC) by {clash.by}: {clash.reason}; cancel it first"
        )
    if old is not None and start == now:
        old.end_ts, old.ended_by = now, by
    row = ShelfRow(
        tool_id=tool.tool_id,
        site=tool.site,
        reason=reason,
        by=by,
        start_ts=start,
        planned_end_ts=end,
        end_ts=end,
    )
    s.add(row)
    s.flush()
    return row


def cancel(s: Session, shelf_id: int, by: str, now: float) -> ShelfRow:
    """Take back a planned shelf before it starts (it ends where it would have begun: it never
    held anything back), or end an active one now; ShelvingError for one already over."""
    row = s.get(ShelfRow, shelf_id)
    if row is None:
        raise LookupError(f"no shelf {shelf_id}")
    if row.end_ts <= now:
        raise ShelvingError(f"shelf {shelf_id} is already over ({_when(row.end_ts)} UTC)")
    row.end_ts, row.ended_by = max(row.start_ts, now), by
    return row


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def unshelve(s: Session, tool_id: str, by: str, now: float) -> ShelfRow | None:
    """End ``tool_id``'s shelf now; the shelf ended, or None when the tool was not shelved."""
    row = active(s, tool_id, now)
    if row is not None:
        row.end_ts, row.ended_by = now, by
    return row


@dataclass(frozen=True)
class Span:
    """One shelf, as the notifier and the API read it."""

    tool_id: str
    start_ts: float
    end_ts: float
    by: str
    reason: str

    def says(self) -> str:
        return f"{self.tool_id} shelved by {self.by}: {self.reason}"


class Shelves:
    """The shelves that overlap a stretch of time, by tool: which one covered a given moment."""

    def __init__(self, s: Session, since_ts: float, until_ts: float) -> None:
        q = select(ShelfRow).where(ShelfRow.end_ts > since_ts, ShelfRow.start_ts <= until_ts)
        self.by_tool: dict[str, list[Span]] = {}
        for r in s.scalars(q):
            span = Span(r.tool_id, r.start_ts, r.end_ts, r.by, r.reason)
            self.by_tool.setdefault(r.tool_id, []).append(span)

    def covering(self, tool_id: str, ts: float) -> Span | None:
        """The shelf ``tool_id`` was under at ``ts``, if any (the latest one set)."""
        spans = [x for x in self.by_tool.get(tool_id, ()) if in_force(x.start_ts, x.end_ts, ts)]
        return max(spans, key=lambda x: x.start_ts) if spans else None
