"""The fleet's last day in one message: the morning digest a maintenance team reads in its channel
(a webhook of kind ``digest``, :mod:`cloud.notify`) and the console's Fleet tab heads with.

Over the last ``hours`` (24 by default): the alerts the cloud stored and how many nobody has
acknowledged, the tools they came from; the failures and maintenance the tools reported; the
sensors that look wrong now; the tools shelved now and the shelves planned to start within the
next ``hours``; the tuning proposals waiting for an operator; the learning rounds and rollouts that
ended. Alerts, shelves, proposals, rounds and rollouts are on the cloud's clock (when they were
stored or changed); failures and maintenance on the equipment's, as in the field report, whose
"now" is the newest source time the cloud holds.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud.shelving import Shelves, in_force, planned
from cloud.storage.models import (
    AlertRow,
    EventRow,
    LearningRound,
    RolloutRow,
    SensorIssueRow,
    TuningRow,
)
from cloud.storage.repo import equipment_now

TOP_TOOLS = 5  # tools named by their alert count


def digest(s: Session, now: float, hours: float = 24.0) -> dict[str, Any]:
    """The figures of the last ``hours`` before ``now`` (the cloud's clock) and ``text``, them in
    a few sentences."""
    if not 0 < hours <= 24 * 31:
        raise ValueError(f"hours must be more than 0 and at most {24 * 31}, got {hours:g}")
    since = now - hours * 3600
    alerts = list(
        s.execute(select(AlertRow.tool_id, AlertRow.acknowledged_by).where(AlertRow.received_ts >= since))
    )
    per_tool = Counter(tool for tool, _ in alerts)
    eq_now = equipment_now(s, now)
    events = Counter(
        dict(
            s.execute(
                select(EventRow.event, func.count())
                .where(
                    EventRow.event.in_(("failure", "maintenance")),
                    EventRow.source_ts >= eq_now - hours * 3600,
                )
                .group_by(EventRow.event)
            ).all()
        )
    )
    spans = [x for tool in Shelves(s, now, now + hours * 3600).by_tool.values() for x in tool]
    shelved = sorted((x for x in spans if in_force(x.start_ts, x.end_ts, now)), key=lambda x: x.tool_id)
    ahead = sorted((x for x in spans if planned(x.start_ts, x.end_ts, now)), key=lambda x: x.start_ts)
    open_sensors = s.scalar(
        select(func.count()).select_from(SensorIssueRow).where(SensorIssueRow.end_ts.is_(None))
    )
    waiting = s.scalar(select(func.count()).select_from(TuningRow).where(TuningRow.status == "proposal"))
    rounds = Counter(
        dict(
            s.execute(
                select(LearningRound.status, func.count())
                .where(LearningRound.updated_ts >= since, LearningRound.status != "running")
                .group_by(LearningRound.status)
            ).all()
        )
    )
    rollbacks = s.scalar(
        select(func.count())
        .select_from(RolloutRow)
        .where(RolloutRow.updated_ts >= since, RolloutRow.stage == "rolled_back")
    )
    out: dict[str, Any] = {
        "since_ts": since,
        "until_ts": now,
        "hours": hours,
        "alerts": len(alerts),
        "unacknowledged": sum(1 for _, by in alerts if by is None),
        "alerts_by_tool": dict(per_tool.most_common(TOP_TOOLS)),
        "failures": int(events["failure"]),
        "maintenance": int(events["maintenance"]),
        "sensor_issues_open": int(open_sensors or 0),
        "shelved": [
            {"tool_id": r.tool_id, "end_ts": r.end_ts, "by": r.by, "reason": r.reason} for r in shelved
        ],
        "shelves_planned": [
            {"tool_id": r.tool_id, "start_ts": r.start_ts, "end_ts": r.end_ts, "by": r.by, "reason": r.reason}
            for r in ahead
        ],
        "tuning_waiting": int(waiting or 0),
        "rounds": {str(k): int(v) for k, v in rounds.items()},
        "rollbacks": int(rollbacks or 0),
    }
    out["text"] = _text(out)
    return out


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _text(d: dict[str, Any]) -> str:
    h = f"{d['hours']:g} h"
    tools = ", ".join(f"{t} {n}" for t, n in d["alerts_by_tool"].items())
    parts = [
        f"fabpm, the last {h}: {_n(d['alerts'], 'alert')}"
        + (f" ({tools})" if tools else "")
        + (f", {d['unacknowledged']} not acknowledged" if d["alerts"] else ""),
        f"{_n(d['failures'], 'failure')} and {d['maintenance']} maintenance reported",
        f"{_n(d['sensor_issues_open'], 'sensor')} looking stuck or Bad now",
    ]
    if d["shelved"]:
        parts.append("shelved now: " + ", ".join(f"{x['tool_id']} ({x['reason']})" for x in d["shelved"]))
    if d["shelves_planned"]:
        parts.append(
            f"shelves starting within {h}: "
            + ", ".join(f"{x['tool_id']} ({x['reason']})" for x in d["shelves_planned"])
        )
    if d["tuning_waiting"]:
        parts.append(f"{_n(d['tuning_waiting'], 'tuning proposal')} waiting for approval")
    if d["rounds"]:
        parts.append("learning rounds: " + ", ".join(f"{n} {k}" for k, n in sorted(d["rounds"].items())))
    if d["rollbacks"]:
        parts.append(f"{_n(d['rollbacks'], 'model rollback')}")
    return "; ".join(parts) + "."
