"""Which sensors of a tool look wrong, from the health its edge reports with each telemetry.

The edge measures, per sensor and on the equipment's clock (``edge.windows.ToolWindow``):
``unchanged_s``, the processing time its value has not changed, and ``bad_s``, the time without a
good value while the tool's other sensors report. Judged here, so one setting serves the fleet:

* **unchanged** for ``unchanged_h`` of processing: a stuck sensor the server still calls Good, or
  one behind a deadband wide enough to hide the process (either way its readings tell the model
  nothing, and its failure predictions lean on the other sensors);
* **no good value** for ``bad_h``: the sensor reports Bad (a dropout, a broken cable).

A tool's risk is still predicted: the model was trained with such faults (the simulator's
``sensor_faults``), but an alert on a tool with a sensor flagged here deserves a look at the
sensor first.

Each stretch in which a sensor stays flagged is a row of ``sensor_issues`` (:func:`track`, at
each telemetry): the console lists them and a webhook that asks for the ``sensor`` kind hears of
each once. A unique index keeps one open stretch per tool, sensor and issue, whichever worker
opens it (migration 0015).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.config import SensorsConfig
from cloud.storage.models import SensorIssueRow

DEFAULT_LIMITS = SensorsConfig()  # when a sensor looks wrong: ``[sensors]`` in cloud.toml


def sensor_issues(
    summary: Mapping[str, Mapping[str, Any]],
    unchanged_h: float = DEFAULT_LIMITS.unchanged_h,
    bad_h: float = DEFAULT_LIMITS.bad_h,
) -> list[dict[str, Any]]:
    """The sensors of ``summary`` (telemetry's, per tag) that look wrong, worst first: each
    ``{"sensor", "issue": "unchanged" | "no_good_value", "hours"}``. Tags without the health
    figures (older edges) are never flagged."""
    found: list[dict[str, Any]] = []
    for sensor, figures in summary.items():
        bad, still = _hours(figures.get("bad_s")), _hours(figures.get("unchanged_s"))
        if bad is not None and bad >= bad_h:
            found.append({"sensor": sensor, "issue": "no_good_value", "hours": bad})
        elif still is not None and still >= unchanged_h:
            found.append({"sensor": sensor, "issue": "unchanged", "hours": still})
    return sorted(found, key=lambda f: -f["hours"])


def _hours(seconds: object) -> float | None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds != seconds:
        return None
    return float(seconds) / 3600.0


def track(
    session: Session,
    where: tuple[str, str, str],
    issues: list[dict[str, Any]],
    at: float,
    now: float,
) -> None:
    """Bring the tool's open stretches in line with ``issues`` (:func:`sensor_issues` of its
    telemetry at ``at``, the equipment's clock): a new one opens, a continuing one is extended,
    one no longer flagged ends at ``at``. ``where``: (edge, site, tool). Two workers opening the
    same stretch at once: the second insert breaks a unique index (one open stretch per tool,
    sensor and issue), and the message's transaction, run again, extends the first's row."""
    edge_id, site, tool_id = where
    open_rows = {
        (r.sensor, r.issue): r
        for r in session.scalars(
            select(SensorIssueRow).where(SensorIssueRow.tool_id == tool_id, SensorIssueRow.end_ts.is_(None))
        )
    }
    for issue in issues:
        row = open_rows.pop((issue["sensor"], issue["issue"]), None)
        if row is None:
            session.add(
                SensorIssueRow(
                    tool_id=tool_id, edge_id=edge_id, site=site, sensor=issue["sensor"], issue=issue["issue"],
                    start_ts=at - issue["hours"] * 3600.0, last_ts=at, hours=issue["hours"], received_ts=now,
                )
            )  # fmt: skip
        else:
            row.last_ts, row.hours = at, issue["hours"]
    for row in open_rows.values():
        row.end_ts, row.closed_ts = at, now
