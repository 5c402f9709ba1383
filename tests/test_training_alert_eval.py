"""B2's scoring on a hand-made ground truth: warned lead, precision, false alarms, avoided downtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud.training.alert_eval import H, read_truth, risk_series, run_rule, score
from shared.alerting import AlertDecision, AlertRule
from shared.equipment import ALL_MODES


def _truth(tmp_path: Path) -> Path:
    recs = [
        {"kind": "onset", "tool": "A", "t_s": 100 * H, "mode": "rf_match_drift"},
        {"kind": "failure", "tool": "A", "t_s": 300 * H, "mode": "rf_match_drift", "sudden": False},
        {"kind": "back_up", "tool": "A", "t_s": 312 * H, "after": "unscheduled_down"},
        {"kind": "failure", "tool": "A", "t_s": 500 * H, "mode": "rf_generator_trip", "sudden": True},
        {"kind": "onset", "tool": "B", "t_s": 150 * H, "mode": "esc_degradation"},
        {"kind": "failure", "tool": "B", "t_s": 260 * H, "mode": "esc_degradation", "sudden": False},
        {"kind": "maintenance", "tool": "B", "t_s": 400 * H, "type": "preventive", "modes_reset": []},
        {"kind": "back_up", "tool": "B", "t_s": 404 * H, "after": "scheduled_down"},
    ]
    (tmp_path / "ground_truth.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    return tmp_path


def _alert(ts_h: float) -> AlertDecision:
    return AlertDecision(ts=ts_h * H, probability=0.9, episode_start_ts=ts_h * H, steps_above=3)


def test_score_counts_leads_precision_and_downtime(tmp_path):
    truth = read_truth(_truth(tmp_path), end_s=600 * H)
    assert truth.pm_hours == 4.0
    alerts = {
        "A": [_alert(200), _alert(550)],  # 100 h ahead of A's failure; 550 h: a false alarm
        "B": [_alert(230)],  # 30 h ahead of B's failure: warned, but not ≥ 72 h
    }
    s = score(alerts, truth, tool_days=2 * 25.0, run_start_s=0.0)
    assert s["progressive_failures"] == 2 and s["warnable_failures"] == 2
    assert s["warned_ge_lead"] == 1 and s["recall_ge_lead"] == 0.5 and s["recall_any_lead"] == 1.0
    assert s["mean_lead_h"] == 65.0
    assert s["alerts"] == 3 and s["precision"] == 2 / 3
    assert s["false_alarms_per_tool_month"] == 1 / (50 / 30)
    assert s["avoided_unscheduled_down_h"] == 12.0 - 4.0  # A only: B has no recorded repair time


def test_run_rule_rearms_at_resets_and_holds_off_after_them():
    rule = AlertRule(threshold=0.5, persistence=2, clear_threshold=0.2)
    ts = np.arange(10) * H
    risk = np.full(10, 0.9)
    assert len(run_rule(rule, ts, risk, [])) == 1
    assert len(run_rule(rule, ts, risk, [5 * H])) == 2  # re-armed by the repair
    assert len(run_rule(rule, ts, risk, [5 * H], holdoff_s=3 * H)) == 2
    assert run_rule(rule, ts, risk, [5 * H], holdoff_s=3 * H)[1].ts == 9 * H  # skipped 5..7 h


def test_risk_is_max_over_progressive_modes_of_the_type():
    probs = np.zeros((2, len(ALL_MODES)))
    probs[0, ALL_MODES.index("rf_generator_trip")] = 0.99  # sudden: not part of the risk
    probs[1, ALL_MODES.index("esc_degradation")] = 0.7
    np.testing.assert_allclose(risk_series(probs, "plasma_etch"), [0.0, 0.7])


def test_the_edge_alerts_on_the_risk_the_offline_evaluation_scores():
    """A sudden mode's probability is the base hazard of the type, the same for every tool: the
    edge neither alerts on it nor lets it mask the progressive modes, as ``risk_series`` scores."""
    from edge.config import DecisionsConfig
    from edge.decisions import Decider

    decider = Decider(DecisionsConfig(), "s", "e", clock=lambda: 0.0)
    decider.set_thresholds(
        {"alert_probability": 0.1, "alert_persistence_steps": 1, "alert_clear_probability": 0.05}
    )
    probs = np.zeros((2, len(ALL_MODES)), dtype=np.float32)
    probs[:, ALL_MODES.index("rf_generator_trip")] = 0.4  # sudden, above the threshold
    probs[1, ALL_MODES.index("esc_degradation")] = 0.2
    decisions = [
        decider.decide(
            "etch-01",
            "plasma_etch",
            1800.0 * i,
            np.zeros((1, 1)),
            ["x"],
            list(ALL_MODES),
            p,
            100.0,
            5.0,
            0.0,
            "v1",
        )
        for i, p in enumerate(probs)
    ]
    assert [d.risk for d in decisions] == pytest.approx(risk_series(probs, "plasma_etch").tolist())
    assert decisions[0].alert is None, "no alert on a sudden mode's hazard"
    assert decisions[1].alert is not None and decisions[1].alert.mode == "esc_degradation"
