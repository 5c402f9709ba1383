"""Release an edge-risk model: ONNX export, adaptive INT8, parity, novelty centroids, signed manifest.

Output folder after :func:`release_edge`::

    <name>.fp32.onnx          the FP32 graph (kept for parity checks and rollbacks)
    <name>.onnx               the released graph: adaptive precision; when that keeps every layer
                              in FP32 (and no token dropping), the lean FP32 graph
                              (cloud.training.lean_graph), the same function in fewer nodes
    <name>.manifest.json      the Ed25519-signed ModelManifest (shared.signing), role edge-risk
    <name>.parity.json        the full parity and precision report
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.training.export import export_dga
from cloud.training.lean_graph import lean_graph
from cloud.training.parity import Tolerance, parity_report, require_parity, run_onnx
from cloud.training.quantize import adaptive_quantize
from cloud.training.windows import WindowSet
from shared.equipment import TOOL_TYPES
from shared.models.dga import DGA, INPUT_NAME, OUTPUT_NAMES
from shared.naming import ModeNamer, fit_namer
from shared.signing import ModelManifest, write_release
from shared.uncertainty import fit_centroids, fit_std_scale, flagged_error_ratio, interval_coverage, novelty

_logger = logging.getLogger(__name__)


@dataclass
class AlertThresholds:
    """The decision thresholds shipped in the manifest (the edge reads them from there)."""

    alert_probability: float = 0.5
    alert_persistence_steps: int = 3
    alert_clear_probability: float = 0.3
    hard_margin: float = 0.1
    hard_rul_std_h: float | None = None  # None: the 90th percentile of rul_std on held-out windows
    hard_novelty: float = 1.5
    extra: dict[str, float] = field(default_factory=dict)


def calibration_metrics(
    out: dict[str, np.ndarray], truth_rul: np.ndarray, novelty_score: np.ndarray, thresholds: dict[str, float]
) -> dict[str, float]:
    """How well the hard-case signals find the hard cases, on held-out windows."""
    ok = np.isfinite(truth_rul)
    if not ok.any():
        return {}
    err = np.abs(out["rul"][ok] - truth_rul[ok])
    std = out["rul_std"][ok]
    return {
        "rul_interval90_coverage": interval_coverage(out["rul"][ok], std, truth_rul[ok], z=1.645),
        "rul_interval68_coverage": interval_coverage(out["rul"][ok], std, truth_rul[ok], z=1.0),
        "err_ratio_high_std": flagged_error_ratio(err, std > thresholds["hard_rul_std_h"]),
        "err_ratio_novel": flagged_error_ratio(err, novelty_score[ok] > thresholds["hard_novelty"]),
        "share_high_std": float(np.mean(std > thresholds["hard_rul_std_h"])),
        "share_novel": float(np.mean(novelty_score[ok] > thresholds["hard_novelty"])),
    }


def calibrate_std(out: dict[str, np.ndarray], holdout: WindowSet) -> tuple[float, dict[str, float]]:
    """The RUL interval's scale, fitted on half the held-out units (even group ids) and measured
    on the other half, so the coverage reported is on units the scale was not fitted on; the
    scale shipped is then fitted on all of them."""
    ok = np.isfinite(holdout.rul)
    if not ok.any():
        return 1.0, {}
    fit_part = ok & (holdout.groups % 2 == 0)
    test_part = ok & (holdout.groups % 2 == 1)
    mean, std, truth = out["rul"], out["rul_std"], holdout.rul
    report: dict[str, float] = {}
    if fit_part.any() and test_part.any():
        half = fit_std_scale(mean[fit_part], std[fit_part], truth[fit_part])
        report = {
            "rul_std_scale_half": half,
            "rul_interval90_coverage_raw_other_half": interval_coverage(
                mean[test_part], std[test_part], truth[test_part]
            ),
            "rul_interval90_coverage_scaled_other_half": interval_coverage(
                mean[test_part], half * std[test_part], truth[test_part]
            ),
        }
    scale = fit_std_scale(mean[ok], std[ok], truth[ok])
    _logger.info("RUL std scale %.2f (%s)", scale, report)
    return scale, {"rul_std_scale": scale, **report}


def window_types(x: np.ndarray, names: list[str]) -> np.ndarray | None:
    """(N,) each window's tool type from its ``type_*`` features (None: features without them)."""
    cols = [(i, n.removeprefix("type_")) for i, n in enumerate(names) if n.startswith("type_")]
    if not cols:
        return None
    onehot = x[:, -1, [i for i, _ in cols]]
    return np.array([t for _, t in cols], dtype=object)[np.argmax(onehot, axis=1)]


def mode_namer(embedding: np.ndarray, ws: WindowSet, names: list[str], modes: list[str]) -> ModeNamer:
    """The release's namer (``shared.naming``) fitted on ``ws``'s windows with ``embedding``; empty
    for features without tool types (C-MAPSS) or windows without a failure of every mode."""
    types = window_types(ws.x, names)
    if types is None or ws.labels.shape[1] != len(modes):
        return ModeNamer({})
    progressive = {t.name: t.warnable_mode_names for t in TOOL_TYPES.values()}
    return fit_namer(embedding, ws.labels, list(types), modes, progressive)


