"""Logging set-up for the command line. Library modules only ever call ``logging.getLogger``."""

import logging
import sys


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Configure the root logger once, from a command-line entry point."""
    fmt = (
        '{"t":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
        if json_lines
        else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries are chatty at INFO; their warnings still show.
    for noisy in ("asyncua", "apscheduler", "uvicorn.access", "httpx", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
