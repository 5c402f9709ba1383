"""Does the tuning model know what a setpoint step does to a lot's yield and energy?

The edge shows, with each tuning proposal, what the offline tuning model (the surrogate,
``cloud/training/tuning.py``) expects the step to change ("tuning model: yield +0.10 points,
energy −0.32 kWh per lot"), and its ``surrogate`` optimiser steps by it. This measures, on a
simulator export and on the tools the model never trained on:

- the held-out R² of each output, the energy scored on the recipe-mix target (a lot's kWh
  scaled to the mix: what comparing two setpoints for the next lot needs);
- for each held-out lot and each setpoint, a step of ``--step`` of the setpoint's range up: the
  change the model predicts against the simulator's own (``opcua_sim.process``, the lot's health
  and drift, an average lot of the recipe mix): Pearson r, the share with the right sign, the
  mean absolute error and the mean size of the true change.

Both energy targets are trained in the same run on the same split: the lot's own kWh (before)
and the recipe-mix kWh (now). The simulator's truth is known here only because it is a
simulator; a plant's is not.

    OMP_NUM_THREADS=1 .venv/bin/python bench/tuning_surrogate.py [--seed 3] [--tools 16] [--days 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloud.training.tuning import held_out, lot_rows, mix_energy, train_surrogate  # noqa: E402
from opcua_sim.export import export  # noqa: E402
from opcua_sim.physics import tables  # noqa: E402
from opcua_sim.process import lot_energy, lot_yield  # noqa: E402
from opcua_sim.scenario import Scenario, load_scenario, scale_tools, with_seed  # noqa: E402
from shared.dataset import read_info  # noqa: E402
from shared.equipment import TOOL_TYPES  # noqa: E402

PROCESS_TYPES = ("plasma_etch", "cvd", "cmp")


def lot_truth(folder: Path, type_name: str) -> list[dict[str, Any]]:
    """The ground-truth lot records behind :func:`lot_rows`' rows, in the same order (each tool's
    first lot has no previous one and is left out there, so here too)."""
    tools = {t.tool_id for t in read_info(folder).tools if t.tool_type == type_name}
    seen: set[str] = set()
    out = []
    for line in (folder / "ground_truth.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") != "lot" or rec.get("tool") not in tools:
            continue
        if rec["tool"] in seen:
            out.append(rec)
        seen.add(rec["tool"])
    return out


def mean_lot_hours(sc: Scenario, type_name: str, recipes: np.ndarray) -> float:
    """The lot length of the recipe mix seen in the rows (the simulator's own: overhead plus the
    wafers' time of each recipe)."""
    names = list(TOOL_TYPES[type_name].recipes)
    wafer_s = tables(type_name).wafer_s
    p = sc.production
    hours = [
        (p.lot_overhead_min * 60.0 + p.wafers_per_lot * float(wafer_s[names.index(r)])) / 3600.0
        for r in recipes
    ]
    return float(np.mean(hours))


def step_effects(
    net: torch.nn.Module,
    x: np.ndarray,
    recs: list[dict[str, Any]],
    type_name: str,
    setpoints: list[str],
    step: float,
    hours: float,
    sc: Scenario,
) -> dict[str, dict[str, float]]:
    """Predicted against true change of yield and energy for a step up of each setpoint."""
    spec = {s.name: s for s in TOOL_TYPES[type_name].setpoints}
    opt = sc.optimum
    pred: dict[str, list[float]] = {"yield": [], "energy": []}
    true: dict[str, list[float]] = {"yield": [], "energy": []}
    with torch.no_grad():
        y0, e0 = (t.numpy() for t in net(torch.from_numpy(x)))
        for k, name in enumerate(setpoints):
            s = spec[name]
            x1 = x.copy()
            x1[:, k] = np.clip(x1[:, k] + step * (s.hi - s.lo), s.lo, s.hi)
            y1, e1 = (t.numpy() for t in net(torch.from_numpy(x1)))
            pred["yield"] += (y1 - y0).tolist()
            pred["energy"] += (e1 - e0).tolist()
            for i, rec in enumerate(recs):
                sp0 = {n: float(x[i, j]) for j, n in enumerate(setpoints)}
                sp1 = {n: float(x1[i, j]) for j, n in enumerate(setpoints)}
                h, d, t = float(rec["health"]), float(rec["drift"]), float(rec["t_s"])

                def yld(sp: dict[str, float], h: float = h, d: float = d, t: float = t) -> float:
                    return lot_yield(
                        type_name, sp, h, d, t, period_days=opt.period_days, amplitude=opt.amplitude
                    )

                true["yield"].append(yld(sp1) - yld(sp0))
                # the sub-fab's share does not depend on the setpoints: it cancels in the change
                true["energy"].append(
                    lot_energy(type_name, sp1, h, d, t, lot_hours=hours)
                    - lot_energy(type_name, sp0, h, d, t, lot_hours=hours)
                )
    out = {}
    for what in ("yield", "energy"):
        p, tr = np.asarray(pred[what]), np.asarray(true[what])
        big = np.abs(tr) > 0.05 * np.abs(tr).mean()
        out[what] = {
            "pearson_r": float(np.corrcoef(p, tr)[0, 1]) if p.std() > 0 else float("nan"),
            "right_sign": float(np.mean(np.sign(p[big]) == np.sign(tr[big]))),
            "mae": float(np.mean(np.abs(p - tr))),
            "mean_abs_true": float(np.mean(np.abs(tr))),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=3, help="simulator seed of the export")
    ap.add_argument("--tools", type=int, default=16)
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--step", type=float, default=0.05, help="step up, as a share of the setpoint's range")
    ap.add_argument("--max-rows", type=int, default=400, help="held-out lots scored per type")
    ap.add_argument(
        "--change-days",
        type=float,
        default=None,
        help="mean days between a tool's setpoint changes in the export (default: the scenario's, 3)",
    )
    ap.add_argument("--quick", action="store_true", help="8 tools × 20 days")
    args = ap.parse_args()
    if args.quick:
        args.tools, args.days = 8, 20.0
    torch.set_num_threads(1)
    sc = scale_tools(with_seed(load_scenario(None), args.seed), args.tools)
    if args.change_days is not None:
        production = sc.production.model_copy(update={"setpoint_change_mean_days": args.change_days})
        sc = sc.model_copy(update={"production": production})
    report: dict[str, Any] = {
        "seed": args.seed,
        "tools": args.tools,
        "days": args.days,
        "step": args.step,
        "change_days": sc.production.setpoint_change_mean_days,
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "export"
        export(sc, args.days, data)
        for ttype in PROCESS_TYPES:
            rows = lot_rows(data, ttype)
            recs = lot_truth(data, ttype)
            assert len(recs) == len(rows.x), (ttype, len(recs), len(rows.x))
            val = np.flatnonzero(held_out(rows, 0))[: args.max_rows]
            hours = mean_lot_hours(sc, ttype, rows.recipes)
            for variant, mix in (("lot kWh (before)", False), ("recipe mix (now)", True)):
                net, metrics, scale = train_surrogate(rows, per_recipe_mix=mix)
                target = mix_energy(rows, scale or _scale_for_scoring(rows))[val, 1]
                with torch.no_grad():
                    _, pe = net(torch.from_numpy(rows.x[val]))
                r2_mix = 1.0 - float(np.mean((pe.numpy() - target) ** 2) / max(target.var(), 1e-9))
                effects = step_effects(
                    net, rows.x[val], [recs[i] for i in val], ttype, rows.setpoints, args.step, hours, sc
                )
                row = {
                    "observed": {k: v for k, v in metrics.items() if k.startswith("val_step")},
                    "val_yield_r2": metrics["val_yield_r2"],
                    "val_yield_r2_within_tool": metrics["val_yield_r2_within_tool"],
                    "val_energy_r2_within_tool": metrics["val_energy_r2_within_tool"],
                    "val_energy_r2_own_target": metrics["val_energy_r2"],
                    "val_energy_r2_mix_target": r2_mix,
                    "step": effects,
                    "lots": len(rows.x),
                    "scored": len(val),
                    "mean_lot_h": hours,
                }
                report.setdefault(ttype, {})[variant] = row
                e, y = effects["energy"], effects["yield"]
                print(
                    f"{ttype:12s} {variant:17s} R² yield {metrics['val_yield_r2']:.3f} "
                    f"energy (mix) {r2_mix:.3f}, within tools {metrics['val_yield_r2_within_tool']:.3f} / "
                    f"{metrics['val_energy_r2_within_tool']:.3f} | step: energy r {e['pearson_r']:.2f} "
                    f"sign {e['right_sign']:.0%} MAE {e['mae']:.3f} (|true| {e['mean_abs_true']:.3f} kWh); "
                    f"yield r {y['pearson_r']:.2f} sign {y['right_sign']:.0%} "
                    f"MAE {y['mae']:.3f} (|true| {y['mean_abs_true']:.3f} points) | observed on "
                    f"{metrics['val_step_pairs']:.0f} changes: yield sign "
                    f"{metrics.get('val_step_yield_sign', float('nan')):.0%} r "
                    f"{metrics.get('val_step_yield_r', float('nan')):.2f}, energy sign "
                    f"{metrics.get('val_step_energy_sign', float('nan')):.0%} r "
                    f"{metrics.get('val_step_energy_r', float('nan')):.2f}",
                    flush=True,
                )
    print(json.dumps(report, indent=1))


def _scale_for_scoring(rows: Any) -> dict[str, float]:
    """The recipe factors the model trained on the lot's own kWh is scored with (the same as the
    recipe-mix model's: from the training tools)."""
    from cloud.training.tuning import recipe_scale

    train = ~held_out(rows, 0)
    return recipe_scale(rows.y[train, 1], rows.recipes[train])


if __name__ == "__main__":
    main()
