"""``fabpm <command> ...``: one console script, sub-commands imported only when used.

Each sub-command lives with the package it drives and exposes ``main(argv) -> int``; importing
them lazily keeps ``fabpm edge`` free of torch and ``fabpm sim`` free of onnxruntime.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys

from shared.errors import FabpmError
from shared.logsetup import setup_logging

COMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("opcua_sim.cli", "the OPC UA fab simulator: serve, export, plot"),
    "edge": ("edge.cli", "the edge daemon: run, discover"),
    "cloud": ("cloud.cli", "the cloud service: run, keys, migrate"),
    "train": ("cloud.training.cli", "train the DGA models on C-MAPSS or a simulator export"),
    "demo": ("fabpm.demo", "the whole loop on this machine: broker, simulator, edge, cloud, console"),
    "bench": ("fabpm.bench", "run the benchmarks in bench/"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fabpm", description="Predictive maintenance for OPC UA fabs.")
    parser.add_argument("--log-level", default=os.environ.get("FABPM_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command", help=_command_help())
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command (see fabpm CMD -h)")
    ns = parser.parse_args(argv)
    setup_logging(ns.log_level, ns.log_json)
    module_name = COMMANDS[ns.command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(
            f"fabpm {ns.command}: not installed here ({exc.name} is missing); "
            f"install the matching extra, e.g. pip install 'fabpm[all]'",
            file=sys.stderr,
        )
        return 2
    try:
        code = int(module.main(ns.args) or 0)
        sys.stdout.flush()  # here, where a reader that went away is caught below, not at exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a socket or a child's pipe: a real error, with its traceback
        # The reader went away (``fabpm cloud report | head``): the shell's way is to stop
        # quietly. Output still buffered would fail again at exit, so it goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # as a shell reports a command that SIGPIPE ended
    except FabpmError as exc:
        print(f"fabpm {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _stdout_closed() -> bool:
    """Whether standard output is a pipe nobody reads any more (poll says POLLERR for it)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if not hasattr(select, "poll"):  # not Linux: take it for standard output's
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _command_help() -> str:
    return "; ".join(f"{name}: {text}" for name, (_, text) in sorted(COMMANDS.items()))


if __name__ == "__main__":
    raise SystemExit(main())
