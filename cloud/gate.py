"""The learning gate's statistics: the ROC AUC of "fails within the horizon" on a frozen set, and
whether a candidate is worse than the running model beyond what that set can resolve.

A frozen set holds the windows of a handful of tools, and windows of one tool are strongly
correlated, so its AUC moves by several points with the tools it happens to hold (bench B8: on 14
tools one draw said −3.7 points on the old regime where 110 tools said +0.2). A gate that compares
the two point estimates against a 1-point tolerance rejects good candidates on noise. So
:func:`compare` resamples the set's tools whole, with replacement (``resamples`` times, a fixed
seed: the same verdict when a round resumes), scores both models on each resample (paired: the
same windows), and calls the candidate *worse* only when even the ``confidence`` quantile of the
change is below ``-tolerance``: it is that sure the candidate lost more than the tolerance. With
``confidence = 0.5`` this is about the point-estimate gate. A set of a single tool is resampled
by window instead, which sees less of the noise; the verdict records which unit was used.

What this gives up: a loss on one tool of a few looks like noise to it, as it would to anyone
judging from so few tools. The frozen old set grows with every round, and the gate sharpens with
it; the canary's watch is the next guard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


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


def group_rows(groups: np.ndarray | list[str]) -> list[np.ndarray]:
    """The row indices of each distinct group (tool), in a stable order."""
    keys = np.asarray(groups)
    return [np.flatnonzero(keys == g) for g in np.unique(keys)]


def resample(rows: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One bootstrap draw: as many groups as there are, picked whole with replacement."""
    pick = rng.integers(0, len(rows), len(rows))
    return np.concatenate([rows[i] for i in pick])


@dataclass(frozen=True)
class GateScore:
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

    def as_dict(self) -> dict[str, float | int | str | bool | None]:
        """JSON has no NaN: a missing score is stored as null."""
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}

    @staticmethod
    def from_dict(d: dict[str, float | int | str | bool | None]) -> GateScore:
        return GateScore(**{k: (float("nan") if v is None else v) for k, v in d.items()})  # type: ignore[arg-type]

    def describe(self, confidence: float) -> str:
        """One line for the round's log and the benchmark, in points of AUC (0.01)."""
        if np.isnan(self.candidate) or np.isnan(self.running):
            return f"candidate {self.candidate:.3f}, not compared (no running model, or one class only)"
        line = f"candidate {self.candidate:.3f} vs running {self.running:.3f}"
        line += f" ({100 * self.change:+.1f} points"
        if np.isnan(self.upper):
            return line + ")"
        over = f"{self.tools} tools" if self.unit == "tool" else f"the {self.n} windows of one tool"
        return line + (
            f" over {over}; at {confidence:.0%} confidence at most "
            f"{100 * self.upper:+.1f}, P(worse) {self.p_worse:.2f})" + (": worse" if self.worse else "")
        )


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
    n = len(failed)
    if len(candidate) != n or (running is not None and len(running) != n) or len(tools) != n:
        raise ValueError("gate: scores, labels and tools differ in length")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"gate: confidence must be in (0, 1), not {confidence}")
    rows = group_rows(tools)
    n_tools = len(rows)
    unit = "tool" if n_tools > 1 else "window"
    if unit == "window":
        rows = [np.array([i]) for i in range(n)]
    cand = roc_auc(candidate, failed)
    base = roc_auc(running, failed) if running is not None else float("nan")
    nan = float("nan")
    if running is None or np.isnan(cand) or np.isnan(base):
        return GateScore(cand, base, n, n_tools, unit, cand - base, nan, nan, False)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        idx = resample(rows, rng)
        diffs.append(roc_auc(candidate[idx], failed[idx]) - roc_auc(running[idx], failed[idx]))
    d = np.array(diffs)
    d = d[~np.isnan(d)]  # resamples that drew one class only
    if not len(d):
        return GateScore(cand, base, n, n_tools, unit, cand - base, nan, nan, False)
    upper = float(np.quantile(d, confidence))
    p_worse = float(np.mean(d < 0))
    return GateScore(cand, base, n, n_tools, unit, cand - base, upper, p_worse, upper < -tolerance)


__all__ = ["GateScore", "compare", "group_rows", "resample", "roc_auc"]
