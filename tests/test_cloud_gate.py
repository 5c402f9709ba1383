"""The learning gate's verdict: worse only when sure beyond the frozen set's noise (cloud.gate)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from cloud.config import LearningConfig
from cloud.gate import AlarmScore, GateScore, WeightedAuc, compare, compare_alarms, roc_auc


def fleet(n_tools: int, per_tool: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and tools of a frozen set: each tool's windows, a third of them failing."""
    rng = np.random.default_rng(seed)
    failed = rng.random(n_tools * per_tool) < 1 / 3
    tools = np.repeat([f"tool-{i:02d}" for i in range(n_tools)], per_tool)
    return failed, tools


def noisy(failed: np.ndarray, noise: float, seed: int) -> np.ndarray:
    return failed + np.random.default_rng(seed).normal(0.0, noise, len(failed))


def test_a_candidate_worse_on_every_tool_is_rejected():
    failed, tools = fleet(20)
    running, candidate = noisy(failed, 0.5, 1), noisy(failed, 1.5, 2)
    v = compare(candidate, running, failed, tools, tolerance=0.01, confidence=0.95)
    assert v.worse and v.unit == "tool" and v.tools == 20 and v.n == len(failed)
    assert v.change == pytest.approx(roc_auc(candidate, failed) - roc_auc(running, failed))
    assert v.change < v.upper < -0.01 and v.p_worse == 1.0
    said = v.describe(0.95)
    assert said.endswith(": worse") and "over 20 tools" in said and "P(worse) 1.00" in said
    assert GateScore.from_dict(v.as_dict()) == v  # what the round stores comes back whole


def test_an_equally_good_candidate_is_not_rejected_on_the_noise_of_a_few_tools():
    """Twenty candidates as good as the running model (the same noise, other draws) on an
    8-tool set: comparing point estimates (about confidence 0.5) rejects a third of them, the
    95% gate none. A fixed seed: the same verdict every time it is asked."""
    failed, tools = fleet(8)
    point = sure = 0
    for k in range(20):
        running, candidate = noisy(failed, 1.0, 100 + 2 * k), noisy(failed, 1.0, 101 + 2 * k)
        point += compare(candidate, running, failed, tools, 0.01, 0.5, resamples=300).worse
        v = compare(candidate, running, failed, tools, 0.01, 0.95, resamples=300)
        sure += v.worse
        assert v == compare(candidate, running, failed, tools, 0.01, 0.95, resamples=300)
    assert point >= 5 and sure == 0


def test_a_one_tool_set_is_resampled_by_window():
    failed, tools = fleet(1, per_tool=200)
    v = compare(noisy(failed, 2.0, 2), noisy(failed, 0.4, 1), failed, tools, 0.01, 0.95)
    assert v.unit == "window" and v.tools == 1 and v.worse
    assert "over the 200 windows of one tool" in v.describe(0.95)


def test_five_windows_of_two_tools_cannot_show_a_loss():
    """The demo's first round: two tools give too few distinct draws to bound anything (all the
    valid ones gave one change, reported as a "95% sure" loss); the windows are resampled, and
    five of them cannot tell a loss of a third of the AUC from noise."""
    failed, tools = np.array([1, 1, 0, 1, 0]), ["cvd-1"] * 4 + ["pump-1"]
    running, candidate = np.array([0.9, 0.8, 0.1, 0.7, 0.2]), np.array([0.5, 0.2, 0.4, 0.6, 0.3])
    v = compare(candidate, running, failed, tools, 0.01, 0.95)
    assert v.unit == "window" and v.tools == 2 and v.change < -0.3 and not v.worse
    assert "over the 5 windows of 2 tools" in v.describe(0.95)


def test_nothing_to_compare_never_blocks():
    failed, tools = fleet(4)
    first = compare(noisy(failed, 0.5, 1), None, failed, tools, 0.01, 0.95)  # no running model yet
    assert not first.worse and np.isnan(first.running) and first.as_dict()["running"] is None
    assert first.describe(0.95).endswith("not compared: no running model")
    none_failed = np.zeros(len(failed), bool)
    v = compare(np.zeros(len(failed)), np.ones(len(failed)), none_failed, tools, 0.01, 0.95)
    assert not v.worse and np.isnan(v.candidate) and v.as_dict()["upper"] is None
    assert v.describe(0.95) == f"not compared: the {len(failed)} windows hold one class only"


def test_bad_input_is_refused():
    failed, tools = fleet(3)
    with pytest.raises(ValueError, match="differ in length"):
        compare(np.zeros(len(failed) - 1), np.zeros(len(failed)), failed, tools, 0.01, 0.95)
    with pytest.raises(ValueError, match="confidence"):
        compare(np.zeros(len(failed)), np.zeros(len(failed)), failed, tools, 0.01, 1.0)
    with pytest.raises(ValidationError):
        LearningConfig(gate_confidence=0.3)


def test_weighted_auc_equals_the_auc_of_the_resampled_rows():
    """A resample given as weights per row (how often its tool was drawn) scores exactly as the
    drawn rows themselves would, ties included (scores rounded to make many)."""
    failed, tools = fleet(9, per_tool=40)
    score = np.round(noisy(failed, 1.0, 3), 1)
    auc = WeightedAuc(score, failed)
    _, group = np.unique(tools, return_inverse=True)
    rows = [np.flatnonzero(group == g) for g in range(9)]
    rng = np.random.default_rng(5)
    for _ in range(20):
        pick = rng.integers(0, 9, 9)
        idx = np.concatenate([rows[g] for g in pick])
        weight = np.bincount(pick, minlength=9)[group].astype(float)
        assert auc(weight) == pytest.approx(roc_auc(score[idx], failed[idx]), abs=1e-12)
    assert auc(np.ones(len(score))) == pytest.approx(roc_auc(score, failed), abs=1e-12)
    assert np.isnan(auc(np.where(failed, 1.0, 0.0)))  # only failing rows drawn: no AUC


