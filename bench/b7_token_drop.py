"""B7: compute saved by DGA token dropping vs metric lost, on C-MAPSS FD001 (full model).

For each keep ratio: analytic FLOPs per window; measured time of the ONNX FP32 graph with the
dropping baked in (batch 1 one thread and batch 64) and of the cloud's verdict path (the
TorchScript-traced replica of ``cloud.serving``, its ``predict`` on batches of 64 and 256, the
sizes the dynamic batcher forms under load), all in interleaved rounds in one run; RUL RMSE at
the last cycle of the 100 test units (the B1 protocol) and over every test window; recall and
precision of "fails within 30 cycles" (probability ≥ 0.5) over every test window, its ROC AUC, and
its recall at the full model's precision (a release picks its alert threshold for the graph it
ships, so a shift of the probabilities is not a loss; lost ranking is).

    .venv/bin/python bench/b7_token_drop.py [--checkpoint artifacts/b1/cmapss_full_s0.pt] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from cloud.gate import roc_auc
from cloud.serving import load_replicas
from cloud.training import cmapss
from cloud.training.export import export_dga
from cloud.training.quantize import session
from cloud.training.trainer import predict
from shared.models.checkpoint import load_checkpoint
from shared.models.dga import DGA, flops

REPO = Path(__file__).resolve().parent.parent
RATIOS = (1.0, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4)
CLOUD_BATCHES = (64, 256)


def recall_at_precision(score: np.ndarray, positive: np.ndarray, precision: float) -> float:
    """The largest recall of ``score ≥ threshold`` over thresholds whose precision is ≥ ``precision``."""
    order = np.argsort(-score, kind="stable")
    tp = np.cumsum(positive[order])
    ok = tp / np.arange(1, len(score) + 1) >= precision
    return float(tp[ok].max() / max(positive.sum(), 1)) if ok.any() else 0.0


def time_onnx(
    sessions: dict[float, Any], x1: np.ndarray, x64: np.ndarray, rounds: int, per: int
) -> tuple[dict[float, float], dict[float, float]]:
    """Per keep ratio: median batch-1 latency (s) and median batch-64 throughput (windows/s). The
    graphs are timed in interleaved rounds, so a change of load on a shared machine reaches every
    ratio alike and the ratios between them hold."""
    lat: dict[float, list[float]] = {r: [] for r in sessions}
    thr: dict[float, list[float]] = {r: [] for r in sessions}
    for s in sessions.values():
        for _ in range(20):
            s.run(None, {"x": x1})
    for _ in range(rounds):
        for r, s in sessions.items():
            for _ in range(per):
                t0 = time.perf_counter()
                s.run(None, {"x": x1})
                lat[r].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(4):
                s.run(None, {"x": x64})
            thr[r].append(4 * 64 / (time.perf_counter() - t0))
    return {r: float(np.median(v)) for r, v in lat.items()}, {r: float(np.median(v)) for r, v in thr.items()}


MEAN_KEYS = (
    "flops_saved",
    "time_saved_b1",
    "time_saved_b64",
    "time_saved_cloud_b64",
    "rmse_last_lost",
    "rmse_all_lost",
    "auc_lost",
    "recall_at_precision_lost",
)


def print_mean(results: list[dict]) -> None:
    """Mean over the checkpoints (seeds) of each keep ratio's savings and losses, worst seed beside."""
    print(f"B7 mean over {len(results)} checkpoints (worst in brackets): *_saved columns, then *_lost")
    heads = (k.replace("_saved", "").replace("_lost", "") for k in MEAN_KEYS)
    print(f"{'keep':>5s} {'k':>4s} " + " ".join(f"{h:>17s}" for h in heads))
    for i, row in enumerate(results[0]["rows"]):
        cells = []
        for key in MEAN_KEYS:
            vals = np.array([res["rows"][i][key] for res in results])
            worst = vals.min() if "_saved" in key else vals.max()  # time_saved_b1 is a saving too
            cells.append(f"{vals.mean():>8.2%} [{worst:>6.2%}]")
        print(f"{row['keep_ratio']:5.2f} {row['kept_tokens']:4d} " + " ".join(cells))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--checkpoint", type=Path, nargs="+", default=[REPO / "artifacts" / "b1" / "cmapss_full_s0.pt"]
    )
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "b7")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    data = cmapss.load_fd001(args.data)
    results = []
    for ckpt in args.checkpoint:
        model, meta = load_checkpoint(ckpt)
        assert isinstance(model, DGA)
        smooth, reference = cmapss.preprocessing(meta["feature_spec"])
        last = cmapss.last_windows(data, model.cfg.window, cmapss.RUL_CAP, smooth, reference)
        every = cmapss.all_test_windows(data, model.cfg.window, cmapss.RUL_CAP, smooth, reference)
        sessions = {}
        for r in RATIOS:
            path = export_dga(model, args.out / f"keep{int(r * 100)}.onnx", keep_ratio=None if r >= 1 else r)
            sessions[r] = session(path)
        replicas = {r: load_replicas(ckpt, "cpu", "fp32", 1, None if r >= 1 else r)[0] for r in RATIOS}
        x1, x64 = every.x[:1], every.x[:64]
        cloud_batches = {b: list(every.x[:b]) for b in CLOUD_BATCHES}
        cloud: dict[tuple[float, int], list[float]] = {(r, b): [] for r in RATIOS for b in CLOUD_BATCHES}
        rounds, per = (4, 100) if args.quick else (15, 200)
        for rep in replicas.values():
            for batch in cloud_batches.values():
                rep.predict(batch)  # traces once per window length, then warm
        for _ in range(rounds):
            for r, rep in replicas.items():
                for b, batch in cloud_batches.items():
                    t0 = time.perf_counter()
                    for _ in range(2):
                        rep.predict(batch)
                    cloud[(r, b)].append(2 * b / (time.perf_counter() - t0))
        lat, thr = time_onnx(sessions, x1, x64, rounds, per)
        rows = []
        for r in RATIOS:
            keep = None if r >= 1 else r
            p_last = predict(model, last.x, keep_ratio=keep)["rul"]
            out = predict(model, every.x, keep_ratio=keep)
            pos = every.labels[:, 0] == 1
            alarm = out["probs"][:, 0] >= 0.5
            rows.append(
                {
                    "keep_ratio": r,
                    "kept_tokens": math.ceil(r * model.cfg.window),
                    "flops": flops(model.cfg, keep),
                    "b1_median_us": lat[r] * 1e6,
                    "b64_windows_per_s": thr[r],
                    **{f"cloud_b{b}_windows_per_s": float(np.median(cloud[(r, b)])) for b in CLOUD_BATCHES},
                    "rmse_last": cmapss.rmse(p_last, last.rul),
                    "score_last": cmapss.nasa_score(p_last, last.rul),
                    "rmse_all_windows": cmapss.rmse(out["rul"], every.rul),
                    "recall_30": float(alarm[pos].mean()),
                    "precision_30": float(pos[alarm].mean()) if alarm.any() else float("nan"),
                    "auc_30": roc_auc(out["probs"][:, 0], pos.astype(np.float64)),
                    "_probs": out["probs"][:, 0],
                }
            )
        base = rows[0]
        for row in rows:
            row["recall_30_at_full_precision"] = recall_at_precision(
                row.pop("_probs"), pos, base["precision_30"]
            )
        for row in rows:
            row["flops_saved"] = 1 - row["flops"] / base["flops"]
            row["time_saved_b1"] = 1 - row["b1_median_us"] / base["b1_median_us"]
            row["time_saved_b64"] = 1 - base["b64_windows_per_s"] / row["b64_windows_per_s"]
            for b in CLOUD_BATCHES:
                key = f"cloud_b{b}_windows_per_s"
                row[f"time_saved_cloud_b{b}"] = 1 - base[key] / row[key]
            row["rmse_last_lost"] = row["rmse_last"] / base["rmse_last"] - 1
            row["rmse_all_lost"] = row["rmse_all_windows"] / base["rmse_all_windows"] - 1
            row["recall_lost"] = base["recall_30"] - row["recall_30"]
            row["auc_lost"] = base["auc_30"] - row["auc_30"]
            row["recall_at_precision_lost"] = (
                base["recall_30_at_full_precision"] - row["recall_30_at_full_precision"]
            )
        results.append({"checkpoint": str(ckpt), "rows": rows})
        print(f"B7 {ckpt} ({model.n_params()} params, window {model.cfg.window})")
        print(
            f"{'keep':>5s} {'FLOPs saved':>11s} {'t saved b1':>10s} {'t saved b64':>11s} "
            f"{'cloud b64':>9s} {'cloud b256':>10s} "
            f"{'RMSE last':>9s} {'RMSE all':>8s} {'Δ all':>6s} {'recall':>6s} {'Δrecall':>7s} "
            f"{'AUC':>6s} {'Δrecall@P':>9s}"
        )
        for row in rows:
            print(
                f"{row['keep_ratio']:5.2f} {row['flops_saved']:11.1%} {row['time_saved_b1']:10.1%} "
                f"{row['time_saved_b64']:11.1%} {row['time_saved_cloud_b64']:9.1%} "
                f"{row['time_saved_cloud_b256']:10.1%} {row['rmse_last']:9.2f} "
                f"{row['rmse_all_windows']:8.2f} "
                f"{row['rmse_all_lost']:6.1%} {row['recall_30']:6.3f} {row['recall_lost']:7.3f} "
                f"{row['auc_30']:6.4f} {row['recall_at_precision_lost']:9.3f}"
            )
    (args.out / "b7.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}, indent=1)
    )
    if len(results) > 1:
        print_mean(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
