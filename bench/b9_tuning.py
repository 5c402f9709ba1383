"""B9: setpoint tuning over 30 simulated days, same seed, side by side.

Four arms run the same fab (``opcua_sim.fab.Fab``, in process, the engineers' random setpoint
changes switched off so each arm owns its setpoints), each deciding the next lot's setpoints at
every lot end:

- ``none``: the recipe defaults, never changed;
- ``ewma``: the honest EWMA run-to-run baseline: it sees only what the tool reports per lot (the
  measured yield, with the simulator's lot noise) and runs, per setpoint, an EWMA of the yield's
  response to a ±2% perturbation (the slope) and moves up it. No eco modes;
- ``ewma-oracle``: the earlier baseline, kept for reference and NOT comparable: per setpoint an
  EWMA controller (``edge.tuning.EwmaController``, λ = 0.3) fed a per-knob "metrology" reading
  ``(u − u_opt)/span`` plus noise (σ = 0.02), one lot late, computed from the oracle's optimum.
  The simulator publishes no such per-knob output (only lot yield and energy), so this arm knows
  where the optimum is, which no controller on the tool's data can;
- ``fabpm``: the edge's tuning as the daemon runs it (``edge.tuning.Tuner``): one
  ``edge.tuning_pool.PooledOptimizer`` per tool type fitting the moving yield optimum from the
  lots of every tool of the type (curvature prior from the edge-tuning ONNX surrogate, trained by
  ``cloud.training.tuning`` on a separate 20-day export with exploratory setpoint changes, a
  different seed, floored at the default), stepping towards it with a small dither, every write
  through ``edge.tuning.SetpointGuard``; and the sub-fab rule: pumps and abatement in idle (eco)
  mode while their host tool is not processing;
- ``fabpm-eco``: the sub-fab rule alone, the setpoints left at the defaults (tuning in advise
  mode with nobody approving);
- ``oracle``: the simulator's own optimum (``opcua_sim.process.oracle_setpoints``, knowing health
  and drift) and the same eco rule.

Reported: mean expected lot yield (the simulator's noise-free yield of each lot) of the process
tools in points, total energy in kWh and as a percentage against ``none`` (the lots' energy,
which depends on the setpoints and includes the sub-fab's share while a lot runs, plus every
tool's draw outside lots: idle, eco or down), the share of the oracle's gain each arm reaches,
and writes refused by the guard (the envelope must never be left).

    .venv/bin/python bench/b9_tuning.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloud.training.tuning import release_tuning  # noqa: E402
from edge.config import TuningConfig  # noqa: E402
from edge.errors import WriteRefused  # noqa: E402
from edge.inference import TuningModel, load_verified  # noqa: E402
from edge.tuning import EwmaController, SetpointGuard  # noqa: E402
from edge.tuning_pool import PooledOptimizer  # noqa: E402
from edge.tuning_r2r import DEFAULT_CURVATURE, surrogate_curvature  # noqa: E402
from opcua_sim.export import export  # noqa: E402
from opcua_sim.fab import Fab  # noqa: E402
from opcua_sim.process import oracle_setpoints, power_kw  # noqa: E402
from opcua_sim.scenario import load_scenario, scale_tools, with_seed  # noqa: E402
from shared.equipment import TOOL_TYPES  # noqa: E402
from shared.signing import generate_keypair, load_private_key, load_public_key  # noqa: E402
from shared.tuning import range_envelope, step_limits  # noqa: E402

DAY = 86400.0
TICK = 300.0
PROCESS_TYPES = ("plasma_etch", "cvd", "cmp")


def scenario(seed: int, tools: int, change_days: float) -> Any:
    sc = scale_tools(with_seed(load_scenario(None), seed), tools)
    return sc.model_copy(
        update={"production": sc.production.model_copy(update={"setpoint_change_mean_days": change_days})}
    )


def train_surrogates(tmp: Path, seed: int) -> dict[str, TuningModel]:
    """Export 20 days with frequent exploratory setpoint changes, train and sign one model per type."""
    data = tmp / "export"
    export(scenario(seed, 12, 0.15), 20.0, data)
    generate_keypair(tmp / "k.key", tmp / "k.pub")
    key, pub = load_private_key(tmp / "k.key"), load_public_key(tmp / "k.pub")
    models = {}
    for ttype in PROCESS_TYPES:
        path, _ = release_tuning(data, ttype, tmp / "models", key, f"b9-{ttype}")
        model = load_verified(path, pub, 1)
        assert isinstance(model, TuningModel)
        models[ttype] = model
    return models


def envelope_for(ttype: str) -> dict[str, tuple[float, float]]:
    """The configured envelope: the setpoint's range less 5% at each end (idle_mode excluded)."""
    return range_envelope(ttype)