def test_risks_moved_up_together_keep_the_auc_but_raise_false_alarms_at_the_kept_threshold():
    """The AUC ranks: a candidate whose every risk rose by the same amount ties the running model
    on it, yet at the threshold it keeps it alerts on many more windows that did not fail."""
    failed, tools = fleet(20)
    running = 0.3 * noisy(failed, 0.5, 1)  # healthy around 0, failing around 0.3
    up, down = running + 0.1, running - 0.1
    auc = compare(up, running, failed, tools, tolerance=0.01, confidence=0.95)
    assert auc.change == pytest.approx(0.0) and not auc.worse
    healthy, failing = compare_alarms(up, running, failed, tools, 0.25, tolerance=0.05, confidence=0.95)
    assert healthy.kind == "healthy" and healthy.n == int((~failed).sum()) and healthy.unit == "tool"
    assert healthy.candidate > healthy.running + 0.05 and healthy.bound > 0.05 and healthy.worse
    assert not failing.worse  # more of the failing windows warned is no harm
    said = healthy.describe(0.95)
    assert said.startswith("at p ≥ 0.25 on the") and "did not fail" in said and said.endswith(": worse")
    assert AlarmScore.from_dict(healthy.as_dict()) == healthy
    # moved down: fewer false alarms, but fewer failing windows reach the threshold
    healthy, failing = compare_alarms(down, running, failed, tools, 0.25, tolerance=0.05, confidence=0.95)
    assert (
        not healthy.worse
        and failing.worse
        and failing.bound < -0.05
        and "that failed" in failing.describe(0.95)
    )
    # the same model, or one a little off on a few windows, is not worse
    same = compare_alarms(running, running, failed, tools, 0.25, tolerance=0.05, confidence=0.95)
    assert not any(a.worse for a in same) and all(a.change == 0.0 for a in same)
    # a tolerance wider than the move lets it through
    assert not compare_alarms(up, running, failed, tools, 0.25, tolerance=0.9, confidence=0.95)[0].worse


def test_alarms_without_a_running_model_or_a_kind_are_not_compared():
    failed, tools = fleet(6)
    healthy, failing = compare_alarms(failed.astype(float), None, failed, tools, 0.5, 0.05, 0.95)
    assert not healthy.worse and np.isnan(healthy.running) and healthy.describe(0.95).endswith("not compared")
    none_failed = np.zeros(len(failed), dtype=bool)
    _, failing = compare_alarms(
        np.ones(len(failed)), np.zeros(len(failed)), none_failed, tools, 0.5, 0.05, 0.95
    )
    assert failing.n == 0 and not failing.worse and failing.as_dict()["candidate"] is None
    with pytest.raises(ValueError, match="differ in length"):
        compare_alarms(np.ones(3), np.ones(2), np.ones(3), ["a"] * 3, 0.5, 0.05, 0.95)


def test_a_rise_of_false_alarms_on_one_tool_of_six_is_not_sure_enough_to_reject():
    """As the AUC gate: worse only when sure. One tool of six whose every healthy window now
    crosses the threshold is a rise of a sixth on the point estimate, but a third of the draws
    over tools leave that tool out, so the gate cannot be 95% sure of any rise."""
    failed, tools = fleet(6)
    running = 0.3 * failed.astype(float)
    candidate = running.copy()
    candidate[(tools == "tool-03") & ~failed] = 0.5
    healthy, _ = compare_alarms(candidate, running, failed, tools, 0.25, tolerance=0.05, confidence=0.95)
    assert healthy.change == pytest.approx(1 / 6, abs=0.05) and healthy.bound == 0.0 and not healthy.worse
    assert "95% sure: at least +0.0 points" in healthy.describe(0.95)
    # the same rise on every tool is sure
    candidate[~failed] = 0.5
    assert compare_alarms(candidate, running, failed, tools, 0.25, tolerance=0.05, confidence=0.95)[0].worse


def test_the_alert_threshold_reads_each_type_s_progressive_modes_as_the_edge_does():
    """A sudden mode's probability is a base hazard, the same on every tool: at the thresholds
    releases choose (0.05 in the demo) it put every hard case over the threshold when the gate
    read the highest probability of all modes."""
    from cloud.pipeline_adapter import alerting_probability
    from shared.equipment import alert_modes

    modes = ["rf_match_drift", "rf_generator_trip", "bearing_wear", "motor_burnout"]
    assert alert_modes("plasma_etch", modes) == [0] and alert_modes("vacuum_pump", modes) == [2]
    assert alert_modes("cvd", modes) == [0, 1, 2, 3]  # a model of none of the type's modes: all
    assert alert_modes("not-a-type", modes) == [0, 1, 2, 3]
    probs = np.array([[0.01, 0.2, 0.3, 0.2], [0.02, 0.2, 0.04, 0.2], [0.5, 0.2, 0.1, 0.9]])
    got = alerting_probability(probs, modes, ["plasma_etch", "vacuum_pump", "plasma_etch"])
    assert got.tolist() == [0.01, 0.04, 0.5]
    assert alerting_probability(probs, modes, []).tolist() == [0.3, 0.2, 0.9]  # types unknown
