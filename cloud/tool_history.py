"""A tool's history, newest first: what its equipment reported (failures, maintenance, alarms and,
when asked, every change of state), what operators reported for it (a CMMS work order, a
technician's finding), and the alerts raised on it with what was found, on one time line. This is
what an engineer reads before walking to the tool: when it was last maintained, how it failed
before, what the edge warned of and whether anyone looked.

Times are on the equipment's clock (an event's and an alert's ``source_ts``; an alert from an edge
older than that field falls back to its ``ts``), as in the field report, so a simulator's clock
reads as a plant's. Pages go back with ``before_ts`` (the previous page's ``next_before_ts``):
each page takes the newest ``limit`` of each source before it and keeps the newest ``limit`` of
them all, so no item is skipped between pages unless it has the very same time as a page's last.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud.storage.models import AlertRow, EventRow

RESETS = ("failure", "maintenance")
NOTABLE = ("failure", "maintenance", "alarm")  # plain "state" changes only when asked for
MAX_LIMIT = 500


def tool_history(
    session: Session, tool_id: str, limit: int, before_ts: float | None = None, states: bool = False
) -> dict[str, Any]:
    """``limit`` items of the tool's history before ``before_ts`` (all when None), newest first;
    ``states``: also the plain changes of state (one per lot on a busy tool). ``last_failure_ts``
    and ``last_maintenance_ts`` are the tool's latest, whatever the page."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1 to {MAX_LIMIT}, got {limit}")
    kinds = (*NOTABLE, "state") if states else NOTABLE
    q = select(EventRow).where(EventRow.tool_id == tool_id, EventRow.event.in_(kinds))
    if before_ts is not None:
        q = q.where(EventRow.source_ts < before_ts)
    items = [_event_item(e) for e in session.scalars(q.order_by(EventRow.source_ts.desc()).limit(limit))]
    at = AlertRow.equipment_ts
    a = select(AlertRow).where(AlertRow.tool_id == tool_id)
    if before_ts is not None:
        a = a.where(at < before_ts)
    items += [_alert_item(r) for r in session.scalars(a.order_by(at.desc()).limit(limit))]
    items = sorted(items, key=lambda i: i["ts"], reverse=True)[:limit]
    last = {
        kind: session.scalar(
            select(func.max(EventRow.source_ts)).where(EventRow.tool_id == tool_id, EventRow.event == kind)
        )
        for kind in RESETS
    }
    return {
        "tool_id": tool_id,
        "items": items,
        # a full page may have more before it (the next page then says so, or is empty)
        "next_before_ts": items[-1]["ts"] if len(items) == limit else None,
        "last_failure_ts": last["failure"],
        "last_maintenance_ts": last["maintenance"],
    }


def _event_item(e: EventRow) -> dict[str, Any]:
    detail = e.detail or {}
    by_api = detail.get("source") == "api"
    if by_api:  # reported through the API: who, and their note
        note = str(detail.get("note") or "")
        text = f"reported by {detail.get('by', '?')}" + (f": {note}" if note else "")
    elif e.event == "alarm":
        text = str(detail.get("message", ""))
    else:
        previous = detail.get("previous")
        text = f"from {previous}" if previous else ("first state read by the edge" if previous == "" else "")
    return {
        "ts": e.source_ts,
        "kind": e.event,
        "state": e.state,
        "mode": e.mode,
        "text": text,
        "source": "operator" if by_api else "equipment",
        "id": e.msg_id,
    }


def _alert_item(r: AlertRow) -> dict[str, Any]:
    found = {"fault": "fault found", "no_fault": "no fault found"}.get(r.ack_finding or "", "")
    ack = f"acknowledged by {r.acknowledged_by}" if r.acknowledged_by else "not acknowledged"
    text = "; ".join(x for x in (f"p {r.probability:.2f}", ack, found, r.ack_note or "") if x)
    return {
        "ts": r.equipment_ts,
        "kind": "alert",
        "state": None,
        "mode": r.mode,
        "text": text,
        "source": "edge",
        "id": r.msg_id,
    }
