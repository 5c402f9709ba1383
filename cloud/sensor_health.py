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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

UNCHANGED_H = 2.0
BAD_H = 0.5


def sensor_issues(
    summary: Mapping[str, Mapping[str, Any]], unchanged_h: float = UNCHANGED_H, bad_h: float = BAD_H
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
