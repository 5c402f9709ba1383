"""Figures of a per-item detector (a score per product or window, a 0/1 truth, NaN unknown):
the average precision and the precision, recall and F1 of alerting at a threshold chosen elsewhere.

These are the usual figures for AI4I 2020 (its README: precision / recall / F1 / PR-AUC, not
accuracy, at 3.4% prevalence); the simulator's alert rule, which counts failures warned ahead and
one alert per episode, is scored by ``alert_eval`` instead.
"""

from __future__ import annotations

import numpy as np


def _ranked(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """At each distinct score from the highest down (alerting at ≥ it; tied items share one
    threshold): the threshold, the true positives and the alerts; and the positives in all."""
    keep = np.isfinite(truth)
    truth, score = truth[keep], score[keep]
    order = np.argsort(-score, kind="stable")
    s = score[order]
    tp = np.cumsum(truth[order] == 1)
    n = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # the last item of each group of tied scores
    return s[last], tp[last], n[last], int(tp[-1]) if len(tp) else 0


def pr_curve(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of alerting at each distinct score from the highest down; empty
    without a positive."""
    _, tp, n, positives = _ranked(truth, score)
    if positives == 0:
        return np.zeros(0), np.zeros(0)
    return tp / positives, tp / n


def average_precision(truth: np.ndarray, score: np.ndarray) -> float:
    """PR-AUC: the precision at each distinct threshold weighted by the recall it adds (the step
    sum, as scikit-learn's); NaN without a positive."""
    recall, precision = pr_curve(truth, score)
    if len(recall) == 0:
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_threshold(truth: np.ndarray, score: np.ndarray) -> float:
    """The score threshold (alert at ≥) with the best F1 on these items; inf (never alert) without
    a positive."""
    thresholds, tp, n, positives = _ranked(truth, score)
    if positives == 0:
        return float("inf")
    return float(thresholds[int(np.argmax(2 * tp / (n + positives)))])


def at_threshold(truth: np.ndarray, score: np.ndarray, threshold: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of alerting at ``score ≥ threshold`` (per product)."""
    keep = np.isfinite(truth)
    hit = score[keep] >= threshold[keep]
    t = truth[keep] == 1
    tp, fp, fn = int((hit & t).sum()), int((hit & ~t).sum()), int((~hit & t).sum())
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"precision": p, "recall": r, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
