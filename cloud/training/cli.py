"""``fabpm train``: train, distil, export and release fabpm's models.

::

    fabpm train cmapss  [--data DIR] [--out DIR] [--seed N] [--tiny] [--edge]    # C-MAPSS FD001
    fabpm train sim     --dataset DIR [--out DIR] [--size default|small|tiny] [--edge] [--reference-rows N]
    fabpm train release --checkpoint EDGE.pt --dataset DIR --key PEM --version V [--parent P]
    fabpm train tuning  --dataset DIR --tool-type T --key PEM --version V [--out DIR]
    fabpm train pool    --checkpoint FULL.pt --dataset DIR [--size N]   # the distillation pool
    fabpm train ddp-check --out DIR                                 # one DDP step, under torchrun

Under ``torchrun --nproc_per_node N -m cloud.training.cli sim ...`` training runs with DDP (gloo
on the CPU, NCCL on GPUs). ``--data`` defaults to ``../shared/data`` next to the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from cloud.training.errors import TrainingError
from cloud.training.pipeline import SIZES, PipelineConfig
from cloud.training.pool import POOL_SIZE

_logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fabpm train", description="Train fabpm's models.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", type=Path, default=REPO / "artifacts" / "train")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument(
            "--size",
            choices=SIZES,
            default="default",
            help="model and schedule preset: small trains in about half a minute (the demo), "
            "tiny in seconds (tests; not for accuracy); C-MAPSS has default and tiny",
        )
        sp.add_argument("--tiny", dest="size", action="store_const", const="tiny", help="--size tiny")
        sp.add_argument("--epochs", type=int, default=None)
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
        sp.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
        sp.add_argument("--no-progress", action="store_true")
        sp.add_argument("--edge", action="store_true", help="also distil the edge model")

    c = sub.add_parser("cmapss", help="C-MAPSS FD001, standard protocol (RUL cap 125, last test cycle)")
    common(c)
    c.add_argument("--data", type=Path, default=DEFAULT_DATA)
    c.add_argument("--window", type=int, default=80)
    c.add_argument(
        "--first-end", type=int, default=31, help="train also on left-padded windows ending from this cycle"
    )
    c.add_argument("--smooth", type=float, default=0.2, help="causal EWMA alpha on the sensors (0 = raw)")
    c.add_argument(
        "--reference",
        type=int,
        default=None,
        help="each unit's own reference: its first N cycles, at most 31 (0: none; default: B1's)",
    )
    c.add_argument(
        "--far-weight",
        type=float,
        default=None,
        help="weight in the RUL loss of windows further from failure than any test truth, 145 cycles "
        "(1: as the others; default: B1's)",
    )
    s = sub.add_parser("sim", help="a data set written by `fabpm sim export`")
    common(s)
    s.add_argument("--dataset", type=Path, required=True)
    s.add_argument(
        "--reference-rows",
        type=int,
        default=None,
        help="rows of each state after a tool comes back up that form its own reference "
        "(0: windows alone; default: the pipeline's)",
    )
    r = sub.add_parser("release", help="export, quantize, check and sign an edge checkpoint")
    r.add_argument("--checkpoint", type=Path, required=True)
    r.add_argument("--dataset", type=Path, required=True, help="export whose windows calibrate and check")
    r.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    r.add_argument("--version", required=True)
    r.add_argument("--parent", default=None)
    r.add_argument("--out", type=Path, default=REPO / "artifacts" / "release")
    r.add_argument(
        "--alert-rule",
        choices=("choose", "default"),
        default="choose",
        help="choose: the threshold and persistence that warn most failures >= 72 h ahead at 95%% "
        "precision on the export's tools the model was not trained on (B2's procedure); "
        "default: the pipeline's fixed 0.5 for 3 steps",
    )
    t = sub.add_parser("tuning", help="the yield/energy surrogate of one tool type")
    t.add_argument("--dataset", type=Path, required=True)
    t.add_argument("--tool-type", required=True)
    t.add_argument("--key", type=Path, required=True)
    t.add_argument("--version", required=True)
    t.add_argument("--parent", default=None)
    t.add_argument("--out", type=Path, default=REPO / "artifacts" / "release")
    o = sub.add_parser(
        "pool",
        help="write the distillation pool of a full checkpoint (`fabpm train sim` writes one itself): "
        "windows of an export on which learning rounds' edge students also learn the teacher",
    )
    o.add_argument("--checkpoint", type=Path, required=True, help="the full model (serving.checkpoint)")
    o.add_argument("--dataset", type=Path, required=True, help="an export of the fleet's usual running")
    o.add_argument("--size", type=int, default=POOL_SIZE, help="windows kept (default %(default)s)")
    d = sub.add_parser("ddp-check", help="one tiny DDP training step; writes a parameter digest per rank")
    d.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str]) -> int:
    ns = _parser().parse_args(argv)
    if ns.cmd == "cmapss":
        return _cmapss(ns)
    if ns.cmd == "sim":
        return _sim(ns)
    if ns.cmd == "release":
        return _release(ns)
    if ns.cmd == "tuning":
        return _tuning(ns)
    if ns.cmd == "pool":
        return _pool(ns)
    return _ddp_check(ns)


def _train_config(ns: argparse.Namespace, size: str) -> PipelineConfig:
    cfg = PipelineConfig.sized(size)
    train = replace(
        cfg.train,
        seed=ns.seed,
        device=ns.device,
        threads=ns.threads,
        progress=not ns.no_progress and cfg.train.progress,
        epochs=ns.epochs or cfg.train.epochs,
    )
    return replace(cfg, train=train)


def _cmapss(ns: argparse.Namespace) -> int:
    from cloud.training import cmapss

    if ns.size == "small":
        raise TrainingError("fabpm train cmapss: --size small is a simulator preset; use default or tiny")
    if ns.size == "tiny":
        tiny = _train_config(ns, "tiny")  # C-MAPSS's target is the RUL: watch the summed loss
        cfg = replace(tiny, cmapss_window=ns.window, train=replace(tiny.train, monitor="loss"))
    else:
        b1 = cmapss.b1_config(seed=ns.seed, epochs=ns.epochs or 8, window=ns.window)
        progress = not ns.no_progress and b1.train.progress
        cfg = replace(b1, train=replace(b1.train, device=ns.device, threads=ns.threads, progress=progress))
    reference = cmapss.B1_REFERENCE if ns.reference is None else ns.reference
    far_weight = cmapss.B1_FAR_WEIGHT if ns.far_weight is None else ns.far_weight
    res = cmapss.run(
        ns.data,
        ns.out,
        cfg,
        edge=ns.edge,
        smooth=ns.smooth,
        first_end=ns.first_end,
        reference=reference,
        far_weight=far_weight,
    )
    print(json.dumps(res, indent=1))
    return 0


def _sim(ns: argparse.Namespace) -> int:
    from cloud.training import simdata
    from cloud.training.pipeline import distil_edge, train_full
    from shared.features import FeatureSpec
    from shared.models.checkpoint import load_checkpoint

    cfg = _train_config(ns, ns.size)
    if ns.reference_rows is not None:
        if ns.reference_rows < 0:
            raise TrainingError(f"--reference-rows must be >= 0, got {ns.reference_rows}")
        cfg = replace(cfg, reference_rows=ns.reference_rows)
    ckpt = train_full(ns.dataset, cfg, ns.out)
    _, meta = load_checkpoint(ckpt)
    result: dict[str, object] = {"checkpoint": str(ckpt), "metrics": meta.get("metrics")}
    if ns.edge and int(os.environ.get("RANK", "0")) == 0:
        spec = FeatureSpec.from_dict(meta["feature_spec"])
        _, tools, _ = simdata.dataset_windows(ns.dataset, spec=spec, stride=cfg.stride, cap_h=cfg.rul_cap_h)
        edge = distil_edge(ckpt, simdata.merge(tools), cfg)
        result["edge_checkpoint"] = str(edge)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=1, default=str))
    return 0


def _pool(ns: argparse.Namespace) -> int:
    from cloud.training import simdata
    from cloud.training.pool import pool_path, write_pool
    from shared.features import FeatureSpec
    from shared.models.checkpoint import load_checkpoint

    _, meta = load_checkpoint(ns.checkpoint)
    if "feature_spec" not in meta:
        raise TrainingError(f"{ns.checkpoint} carries no feature spec: not a simulator or plant model")
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    _, tools, _ = simdata.dataset_windows(ns.dataset, spec=spec, stride=PipelineConfig().stride)
    out = write_pool(pool_path(ns.checkpoint), simdata.merge(tools), meta["feature_spec"], ns.size)
    print(json.dumps({"pool": str(out)}))
    return 0


def _release(ns: argparse.Namespace) -> int:
    from cloud.training import simdata
    from cloud.training.alert_choice import release_rule
    from cloud.training.pipeline import export_release
    from cloud.training.trainer import predict
    from shared.features import FeatureSpec
    from shared.models.checkpoint import load_checkpoint
    from shared.models.dga import DGA

    model, meta = load_checkpoint(ns.checkpoint)
    if not meta.get("feature_spec") or not isinstance(model, DGA):
        raise TrainingError(f"{ns.checkpoint}: not a DGA checkpoint with a feature spec")
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    _, tools, _ = simdata.dataset_windows(ns.dataset, spec=spec)
    cfg, chosen = PipelineConfig(), {}
    if ns.alert_rule == "choose":
        found = release_rule(ns.dataset, spec, meta, lambda x: predict(model, x)["probs"])
        if found is not None:
            cfg, chosen = replace(cfg, thresholds=found[0]), found[1]
    path, manifest = export_release(
        ns.checkpoint, simdata.merge(tools), ns.out, ns.key, ns.version, ns.parent, cfg, chosen
    )
    print(json.dumps({"artifact": str(path), "size": manifest.size, "sha256": manifest.sha256}, indent=1))
    return 0


def _tuning(ns: argparse.Namespace) -> int:
    from cloud.training.tuning import release_tuning
    from shared.signing import load_private_key

    path, manifest = release_tuning(
        ns.dataset, ns.tool_type, ns.out, load_private_key(ns.key), ns.version, ns.parent
    )
    print(json.dumps({"artifact": str(path), "metrics": manifest.metrics}, indent=1))
    return 0


def _ddp_check(ns: argparse.Namespace) -> int:
    """Two optimiser steps of a tiny DGA on synthetic windows; rank r writes rank<r>.json."""
    import torch

    from cloud.training.trainer import TrainConfig, dist_env, fit
    from cloud.training.windows import WindowSet
    from shared.models.dga import DGA, DGAConfig

    rank, world, _ = dist_env()
    rng = np.random.default_rng(0)  # the same data on every rank; each trains on its shard
    n, t, f = 64, 8, 5
    ws = WindowSet(
        x=rng.normal(size=(n, t, f)).astype(np.float32),
        rul=rng.uniform(0, 10, n).astype(np.float32),
        labels=(rng.uniform(size=(n, 1)) < 0.3).astype(np.float32),
        groups=np.arange(n) % 4,
    )
    torch.manual_seed(0)
    model = DGA(
        DGAConfig(n_features=f, window=t, n_modes=1, d_model=8, n_heads=2, n_layers=1, d_ff=16, rul_cap=10)
    )
    before = float(sum(p.detach().double().sum() for p in model.parameters()))
    # w_name: the naming head outside DDP averages its gradients by hand (every rank must call it)
    cfg = TrainConfig(epochs=1, batch_size=16, patience=1, progress=False, device="cpu", seed=0, w_name=0.5)
    res = fit(model, ws.take(np.arange(48)), ws.take(np.arange(48, 64)), cfg)
    digest = [float(p.detach().double().sum()) for p in res.model.parameters()]
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / f"rank{rank}.json").write_text(
        json.dumps({"rank": rank, "world": world, "before": before, "digest": digest})
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