class Arm:
    def __init__(
        self, name: str, fab: Fab, models: dict[str, TuningModel], weights: dict[str, float]
    ) -> None:
        self.name, self.fab, self.models, self.weights = name, fab, models, weights
        self.lots: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self.refused = 0
        self.outside = 0
        cfg = TuningConfig(
            mode="auto",
            envelope={t: envelope_for(t) for t in PROCESS_TYPES},
            max_step={t: step_limits(envelope_for(t)) for t in PROCESS_TYPES},
            min_interval_s=0.0,
            max_writes_per_hour=1000,
        )
        self.guard = SetpointGuard(cfg, clock=lambda: fab.t)
        self.cfg = cfg
        self.ewma: dict[tuple[str, str], EwmaController] = {}
        self.rng = np.random.default_rng(7)
        self.last_metrology: dict[str, dict[str, float]] = {}
        self.r2r: dict[str, PooledOptimizer] = {}
        self.es: dict[str, dict[str, Any]] = {}
        self.reasons: Counter[str] = Counter()
        fab.listeners.append(self._on_event)

    def _on_event(self, ev: dict[str, Any]) -> None:
        if ev["kind"] == "lot":
            self.lots.append(ev)
            self.pending.append(ev)

    def write(self, tool: Any, name: str, value: float) -> None:
        current = float(tool.setpoints[tool.tt.tool.setpoint_names.index(name)])
        if abs(value - current) < 1e-9:
            return
        if self.name == "fabpm":
            try:
                self.guard.check(tool.tool_id, tool.type_name, name, current, value, None)
            except WriteRefused as exc:
                self.refused += 1
                self.reasons[str(exc).split(":")[1].split()[0] if ":" in str(exc) else str(exc)] += 1
                return
            self.guard.wrote(tool.tool_id, name)
        lo, hi = self.cfg.envelope[tool.type_name][name]
        if not lo - 1e-9 <= value <= hi + 1e-9:
            self.outside += 1
        tool.set_setpoint(name, float(value), source=self.name)

    def after_lots(self) -> None:
        for ev in self.pending:
            tool = self.fab.by_id[ev["tool"]]
            if tool.type_name not in PROCESS_TYPES:
                continue
            if self.name == "oracle":
                opt = oracle_setpoints(
                    tool.type_name,
                    ev["health"],
                    ev["drift"],
                    self.fab.t,
                    energy_weight=self.weights["energy"] / self.weights["yield"],
                )
                env = envelope_for(tool.type_name)
                for n, (lo, hi) in env.items():
                    self.write(tool, n, float(np.clip(opt[n], lo, hi)))
            elif self.name == "ewma-oracle":
                self._ewma(tool, ev)
            elif self.name == "ewma":
                self._ewma_yield(tool, ev)
            elif self.name == "fabpm":
                self._fabpm(tool, ev)
        self.pending.clear()

    def _ewma(self, tool: Any, ev: dict[str, Any]) -> None:
        opt = oracle_setpoints(tool.type_name, ev["health"], ev["drift"], ev["t_s"])
        env = envelope_for(tool.type_name)
        late = self.last_metrology.get(tool.tool_id)  # metrology arrives one lot late
        now = {}
        for n, (lo, hi) in env.items():
            span = TOOL_TYPES[tool.type_name].setpoints[TOOL_TYPES[tool.type_name].setpoint_names.index(n)]
            width = span.hi - span.lo
            u = float(ev["setpoints"][n])
            now[n] = (u - opt[n]) / width + float(self.rng.normal(0.0, 0.02))
            if late is None:
                continue
            key = (tool.tool_id, n)
            ctl = self.ewma.get(key)
            if ctl is None:
                ctl = self.ewma[key] = EwmaController(
                    0.0, 1.0 / width, u, lo, hi, lam=0.3, max_step=0.04 * (hi - lo)
                )
            self.write(tool, n, ctl.update(late[n][0], late[n][1]))
        self.last_metrology[tool.tool_id] = {n: (now[n], float(ev["setpoints"][n])) for n in now}

    def _ewma_yield(self, tool: Any, ev: dict[str, Any]) -> None:
        """The honest EWMA run-to-run baseline: it sees what the tool reports per lot (the
        measured yield), not the oracle. Per setpoint, an EWMA of the yield's response to a
        ±2% perturbation estimates the slope; the input moves up the slope (gain × slope,
        limited to the step), the classic EWMA extremum-seeking R2R loop."""
        env = envelope_for(tool.type_name)
        names = list(env)
        st = self.es.get(tool.tool_id)
        y = float(ev["yield"])
        if st is None:
            st = self.es[tool.tool_id] = {
                "mean": y,
                "slope": np.zeros(len(names)),
                "nominal": np.array([float(ev["setpoints"][n]) for n in names]),
                "signs": np.zeros(len(names)),
            }
        span = np.array([hi - lo for lo, hi in env.values()])
        resid = y - st["mean"]
        st["mean"] = 0.3 * y + 0.7 * st["mean"]
        st["slope"] = 0.3 * resid * st["signs"] / 0.02 + 0.7 * st["slope"]
        move = np.clip(0.0004 * st["slope"], -0.03, 0.03)
        st["nominal"] = np.clip(
            st["nominal"] + move * span, [v[0] for v in env.values()], [v[1] for v in env.values()]
        )
        st["signs"] = self.rng.choice([-1.0, 1.0], size=len(names))
        for i, n in enumerate(names):
            lo, hi = env[n]
            self.write(tool, n, float(np.clip(st["nominal"][i] + st["signs"][i] * 0.02 * span[i], lo, hi)))

    def _fabpm(self, tool: Any, ev: dict[str, Any]) -> None:
        """The edge's run-to-run optimiser (``edge.tuning_r2r.LotOptimizer``) on the tool's own
        lot history, the surrogate's curvature as its prior, every write through the guard."""
        model = self.models[tool.type_name]
        names = tool.tt.tool.setpoint_names
        # The tool's own values: the lot record rounds them, and a step must be measured exactly.
        current = {n: float(tool.setpoints[names.index(n)]) for n in model.setpoints}
        env = self.cfg.envelope[tool.type_name]
        opt = self.r2r.get(tool.type_name)
        if opt is None:
            context = {"last_lot_yield": float(ev["yield"]), "last_lot_energy_kwh": float(ev["energy_kwh"])}
            row = [current[n] for n in model.setpoints] + [context[n] for n in model.context]
            spans = [env[n][1] - env[n][0] for n in model.setpoints]
            curv = surrogate_curvature(lambda x: model.predict(x)[0], row, spans)
            # The surrogate's curvature is a floor: it smooths the yield surface (it is trained across
            # a wandering optimum), and the pooled fit estimates the curvature from the lots.
            prior = {
                n: max(float(c), DEFAULT_CURVATURE) if np.isfinite(c) else DEFAULT_CURVATURE
                for n, c in zip(model.setpoints, curv, strict=True)
            }
            print(f"# {tool.type_name}: surrogate curvature prior {prior}", file=sys.stderr)
            opt = self.r2r[tool.type_name] = PooledOptimizer(
                model.setpoints,
                env,
                self.cfg.max_step[tool.type_name],
                self.weights,
                curvature=prior,
                seed=len(self.r2r),
            )
        # Every lot is evidence for the fit (a change that hurt is undone by the next fit, so
        # the outcome guard's freeze is not used here).
        opt.observe(
            tool.tool_id, float(ev["t_s"]), ev["setpoints"], float(ev["yield"]), float(ev["energy_kwh"])
        )
        for n, v in opt.propose(tool.tool_id, current).items():
            self.write(tool, n, v)

    def eco(self) -> None:
        """Sub-fab idle mode while the host is not processing (fabpm and oracle arms)."""
        for tool in self.fab.tools:
            if tool.subfab and tool.host is not None:
                want = 0.0 if tool.host.processing else 1.0
                idx = tool.tt.tool.setpoint_names.index("idle_mode")
                if tool.setpoints[idx] != want:
                    tool.set_setpoint("idle_mode", want, source=self.name)


