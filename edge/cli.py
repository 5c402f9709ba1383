"""``fabpm edge run --config F`` and ``fabpm edge discover --endpoint URL --out F``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path

from edge.config import load_edge_config
from edge.errors import EdgeError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fabpm edge", description="The fabpm edge daemon.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, required=True, help="edge config (TOML or YAML)")
    disc = sub.add_parser("discover", help="browse an OPC UA server and write a starting config")
    disc.add_argument("--endpoint", required=True, help="opc.tcp://host:port/path")
    disc.add_argument("--out", type=Path, required=True, help="the config file to write")
    disc.add_argument("--depth", type=int, default=5)
    ns = parser.parse_args(argv)
    if ns.cmd == "run":
        return asyncio.run(_run(ns.config))
    return asyncio.run(_discover(ns.endpoint, ns.out, ns.depth))


async def _run(config: Path) -> int:
    from edge.daemon import EdgeDaemon

    cfg = load_edge_config(config, os.environ)
    daemon = EdgeDaemon(cfg)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
    try:
        await daemon.run()
    except asyncio.CancelledError:
        return 0
    return 0


async def _discover(endpoint: str, out: Path, depth: int) -> int:
    from edge.discover import discover, render_config

    tools = await discover(endpoint, max_depth=depth)
    if not tools:
        raise EdgeError(f"no tool folders found under Objects of {endpoint}")
    out.write_text(render_config(endpoint, tools))
    print(f"wrote {out}: {len(tools)} tools")
    return 0
