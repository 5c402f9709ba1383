"""Parity of a released graph with its FP32 source, on held-out windows.

The stated tolerance (:class:`Tolerance`) is what ``release`` enforces and what the tests check:

* RUL: RMS difference to the FP32 graph ≤ ``rul_rms`` × rul_cap, and where the truth is known,
  the released graph's RUL RMSE within ``rmse_ratio`` of the FP32 graph's (B1's 5% budget);
* probabilities: max absolute difference ≤ ``prob_max``;
* embeddings: minimum cosine similarity ≥ ``emb_cos_min`` (novelty stays meaningful).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cloud.training.errors import ParityError
from cloud.training.quantize import session
from shared.models.dga import DGA, OUTPUT_NAMES


@dataclass(frozen=True)
class Tolerance:
    rul_rms: float = 0.02  # × rul_cap
    rmse_ratio: float = 1.05
    prob_max: float = 0.10
    emb_cos_min: float = 0.95


def run_onnx(path: Path, x: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
    """All four outputs of an edge-risk graph on (N, T, F) windows."""
    sess = session(path)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUT_NAMES}
    for i in range(0, len(x), batch):
        for name, arr in zip(
            OUTPUT_NAMES, sess.run(list(OUTPUT_NAMES), {"x": x[i : i + batch]}), strict=True
        ):
            parts[name].append(arr)
    return {n: np.concatenate(v) for n, v in parts.items()}


def compare(
    ref: dict[str, np.ndarray], got: dict[str, np.ndarray], rul_cap: float, truth: np.ndarray | None = None
) -> dict[str, float]:
    """Differences between two output dicts (and errors against ``truth`` RUL where finite)."""
    d_rul = got["rul"] - ref["rul"]
    e_ref = ref["embedding"] / np.maximum(np.linalg.norm(ref["embedding"], axis=1, keepdims=True), 1e-12)
    e_got = got["embedding"] / np.maximum(np.linalg.norm(got["embedding"], axis=1, keepdims=True), 1e-12)
    out = {
        "rul_rms_diff": float(np.sqrt(np.mean(d_rul**2))),
        "rul_max_diff": float(np.max(np.abs(d_rul))),
        "rul_rms_diff_rel_cap": float(np.sqrt(np.mean(d_rul**2)) / rul_cap),
        "prob_max_diff": float(np.max(np.abs(got["probs"] - ref["probs"]))) if ref["probs"].size else 0.0,
        "emb_cos_min": float(np.min(np.sum(e_ref * e_got, axis=1))),
        "n": float(len(d_rul)),
    }
    if truth is not None:
        ok = np.isfinite(truth)
        if ok.any():
            out["rmse_ref"] = float(np.sqrt(np.mean((ref["rul"][ok] - truth[ok]) ** 2)))
            out["rmse_got"] = float(np.sqrt(np.mean((got["rul"][ok] - truth[ok]) ** 2)))
            out["rmse_ratio"] = out["rmse_got"] / max(out["rmse_ref"], 1e-9)
    return out


def parity_report(
    fp32: Path,
    candidate: Path,
    x: np.ndarray,
    rul_cap: float,
    truth: np.ndarray | None = None,
    model: DGA | None = None,
    tol: Tolerance | None = None,
) -> dict[str, object]:
    """FP32 graph vs candidate (and torch vs FP32 graph when ``model`` is given), with verdicts."""
    tol = tol or Tolerance()
    ref = run_onnx(fp32, x)
    got = run_onnx(candidate, x)
    cand = compare(ref, got, rul_cap, truth)
    report: dict[str, object] = {"tolerance": asdict(tol), "candidate_vs_fp32": cand}
    if model is not None:
        with torch.no_grad():
            out = model.eval()(torch.from_numpy(x))
        torch_out = {n: out[n].numpy() for n in OUTPUT_NAMES}
        report["onnx_fp32_vs_torch"] = compare(torch_out, ref, rul_cap, truth)
    failures = []
    if cand["rul_rms_diff_rel_cap"] > tol.rul_rms:
        failures.append(f"RUL RMS drift {cand['rul_rms_diff_rel_cap']:.4f} × cap > {tol.rul_rms}")
    if cand.get("rmse_ratio", 1.0) > tol.rmse_ratio:
        failures.append(f"RUL RMSE ratio {cand['rmse_ratio']:.3f} > {tol.rmse_ratio}")
    if cand["prob_max_diff"] > tol.prob_max:
        failures.append(f"probability drift {cand['prob_max_diff']:.3f} > {tol.prob_max}")
    if cand["emb_cos_min"] < tol.emb_cos_min:
        failures.append(f"embedding cosine {cand['emb_cos_min']:.3f} < {tol.emb_cos_min}")
    report["ok"] = not failures
    report["failures"] = failures
    return report


def require_parity(report: dict[str, object]) -> None:
    """Raise :class:`ParityError` listing the failed checks of a :func:`parity_report`."""
    if not report.get("ok"):
        failures = report.get("failures")
        listed = [str(f) for f in failures] if isinstance(failures, list) else []
        raise ParityError("; ".join(listed or ["unknown failure"]))
