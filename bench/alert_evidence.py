"""Alert evidence: do the sensors an alert names (``shared.evidence``) move under the failing mode?

The edge attaches to every alert the sensors that carry its risk: the alert's window run again with
each sensor alone restored to the tool's own reference, the fall of the alerted mode's probability
being that sensor's contribution (at most three, each above ``shared.evidence``'s floor, which the
output records as ``evidence_defaults``), and the mode whose catalog precursors carry the risk
(``shared.evidence.likely_mode``). The simulator knows which sensors each progressive mode
really moves (``opcua_sim.degradation.SIGNATURES``), so on a finished ``bench/b2_sim_warning.py``
run (its ``--out`` folder), on each test export (seeds never trained on):

1. the released edge graph (ONNX, loaded from its verified manifest as the edge loads it,
   ``edge.inference.RiskModel``) on every window of every tool, and the release's alert rule (B2's
   choice) re-armed at failures and maintenance, as B2 scores it (``alert_choice.scored_tools``,
   ``alert_eval.run_rule`` / ``score``; the figures are checked against the run's ``b2.json``);
2. for every alert, its window, the mode it names (the release's mode namer on the window's
   embedding, ``shared.naming``, as ``edge.decisions`` names it; a release from before the namer
   gets the one ``cloud.training.release`` would fit on its calibration windows; the most probable
   progressive mode where a type has none), the most probable mode beside it, and
   ``shared.evidence.explain`` with that graph as ``predict`` and the catalog's precursors, as
   ``edge.pipeline`` calls it;
3. for true alerts (``alert_eval``'s definition: a progressive failure of the tool within 240 h, or
   the alert inside a degradation episode a maintenance ended), against the mode that really failed
   (or, inside an episode only, degraded): is the top-1 named sensor in its signature, is any of
   the top 3, how many alerts name none; beside two baselines in the same run: (a) the sensors
   ranked by |deviation| from the reference alone (``shared.evidence.deviations``, no model), (b)
   chance (signature size / the type's sensors for the top 1, the hypergeometric for three picks);
   and whether the alert's mode, and the mode the sensors point to, are the one that failed;
4. for false alarms, what the evidence named; and the time of one explanation (median µs of
   ``explain``, one batch of n_sensors + 1 windows);
5. on every window before a progressive failure (0-24, 24-72, 72-144 h), how often the most
   probable mode, and the namer's, is the one that fails.

Per-alert records go to ``DIR/alert_evidence.json``; markdown tables are printed: every true
alert, and those whose window holds a reference (without one there is nothing to restore a sensor
to and the evidence is [] by design: a tool that has not yet gone down and come back up in the run).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/alert_evidence.py artifacts/b2_ev [--quick]
    OMP_NUM_THREADS=1 .venv/bin/python bench/alert_evidence.py artifacts/b2_ev artifacts/b2_ev0 --reuse
    OMP_NUM_THREADS=1 .venv/bin/python bench/alert_evidence.py artifacts/b2_ev --name-horizon 240

Several runs: each is measured (or, with ``--reuse``, read back from its JSON), then all are pooled;
the hit-rate differences get a 95% interval from resampling tools.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from cloud.training import simdata
from cloud.training.alert_choice import ScoredTools, rule_for, scored_tools
from cloud.training.alert_eval import Truth, risk_series, run_rule, score
from cloud.training.release import mode_namer
from edge.inference import RiskModel
from opcua_sim.degradation import SIGNATURES
from shared.alerting import AlertDecision
from shared.dataset import read_info
from shared.equipment import tool_type
from shared.evidence import deviations, explain, reference_known, sensor_evidence
from shared.naming import ModeNamer
from shared.signing import load_public_key, verify_release

REPO = Path(__file__).resolve().parent.parent
H = 3600.0
MATCH_H = 240.0  # alert_eval.score's match_h: a progressive failure this soon after makes it true
TOP = 3


def load_release(run_dir: Path) -> tuple[RiskModel, dict[str, Any]]:
    """The run's released edge graph, its manifest verified with the run's key, and its b2.json."""
    b2 = json.loads((run_dir / "b2.json").read_text())
    onnx = Path(b2["release"]["file"])
    onnx = onnx if onnx.is_absolute() else REPO / onnx
    manifest = verify_release(onnx, load_public_key(run_dir / "keys" / "release.pub"))
    return RiskModel(onnx.read_bytes(), manifest, threads=1), b2


def predictions(model: RiskModel, x: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """windows → (probabilities (N, M), embeddings (N, E)) of the edge's model, in one pass of
    batches (as ``parity.run_onnx``)."""
    parts = [model.predict(x[i : i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate([q.probs for q in parts]), np.concatenate([q.embedding for q in parts])


def episodes_by_mode(folder: Path, end_s: float) -> dict[str, list[tuple[float, float, str]]]:
    """Per tool, its degradation episodes with their mode: ``alert_eval.read_truth``'s episodes
    (onset → failure, or → the maintenance that reset the mode, or → the end of the run)."""
    recs = [json.loads(line) for line in (folder / "ground_truth.jsonl").read_text().splitlines()]
    recs.sort(key=lambda r: r["t_s"])
    out: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    open_: dict[tuple[str, str], float] = {}
    for r in recs:
        kind, tool, ts = r["kind"], r.get("tool"), float(r["t_s"])
        if kind == "onset":
            open_.setdefault((tool, r["mode"]), ts)
        ended = (
            [r["mode"]] if kind == "failure" else r.get("modes_reset", []) if kind == "maintenance" else []
        )
        for mode in ended:
            start = open_.pop((tool, mode), None)
            if start is not None:
                out[tool].append((start, ts, mode))
    for (tool, mode), start in open_.items():
        out[tool].append((start, end_s, mode))
    return out


def truth_of(
    a: AlertDecision, tool: str, truth: Truth, episodes: list[tuple[float, float, str]]
) -> dict[str, Any]:
    """What the ground truth says of one alert, by ``alert_eval.score``'s rule: ``failure`` (a
    progressive failure of the tool within 240 h; its mode), ``episode`` (inside a degradation
    episode that maintenance ended or the run cut; its mode) or ``false``."""
    fails = sorted((f for f in truth.failures.get(tool, []) if not f[2]), key=lambda f: f[0])
    nxt = next((f for f in fails if 0 <= f[0] - a.ts <= MATCH_H * H), None)
    active = sorted({m for s, e, m in episodes if s <= a.ts < e})
    if nxt is not None:
        return {"kind": "failure", "mode": nxt[1], "lead_h": (nxt[0] - a.ts) / H, "active": active}
    if active:
        first = min((e for e in episodes if e[0] <= a.ts < e[1]), key=lambda e: e[0])
        return {"kind": "episode", "mode": first[2], "lead_h": None, "active": active}
    return {"kind": "false", "mode": None, "lead_h": None, "active": []}


def first_readings(x0: np.ndarray, names: list[str], n: int, rows: int) -> np.ndarray:
    """(2, n) [idle, processing]: each sensor's mean z over the first ``rows`` rows of that state
    in the tool's first window (the run's start, where the edge would have begun watching); NaN
    where fewer rows, or only missing readings. The replay cannot tell down rows from idle ones
    (the edge skips them): an approximation."""
    out = np.full((2, n), np.nan)
    proc = x0[:, names.index("processing")] > 0.5
    for p in (0, 1):
        sel = x0[proc == bool(p)][:rows]
        if len(sel) < rows:
            continue
        for j in range(n):
            ok = sel[:, names.index(f"miss_{j:02d}")] < 0.5
            if ok.any():
                out[p, j] = float(sel[ok, names.index(f"z_{j:02d}")].mean())
    return out


def against(x: np.ndarray, names: list[str], first: np.ndarray) -> np.ndarray:
    """(W, n) each reading's z minus its state's first readings (NaN where either is unknown)."""
    n = first.shape[1]
    proc = (x[:, names.index("processing")] > 0.5).astype(int)
    z = np.stack([x[:, names.index(f"z_{j:02d}")] for j in range(n)], axis=1).astype(np.float64)
    miss = np.stack([x[:, names.index(f"miss_{j:02d}")] > 0.5 for j in range(n)], axis=1)
    return np.where(miss, np.nan, z - first[proc])


def chance(n: int, k: int, picks: int = TOP) -> tuple[float, float]:
    """P(a random sensor is one of the k of n) and P(any of ``picks`` drawn without replacement is)."""
    picks = min(picks, n)
    return k / n, 1.0 - math.comb(n - k, picks) / math.comb(n, picks)


def by_deviation(x: np.ndarray, names: list[str], sensors: tuple[str, ...]) -> list[str]:
    """Baseline (a): the sensors with the largest |deviation| from the reference, no model (at
    most three; a sensor that does not deviate at all is not named)."""
    dev = np.abs(deviations(x, names, len(sensors)))
    return [sensors[j] for j in np.argsort(-dev, kind="stable")[:TOP] if dev[j] > 0]


def release_namer(
    run_dir: Path, model: RiskModel, b2: dict[str, Any], name_horizon_h: float | None = None
) -> tuple[ModeNamer | None, str]:
    """The release's mode namer (``shared.naming``); for a release built before it had one, the
    namer ``cloud.training.release`` would fit: on the windows ``export_release`` is given (B2's
    training windows, every tool) and the released graph's embedding. ``name_horizon_h``: refit it
    on the windows up to that many hours before a failure (the release fits on the label horizon)."""
    if model.namer is not None and name_horizon_h is None:
        return model.namer, "the release's"
    train = Path(b2["train"])
    args = b2.get("args") or {}
    _, tools, _ = simdata.dataset_windows(
        train if train.is_absolute() else REPO / train,
        spec=model.spec,
        stride=int(args.get("stride") or 4),
        horizon_h=name_horizon_h if name_horizon_h is not None else args.get("label_horizon"),
    )
    windows = simdata.merge(tools)  # export_release's calibration and held-out windows together
    _, emb = predictions(model, windows.x)
    how = "fitted as the release would"
    if name_horizon_h is not None:
        how = f"refitted on the windows up to {name_horizon_h:g} h before a failure"
    return mode_namer(emb, windows, list(model.spec.names), list(model.modes)), how


def explain_alerts(
    folder: Path, st: ScoredTools, model: RiskModel, b2: dict[str, Any], reps: int, namer: ModeNamer | None
) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, Any]]:
    """Every alert of the release's rule on one test export, explained and scored; with B2's figures."""
    rule = rule_for(b2["rule"]["threshold"], b2["rule"]["persistence"])
    names = list(model.spec.names)
    episodes = episodes_by_mode(folder, read_info(folder).days * 86400.0)  # read_truth's end
    predict = lambda b: model.predict(b).probs  # noqa: E731  (edge.pipeline's explain)
    alerts: dict[str, list[AlertDecision]] = {}
    records = []
    preds = {tw.tool_id: predictions(model, tw.ws.x) for tw in st.tools}  # per tool
    all_probs = {t: p for t, (p, _) in preds.items()}  # (N, M)
    all_emb = {t: e for t, (_, e) in preds.items()}  # (N, E)
    for tw in st.tools:
        probs = all_probs[tw.tool_id]
        risk = risk_series(probs, tw.tool_type)  # ScoredTools.series, keeping the probabilities
        decs = run_rule(rule, tw.t_end_s, risk, st.truth.resets.get(tw.tool_id, []), st.span_s)
        alerts[tw.tool_id] = decs
        ttype = tool_type(tw.tool_type)
        sensors = ttype.sensor_names
        prog = [model.modes.index(m) for m in ttype.warnable_mode_names]
        precursors = {  # as edge.pipeline gives them: the catalog's precursors of each progressive mode
            m.name: (model.modes.index(m.name), m.sensors) for m in ttype.modes if not m.sudden
        }
        index = {float(t): i for i, t in enumerate(tw.t_end_s)}
        first = first_readings(tw.ws.x[0], names, len(sensors), model.spec.reference_rows)
        for a in decs:
            i = index[float(a.ts)]
            x = tw.ws.x[i]  # (W, F): the window that raised the alert
            most = prog[int(np.argmax(probs[i, prog]))]  # the most probable progressive mode
            got = None if namer is None else namer.name(tw.tool_type, all_emb[tw.tool_id][i])
            mode_index = model.modes.index(got[0]) if got is not None else most  # as edge.decisions
            times = []
            for _ in range(reps):
                t0 = time.perf_counter_ns()
                why = explain(x, names, sensors, mode_index, predict, precursors)
                times.append(time.perf_counter_ns() - t0)
            ev = why.sensors
            has_ref = bool(reference_known(x, names))
            # Without a reference the edge falls back on its first readings of the tool
            # (edge.windows' watching tracker); here the run's first rows, where the replay starts.
            watched = (
                explain(x, names, sensors, mode_index, predict, precursors, against=against(x, names, first))
                if not has_ref
                else None
            )
            gt = truth_of(a, tw.tool_id, st.truth, episodes[tw.tool_id])
            named_mode = model.modes[mode_index]
            rec: dict[str, Any] = {
                "tool": tw.tool_id,
                "tool_type": tw.tool_type,
                "t_h": a.ts / H,
                "probability": a.probability,
                "named_mode": named_mode,
                "most_probable_mode": model.modes[most],
                **gt,
                "n_sensors": len(sensors),
                "reference": has_ref,  # evidence against the tool's reference possible
                "watched": None if watched is None else [e.to_dict() for e in watched.sensors],
                "evidence": [e.to_dict() for e in ev],
                "likely_mode": why.likely_mode,
                "by_deviation": by_deviation(x, names, sensors),
                "us": float(np.median(times)) / 1e3,
            }
            named = [e.sensor for e in ev]
            rec["named_mode_signature_top1"] = bool(named) and named[0] in SIGNATURES[named_mode]
            if gt["mode"] is not None:
                sig = set(SIGNATURES[gt["mode"]])
                dev = rec["by_deviation"]
                near = sig.union(*(SIGNATURES[m] for m in gt["active"]))  # any mode degrading then
                rec.update(
                    mode_right=named_mode == gt["mode"],
                    most_probable_right=model.modes[most] == gt["mode"],
                    likely_mode_right=why.likely_mode == gt["mode"],
                    top1_any_active=bool(named) and named[0] in near,
                    signature=sorted(sig),
                    top1=bool(named) and named[0] in sig,
                    top3=bool(sig & set(named)),
                    dev_top1=bool(dev) and dev[0] in sig,
                    dev_top3=bool(sig & set(dev)),
                )
                rec["chance_top1"], rec["chance_top3"] = chance(len(sensors), len(sig & set(sensors)))
                if watched is not None:
                    seen = [e.sensor for e in watched.sensors]
                    rec.update(
                        watched_top1=bool(seen) and seen[0] in sig,
                        watched_top3=bool(sig & set(seen)),
                        watched_likely_mode_right=watched.likely_mode == gt["mode"],
                    )
            records.append(rec)
    heads: dict[str, Any] = {"heads": head_accuracy(st, all_probs, list(model.modes))}
    if namer is not None:
        heads["namer"] = head_accuracy(st, all_probs, list(model.modes), namer, all_emb)
    return records, score(alerts, st.truth, st.tool_days, run_start_s=0.0), heads


BANDS_H = ((0.0, 24.0), (24.0, 72.0), (72.0, 144.0))


def head_accuracy(
    st: ScoredTools,
    all_probs: dict[str, np.ndarray],
    modes: list[str],
    namer: ModeNamer | None = None,
    all_emb: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, list[int]]]:
    """The mode heads on every window, not only the alerts': per tool type and band of hours before
    the tool's next failure (a progressive one), [windows, windows whose most probable progressive
    mode is the failing one]; "all" sums the types."""
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for tw in st.tools:
        prog = tool_type(tw.tool_type).warnable_mode_names
        idx = [modes.index(m) for m in prog]
        named = np.asarray(prog)[np.argmax(all_probs[tw.tool_id][:, idx], axis=1)]
        if namer is not None and all_emb is not None and tw.tool_type in namer.types:
            type_namer = namer.types[tw.tool_type]  # the namer's pick where it has one
            named = np.asarray(type_namer.modes)[np.argmax(type_namer.probs(all_emb[tw.tool_id]), axis=1)]
        fails = sorted(st.truth.failures.get(tw.tool_id, []))  # (t, mode, sudden)
        times = np.array([f[0] for f in fails])
        nxt = np.searchsorted(times, tw.t_end_s, side="right")  # the tool's next failure
        for i, k in enumerate(nxt):
            if k >= len(fails) or fails[k][2]:  # none in the run, or a sudden one comes first
                continue
            lead = (fails[k][0] - tw.t_end_s[i]) / H
            band = next((f"{lo:.0f}-{hi:.0f} h" for lo, hi in BANDS_H if lo <= lead < hi), None)
            if band is None:
                continue
            for key in (tw.tool_type, "all"):
                out[key][band][0] += 1
                out[key][band][1] += int(named[i] == fails[k][1])
    return {k: dict(v) for k, v in out.items()}


def summary(recs: list[dict[str, Any]]) -> dict[str, float]:
    """The table's figures over a set of alert records."""
    true = [r for r in recs if r["kind"] != "false"]
    false = [r for r in recs if r["kind"] == "false"]

    def share(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> float:
        return float(np.mean([bool(key(r)) for r in rows])) if rows else float("nan")

    named = [r for r in true if r["evidence"]]
    ref = [r for r in true if r["reference"]]
    no_ref = [r for r in true if not r["reference"]]
    return {
        "alerts": len(recs),
        "true": len(true),
        "true_failure": sum(r["kind"] == "failure" for r in true),
        "true_episode": sum(r["kind"] == "episode" for r in true),
        "mode_right": share(true, lambda r: r["mode_right"]),
        "most_probable_right": share(true, lambda r: r.get("most_probable_right", r["mode_right"])),
        "ref_most_probable_right": share(ref, lambda r: r.get("most_probable_right", r["mode_right"])),
        # the mode the sensors point to (shared.evidence.likely_mode), on the alerts with a reference
        "ref_mode_right": share(ref, lambda r: r["mode_right"]),
        "ref_likely_mode_right": share(ref, lambda r: r.get("likely_mode_right", False)),
        "ref_likely_mode_none": share(ref, lambda r: r.get("likely_mode") is None),
        # true alerts without a reference, explained against the run's first readings of the tool
        "no_ref": len(no_ref),
        "watched_top1": share(no_ref, lambda r: r.get("watched_top1", False)),
        "watched_top3": share(no_ref, lambda r: r.get("watched_top3", False)),
        "watched_none": share(no_ref, lambda r: not r.get("watched")),
        "watched_chance_top1": float(np.mean([r["chance_top1"] for r in no_ref])) if no_ref else float("nan"),
        "watched_likely_mode_right": share(no_ref, lambda r: r.get("watched_likely_mode_right", False)),
        "no_ref_mode_right": share(no_ref, lambda r: r["mode_right"]),
        "top1": share(true, lambda r: r["top1"]),
        "top3": share(true, lambda r: r["top3"]),
        "none": share(true, lambda r: not r["evidence"]),
        "top1_if_named": share(named, lambda r: r["top1"]),
        "top1_any_active": share(true, lambda r: r["top1_any_active"]),
        "top1_in_named_mode": share(true, lambda r: r["named_mode_signature_top1"]),
        "top1_mode_right": share([r for r in true if r["mode_right"]], lambda r: r["top1"]),
        "top1_mode_wrong": share([r for r in true if not r["mode_right"]], lambda r: r["top1"]),
        "dev_top1": share(true, lambda r: r["dev_top1"]),
        "dev_top3": share(true, lambda r: r["dev_top3"]),
        "chance_top1": float(np.mean([r["chance_top1"] for r in true])) if true else float("nan"),
        "chance_top3": float(np.mean([r["chance_top3"] for r in true])) if true else float("nan"),
        "true_with_reference": len(ref),
        "ref_top1": share(ref, lambda r: r["top1"]),
        "ref_top3": share(ref, lambda r: r["top3"]),
        "ref_none": share(ref, lambda r: not r["evidence"]),
        "ref_dev_top1": share(ref, lambda r: r["dev_top1"]),
        "ref_dev_top3": share(ref, lambda r: r["dev_top3"]),
        "ref_chance_top1": float(np.mean([r["chance_top1"] for r in ref])) if ref else float("nan"),
        "ref_chance_top3": float(np.mean([r["chance_top3"] for r in ref])) if ref else float("nan"),
        "same_top1_as_deviation": share(
            [r for r in named if r["by_deviation"]],
            lambda r: r["evidence"][0]["sensor"] == r["by_deviation"][0],
        ),
        "false": len(false),
        "false_with_reference": sum(r["reference"] for r in false),
        "false_none": share(false, lambda r: not r["evidence"]),
        "false_mean_named": float(np.mean([len(r["evidence"]) for r in false])) if false else float("nan"),
        "false_top1_in_named_mode": share(false, lambda r: r["named_mode_signature_top1"]),
        "true_mean_named": float(np.mean([len(r["evidence"]) for r in true])) if true else float("nan"),
        # the explanations that ran the model (without a reference sensor_evidence returns at once)
        "us_median": float(np.median(us))
        if (us := [r["us"] for r in recs if r["reference"]])
        else float("nan"),
        "us_median_all": float(np.median([r["us"] for r in recs])) if recs else float("nan"),
    }


def pct(v: float) -> str:
    return "–" if not np.isfinite(v) else f"{100 * v:.1f}"


def markdown(head: str, lines: Iterable[str]) -> str:
    """A markdown table: its header row, the separator, then ``lines``."""
    return "\n".join([head, "|" + "---|" * (head.count("|") - 1), *lines])


def table(rows: Iterable[tuple[str, dict[str, float]]]) -> str:
    head = (
        "| test | alerts | true (fail/ep) | named mode right % | top-1 % | top-3 % | none % | "
        "by deviation top-1 % | by deviation top-3 % | chance top-1 % | chance top-3 % | false | "
        "false: none % | µs / explanation (model run) |"
    )
    return markdown(
        head,
        (
            f"| {name} | {s['alerts']} | {s['true']} ({s['true_failure']}/{s['true_episode']}) | "
            f"{pct(s['mode_right'])} | {pct(s['top1'])} | {pct(s['top3'])} | {pct(s['none'])} | "
            f"{pct(s['dev_top1'])} | {pct(s['dev_top3'])} | {pct(s['chance_top1'])} | "
            f"{pct(s['chance_top3'])} | {s['false']} | {pct(s['false_none'])} | {s['us_median']:.0f} |"
            for name, s in rows
        ),
    )


def ref_table(rows: Iterable[tuple[str, dict[str, float]]]) -> str:
    head = (
        "| test | true alerts with a reference | top-1 % | top-3 % | none % | by deviation top-1 % | "
        "by deviation top-3 % | chance top-1 % | chance top-3 % | same top-1 as by deviation % |"
    )
    return markdown(
        head,
        (
            f"| {name} | {s['true_with_reference']} | {pct(s['ref_top1'])} | {pct(s['ref_top3'])} | "
            f"{pct(s['ref_none'])} | {pct(s['ref_dev_top1'])} | {pct(s['ref_dev_top3'])} | "
            f"{pct(s['ref_chance_top1'])} | {pct(s['ref_chance_top3'])} | "
            f"{pct(s['same_top1_as_deviation'])} |"
            for name, s in rows
        ),
    )


def measure(run_dir: Path, quick: bool, reps: int, name_horizon_h: float | None = None) -> dict[str, Any]:
    model, b2 = load_release(run_dir)
    namer, namer_from = release_namer(run_dir, model, b2, name_horizon_h)
    print(f"{run_dir}: mode namer {namer_from}: {sorted(namer.types) if namer else 'none'}", flush=True)
    tests = sorted(run_dir.glob("test_s*_d*"))
    if not tests:
        raise SystemExit(f"{run_dir}: no test export (test_s*_d*) beside b2.json")
    defaults = {
        k: v.default
        for k, v in inspect.signature(sensor_evidence).parameters.items()
        if v.default is not inspect.Parameter.empty
    }  # what "named" meant in this run (shared.evidence's floor and top)
    out: dict[str, Any] = {"run": str(run_dir), "rule": b2["rule"], "model_version": model.version}
    out["mode_namer_from"] = namer_from
    out |= {"evidence_defaults": defaults, "tests": {}}
    for folder in tests:
        st = scored_tools(folder, model.spec, set(range(8)) if quick else None)
        recs, got, heads = explain_alerts(folder, st, model, b2, reps, namer)
        want = (b2.get("tests") or {}).get(folder.name, {}).get("released_edge")
        same = want is not None and all(
            got[k] == want[k] for k in ("alerts", "warned_ge_lead", "warnable_failures")
        )
        if not quick and not same:
            print(f"note: {folder.name}: B2 scored {want}, this replay {got}", flush=True)
        out["tests"][folder.name] = {
            "b2_figures": got,
            "matches_b2_json": same,
            "alerts": recs,
            "mode_heads": heads["heads"],  # the most probable mode, on every window
            "mode_namer": heads.get("namer"),  # the namer's mode (the heads' where it has none)
        }
        del st
    return out


def tool_bootstrap(recs: list[dict[str, Any]], rounds: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """Differences in hit rate on true alerts with a reference (evidence − chance, evidence − by
    deviation, top 1 and top 3): the point and a 95% interval from resampling tools (an export's
    tool and its alerts together: one tool's alerts are not independent)."""
    true = [r for r in recs if r["kind"] != "false" and r["reference"]]
    by_tool: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in true:
        by_tool[r["cluster"]].append(r)
    keys = list(by_tool)
    pairs = {
        "top1_minus_chance": ("top1", "chance_top1"),
        "top1_minus_deviation": ("top1", "dev_top1"),
        "top3_minus_chance": ("top3", "chance_top3"),
        "top3_minus_deviation": ("top3", "dev_top3"),
        # the failing mode named: by the sensors' precursors (likely_mode) against the alert's own
        "mode_by_sensors_minus_alert_mode": ("likely_mode_right", "mode_right"),
        # the alert's mode (the release's namer) against the most probable mode (the heads')
        "alert_mode_minus_most_probable": ("mode_right", "most_probable_right"),
    }

    # a run measured before a figure existed (--reuse of an older JSON) leaves that pair out
    pairs = {k: (a, b) for k, (a, b) in pairs.items() if all(a in r and b in r for r in true)}

    def diffs(rows: list[dict[str, Any]]) -> list[float]:
        return [float(np.mean([float(r[a]) - float(r[b]) for r in rows])) for a, b in pairs.values()]

    if not keys:
        return {}
    rng = np.random.default_rng(seed)
    draws = np.array(
        [
            diffs([r for k in rng.integers(0, len(keys), len(keys)) for r in by_tool[keys[k]]])
            for _ in range(rounds)
        ]
    )
    point = diffs(true)
    return {
        name: [point[j], *np.percentile(draws[:, j], [2.5, 97.5]).tolist()] for j, name in enumerate(pairs)
    }


def heads_table(heads: list[dict[str, dict[str, list[int]]]]) -> str:
    """Per tool type and band before the failure: % of windows whose named mode (the most probable,
    or the namer's) is the failing one (windows), summed over ``heads`` (one per test export)."""
    total: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for h in heads:
        for ttype, by_band in h.items():
            for band, (n, hit) in by_band.items():
                total[ttype][band][0] += n
                total[ttype][band][1] += hit
    bands = [f"{lo:.0f}-{hi:.0f} h" for lo, hi in BANDS_H]
    head = "| tool type | " + " | ".join(f"{b} before: right % (windows)" for b in bands) + " |"
    return markdown(
        head,
        (
            f"| {t} | "
            + " | ".join(
                f"{pct(total[t][b][1] / total[t][b][0]) if total[t][b][0] else '–'} ({total[t][b][0]})"
                for b in bands
            )
            + " |"
            for t in sorted(total, key=lambda t: (t == "all", t))
        ),
    )


def report(run: Path, res: dict[str, Any]) -> None:
    per = [(name, summary(t["alerts"])) for name, t in res["tests"].items()]
    rows = [*per, ("pooled", res["summary"]["pooled"])]
    rule = res["rule"]
    print(f"\nAlert evidence, {run} (rule p ≥ {rule['threshold']} × {rule['persistence']}):\n")
    print(table(rows))
    print("\nTrue alerts whose window holds a reference (without one, evidence is [] by design):\n")
    print(ref_table(rows))
    print(f"\nsensor_evidence defaults: {res['evidence_defaults']}")
    for n, s in rows:
        print(
            f"{n}: true alerts: the alert's mode right {pct(s['mode_right'])} %, the most probable mode "
            f"{pct(s['most_probable_right'])} %; with a reference: the alert's {pct(s['ref_mode_right'])} %, "
            f"the most probable {pct(s['ref_most_probable_right'])} %, the mode the sensors point to "
            f"{pct(s['ref_likely_mode_right'])} % (none {pct(s['ref_likely_mode_none'])} %)"
        )
        print(
            f"{n}: {s['no_ref']} true alerts without a reference, against the first readings: top-1 "
            f"{pct(s['watched_top1'])} %, top-3 {pct(s['watched_top3'])} %, none {pct(s['watched_none'])} % "
            f"(chance top-1 {pct(s['watched_chance_top1'])} %); mode right: the alert's "
            f"{pct(s['no_ref_mode_right'])} %, the sensors' {pct(s['watched_likely_mode_right'])} %"
        )
    heads = [t["mode_heads"] for t in res["tests"].values() if "mode_heads" in t]
    if heads:
        print("\nThe mode heads on every window before a progressive failure (both test exports):\n")
        print(heads_table(heads))
    named = [t["mode_namer"] for t in res["tests"].values() if t.get("mode_namer")]
    if named:
        print("\nThe release's mode namer on the same windows:\n")
        print(heads_table(named))
    for n, s in rows:
        print(
            f"{n}: true alerts' top-1 % when the named mode was right / wrong "
            f"{pct(s['top1_mode_right'])} / {pct(s['top1_mode_wrong'])}; if any named "
            f"{pct(s['top1_if_named'])}; in any mode degrading then {pct(s['top1_any_active'])}; in the "
            f"alert's own mode {pct(s['top1_in_named_mode'])}; sensors named per alert: true "
            f"{s['true_mean_named']:.2f}, false {s['false_mean_named']:.2f}; false alarms with a reference "
            f"{s['false_with_reference']} of {s['false']}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "runs", type=Path, nargs="+", help="folders of finished bench/b2_sim_warning.py runs (their --out)"
    )
    ap.add_argument("--quick", action="store_true", help="8 tools per test export")
    ap.add_argument("--reps", type=int, default=5, help="timed explanations per alert (median kept)")
    ap.add_argument(
        "--reuse", action="store_true", help="read a run's alert_evidence.json when it has one (no model run)"
    )
    ap.add_argument(
        "--name-horizon",
        type=float,
        default=None,
        help="refit the mode namer on the windows up to this many hours before a failure (the "
        "release fits it on the label horizon's); the JSON gets _name<H> in its name",
    )
    args = ap.parse_args()
    for run in args.runs:
        if not (run / "b2.json").exists():
            ap.error(f"{run}: no b2.json; run bench/b2_sim_warning.py --out {run} first")
    name = "alert_evidence_quick" if args.quick else "alert_evidence"
    name += "" if args.name_horizon is None else f"_name{args.name_horizon:g}"
    name += ".json"
    every: list[dict[str, Any]] = []
    heads: list[dict[str, dict[str, list[int]]]] = []
    namers: list[dict[str, dict[str, list[int]]]] = []
    for run in args.runs:
        if args.reuse and (run / name).exists():
            res = json.loads((run / name).read_text())
        else:
            t0 = time.monotonic()
            res = measure(run, args.quick, args.reps, args.name_horizon)
            pooled = summary([r for t in res["tests"].values() for r in t["alerts"]])
            res["summary"] = {**{k: summary(t["alerts"]) for k, t in res["tests"].items()}, "pooled": pooled}
            res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            res["seconds"] = time.monotonic() - t0
            (run / name).write_text(json.dumps(res, indent=1, default=float))
            print(f"wrote {run / name} ({res['seconds']:.0f} s)")
        report(run, res)
        heads += [t["mode_heads"] for t in res["tests"].values() if "mode_heads" in t]
        namers += [t["mode_namer"] for t in res["tests"].values() if t.get("mode_namer")]
        every += [
            {**r, "cluster": (str(run), test, r["tool"])}
            for test, t in res["tests"].items()
            for r in t["alerts"]
        ]
    if len(args.runs) > 1:
        print(f"\nEvery run pooled ({len(args.runs)} trainings):\n")
        if heads:
            print(heads_table(heads) + "\n")
        if namers:
            print("The release's mode namer:\n\n" + heads_table(namers) + "\n")
        print(table([("all", summary(every))]))
        print()
        print(ref_table([("all", summary(every))]))
    print("\nTrue alerts with a reference, difference in hit rate, points [95% interval, tools resampled]:")
    for k, (point, lo, hi) in tool_bootstrap(every).items():
        print(f"  {k}: {100 * point:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
