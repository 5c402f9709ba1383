"""The learning gate's statistics: the ROC AUC of "fails within the horizon" on a frozen set, and
whether a candidate is worse than the running model beyond what that set can resolve.

A frozen set holds the windows of a handful of tools, and windows of one tool are strongly
correlated, so its AUC moves by several points with the tools it happens to hold (bench B8: on 14
tools one draw said −3.7 points on the old regime where 110 tools said +0.2). A gate that compares
the two point estimates against a 1-point tolerance rejects good candidates on noise. So
:func:`compare` resamples the set's tools whole, with replacement (``resamples`` times, a fixed
seed: the same verdict when a round resumes), scores both models on each resample (paired: the
same windows; :class:`WeightedAuc`, ``bench/gate_speed.py``), and calls the candidate *worse*
only when even the ``confidence`` quantile of the change is below ``-tolerance``: it is that
sure the candidate lost more than the tolerance. With ``confidence = 0.5`` this is about the
point-estimate gate. A set of fewer than ``MIN_TOOLS`` tools is resampled by window instead,
which sees less of the noise; the verdict records which unit was used. (Two tools give three
distinct draws, fewer once the draws with one class are dropped: in the demo's first round, five
windows of two tools left draws that all gave the same change, and the gate reported a "95% sure"
loss of 50 points from them.)

What this gives up: a loss on one tool of a few looks like noise to it, as it would to anyone
judging from so few tools. The frozen old set grows with every round, and the gate sharpens with
it; the canary's watch is the next guard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Self

import numpy as np

MIN_TOOLS = 5  # fewer: too few distinct draws of tools to put a bound on, windows are resampled


def roc_auc(score: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN unless both classes occur."""
    truth = truth.astype(bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    ranks[order] = np.arange(1, len(score) + 1)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]  # tied scores share their mean rank
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class WeightedAuc:
    """:func:`roc_auc` of one score over many resamples of the same rows, each given as a weight
    per row (how many times the draw took it). The scores are ranked once; each resample then
    costs two bincounts and a cumulative sum, not a sort: the gate's cost grows with the frozen
    set (the old one gains every round's new set), and a round must stay within minutes."""

    def __init__(self, score: np.ndarray, truth: np.ndarray) -> None:
        _, self.level = np.unique(score, return_inverse=True)  # tied scores share a level
        self.n_levels = int(self.level.max()) + 1 if len(score) else 0
        self.pos = truth.astype(bool)

    def __call__(self, weight: np.ndarray) -> float:
        pos_w = np.bincount(self.level, weights=weight * self.pos, minlength=self.n_levels)
        neg_w = np.bincount(self.level, weights=weight * ~self.pos, minlength=self.n_levels)
        n_pos, n_neg = pos_w.sum(), neg_w.sum()
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        below = np.cumsum(neg_w) - neg_w  # negatives scored strictly lower; a tie counts half
        return float((pos_w * (below + 0.5 * neg_w)).sum() / (n_pos * n_neg))


Stored = dict[str, float | int | str | bool | None]


class _Stored:
    """What a round stores of a comparison. JSON has no NaN: a missing figure is stored as null
    and read back as NaN."""

    def as_dict(self) -> Stored:
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Stored) -> Self:
        return cls(**{k: (float("nan") if v is None else v) for k, v in d.items()})


