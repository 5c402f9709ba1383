"""Scoring alerts against a simulator export's ground truth (B2; also usable for drift checks).

Per tool, the risk series (one value per window end, ``max`` over the tool type's progressive
modes) runs through the shared alert rule (``shared.alerting``) — the edge's own code — with the
rule re-armed at every failure and maintenance, as the edge does on those equipment events.

* A progressive failure is **warned ≥ L h ahead** if an alert of its tool lies between the
  previous failure/maintenance of that tool and ``failure − L``; its lead time is failure minus
  the first alert in that span. Failures in the first ``warmup_h`` of a run (before a window and
  the horizon fit) are counted apart as not warnable.
* An alert is **true** if a progressive failure of its tool follows within ``match_h``, or the
  alert falls inside an active degradation episode (onset → failure or maintenance reset) of the
  tool (the preventive maintenance that ended it acted on a real fault). Otherwise it is a false
  alarm.
* **Avoided unscheduled downtime** (SEMI E10): for each failure warned ≥ ``act_h`` ahead, its
  unscheduled-down time (failure → back up) minus the median planned-maintenance time of the
  export (the PM that would have replaced it).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.alerting import AlertDecision, AlertRule, AlertState, step
from shared.equipment import ALL_MODES, tool_type

H = 3600.0


@dataclass
class Truth:
    failures: dict[str, list[tuple[float, str, bool]]] = field(default_factory=dict)  # t, mode, sudden
    resets: dict[str, list[float]] = field(default_factory=dict)  # failures and maintenance times
    episodes: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # degradation spans
    back_up: dict[str, list[float]] = field(default_factory=dict)  # ends of unscheduled downs
    pm_hours: float = 0.0  # median planned-maintenance duration


def read_truth(folder: Path, end_s: float) -> Truth:
    """Failures, resets, degradation episodes and repair times from ``ground_truth.jsonl``."""
    recs = [json.loads(line) for line in (Path(folder) / "ground_truth.jsonl").read_text().splitlines()]
    recs.sort(key=lambda r: r["t_s"])
    t = Truth(defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list))
    open_onsets: dict[tuple[str, str], float] = {}
    pm_start: dict[str, float] = {}
    pm_durations = []
    for r in recs:
        kind, tool, ts = r["kind"], r.get("tool"), float(r["t_s"])
        if kind == "failure":
            t.failures[tool].append((ts, r["mode"], bool(r["sudden"])))
            t.resets[tool].append(ts)
            start = open_onsets.pop((tool, r["mode"]), None)
            if start is not None:
                t.episodes[tool].append((start, ts))
        elif kind == "onset":
            open_onsets.setdefault((tool, r["mode"]), ts)
        elif kind == "maintenance":
            t.resets[tool].append(ts)
            pm_start[tool] = ts
            for mode in r.get("modes_reset", []):
                start = open_onsets.pop((tool, mode), None)
                if start is not None:
                    t.episodes[tool].append((start, ts))
        elif kind == "back_up":
            if r.get("after") == "unscheduled_down":  # the end of a repair after a failure
                t.back_up[tool].append(ts)
            if r.get("after") == "scheduled_down" and tool in pm_start:
                pm_durations.append((ts - pm_start.pop(tool)) / H)
    for (tool, _), start in open_onsets.items():
        t.episodes[tool].append((start, end_s))
    t.pm_hours = float(np.median(pm_durations)) if pm_durations else 0.0
    return t


def progressive_modes(type_name: str) -> list[int]:
    """Columns of ``ALL_MODES`` that are the tool type's progressive (warnable) failure modes."""
    return [ALL_MODES.index(m) for m in tool_type(type_name).warnable_mode_names]


def risk_series(probs: np.ndarray, type_name: str) -> np.ndarray:
    """(N, M) per-mode probabilities → (N,) max over the tool type's progressive modes."""
    return probs[:, progressive_modes(type_name)].max(axis=1)


def run_rule(
    rule: AlertRule, ts: np.ndarray, risk: np.ndarray, resets: list[float], holdoff_s: float = 0.0
) -> list[AlertDecision]:
    """The edge's alert rule over one tool's series, re-armed at each reset time.

    ``holdoff_s``: after a reset, windows ending within this time are skipped (they still hold
    the sensors from before the repair; the edge restarts its window after maintenance).
    """
    state, out = AlertState(), []
    marks = sorted(resets)
    j = 0
    last_reset = -np.inf
    for t, p in zip(ts, risk, strict=True):
        while j < len(marks) and marks[j] <= t:
            state, last_reset, j = AlertRule.reset(), marks[j], j + 1
        if t - last_reset < holdoff_s:
            continue
        state, d = step(rule, state, float(p), float(t))
        if d is not None:
            out.append(d)
    return out


def score(
    alerts: dict[str, list[AlertDecision]],
    truth: Truth,
    tool_days: float,
    run_start_s: float,
    lead_h: float = 72.0,
    match_h: float = 240.0,
    warmup_h: float = 96.0,
    act_h: float = 24.0,
) -> dict[str, float]:
    """B2's figures for one set of alerts (see the module docstring)."""
    warned = warnable = total = 0
    leads, avoided = [], 0.0
    for tool, fails in truth.failures.items():
        resets = sorted(truth.resets.get(tool, []))
        ups = sorted(truth.back_up.get(tool, []))
        for ft, _, sudden in fails:
            if sudden:
                continue
            total += 1
            prev = max([r for r in resets if r < ft] + [run_start_s])
            if ft - run_start_s < warmup_h * H:
                continue
            warnable += 1
            mine = [a.ts for a in alerts.get(tool, []) if prev <= a.ts < ft]
            if mine:
                lead = (ft - min(mine)) / H
                leads.append(lead)
                if lead >= lead_h:
                    warned += 1
                if lead >= act_h:
                    up = next((u for u in ups if u > ft), None)
                    if up is not None:
                        avoided += max(0.0, (up - ft) / H - truth.pm_hours)
    n_alerts = true_alerts = true_strict = 0
    for tool, decs in alerts.items():
        fails = [f for f in truth.failures.get(tool, []) if not f[2]]
        eps = truth.episodes.get(tool, [])
        for a in decs:
            n_alerts += 1
            strict = any(0 <= f[0] - a.ts <= match_h * H for f in fails)
            lenient = strict or any(s <= a.ts < e for s, e in eps)
            true_strict += strict
            true_alerts += lenient
    months = tool_days / 30.0
    return {
        "progressive_failures": float(total),
        "warnable_failures": float(warnable),
        "warned_ge_lead": float(warned),
        "recall_ge_lead": warned / warnable if warnable else float("nan"),
        "recall_any_lead": len(leads) / warnable if warnable else float("nan"),
        "mean_lead_h": float(np.mean(leads)) if leads else float("nan"),
        "median_lead_h": float(np.median(leads)) if leads else float("nan"),
        "alerts": float(n_alerts),
        "precision": true_alerts / n_alerts if n_alerts else float("nan"),
        "precision_strict": true_strict / n_alerts if n_alerts else float("nan"),
        "false_alarms_per_tool_month": (n_alerts - true_alerts) / months if months else float("nan"),
        "avoided_unscheduled_down_h": avoided,
        "pm_hours_assumed": truth.pm_hours,
    }
