"""B1 model selection: k-fold cross-validation on the FD001 training units (the test set unused).

The 100 training units are split into ``--folds`` groups (a fixed permutation); for each fold the
full DGA is trained on the other units (early stopping on the held-out ones; with
``--inner-val F`` on a share F of the training units, as B1 does; with ``--keep last`` the end
of the schedule, which is what a refit on every unit keeps) and scored
on every window of the held-out units that ends at cycle 31 or later, left-padded like a short
test unit: the same situation as the test protocol, at every point of each life rather than at
one. A setting is chosen by the mean of that RMSE over the folds; ten held-out units (B1's own
split) were too few to tell settings apart. The test RMSE is printed alongside for the record,
not for choosing.

    OMP_NUM_THREADS=1 .venv/bin/python bench/b1_cv.py --name w80 --window 80 [--folds 5] [--fold K ...]
    .venv/bin/python bench/b1_cv.py --summarize
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from _b1 import training_options

from cloud.training import cmapss
from cloud.training.trainer import fit, new_model, predict
from cloud.training.windows import split_by_group

REPO = Path(__file__).resolve().parent.parent


def run_fold(args: argparse.Namespace, data: cmapss.Fd001, fold: int) -> dict:
    ws = cmapss.train_windows(data, args.window, cmapss.RUL_CAP, args.smooth, args.first_end, args.reference)
    units = np.random.default_rng(123).permutation(np.unique(ws.groups))
    held = np.array_split(units, args.folds)[fold]
    is_val = np.isin(ws.groups, held)
    train, val = ws.take(np.flatnonzero(~is_val)), ws.take(np.flatnonzero(is_val))
    if args.far_weight != 1.0:
        train = cmapss.far_weighted(train, args.far_weight)
    if args.inner_val > 0:  # B1's own protocol inside the fold: early stopping on training units only
        train, val = split_by_group(train, args.inner_val, args.seed)
    every = (  # scored: every window from cycle 31 on (the same set as ws at the default --first-end)
        ws
        if args.first_end == cmapss.SHORTEST_TEST_UNIT
        else cmapss.train_windows(
            data, args.window, cmapss.RUL_CAP, args.smooth, cmapss.SHORTEST_TEST_UNIT, args.reference
        )
    )
    scored = every.take(np.flatnonzero(np.isin(every.groups, held)))
    test = cmapss.last_windows(data, args.window, cmapss.RUL_CAP, args.smooth, args.reference)
    cfg = cmapss.b1_config(
        seed=args.seed,
        epochs=args.epochs,
        d_model=args.d_model,
        n_layers=args.layers,
        window=args.window,
        lr=args.lr,
        dropout=args.dropout,
        input_noise=args.noise,
        drop_prob=args.drop_prob,
        drop_min_keep=args.drop_min_keep,
        w_gate=args.w_gate,
    )
    cfg = replace(cfg, train=replace(cfg.train, keep=args.keep))
    t0 = time.monotonic()
    if args.ensemble_teachers:  # the model learns from the mean of K others trained as it is
        teachers = []
        for k in range(args.ensemble_teachers):
            seed = args.seed + 1 + k
            tcfg = replace(cfg.train, seed=seed, progress=False)
            teacher = fit(
                new_model(cmapss.model_config(cfg, args.reference), seed), train, val, tcfg, None, {}
            )
            teachers.append(predict(teacher.model, train.x))
        train = train.with_teacher(
            np.mean([t["rul"] for t in teachers], axis=0), np.mean([t["probs"] for t in teachers], axis=0)
        )
        cfg = replace(cfg, train=replace(cfg.train, distil_alpha=args.distil_alpha))
    model = new_model(cmapss.model_config(cfg, args.reference), args.seed)
    res = fit(model, train, val, replace(cfg.train, progress=False), None, {})
    out_val = predict(res.model, scored.x)
    p_val, gates = out_val["rul"], out_val["gates"]
    in_range = cmapss.in_test_range(scored)
    p_test = predict(res.model, test.x)["rul"]
    recent = cmapss.recent_test_windows(
        data, max(args.trail), args.window, cmapss.RUL_CAP, args.smooth, args.reference
    )
    p_recent = predict(res.model, recent.x)["rul"]
    trailing = {}
    for k in args.trail:  # the same model's outputs, combined over the last k cycles
        for hold in (False, True):
            on_test = trail(p_recent, recent.groups, k, cmapss.RUL_CAP, hold)[last_of_each(recent.groups)]
            trailing[f"k{k}{'_hold' if hold else ''}"] = {
                "cv_rmse": cmapss.rmse(trail(p_val, scored.groups, k, cmapss.RUL_CAP, hold), scored.rul),
                "test_rmse": cmapss.rmse(on_test, test.rul),
                "test_score": cmapss.nasa_score(on_test, test.rul),
            }
    at_keep = {}
    for keep in args.eval_keep:  # B7's question inside the fold: what dropping tokens costs
        p_k = predict(res.model, scored.x, keep_ratio=keep)["rul"]
        at_keep[str(keep)] = {
            "cv_rmse": cmapss.rmse(p_k, scored.rul),
            "cv_rmse_test_range": cmapss.rmse(p_k[in_range], scored.rul[in_range]),
            "test_rmse": cmapss.rmse(predict(res.model, test.x, keep_ratio=keep)["rul"], test.rul),
            "pred": _r(p_k),
        }
    return {
        "name": args.name,
        "fold": fold,
        "held_out_units": held.tolist(),
        "cv_rmse": cmapss.rmse(p_val, scored.rul),
        # the windows whose RUL the test protocol could score (its truths lie within 7–145 cycles)
        "cv_rmse_test_range": cmapss.rmse(p_val[in_range], scored.rul[in_range]),
        "cv_rmse_below_cap": cmapss.rmse(
            p_val[scored.rul < cmapss.RUL_CAP], scored.rul[scored.rul < cmapss.RUL_CAP]
        ),
        "test_rmse": cmapss.rmse(p_test, test.rul),
        "test_score": cmapss.nasa_score(p_test, test.rul),
        "trailing": trailing,
        "at_keep": at_keep,
        # how decided the gates are: dropping costs little where the dropped ones are near 0
        "gates": {
            "mean": float(gates.mean()),
            "below_0.1": float((gates < 0.1).mean()),
            "kth_lowest_at_0.85": float(np.mean(np.sort(gates, axis=1)[:, int(0.15 * gates.shape[1])])),
        },
        # per-window outputs, so that later post-processing needs no retraining
        "scored": {"groups": scored.groups.tolist(), "rul": scored.rul.tolist(), "pred": _r(p_val)},
        "recent_test": {"groups": recent.groups.tolist(), "pred": _r(p_recent)},
        "best_epoch": res.metrics.get("epoch"),
        "seconds": time.monotonic() - t0,
        "args": {k: v for k, v in vars(args).items() if k not in ("data", "out", "fold", "summarize")},
    }


def _r(a: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in a]


def trail(p: np.ndarray, groups: np.ndarray, k: int, cap: float, hold_cap: bool) -> np.ndarray:
    """Each window's RUL from its own output and those of the k - 1 windows before it in the same
    unit: the mean of ``p[i - j] - j`` (the RUL falls one per cycle). ``groups`` holds each unit's
    windows contiguously, in cycle order, one cycle apart. With ``hold_cap`` an output at the cap
    stays at the cap (the model saw no wear then, so the unit may still be beyond it)."""
    total = np.zeros(len(p))
    count = np.zeros(len(p))
    starts = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1]
    pos = np.arange(len(p)) - np.repeat(starts, np.diff(np.r_[starts, len(p)]))  # index within its unit
    for j in range(k):
        ok = pos >= j
        earlier = p[np.flatnonzero(ok) - j]
        est = earlier - j
        if hold_cap:
            est = np.where(earlier >= cap - 1e-3, cap, est)
        total[ok] += est
        count[ok] += 1
    return total / count


def last_of_each(groups: np.ndarray) -> np.ndarray:
    return np.r_[np.flatnonzero(groups[1:] != groups[:-1]), len(groups) - 1]


def summarize(out: Path) -> None:
    by_name: dict[str, list[dict]] = {}
    older = 0
    for path in sorted(out.glob("*_f*.json")):
        doc = json.loads(path.read_text())
        if "cv_rmse" not in doc:  # the first version of this script wrote another layout
            older += 1
            continue
        by_name.setdefault(doc["name"], []).append(doc)
    if older:
        print(f"({older} files of the script's first version left out: see bench/results/models.md)")
    print(
        f"{'setting':16s} {'folds':>5s} {'CV RMSE':>8s} {'< cap':>6s} {'7–145':>6s} {'test RMSE':>9s} "
        f"{'score':>6s}"
    )
    for name, docs in sorted(by_name.items(), key=lambda kv: np.mean([d["cv_rmse"] for d in kv[1]])):
        print(
            f"{name:16s} {len(docs):5d} {np.mean([d['cv_rmse'] for d in docs]):8.2f} "
            f"{np.mean([d['cv_rmse_below_cap'] for d in docs]):6.2f} "
            f"{np.mean([d.get('cv_rmse_test_range', np.nan) for d in docs]):6.2f} "
            f"{np.mean([d['test_rmse'] for d in docs]):9.2f} {np.mean([d['test_score'] for d in docs]):6.0f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "b1_cv")
    ap.add_argument("--name", default="setting")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold", type=int, nargs="+", help="only these folds (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=80)
    ap.add_argument("--first-end", type=int, default=cmapss.SHORTEST_TEST_UNIT)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--noise", type=float, default=0.05, help="std of the training input noise")
    ap.add_argument("--smooth", type=float, default=0.2)
    ap.add_argument(
        "--inner-val",
        type=float,
        default=0.0,
        help="hold this share of the fold's training units out for early stopping, as B1 does "
        "(0: stop on the scored fold itself, the first sessions' optimistic procedure)",
    )
    ap.add_argument(
        "--keep",
        choices=("best", "last"),
        default="best",
        help="best: the epoch with the lowest validation loss (on the scored fold itself, optimistic, "
        "unless --inner-val); last: the end of the schedule, the held-out fold unseen until scored",
    )
    ap.add_argument(
        "--trail",
        type=int,
        nargs="+",
        default=[1, 3, 5, 10, 20],
        help="also score each output combined with those of the k - 1 cycles before it, for each k",
    )
    ap.add_argument(
        "--eval-keep",
        type=float,
        nargs="*",
        default=[0.85],
        help="also score the held-out windows with this share of the tokens kept (B7)",
    )
    training_options(ap)
    ap.add_argument(
        "--ensemble-teachers",
        type=int,
        default=0,
        help="train K models (seeds seed+1 … seed+K) the same way first, and the scored one on "
        "targets blended with their mean (distillation from an ensemble; its inference cost is one model's)",
    )
    ap.add_argument(
        "--distil-alpha", type=float, default=0.5, help="weight of the teachers' mean in the targets"
    )
    ap.add_argument("--summarize", action="store_true", help="only the table of what --out holds")
    args = ap.parse_args()
    if not args.summarize:
        data = cmapss.load_fd001(args.data)
        args.out.mkdir(parents=True, exist_ok=True)
        for fold in args.fold if args.fold is not None else range(args.folds):
            doc = run_fold(args, data, fold)
            (args.out / f"{args.name}_f{fold}.json").write_text(json.dumps(doc, indent=1, default=float))
            print(
                f"{args.name} fold {fold}: CV RMSE {doc['cv_rmse']:.2f} (test {doc['test_rmse']:.2f}) "
                f"{doc['seconds']:.0f} s",
                flush=True,
            )
    summarize(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