def release_edge(
    model: DGA,
    calib: WindowSet,
    holdout: WindowSet,
    out_dir: Path,
    key: Ed25519PrivateKey,
    *,
    version: str,
    parent: str | None,
    model_id: str,
    input_spec: dict[str, Any],
    modes: list[str],
    horizon_h: float = 72.0,
    thresholds: AlertThresholds | None = None,
    metrics: dict[str, Any] | None = None,
    keep_ratio: float | None = None,
    tol: Tolerance | None = None,
    name: str = "edge_risk",
    centroids: int = 16,
    naming: WindowSet | None = None,
) -> tuple[Path, ModelManifest]:
    """Build, check and sign the edge-risk release; ParityError when the check fails.

    The mode namer is fitted on ``naming`` when it holds windows (a learning round passes all its
    training windows, of which calibration takes a few hundred), else on calibration and held-out
    windows together."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    th = thresholds or AlertThresholds()
    fp32 = export_dga(model, out_dir / f"{name}.fp32.onnx", keep_ratio=keep_ratio)
    released = out_dir / f"{name}.onnx"
    t0 = time.monotonic()
    _, precision = adaptive_quantize(fp32, released, calib.x[:512], holdout.x[:512], model.cfg.rul_cap)
    _logger.info("adaptive precision took %.1f s", time.monotonic() - t0)
    graph = "exported"
    if not any(g.int8 for g in precision.groups) and (keep_ratio is None or keep_ratio >= 1.0):
        # All FP32: the lean graph computes the same in ~40% fewer nodes (B3: ~20% faster at
        # batch 1). The parity check below holds it to the exporter's graph like any candidate.
        onnx.save(lean_graph(model), str(released))
        graph = "lean"
    parity = parity_report(fp32, released, holdout.x, model.cfg.rul_cap, holdout.rul, model=None, tol=tol)
    require_parity(parity)
    # novelty: centroids of the training (calibration) embeddings, from the released graph itself
    calib_out = run_onnx(released, calib.x)
    cen, scale = fit_centroids(calib_out["embedding"], k=centroids, seed=0)
    hold_out = run_onnx(released, holdout.x)
    # The mode namer on every window given: it needs MIN_WINDOWS before a failure of each mode of a
    # type, which a split by tool can leave one side short of (B2's training export: etch's
    # esc_degradation), and a round's calibration subset always is.
    names = list(input_spec.get("feature_names") or [])
    if naming is not None and len(naming.x):
        namer = mode_namer(run_onnx(released, naming.x)["embedding"], naming, names, list(modes))
    elif holdout is calib:
        namer = mode_namer(calib_out["embedding"], calib, names, list(modes))
    else:
        emb = np.concatenate([calib_out["embedding"], hold_out["embedding"]])
        namer = mode_namer(emb, WindowSet.concat([calib, holdout]), names, list(modes))
    if namer.types:
        fitted = ", ".join(f"{t} ({sum(n.windows)} windows)" for t, n in namer.types.items())
        _logger.info("mode namer for %s", fitted)
    nov = novelty(hold_out["embedding"], cen, scale)
    std_scale, std_calibration = calibrate_std(hold_out, holdout)
    edge_std = hold_out["rul_std"] * std_scale  # what the edge will see
    shipped = {
        "alert_probability": th.alert_probability,
        "alert_persistence_steps": float(th.alert_persistence_steps),
        "alert_clear_probability": th.alert_clear_probability,
        "hard_margin": th.hard_margin,
        "hard_rul_std_h": float(
            th.hard_rul_std_h if th.hard_rul_std_h is not None else np.quantile(edge_std, 0.9)
        ),
        "hard_novelty": th.hard_novelty,
        **th.extra,
    }
    # The model's own interval (before the scale), as earlier releases reported it; the scale's
    # effect, measured on units it was not fitted on, is in std_calibration.
    raw_thresholds = {**shipped, "hard_rul_std_h": shipped["hard_rul_std_h"] / std_scale}
    calibration = calibration_metrics(hold_out, holdout.rul, nov, raw_thresholds)
    calibration.update(std_calibration)
    all_metrics = {**(metrics or {}), "parity": parity["candidate_vs_fp32"], "calibration": calibration}
    fields = {
        "model_id": model_id,
        "version": version,
        "parent_version": parent,
        "role": "edge-risk",
        "created_ts": time.time(),
        "input_spec": {**input_spec, "input_name": INPUT_NAME},
        "output_spec": {
            "names": list(OUTPUT_NAMES),
            "modes": list(modes),
            "horizon_h": float(horizon_h),
            "rul_cap_h": float(model.cfg.rul_cap),
            "embedding_centroids": cen.astype(float).tolist(),
            "novelty_scale": float(scale),
            "rul_std_scale": float(std_scale),
            "keep_ratio": keep_ratio,
            # which progressive mode an alert is of (shared.naming); absent: the most probable
            **({"mode_namer": namer.to_dict()} if namer.types else {}),
        },
        "thresholds": shipped,
        "metrics": _finite(all_metrics),
        "precision": _finite({**precision.to_dict(), "graph": graph}),
    }
    manifest, mpath = write_release(released, fields, key)
    (out_dir / f"{name}.parity.json").write_text(
        json.dumps(_finite({"parity": parity, "precision": precision.to_dict()}), indent=1)
    )
    _logger.info("released %s (%d bytes), manifest %s", released, released.stat().st_size, mpath)
    return released, manifest


def _finite(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (canonical JSON signing must not see NaN)."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
