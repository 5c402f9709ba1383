"""Shelving a tool: its notifications held back for a while, the way alarm management (ISA-18.2,
IEC 62682) shelves a known alarm, e.g. while the tool is down for planned maintenance and
everyone knows it.

What shelving changes and what it does not:

- the notifier (:mod:`cloud.notify`) does not send a shelved tool's alerts and sensor issues to
  the webhooks; it records each as ``shelved`` in the notifications table instead, so the console
  shows what was held back, and unshelving does not send them late;
- the edge still raises its alerts and the cloud still stores them, labels cases with them and
  counts them in the field report (the model's precision does not depend on who was paged).

A shelf always ends: at most :data:`MAX_HOURS` after it was set, or earlier when someone unshelves
the tool. A forgotten shelf would silence a tool for good, which is what ISA-18.2's time limit on
shelving guards against. Shelving a tool that is already shelved ends the old shelf and starts a
new one (a new reason, a new end). Times are on the cloud's clock, as notifications are queued by.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.errors import ShelvingError
from cloud.storage.models import ShelfRow, Tool

MAX_HOURS = 7 * 24.0  # a week covers a PM with its qualification runs; longer needs a new shelf


def active(s: Session, tool_id: str, now: float) -> ShelfRow | None:
    """The shelf ``tool_id`` is under at ``now``, if any."""
    q = select(ShelfRow).where(ShelfRow.tool_id == tool_id, ShelfRow.start_ts <= now, ShelfRow.end_ts > now)
    return s.scalars(q.order_by(ShelfRow.start_ts.desc()).limit(1)).first()


def shelve(s: Session, tool: Tool, hours: float, reason: str, by: str, now: float) -> ShelfRow:
    """Shelve ``tool`` for ``hours`` (0 < hours ≤ :data:`MAX_HOURS`) with a reason; an active shelf
    of the tool ends now and this one takes its place."""
    if not 0 < hours <= MAX_HOURS:
        raise ShelvingError(f"hours must be more than 0 and at most {MAX_HOURS:g} (a week), got {hours:g}")
    reason = reason.strip()
    if not reason:
        raise ShelvingError("a shelf needs a reason (what the others should know: 'PM until Friday')")
    old = active(s, tool.tool_id, now)
    if old is not None:
        old.end_ts, old.ended_by = now, by
    row = ShelfRow(
        tool_id=tool.tool_id,
        site=tool.site,
        reason=reason,
        by=by,
        start_ts=now,
        planned_end_ts=now + hours * 3600.0,
        end_ts=now + hours * 3600.0,
    )
    s.add(row)
    s.flush()
    return row


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
        spans = [x for x in self.by_tool.get(tool_id, ()) if x.start_ts <= ts < x.end_ts]
        return max(spans, key=lambda x: x.start_ts) if spans else None
