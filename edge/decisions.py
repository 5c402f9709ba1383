"""From predictions to messages: alerts (``shared.alerting``), hard cases (``shared.uncertainty``).

Per tool, the risk is the highest failure probability among the progressive modes of the tool's
type (a CVD cannot fail by pad glazing, and a sudden mode has no precursor to warn of: its
probability is the base hazard, the same on every tool of the type); the alert rule turns that
stream into one alert per episode, naming the mode with the highest probability. This is the
risk the offline evaluation scores (``cloud.training.alert_eval.risk_series``) and a release's
alert rule is chosen on. Maintenance or a failure resets the rule.

A window is a hard case when ``hard_case_reasons`` gives a reason (margin, RUL uncertainty,
novelty). Hard cases cost upload bandwidth and cloud compute, so they pass a token bucket
(``hardcase_per_hour``, burst ``hardcase_burst``); the ones over the budget are counted, not sent.
Each tool also has its own bucket, ``hardcase_tool_share`` of the budget (``1/N`` of it on an
edge of N < 1/share tools): one tool that reads as novel at every window would otherwise take the
whole budget, and the cloud would learn from that tool alone.
Thresholds come from the model's manifest, overridden key by key by ``decisions.thresholds``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from edge.config import DecisionsConfig
from shared.alerting import AlertRule, AlertState
from shared.equipment import alert_modes, tool_type
from shared.evidence import Explanation, reference_known
from shared.messages import Alert, HardCase, Message, encode_array
from shared.uncertainty import hard_case_reasons

Clock = Callable[[], float]
M = TypeVar("M", bound=Message)


def message(cls: type[M], **fields: Any) -> M:
    """Build a payload model; ``schema`` is filled in from the class."""
    return cls.model_validate({"schema": cls.SCHEMA, **fields})


class TokenBucket:
    """``rate_per_s`` tokens per second up to ``burst``; :meth:`take` spends one if there is one."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def give_back(self) -> None:
        """Undo the last :meth:`take` (the case it paid for was not sent after all)."""
        self.tokens = min(self.burst, self.tokens + 1.0)


@dataclass
class ToolDecision:
    """What one window of one tool led to."""

    risk: float
    mode: str
    probs: dict[str, float] = field(default_factory=dict)  # the tool type's own modes (telemetry)
    alert: Alert | None = None
    hard_case: HardCase | None = None
    reasons: list[str] = field(default_factory=list)


def rule_from(thresholds: Mapping[str, float]) -> AlertRule:
    return AlertRule(
        threshold=float(thresholds.get("alert_probability", 0.5)),
        persistence=int(thresholds.get("alert_persistence_steps", 3)),
        clear_threshold=float(thresholds.get("alert_clear_probability", 0.3)),
    )