@dataclass(frozen=True)
class GateScore(_Stored):
    """One frozen set's comparison; NaN where a score does not exist (one class only, no running
    model). ``upper`` is the ``confidence`` quantile of candidate − running over the resamples."""

    candidate: float
    running: float
    n: int
    tools: int
    unit: str  # what was resampled: "tool", or "window" for a one-tool set
    change: float  # candidate − running on the whole set
    upper: float
    p_worse: float  # share of resamples where the candidate scored below the running model
    worse: bool

    def describe(self, confidence: float) -> str:
        """One line for the round's log and the benchmark, in points of AUC (0.01)."""
        if np.isnan(self.candidate) or np.isnan(self.running):
            if np.isnan(self.candidate):  # no AUC without both classes
                return f"not compared: the {self.n} windows hold one class only"
            return f"candidate {self.candidate:.3f}, not compared: no running model"
        line = f"candidate {self.candidate:.3f} vs running {self.running:.3f}"
        line += f" ({100 * self.change:+.1f} points"
        if np.isnan(self.upper):
            return line + ")"
        of = "one tool" if self.tools == 1 else f"{self.tools} tools"
        over = f"{self.tools} tools" if self.unit == "tool" else f"the {self.n} windows of {of}"
        return line + (
            f" over {over}; at {confidence:.0%} confidence at most "
            f"{100 * self.upper:+.1f}, P(worse) {self.p_worse:.2f})" + (": worse" if self.worse else "")
        )


def _groups(tools: np.ndarray | list[str]) -> tuple[np.ndarray, int, int, str]:
    """Each row's resampling group, the number of groups and of tools, and the unit: whole tools,
    or single windows for a set of fewer than MIN_TOOLS tools."""
    _, group = np.unique(np.asarray(tools), return_inverse=True)
    n = len(group)
    n_tools = int(group.max()) + 1 if n else 0
    if n_tools >= MIN_TOOLS:
        return group, n_tools, n_tools, "tool"
    return np.arange(n), n, n_tools, "window"


def _draw(rng: np.random.Generator, group: np.ndarray, n_groups: int) -> np.ndarray:
    """One bootstrap draw of ``n_groups`` groups with replacement, as each row's weight: how many
    times its group was drawn."""
    return np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[group].astype(float)


def _check(
    candidate: np.ndarray,
    running: np.ndarray | None,
    failed: np.ndarray,
    tools: np.ndarray | list[str],
    confidence: float,
) -> None:
    n = len(failed)
    if len(candidate) != n or (running is not None and len(running) != n) or len(tools) != n:
        raise ValueError("gate: scores, labels and tools differ in length")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"gate: confidence must be in (0, 1), not {confidence}")


def compare(
    candidate: np.ndarray,
    running: np.ndarray | None,
    failed: np.ndarray,
    tools: np.ndarray | list[str],
    tolerance: float,
    confidence: float,
    resamples: int = 1000,
    seed: int = 0,
) -> GateScore:
    """Score the candidate's and the running model's per-window risk (higher: more likely to fail
    within the horizon) against ``failed`` and decide whether the candidate is worse (module doc).
    No running model, or a set that cannot score (one class), is never ``worse``."""
    _check(candidate, running, failed, tools, confidence)
    n = len(failed)
    group, n_groups, n_tools, unit = _groups(tools)
    cand = roc_auc(candidate, failed)
    base = roc_auc(running, failed) if running is not None else float("nan")
    nan = float("nan")
    if running is None or np.isnan(cand) or np.isnan(base):
        return GateScore(cand, base, n, n_tools, unit, cand - base, nan, nan, False)
    rng = np.random.default_rng(seed)
    auc_cand, auc_run = WeightedAuc(candidate, failed), WeightedAuc(running, failed)
    diffs = []
    for _ in range(resamples):
        # a draw of n_groups groups with replacement, as each row's weight: its group's count
        weight = _draw(rng, group, n_groups)
        diffs.append(auc_cand(weight) - auc_run(weight))
    d = np.array(diffs)
    d = d[~np.isnan(d)]  # resamples that drew one class only
    if not len(d):
        return GateScore(cand, base, n, n_tools, unit, cand - base, nan, nan, False)
    upper = float(np.quantile(d, confidence))
    p_worse = float(np.mean(d < 0))
    return GateScore(cand, base, n, n_tools, unit, cand - base, upper, p_worse, upper < -tolerance)


