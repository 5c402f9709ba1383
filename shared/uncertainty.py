"""Signals for picking hard cases (numpy only, shared by the edge and the trainer).

Three signals, each measured against thresholds that travel in the model manifest:

* probability margin: a mode's probability is within ``hard_margin`` of ``alert_probability``,
  i.e. the alert decision could go either way;
* RUL uncertainty: the predicted RUL standard deviation exceeds ``hard_rul_std_h``;
* novelty: the embedding's distance to the nearest training centroid, divided by
  ``novelty_scale`` (the 95th percentile of that distance on the training set, so 1.0 means
  "as far out as the 5% most unusual training windows"), exceeds ``hard_novelty``.

The trainer fits the centroids and scale with :func:`fit_centroids` and measures how well the
signals are calibrated with :func:`interval_coverage` and :func:`flagged_error_ratio`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

REASONS = ("margin", "rul_std", "novelty")


def novelty(embedding: np.ndarray, centroids: np.ndarray, scale: float) -> np.ndarray:
    """(B, E) embeddings, (K, E) centroids → (B,) distance to the nearest centroid / ``scale``."""
    emb = np.asarray(embedding, dtype=np.float64)
    cen = np.asarray(centroids, dtype=np.float64)
    if emb.ndim == 1:
        emb = emb[None, :]
    if emb.shape[1] != cen.shape[1]:
        raise ValueError(f"embedding width {emb.shape[1]} differs from centroid width {cen.shape[1]}")
    d2 = (emb**2).sum(1)[:, None] - 2.0 * emb @ cen.T + (cen**2).sum(1)[None, :]  # (B, K)
    dist = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return dist / max(float(scale), 1e-12)


def hard_case_reasons(
    probs: np.ndarray, rul_std_h: float, novelty_score: float, thresholds: Mapping[str, float]
) -> list[str]:
    """Why this prediction is a hard case (subset of :data:`REASONS`); empty means not hard.

    ``thresholds`` is the manifest's: ``alert_probability``, ``hard_margin``, ``hard_rul_std_h``,
    ``hard_novelty``. A missing key disables that signal.
    """
    reasons: list[str] = []
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if "alert_probability" in thresholds and "hard_margin" in thresholds:
        margin = np.abs(p - float(thresholds["alert_probability"]))
        if p.size and float(margin.min()) < float(thresholds["hard_margin"]):
            reasons.append("margin")
    if "hard_rul_std_h" in thresholds and float(rul_std_h) > float(thresholds["hard_rul_std_h"]):
        reasons.append("rul_std")
    if "hard_novelty" in thresholds and float(novelty_score) > float(thresholds["hard_novelty"]):
        reasons.append("novelty")
    return reasons


def fit_centroids(
    embeddings: np.ndarray, k: int = 16, iters: int = 25, seed: int = 0, quantile: float = 0.95
) -> tuple[np.ndarray, float]:
    """k-means (k-means++ start) on (N, E) training embeddings → ``(centroids (K, E), scale)``.

    ``scale`` is the ``quantile`` of the training windows' distance to their nearest centroid.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"need (N, E) embeddings, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    k = max(1, min(k, len(x)))
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = ((x[:, None, :] - np.asarray(centroids)[None]) ** 2).sum(-1).min(1)
        total = d2.sum()
        probs = d2 / total if total > 0 else np.full(len(x), 1.0 / len(x))
        centroids.append(x[rng.choice(len(x), p=probs)])
    cen = np.asarray(centroids)
    for _ in range(iters):
        d2 = ((x[:, None, :] - cen[None]) ** 2).sum(-1)  # (N, K)
        assign = d2.argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                cen[j] = members.mean(0)
    dist = novelty(x, cen, 1.0)
    scale = float(np.quantile(dist, quantile)) if len(dist) else 1.0
    return cen.astype(np.float32), max(scale, 1e-6)


def interval_coverage(mean: np.ndarray, std: np.ndarray, truth: np.ndarray, z: float = 1.645) -> float:
    """Share of ``truth`` inside ``mean ± z·std`` (z = 1.645: a calibrated model covers 90%)."""
    m, s, y = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (mean, std, truth))
    ok = np.isfinite(y)
    if not ok.any():
        return float("nan")
    return float((np.abs(y[ok] - m[ok]) <= z * s[ok]).mean())


def fit_std_scale(
    mean: np.ndarray, std: np.ndarray, truth: np.ndarray, coverage: float = 0.9, z: float = 1.645
) -> float:
    """The factor ``s`` for which ``mean ± z·s·std`` covers ``coverage`` of ``truth``.

    A network trained with a Gaussian NLL is often over-confident on units it has not seen (B1:
    its 90% interval covered about half of the held-out truths), so the release fits ``s`` on
    held-out units and ships it in the manifest (``output_spec.rul_std_scale``); the edge
    multiplies the model's ``rul_std`` by it. 1.0 when nothing can be fitted.
    """
    m, s, y = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (mean, std, truth))
    ok = np.isfinite(y) & np.isfinite(m) & (s > 0)
    if not ok.any():
        return 1.0
    ratio = np.abs(y[ok] - m[ok]) / s[ok]
    return max(float(np.quantile(ratio, coverage)) / z, 1e-3)


def flagged_error_ratio(abs_error: np.ndarray, flagged: np.ndarray) -> float:
    """Mean error on flagged cases over mean error on the rest (> 1: the signal finds hard cases)."""
    e = np.asarray(abs_error, dtype=np.float64).reshape(-1)
    f = np.asarray(flagged, dtype=bool).reshape(-1)
    if f.all() or not f.any():
        return float("nan")
    rest = float(e[~f].mean())
    return float(e[f].mean()) / rest if rest > 0 else float("inf")