class Decider:
    """Alert state and hard-case budget for every tool of one edge."""

    def __init__(
        self, cfg: DecisionsConfig, site: str, edge_id: str, clock: Clock = time.monotonic, tools: int = 0
    ) -> None:
        """``tools``: how many tools the edge serves (0: not known, each gets the configured share)."""
        self.cfg = cfg
        self.site = site
        self.edge_id = edge_id
        self.clock = clock
        self.bucket = TokenBucket(cfg.hardcase_per_hour / 3600.0, cfg.hardcase_burst, clock)
        self.tool_share = max(cfg.hardcase_tool_share, 1.0 / tools) if tools > 0 else cfg.hardcase_tool_share
        self.tool_buckets: dict[str, TokenBucket] = {}
        self.states: dict[str, AlertState] = {}
        self.counts: Counter[str] = Counter()
        self._thresholds: dict[str, float] = {}
        self._rule = rule_from({})
        self._mode_index: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def set_thresholds(self, manifest_thresholds: Mapping[str, float]) -> None:
        """Use a (new) model's thresholds, with the config's overrides on top."""
        merged = {**manifest_thresholds, **self.cfg.thresholds}
        self._thresholds = merged
        self._rule = rule_from(merged)

    def reset(self, tool_id: str) -> None:
        """After maintenance or a failure: the episode is over, the rule re-arms."""
        self.states[tool_id] = AlertRule.reset()

    def _modes_of(self, ttype: str, modes: list[str]) -> np.ndarray:
        key = (ttype, tuple(modes))
        cached = self._mode_index.get(key)
        if cached is not None:
            return cached
        tool_type(ttype)  # an unknown type is refused here, as before (alert_modes would read all)
        # The type's progressive modes; for a model trained on other modes, the type's, or all.
        idx = np.array(alert_modes(ttype, modes), dtype=np.int64)
        self._mode_index[key] = idx
        return idx

    @staticmethod
    def _case_probs(ttype: str, modes: list[str], probs: np.ndarray) -> dict[str, float]:
        """What a hard case says per mode: the tool type's modes, sudden ones included (an operator
        labels by any of them); every mode for a model trained on none of the type's."""
        every = {m: float(p) for m, p in zip(modes, probs, strict=True)}
        own = set(tool_type(ttype).mode_names)
        return {m: p for m, p in every.items() if m in own} or every

    def decide(
        self,
        tool_id: str,
        ttype: str,
        window_ts: float,
        feats: np.ndarray,
        feature_names: list[str],
        modes: list[str],
        probs: np.ndarray,
        rul: float,
        rul_std: float,
        novelty: float,
        model_version: str,
        explain: Callable[[int], Explanation] | None = None,
        named: str | None = None,
    ) -> ToolDecision:
        """One window's decision. ``probs`` is (M,) over the model's ``modes``. ``explain``, given
        the index of an alert's mode, names the sensors that carry it and the mode they point to
        (``shared.evidence``); it is called only when the window raises an alert. ``named``: the
        mode the release's namer gives the window (``shared.naming``), which an alert names when
        it is one of the type's; else the most probable. The risk is the highest probability
        either way: what the alert rule reads."""
        idx = self._modes_of(ttype, modes)
        own = probs[idx]
        best = int(idx[int(np.argmax(own))])
        if named is not None and named in modes and modes.index(named) in idx:
            best = modes.index(named)
        risk = float(own.max())
        by_mode = {modes[int(i)]: float(probs[int(i)]) for i in idx}
        out = ToolDecision(risk=risk, mode=modes[best], probs=by_mode)
        state = self.states.get(tool_id, AlertState())
        state, decision = self._rule.step(state, risk, window_ts)
        self.states[tool_id] = state
        if decision is not None:
            self.counts["alerts"] += 1
            why = explain(best) if explain is not None else None
            out.alert = message(
                Alert,
                edge_id=self.edge_id,
                site=self.site,
                tool_id=tool_id,
                mode=modes[best],
                probability=min(1.0, max(0.0, risk)),
                rul_h=_finite(rul),
                rul_std_h=_finite(rul_std),
                model_version=model_version,
                episode_start_ts=decision.episode_start_ts,
                source_ts=window_ts,
                evidence=None if why is None else [e.to_dict() for e in why.sensors],
                likely_mode=None if why is None else why.likely_mode,
                reference_known=reference_known(feats, feature_names),
            )
        reasons = hard_case_reasons(own, rul_std, novelty, self._thresholds)
        out.reasons = reasons
        if reasons:
            self.counts["hard"] += 1
            if self._budget(tool_id):
                self.counts["hard_sent"] += 1
                out.hard_case = message(
                    HardCase,
                    edge_id=self.edge_id,
                    site=self.site,
                    case_id=uuid.uuid4().hex,
                    tool_id=tool_id,
                    tool_type=ttype,
                    window_ts=window_ts,
                    features=encode_array(feats),
                    shape=(int(feats.shape[0]), int(feats.shape[1])),
                    feature_names=feature_names,
                    edge_prediction={
                        "probs": self._case_probs(ttype, modes, probs),
                        "rul_h": _finite(rul),
                        "rul_std_h": _finite(rul_std),
                        "novelty": _finite(novelty),
                    },
                    reasons=reasons,
                    model_version=model_version,
                )
        return out

    def _budget(self, tool_id: str) -> bool:
        """Spend a token of the tool's share and of the edge's budget; False (and counted) when
        either is empty. A case refused by the edge's budget does not cost the tool's share."""
        own = self.tool_buckets.get(tool_id)
        if own is None:
            share = self.tool_share
            burst = max(1, math.ceil(self.cfg.hardcase_burst * share)) if self.cfg.hardcase_burst else 0
            own = self.tool_buckets[tool_id] = TokenBucket(
                self.cfg.hardcase_per_hour * share / 3600.0, burst, self.clock
            )
        if not own.take():
            self.counts["hard_over_budget"] += 1
            self.counts["hard_over_tool_share"] += 1
            return False
        if not self.bucket.take():
            own.give_back()
            self.counts["hard_over_budget"] += 1
            return False
        return True


def _finite(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None
