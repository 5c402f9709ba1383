"""The alert rule on hand-made sequences, the hard-case signals and the tuning optimiser."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.alerting import AlertRule, AlertState, evaluate
from shared.tuning import propose_step, step_box
from shared.uncertainty import (
    fit_centroids,
    fit_std_scale,
    flagged_error_ratio,
    hard_case_reasons,
    interval_coverage,
    novelty,
)

RULE = AlertRule(threshold=0.6, persistence=3, clear_threshold=0.3)


def _series(ps: list[float]) -> list[tuple[float, float]]:
    return [(float(i), p) for i, p in enumerate(ps)]


def test_alert_needs_persistence():
    assert evaluate(RULE, _series([0.9, 0.9, 0.1, 0.9, 0.9, 0.2])) == []
    alerts = evaluate(RULE, _series([0.1, 0.7, 0.8, 0.9, 0.95]))
    assert len(alerts) == 1
    assert alerts[0].ts == 3.0 and alerts[0].episode_start_ts == 1.0 and alerts[0].steps_above == 3


def test_one_alert_per_episode_with_hysteresis():
    # rises, wobbles between the thresholds (episode stays open), rises again: still one alert
    ps = [0.7, 0.7, 0.7, 0.9, 0.5, 0.4, 0.7, 0.8, 0.9, 0.99]
    assert len(evaluate(RULE, _series(ps))) == 1
    # drops below the clear threshold: re-armed, a second episode gives a second alert
    ps2 = [*ps, 0.1, 0.7, 0.7, 0.7]
    alerts = evaluate(RULE, _series(ps2))
    assert [a.ts for a in alerts] == [2.0, 13.0]


def test_nan_neither_confirms_nor_clears():
    alerts = evaluate(RULE, _series([0.7, math.nan, 0.7, math.nan, 0.7]))
    assert [a.ts for a in alerts] == [4.0]
    assert evaluate(RULE, _series([0.7, 0.7, 0.7, math.nan, 0.7])) == evaluate(RULE, _series([0.7] * 3))


def test_live_stepping_equals_offline_evaluation_and_reset():
    rng = np.random.default_rng(3)
    ps = rng.uniform(0, 1, 300).tolist()
    state, live = AlertState(), []
    for i, p in enumerate(ps):
        state, d = RULE.step(state, p, float(i))
        if d is not None:
            live.append(d)
    assert live == RULE.evaluate(_series(ps))
    assert AlertRule.reset() == AlertState()


def test_rule_validates_its_parameters():
    with pytest.raises(ValueError):
        AlertRule(threshold=0.5, clear_threshold=0.6)
    with pytest.raises(ValueError):
        AlertRule(persistence=0)


def test_novelty_and_centroids():
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.normal(0, 0.1, (200, 4)), rng.normal(3, 0.1, (200, 4))])
    cen, scale = fit_centroids(train, k=2, seed=0)
    inside = novelty(train, cen, scale)
    assert 0.9 < float(np.quantile(inside, 0.95)) < 1.1  # scale is the 95th percentile
    far = novelty(np.full((1, 4), 10.0), cen, scale)
    assert far[0] > 10
    with pytest.raises(ValueError):
        novelty(np.zeros((1, 3)), cen, scale)


def test_hard_case_reasons():
    th = {"alert_probability": 0.6, "hard_margin": 0.1, "hard_rul_std_h": 24.0, "hard_novelty": 1.5}
    assert hard_case_reasons(np.array([0.1, 0.95]), 5.0, 0.5, th) == []
    assert hard_case_reasons(np.array([0.55, 0.0]), 5.0, 0.5, th) == ["margin"]
    assert hard_case_reasons(np.array([0.1]), 30.0, 2.0, th) == ["rul_std", "novelty"]
    assert hard_case_reasons(np.array([0.55]), 30.0, 2.0, {}) == []


def test_calibration_measures():
    m = np.zeros(1000)
    y = np.random.default_rng(1).normal(0, 1, 1000)
    assert 0.85 < interval_coverage(m, np.ones(1000), y) < 0.95
    err = np.abs(y)
    assert flagged_error_ratio(err, err > 1.0) > 2.0


def test_std_scale_fitted_on_some_units_calibrates_the_others():
    rng = np.random.default_rng(2)
    mean = rng.normal(50, 20, 4000)
    std = rng.uniform(2, 10, 4000)  # what an over-confident model says
    truth = mean + rng.normal(0, 1, 4000) * 2.5 * std  # the truth is 2.5× as spread
    scale = fit_std_scale(mean[:2000], std[:2000], truth[:2000])
    assert 2.3 < scale < 2.7
    assert interval_coverage(mean[2000:], std[2000:], truth[2000:]) < 0.55
    assert 0.87 < interval_coverage(mean[2000:], scale * std[2000:], truth[2000:]) < 0.93
    assert fit_std_scale(mean, std, np.full(4000, np.nan)) == 1.0


def _surrogate(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # yield peaks at a=5, b=-2 and rises with context c; energy grows with a
    a, b, c = x[:, 0], x[:, 1], x[:, 2]
    return 90 - (a - 5) ** 2 - (b + 2) ** 2 + c, 10 + 0.5 * a


def test_tuning_stays_inside_envelope_and_step_limit():
    env = {"a": (0.0, 4.0), "b": (-1.0, 1.0)}
    step = {"a": 0.5, "b": 0.25}
    cur = {"a": 1.0, "b": 0.5, "fixed": 7.0}
    for seed in range(5):
        prop = propose_step(_surrogate, cur, {"c": 1.0}, env, step, {"yield": 1.0}, seed=seed)
        assert prop["fixed"] == 7.0  # no envelope: never moved
        for k in ("a", "b"):
            assert env[k][0] <= prop[k] <= env[k][1]
            assert abs(prop[k] - cur[k]) <= step[k] + 1e-9
        assert prop["a"] > 1.4 and prop["b"] < 0.3  # moved towards the optimum, up to the limit


def test_tuning_keeps_current_when_nothing_better_and_returns_into_envelope():
    env = {"a": (0.0, 10.0), "b": (-5.0, 5.0)}
    at_opt = {"a": 5.0, "b": -2.0}
    prop = propose_step(_surrogate, at_opt, {"c": 0.0}, env, {"a": 1.0, "b": 1.0}, min_gain=1e-6)
    assert prop == at_opt
    box = step_box({"a": 20.0}, {"a": (0.0, 10.0)}, {"a": 1.0})
    assert box["a"] == (19.0, 19.0)  # one step back towards the envelope, never a jump
    prop = propose_step(_surrogate, {"a": 10.5, "b": -2.0}, {"c": 0.0}, env, {"a": 1.0, "b": 0.5})
    assert 9.5 <= prop["a"] <= 10.0  # back inside, within one step
