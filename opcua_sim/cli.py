"""``fabpm sim serve | export | plot | info | e10``: the fab simulator's command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from datetime import UTC, datetime
from pathlib import Path

from opcua_sim.errors import ScenarioError, SecurityError
from opcua_sim.fab import Fab
from opcua_sim.scenario import Scenario, load_scenario, scale_tools, tag_count, with_seed
from shared.config import read_mapping

_logger = logging.getLogger(__name__)
SECURITY_CHOICES = {
    "none": ("None",),
    "sign": ("None", "Basic256Sha256_Sign"),
    "all": ("None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"),
    "encrypt-only": ("Basic256Sha256_SignAndEncrypt",),
}


def _scenario(ns: argparse.Namespace) -> Scenario:
    sc = load_scenario(ns.scenario)
    if ns.seed is not None:
        sc = with_seed(sc, ns.seed)
    if ns.tools is not None:
        sc = scale_tools(sc, ns.tools)
    if ns.start is not None:
        sc = sc.model_copy(update={"start": ns.start})
    return sc


def _start(text: str) -> datetime:
    """An ISO 8601 time; UTC when it names no zone."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (2026-03-01T00:00Z)") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", type=Path, help="scenario file (YAML or TOML); default: the built-in fab")
    p.add_argument("--tools", type=int, help="scale the fab to N tools (every group in proportion)")
    p.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    p.add_argument("--start", type=_start, help="simulated start time, ISO 8601 (default: the scenario's)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fabpm sim", description="The OPC UA fab simulator.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the OPC UA server")
    _common(serve)
    serve.add_argument("--endpoint", default="opc.tcp://0.0.0.0:4840/fabpm/")
    serve.add_argument("--speed", type=float, default=3600.0, help="simulated seconds per wall second")
    serve.add_argument("--rate", type=float, help="updates per wall second (default: speed/600, 1..10)")
    serve.add_argument(
        "--security",
        choices=sorted(SECURITY_CHOICES),
        default="all",
        help="policies offered: none; sign (+Basic256Sha256 Sign); all (+SignAndEncrypt)",
    )
    serve.add_argument(
        "--cert-dir",
        type=Path,
        default=Path("~/.local/share/fabpm/sim-certs"),
        help="server certificate and key, generated when missing (default: %(default)s)",
    )
    serve.add_argument("--users-file", type=Path, help="TOML or YAML table user = password; enables login")
    serve.add_argument("--no-anonymous", action="store_true", help="require a user name and password")
    serve.add_argument("--truth", type=Path, help="write the ground truth to this JSONL file")
    export = sub.add_parser("export", help="write a labelled run-to-failure data set (no OPC UA)")
    _common(export)
    export.add_argument("--days", type=float, required=True)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--sample-period-s", type=float, default=600.0)
    export.add_argument("--horizon-h", type=float, default=72.0)
    plot = sub.add_parser("plot", help="draw one tool's sensors over a run to failure (PNG)")
    _common(plot)
    plot.add_argument("--tool", help="tool id (default: the first tool with a progressive failure)")
    plot.add_argument("--type", dest="tool_type", default="vacuum_pump", help="tool type to pick from")
    plot.add_argument("--days", type=float, default=30.0)
    plot.add_argument("--out", type=Path, default=Path("docs/img/sim_run_to_failure.png"))
    info = sub.add_parser("info", help="print the fab's size: tools and tags")
    _common(info)
    e10 = sub.add_parser("e10", help="SEMI E10 uptime, MTBF, MTTR and unscheduled downtime of an export")
    e10.add_argument("dataset", type=Path, help="a folder written by fabpm sim export")
    return parser


