"""How the alerts did in the field: what followed each one, and which failures were warned.

B2 scores alerts against the simulator's ground truth; a plant has only what its equipment and
its people report, the failure and maintenance events (the edge's, or a CMMS's through
``POST /api/tools/{id}/events``). From those alone:

* An alert's **outcome**: ``failure`` if its tool failed by a progressive mode within ``match_h``
  after it, before any maintenance (``sudden`` if by a sudden mode: counted apart, an alert cannot
  foresee those); ``maintenance`` if the tool was maintained first (someone acted, and whether the
  fault was real cannot be told from the events: counted apart, not as right or wrong); ``none``
  if ``match_h`` passed with neither (a false alarm, as far as the events tell); ``open`` while
  ``match_h`` has not passed.
* What the person who acknowledged an alert found on the tool decides it when no failure did:
  ``fault_found`` (right) or ``no_fault`` (a false alarm, decided at once; a failure within
  ``match_h`` still overrules it). Maintenance without a finding stays ``maintenance``.
* **Precision**: (failure + fault_found) / (those + none + no_fault), the alerts whose outcome is
  decided; with the maintained ones without a finding counted as right, an upper bound.
* A failure of one of its tool type's progressive modes (sudden modes have no precursor to warn
  of, counted apart) is **warned** if an alert of its tool came between the tool's previous
  failure or maintenance and the failure; its **lead time** runs from the first such alert, and
  B2's figure is the share warned at least ``lead_h`` ahead. ``named`` counts those whose alerts
  named the mode that failed, ``pointed`` those whose alerts' sensors pointed to it (the alert's
  ``likely_mode``, ``shared.evidence``): the plant's own check of which says the mode better.
* A failure reported twice (the edge's event and a CMMS work order) counts once: a second failure
  of a tool within ``SAME_H`` of the first, with no maintenance between, is merged into it.
* **False alarms per tool-month**: ``none`` and ``no_fault`` outcomes over the time each tool
  reported within the window, on the equipment's clock (the span from its first to its last
  message with a source time: a tool added or removed during the window counts for the part it
  was there). A tool whose edge sends no source times (older edges) counts over the whole window,
  and the answer says how many did.

Pure functions over rows; :func:`field_report` reads them from the database.
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from cloud.intervals import wilson
from cloud.storage import Repo
from cloud.storage.models import AlertRow, EventRow, Tool
from cloud.storage.repo import equipment_now
from shared.equipment import TOOL_TYPES

H = 3600.0
RESETS = ("failure", "maintenance")
LEAD_H = 72.0  # B2's lead: a failure warned at least this far ahead
MATCH_H = 240.0  # B2's match window: an alert this close before a failure was right
SAME_H = 12.0  # a second failure of a tool this soon, with no maintenance between, is the same one
SUDDEN_MODES = frozenset(m.name for t in TOOL_TYPES.values() for m in t.modes if m.sudden)


@dataclass(frozen=True, slots=True)
class Alert:
    msg_id: str
    tool_id: str
    mode: str
    ts: float
    finding: str | None = None  # what an inspection found: "fault" / "no_fault" (the acknowledgement)
    likely_mode: str | None = None  # the mode its sensors pointed to (shared.evidence), if any


@dataclass(frozen=True, slots=True)
class Reset:
    """A failure or maintenance of a tool."""

    tool_id: str
    event: str  # failure/maintenance
    mode: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str  # failure/sudden/fault_found/no_fault/maintenance/none/open
    event_ts: float | None = None  # the failure or maintenance that decided it
    failed_mode: str | None = None


def outcome_of(alert: Alert, resets: list[Reset], now: float, match_h: float) -> Outcome:
    """What followed ``alert`` (``resets``: its tool's, sorted by time); see the module docstring."""
    after = bisect.bisect_right(resets, alert.ts, key=lambda r: r.ts)
    nxt = resets[after] if after < len(resets) and resets[after].ts - alert.ts <= match_h * H else None
    if nxt is not None and nxt.event == "failure":
        return Outcome("failure", nxt.ts, nxt.mode)
    if alert.finding == "fault":
        return Outcome("fault_found", nxt.ts if nxt else None)
    if alert.finding == "no_fault":
        return Outcome("no_fault", nxt.ts if nxt else None)
    if nxt is not None:
        return Outcome("maintenance", nxt.ts)
    return Outcome("none" if now - alert.ts > match_h * H else "open")


def _progressive(tool_type: str | None, mode: str | None) -> bool:
    """Whether a failure by ``mode`` had precursors to warn of. A tool whose type the cloud does
    not know yet is judged by the type that has that mode; an unknown mode counts as progressive."""
    if mode is None:
        return True
    known = TOOL_TYPES.get(tool_type or "")
    if known is not None:
        return mode in known.warnable_mode_names
    return mode not in SUDDEN_MODES


def report(
    alerts: list[Alert],
    resets: list[Reset],
    tool_types: dict[str, str | None],
    since: float,
    now: float,
    lead_h: float = LEAD_H,
    match_h: float = MATCH_H,
    spans: dict[str, tuple[float, float] | None] | None = None,
) -> dict[str, Any]:
    """The figures for alerts and failures from ``since`` to ``now`` (``alerts`` may reach back
    ``match_h`` further, to find the warnings of the window's first failures).

    ``tool_types``: every known tool's type. ``spans``: the tools that reported in the window,
    each with the span it reported over on the equipment's clock, or None when it has none (it
    counts over the whole window); None: every tool of ``tool_types``, over the whole window."""
    by_tool: dict[str, list[Reset]] = defaultdict(list)
    merged = 0
    for r in sorted(resets, key=lambda r: r.ts):
        seen = by_tool[r.tool_id]
        last = seen[-1] if seen else None
        if (
            r.event == "failure"
            and last is not None
            and last.event == "failure"
            and r.ts - last.ts <= SAME_H * H
        ):
            merged += 1  # the same failure reported again (the edge's event and a CMMS work order)
            if last.mode is None and r.mode is not None:
                seen[-1] = Reset(last.tool_id, last.event, r.mode, last.ts)
            continue
        seen.append(r)
    alerts_of: dict[str, list[Alert]] = defaultdict(list)
    for a in sorted(alerts, key=lambda a: a.ts):
        alerts_of[a.tool_id].append(a)

    outcomes: dict[str, Outcome] = {}
    at_ts = {a.msg_id: a.ts for a in alerts}
    counts = dict.fromkeys(("failure", "sudden", "fault_found", "no_fault", "maintenance", "none", "open"), 0)
    for tool, mine in alerts_of.items():
        for a in mine:
            if a.ts < since:
                continue
            o = outcome_of(a, by_tool[tool], now, match_h)
            if o.outcome == "failure" and not _progressive(tool_types.get(tool), o.failed_mode):
                o = Outcome("sudden", o.event_ts, o.failed_mode)  # no precursor: not the alert's doing
            outcomes[a.msg_id] = o
            counts[o.outcome] += 1

    leads: list[float] = []
    warnings: list[dict[str, Any]] = []  # each progressive failure and how far ahead it was warned
    failures = warned = warned_lead = named = pointed = sudden = 0
    per_mode: dict[str, dict[str, int]] = defaultdict(lambda: {"failures": 0, "warned": 0, "warned_lead": 0})
    for tool, events in by_tool.items():
        for i, r in enumerate(events):
            if r.event != "failure" or r.ts < since:
                continue
            if not _progressive(tool_types.get(tool), r.mode):
                sudden += 1
                continue
            failures += 1
            row = per_mode[r.mode or "?"]
            row["failures"] += 1
            prev = events[i - 1].ts if i > 0 else -float("inf")
            mine = alerts_of.get(tool, [])  # sorted by time: the alerts strictly between prev and r
            first = bisect.bisect_right(mine, prev, key=lambda a: a.ts)
            before = mine[first : bisect.bisect_left(mine, r.ts, key=lambda a: a.ts)]
            shown = {"tool_id": tool, "mode": r.mode, "at_ts": r.ts, "lead_h": None}
            shown |= {"named": False, "pointed": False}
            warnings.append(shown)
            if not before:
                continue
            lead = (r.ts - before[0].ts) / H
            right_mode = any(a.mode == r.mode for a in before)
            sensors_right = r.mode is not None and any(a.likely_mode == r.mode for a in before)
            shown.update(lead_h=lead, named=right_mode, pointed=sensors_right)
            pointed += sensors_right
            leads.append(lead)
            warned += 1
            row["warned"] += 1
            named += right_mode
            if lead >= lead_h:
                warned_lead += 1
                row["warned_lead"] += 1

    if spans is None:
        spans = dict.fromkeys(tool_types)
    whole = sum(1 for span in spans.values() if span is None)
    seconds = sum(
        max(0.0, now - since) if span is None else max(0.0, min(now, span[1]) - max(since, span[0]))
        for span in spans.values()
    )
    tool_months = seconds / (30 * 86400)
    right = counts["failure"] + counts["fault_found"]
    wrong = counts["none"] + counts["no_fault"]  # nothing followed, or an inspection found nothing
    decided = right + wrong
    closed = decided + counts["maintenance"]
    return {
        "since_ts": since,
        "until_ts": now,
        "lead_h": lead_h,
        "match_h": match_h,
        "alerts": sum(counts.values()),
        "outcomes": counts,
        "precision": right / decided if decided else None,
        # how sure, from so few: Wilson's 90% interval (None without a decided alert)
        "precision_interval": _interval(right, decided),
        "precision_if_maintained_right": (right + counts["maintenance"]) / closed if closed else None,
        "false_alarms_per_tool_month": wrong / tool_months if tool_months > 0 else None,
        "tool_months": tool_months,
        "tool_months_note": (
            "each tool over the part of the window it reported in, on the equipment's clock"
            + (f"; {whole} without source times over the whole window" if whole else "")
        ),
        "failures": failures,
        "failures_sudden": sudden,
        "failures_merged": merged,
        "warned": warned,
        "warned_ge_lead": warned_lead,
        "warned_named_mode": named,
        "warned_pointed_mode": pointed,
        "recall_ge_lead": warned_lead / failures if failures else None,
        "recall_ge_lead_interval": _interval(warned_lead, failures),
        "median_lead_h": statistics.median(leads) if leads else None,
        "per_mode": dict(sorted(per_mode.items())),
        # lead_h None: not warned; named: an alert before it named the mode that failed; pointed:
        # an alert before it had sensors pointing to that mode
        "failure_warnings": sorted(warnings, key=lambda w: w["at_ts"]),
        "alert_outcomes": {
            k: {"outcome": o.outcome, "at_ts": at_ts[k], "event_ts": o.event_ts, "failed_mode": o.failed_mode}
            for k, o in outcomes.items()
        },
    }


def field_report(repo: Repo, clock_now: float, days: float, lead_h: float, match_h: float) -> dict[str, Any]:
    """:func:`report` over the last ``days`` of the database's alerts and events, on the
    equipment's clock: an alert at the source time of the window that raised it (its send time
    from edges that do not say), events at their source time, and "now" the newest of those (state
    changes included) and of the tools' telemetry, ``clock_now`` only while there is none. On a
    plant that is the wall clock within the time since the last report (so an alert is judged a
    little later, never early); a simulator keeps its own (the demo's is months off the wall
    clock)."""
    at = AlertRow.equipment_ts  # the equipment's clock, as events are
    with repo.transaction() as s:
        now = equipment_now(s, clock_now, at)
        since = now - days * 86400
        reach = since - match_h * H  # alerts before the window warn of its first failures
        alerts = [
            Alert(msg_id, tool, mode, ts, finding, likely)
            for msg_id, tool, mode, ts, finding, likely in s.execute(
                select(
                    AlertRow.msg_id,
                    AlertRow.tool_id,
                    AlertRow.mode,
                    at,
                    AlertRow.ack_finding,
                    AlertRow.likely_mode,
                ).where(at >= reach)
            )
        ]
        resets = [
            Reset(e.tool_id, e.event, e.mode, e.source_ts)
            for e in s.execute(
                select(EventRow.tool_id, EventRow.event, EventRow.mode, EventRow.source_ts).where(
                    EventRow.event.in_(RESETS), EventRow.source_ts >= reach - match_h * H
                )
            )
        ]
        types: dict[str, str | None] = {}
        spans: dict[str, tuple[float, float] | None] = {}
        for tool, kind, first, last, sent in s.execute(
            select(Tool.tool_id, Tool.tool_type, Tool.first_source_ts, Tool.last_source_ts, Tool.last_ts)
        ):
            types[tool] = kind
            if first is not None and last is not None:
                if last >= since:
                    spans[tool] = (first, last)
            elif sent >= since:  # no source time yet (an older edge): its send time says it reported
                spans[tool] = None
    return report(alerts, resets, types, since, now, lead_h, match_h, spans)


def _interval(k: int, n: int) -> list[float] | None:
    return list(wilson(k, n)) if n else None


def describe(r: dict[str, Any]) -> list[str]:
    """:func:`report`'s figures in words, a phrase each (the demo's summary, ``fabpm cloud report``)."""
    o = r["outcomes"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.0f}%"

    def within(iv: list[float] | None) -> str:
        return "" if iv is None else f" (90%: {100 * iv[0]:.0f}-{100 * iv[1]:.0f}%)"

    lead = "" if r["median_lead_h"] is None else f", median lead {r['median_lead_h']:.0f} h"
    fa = r["false_alarms_per_tool_month"]
    return [
        f"{r['alerts']} alerts: {o['failure']} a failure, {o['sudden']} a sudden one, "
        f"{o['fault_found']} a fault found, {o['no_fault']} no fault found, {o['maintenance']} maintenance, "
        f"{o['none']} nothing, {o['open']} too recent",
        f"precision {pct(r['precision'])}{within(r['precision_interval'])} "
        f"({pct(r['precision_if_maintained_right'])} if the maintained ones "
        f"were right), false alarms per tool-month {'n/a' if fa is None else f'{fa:.2f}'} "
        f"(over {r['tool_months']:.1f} tool-months)",
        f"progressive failures warned {r['warned']} of {r['failures']}, {r['warned_ge_lead']} at least "
        f"{r['lead_h']:.0f} h ahead{within(r['recall_ge_lead_interval'])}{lead}; "
        f"{r['failures_sudden']} sudden not counted",
        f"the mode that failed: named by an alert before it for {r['warned_named_mode']} of the "
        f"{r['warned']} warned, pointed to by an alert's sensors for {r['warned_pointed_mode']}",
    ]