@dataclass(frozen=True)
class AlarmScore(_Stored):
    """How often each model's risk reaches the alert threshold on one kind of a frozen set's
    windows: those that did not fail within the horizon (a rise is more false alarms) or those
    that did (a fall is more missed failures). NaN where nothing was compared. ``bound`` is the
    bound of candidate − running on the side that favours the candidate, at ``confidence``: the
    share rose at least this much (healthy) or changed at most this much (failing); past the
    tolerance, the gate is that sure of the harm and the candidate is worse."""

    kind: str  # "healthy" or "failing"
    threshold: float
    candidate: float  # share of the kind's windows at or above the threshold
    running: float
    n: int
    tools: int
    unit: str
    change: float
    bound: float
    worse: bool

    def describe(self, confidence: float) -> str:
        """One clause for the round's log, in points of the kind's windows."""
        which = "that did not fail" if self.kind == "healthy" else "that failed"
        line = f"at p ≥ {self.threshold:g} on the {self.n} windows {which}"
        if np.isnan(self.candidate) or np.isnan(self.running):
            return line + ": not compared"
        line += f" {100 * self.candidate:.0f}% vs {100 * self.running:.0f}%"
        if np.isnan(self.bound):
            return line
        most = "at least" if self.kind == "healthy" else "at most"
        return (
            line
            + f" ({confidence:.0%} sure: {most} {100 * self.bound:+.1f} points)"
            + (": worse" if self.worse else "")
        )


def compare_alarms(
    candidate: np.ndarray,
    running: np.ndarray | None,
    failed: np.ndarray,
    tools: np.ndarray | list[str],
    threshold: float,
    tolerance: float,
    confidence: float,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[AlarmScore, AlarmScore]:
    """The alert threshold's side of the gate, for the windows that did not fail and those that
    did. The AUC ranks and is blind to a candidate whose risks all moved up or down together; the
    candidate keeps the running model's threshold (``cloud.pipeline_adapter.parent_thresholds``),
    so such a move means more false alarms or fewer warned failures at once. A kind is worse when
    the gate is ``confidence`` sure (the same bootstrap over tools as :func:`compare`) that its
    share at or above ``threshold`` moved the harmful way by more than ``tolerance``. One window
    over the threshold stands for an alert here; the rule's persistence is left out, and a frozen
    set holds hard cases rather than a random draw of the fleet's windows, so the shares are not
    the fleet's alarm rate: the change between the two models is what is judged."""
    _check(candidate, running, failed, tools, confidence)
    group, n_groups, n_tools, unit = _groups(tools)
    failed = failed.astype(bool)
    nan = float("nan")
    out = []
    for kind, rows in (("healthy", ~failed), ("failing", failed)):
        m = int(rows.sum())
        over_c = (candidate >= threshold) & rows
        cand = float(over_c.sum() / m) if m else nan
        if running is None or m == 0:
            out.append(AlarmScore(kind, threshold, cand, nan, m, n_tools, unit, nan, nan, False))
            continue
        over_r = (running >= threshold) & rows
        base = float(over_r.sum() / m)
        rng = np.random.default_rng(seed)
        diffs = []
        for _ in range(resamples):
            weight = _draw(rng, group, n_groups)
            total = float((weight * rows).sum())
            if total > 0:
                diffs.append(float((weight * over_c).sum() - (weight * over_r).sum()) / total)
        if not diffs:
            out.append(AlarmScore(kind, threshold, cand, base, m, n_tools, unit, cand - base, nan, False))
            continue
        # As compare() does for the AUC: worse only when even the bound on the side that favours
        # the candidate is past the tolerance, i.e. the gate is `confidence` sure of the harm.
        if kind == "healthy":  # harmful: a rise; at least `bound` with that confidence
            bound = float(np.quantile(diffs, 1.0 - confidence))
            worse = bound > tolerance
        else:  # harmful: a fall; at most `bound` (a change below zero) with that confidence
            bound = float(np.quantile(diffs, confidence))
            worse = bound < -tolerance
        out.append(AlarmScore(kind, threshold, cand, base, m, n_tools, unit, cand - base, bound, worse))
    return out[0], out[1]


__all__ = ["AlarmScore", "GateScore", "WeightedAuc", "compare", "compare_alarms", "roc_auc"]
