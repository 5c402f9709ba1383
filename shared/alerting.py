"""The alert rule (DESIGN.md §1.3): risk over a threshold for long enough raises ONE alert per episode.

Pure functions and frozen dataclasses, no clock and no I/O, so the edge (live, one step per
window) and the offline evaluation (B2, whole series) run the same code::

    rule = AlertRule(threshold=0.6, persistence=3, clear_threshold=0.3)
    state = AlertState()
    state, decision = rule.step(state, probability, ts)   # decision is None or an AlertDecision

An episode starts at the first of ``persistence`` consecutive steps with probability ≥
``threshold``; its alert is raised on the step that completes the run. While the episode lasts,
no further alert is raised, however high the risk goes. The episode ends (and the rule re-arms)
at the first step with probability < ``clear_threshold`` (hysteresis: ``clear_threshold`` ≤
``threshold`` keeps a noisy risk hovering at the threshold from raising an alert per wiggle), or
when :meth:`AlertRule.reset` is called after maintenance. A NaN probability (no valid window)
leaves the state as it is: missing data neither confirms nor clears a risk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """An alert to raise: when, how high the risk was, and when the run above threshold began."""

    ts: float
    probability: float
    episode_start_ts: float
    steps_above: int


@dataclass(frozen=True, slots=True)
class AlertState:
    """Where one risk stream stands. Start every tool and mode with ``AlertState()``."""

    run: int = 0  # consecutive steps at or above the threshold
    run_start_ts: float | None = None  # timestamp of the first of them
    alerted: bool = False  # the current episode has raised its alert


@dataclass(frozen=True, slots=True)
class AlertRule:
    threshold: float = 0.5  # probability at or above which a step counts as "at risk"
    persistence: int = 3  # consecutive at-risk steps before the alert
    clear_threshold: float = 0.3  # below this the episode ends and the rule re-arms

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.persistence < 1:
            raise ValueError(f"persistence must be ≥ 1, got {self.persistence}")
        if not 0.0 <= self.clear_threshold <= self.threshold:
            raise ValueError(
                f"clear_threshold must be in [0, threshold={self.threshold}], got {self.clear_threshold}"
            )

    def step(
        self, state: AlertState, probability: float, ts: float
    ) -> tuple[AlertState, AlertDecision | None]:
        """Advance one step; returns the new state and the alert to raise now, if any."""
        return step(self, state, probability, ts)

    def evaluate(self, series: Iterable[tuple[float, float]]) -> list[AlertDecision]:
        """Every alert the rule raises on ``(ts, probability)`` pairs, in order."""
        return evaluate(self, series)

    @staticmethod
    def reset() -> AlertState:
        """The state after maintenance or a failure: no run, re-armed."""
        return AlertState()


def step(
    rule: AlertRule, state: AlertState, probability: float, ts: float
) -> tuple[AlertState, AlertDecision | None]:
    """One step of ``rule``; see the module docstring for the semantics."""
    if math.isnan(probability):
        return state, None
    if probability < rule.clear_threshold:
        return AlertState(), None
    if probability < rule.threshold:
        # Between the two thresholds: the run of at-risk steps is broken, but an episode that has
        # alerted stays open (hysteresis), so it will not alert again until the risk clears.
        return replace(state, run=0, run_start_ts=None), None
    run = state.run + 1
    start = state.run_start_ts if state.run_start_ts is not None else ts
    new = AlertState(run=run, run_start_ts=start, alerted=state.alerted)
    if run >= rule.persistence and not state.alerted:
        return replace(new, alerted=True), AlertDecision(
            ts=ts, probability=float(probability), episode_start_ts=start, steps_above=run
        )
    return new, None


def evaluate(rule: AlertRule, series: Iterable[tuple[float, float]]) -> list[AlertDecision]:
    """Offline: all alerts on a series of ``(ts, probability)``, the same as stepping live."""
    state = AlertState()
    out: list[AlertDecision] = []
    for ts, p in series:
        state, decision = step(rule, state, float(p), float(ts))
        if decision is not None:
            out.append(decision)
    return out
