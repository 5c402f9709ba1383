"""Labels: failures and maintenance reported by the equipment label the windows before them;
operators label or correct cases through the API. Every label is a row of ``label_history``;
the case carries the newest one.

Automatic labels, per tool, for the cases since the previous failure or maintenance ("reset"):

- a **failure** at ``t_f`` (mode ``m``): each case with window end ``t`` in (reset, t_f] gets
  ``rul_h = (t_f - t) / 3600`` and ``failed = rul_h <= horizon_h`` (mode ``m`` when failed);
- a **maintenance** at ``t_m``: the tool did not fail before ``t_m``, so cases with
  ``t <= t_m - horizon`` did not fail within the horizon (``failed = False``, RUL unknown).
  Cases closer to the maintenance are censored (they might have failed without it) and stay
  unlabelled.
- **survival** (:func:`label_survivors`, every ``learning.label_survivors_s``): a case whose tool
  went on reporting for a whole horizon after ``t`` with no failure or maintenance in it did not
  fail within the horizon (``failed = False``, RUL unknown), as a maintenance would say, without
  waiting for one: the hard cases of healthy tools (the false alarms a model should unlearn) reach
  the next learning round within a horizon instead of at the tool's next maintenance. A failure reported late
  relabels it as any failure labels the cases before it.

An operator's label is never overwritten by an automatic one; an operator may overwrite anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from cloud.storage.models import Case, EventRow, LabelRow, Tool
from shared.equipment import type_modes

_logger = logging.getLogger(__name__)

OPERATOR = "operator"
SURVIVAL = "survival"
RESET_EVENTS = ("failure", "maintenance")


@dataclass(frozen=True, slots=True)
class Label:
    failed: bool
    mode: str | None
    rul_h: float | None
    source: str  # "failure", "maintenance", "operator"
    actor: str
    note: str = ""


def set_label(session: Session, case: Case, label: Label, now: float) -> None:
    """Append ``label`` to the case's history and make it the current label."""
    session.add(
        LabelRow(
            case_id=case.case_id,
            failed=label.failed,
            mode=label.mode,
            rul_h=label.rul_h,
            source=label.source,
            actor=label.actor,
            note=label.note,
            created_ts=now,
        )
    )
    case.label_failed = label.failed
    case.label_mode = label.mode
    case.label_rul_h = label.rul_h
    case.label_source = label.source
    case.label_ts = now


def _previous_reset(session: Session, tool_id: str, before_ts: float, msg_id: str) -> float:
    prev = session.scalar(
        select(EventRow.source_ts)
        .where(
            EventRow.tool_id == tool_id,
            EventRow.event.in_(RESET_EVENTS),
            EventRow.source_ts < before_ts,
            EventRow.msg_id != msg_id,
        )
        .order_by(EventRow.source_ts.desc())
        .limit(1)
    )
    return float(prev) if prev is not None else float("-inf")


def _own_mode(case: Case, event: EventRow) -> str | None:
    """The failure's mode when the case's tool type has it; None otherwise (failed, mode unknown:
    training leaves the mode heads out rather than teach another type's head). An edge that
    misnamed a mode once read every abatement fan_bearing_wear failure as a pump's bearing_wear."""
    own = type_modes(case.tool_type)
    if event.mode is None or own is None or event.mode in own:
        return event.mode
    _logger.warning(
        "failure %s of %s names %s, not a %s mode: its cases are labelled without a mode",
        event.msg_id,
        case.tool_id,
        event.mode,
        case.tool_type,
    )
    return None


def label_from_event(session: Session, event: EventRow, horizon_h: float, now: float) -> int:
    """Label the tool's cases before a failure or maintenance event; returns how many got a label."""
    if event.event not in RESET_EVENTS:
        return 0
    reset = _previous_reset(session, event.tool_id, event.source_ts, event.msg_id)
    horizon_s = horizon_h * 3600.0
    upper = event.source_ts if event.event == "failure" else event.source_ts - horizon_s
    cases = session.scalars(
        select(Case).where(Case.tool_id == event.tool_id, Case.window_ts > reset, Case.window_ts <= upper)
    )
    count = 0
    mode, checked = None, False
    for case in cases:
        if case.label_source == OPERATOR:
            continue
        if event.event == "failure":
            rul_h = (event.source_ts - case.window_ts) / 3600.0
            failed = rul_h <= horizon_h
            if failed and not checked:  # one tool, one type: checked (and logged) once
                mode, checked = _own_mode(case, event), True
            label = Label(failed, mode if failed else None, rul_h, "failure", f"event:{event.msg_id}")
        else:
            label = Label(False, None, None, "maintenance", f"event:{event.msg_id}")
        set_label(session, case, label, now)
        count += 1
    return count


def label_late_case(session: Session, case: Case, horizon_h: float, now: float) -> bool:
    """Label a case that arrives after the failure or maintenance that follows it (edge outboxes
    deliver late after an outage); True when it got a label."""
    nxt = session.scalars(
        select(EventRow)
        .where(
            EventRow.tool_id == case.tool_id,
            EventRow.event.in_(RESET_EVENTS),
            EventRow.source_ts >= case.window_ts,
        )
        .order_by(EventRow.source_ts)
        .limit(1)
    ).first()
    if nxt is None:
        return False
    if nxt.event == "failure":
        rul_h = (nxt.source_ts - case.window_ts) / 3600.0
        failed = rul_h <= horizon_h
        mode = _own_mode(case, nxt) if failed else None
        label = Label(failed, mode, rul_h, "failure", f"event:{nxt.msg_id}")
    elif nxt.source_ts - case.window_ts >= horizon_h * 3600.0:
        label = Label(False, None, None, "maintenance", f"event:{nxt.msg_id}")
    else:
        return False
    set_label(session, case, label, now)
    return True


def label_survivors(session: Session, horizon_h: float, now: float, limit: int = 5000) -> int:
    """Label ``failed = False`` the unlabelled cases whose tool reported for a whole horizon past
    their window (``Tool.last_source_ts``, the equipment's clock) with no failure or maintenance
    in that horizon; returns how many. A case with one there is that event's to label (a
    maintenance censors it), so it is never a candidate here and cannot crowd the newer ones out
    of the ``limit`` taken per call (oldest first)."""
    horizon_s = horizon_h * 3600.0
    reset_within = exists().where(
        EventRow.tool_id == Case.tool_id,
        EventRow.event.in_(RESET_EVENTS),
        EventRow.source_ts >= Case.window_ts,
        EventRow.source_ts <= Case.window_ts + horizon_s,
    )
    cases = session.scalars(
        select(Case)
        .join(Tool, Tool.tool_id == Case.tool_id)
        .where(
            Case.label_source.is_(None),
            Tool.last_source_ts.is_not(None),
            Case.window_ts <= Tool.last_source_ts - horizon_s,
            ~reset_within,
        )
        .order_by(Case.window_ts)
        .limit(limit)
    ).all()
    for case in cases:
        set_label(session, case, Label(False, None, None, SURVIVAL, "telemetry"), now)
    return len(cases)