def main(argv: list[str]) -> int:
    ns = _parser().parse_args(argv)
    if ns.cmd == "e10":
        return _e10(ns.dataset)
    sc = _scenario(ns)
    if ns.cmd == "info":
        kinds: dict[str, int] = {}
        for a in sc.areas:
            for g in a.tools:
                kinds[g.type] = kinds.get(g.type, 0) + g.count
        print(
            json.dumps(
                {
                    "scenario": sc.name,
                    "seed": sc.seed,
                    "tools": sc.n_tools,
                    "tags": tag_count(sc),
                    "by_type": kinds,
                },
                indent=1,
            )
        )
        return 0
    if ns.cmd == "export":
        from opcua_sim.export import export

        info = export(sc, ns.days, ns.out, sample_period_s=ns.sample_period_s, horizon_h=ns.horizon_h)
        print(
            f"wrote {len(info.tools)} tools × {ns.days:g} days to {ns.out} "
            f"({info.extra['failures']} failures, {info.extra['wall_s']} s)"
        )
        return 0
    if ns.cmd == "plot":
        from opcua_sim.plot import plot_run

        path, tool_id = plot_run(sc, ns.days, ns.out, tool_id=ns.tool, tool_type=ns.tool_type)
        print(f"wrote {path} ({tool_id})")
        return 0
    return _serve(ns, sc)


def _e10(folder: Path) -> int:
    """Print E10 figures per tool type and for the fleet, the way fabs state them."""
    from shared import e10
    from shared.dataset import read_info, read_series

    info = read_info(folder)
    by_type: dict[str, list[e10.E10Metrics]] = {}
    for tool in info.tools:
        series = read_series(folder, tool)
        by_type.setdefault(tool.tool_type, []).append(e10.from_series(series.state, info.sample_period_s))
    by_type["fleet"] = [m for ms in list(by_type.values()) for m in ms]
    print("| tools | n | equipment uptime % | MTBF (productive) h | MTTR h | unscheduled down h | failures |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, ms in by_type.items():
        total = e10.pool(ms)
        print(
            f"| {name} | {len(ms)} | {total.equipment_uptime_pct:.2f} | {total.mtbf_productive_h:.1f} | "
            f"{total.mttr_h:.1f} | {total.unscheduled_down_h:.1f} | {total.failures} |"
        )
    return 0


def _log_fleet_e10(fab: Fab) -> None:
    """One line of SEMI E10 figures for the whole fab over the run (on shutdown)."""
    from shared import e10

    m = e10.pool(fab.e10_metrics(t.tool_id) for t in fab.tools)
    _logger.info(
        "fleet over %.1f simulated h: equipment uptime %.2f%%, MTBF(productive) %.1f h, MTTR %.1f h, "
        "unscheduled down %.1f tool-h, %d failures",
        fab.t / 3600.0,
        m.equipment_uptime_pct,
        m.mtbf_productive_h,
        m.mttr_h,
        m.unscheduled_down_h,
        m.failures,
    )


def _users(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        raw = read_mapping(path)
    except Exception as exc:
        raise SecurityError(f"--users-file: {exc}") from exc
    bad = [k for k, v in raw.items() if not isinstance(v, str) or not v]
    if bad:
        raise SecurityError(f"--users-file {path}: each user needs a non-empty password string: {bad}")
    return {str(k): str(v) for k, v in raw.items()}


def _serve(ns: argparse.Namespace, sc: Scenario) -> int:
    from opcua_sim.fab import SimClock
    from opcua_sim.security import SecuritySettings
    from opcua_sim.server import SimServer

    if ns.speed < 0:
        raise ScenarioError(f"--speed: must be ≥ 0, got {ns.speed}")
    policies = SECURITY_CHOICES[ns.security]
    settings = SecuritySettings(
        policies=policies,
        cert_dir=ns.cert_dir.expanduser() if any(p != "None" for p in policies) else None,
        users=_users(ns.users_file),
        allow_anonymous=not ns.no_anonymous,
    )

    async def run() -> None:
        fab = Fab(sc, truth_path=ns.truth)
        server = SimServer(fab, SimClock(ns.speed), endpoint=ns.endpoint, rate_hz=ns.rate, security=settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await server.start()
        print(
            f"fabpm sim: {len(fab.tools)} tools, {tag_count(sc)} tags at {ns.endpoint} "
            f"(speed {ns.speed:g}×, {server.rate_hz:g} Hz, security {ns.security}); Ctrl-C stops",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await server.stop()
            fab.close()
            _logger.info("stopped after %d ticks, %d value changes", server.stats.ticks, server.stats.changes)
            _log_fleet_e10(fab)

    asyncio.run(run())
    return 0