def run_arm(
    name: str, seed: int, tools: int, days: float, models: dict[str, TuningModel], weights: dict[str, float]
) -> dict[str, float]:
    fab = Fab(scenario(seed, tools, 1e6))
    arm = Arm(name, fab, models, weights)
    t = 0.0
    idle_kwh = 0.0
    while t < days * DAY:
        t += TICK
        if name in ("fabpm", "fabpm-eco", "oracle"):
            arm.eco()
        # Energy outside lots (idle, eco, down) per tick; lots carry their own, setpoint-dependent
        # energy (the tool's draw times the setpoints' elasticities, plus its sub-fab share).
        for tl in fab.tools:
            if not tl.processing:
                idle_kwh += power_kw(tl.type_name, False, tl.down, tl.eco) * TICK / 3600.0
        fab.advance_to(t)
        arm.after_lots()
    fab.close()
    if arm.reasons:
        print(f"# {name}: refusals {dict(arm.reasons)}", file=sys.stderr)
    lot_kwh = sum(ev["energy_kwh"] for ev in arm.lots)
    yields = [ev["expected_yield"] for ev in arm.lots if fab.by_id[ev["tool"]].type_name in PROCESS_TYPES]
    return {
        "lots": float(len(yields)),
        "yield": float(np.mean(yields)),
        "energy": float(lot_kwh + idle_kwh),
        "refused": float(arm.refused),
        "outside": float(arm.outside),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10 days, fewer tools")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--energy-weight", type=float, default=0.1, help="points of yield per kWh")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    days, tools = (10.0, 12) if args.quick else (30.0, 24)
    weights = {"yield": 1.0, "energy": args.energy_weight}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        models = train_surrogates(Path(tmp), seed=args.seed + 1000)
        results = {
            name: run_arm(name, args.seed, tools, days, models, weights)
            for name in ("none", "ewma", "ewma-oracle", "fabpm", "fabpm-eco", "oracle")
        }
    base, best = results["none"], results["oracle"]
    print(
        f"# B9 tuning, {days:.0f} simulated days, {tools} tools, seed {args.seed}, "
        f"weights {weights}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{time.time() - started:.0f} s"
    )
    print(
        "| arm | lots | mean yield % | Δ yield (points) | energy kWh | Δ energy % "
        "| share of oracle yield gain | share of oracle energy saving | writes refused "
        "| writes outside envelope |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        dy = r["yield"] - base["yield"]
        de = (r["energy"] - base["energy"]) / base["energy"] * 100
        gy = dy / (best["yield"] - base["yield"]) if best["yield"] != base["yield"] else float("nan")
        ge = (
            (base["energy"] - r["energy"]) / (base["energy"] - best["energy"])
            if best["energy"] != base["energy"]
            else float("nan")
        )
        print(
            f"| {name} | {int(r['lots'])} | {r['yield']:.2f} | {dy:+.2f} | {r['energy']:.0f} | {de:+.1f}% | "
            f"{gy * 100:.1f}% | {ge * 100:.1f}% | {int(r['refused'])} | {int(r['outside'])} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
