"""Shared by the benchmark scripts: append a row to a results table in ``bench/results/``; the
options and the databases (SQLite, and PostgreSQL when given) of the storage sizing benchmarks."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cloud.testing import fresh_database


def add_row(results: Path, line: str) -> None:
    """Add a row to the results table (before the notes, when the file has them)."""
    results.parent.mkdir(parents=True, exist_ok=True)
    text = results.read_text() if results.exists() else ""
    head, sep, notes = text.partition("\n## Notes\n")
    results.write_text(
        head.rstrip("\n") + "\n" + line + "\n" + ("\n" + sep.lstrip("\n") + notes if sep else "")
    )


def database_options(ap: argparse.ArgumentParser, quick: str) -> None:
    """``--pg-url`` (default ``FABPM_TEST_PG_URL``), ``--no-record`` and ``--quick`` (``quick``
    says what it runs; it records nothing)."""
    ap.add_argument("--pg-url", default=os.environ.get("FABPM_TEST_PG_URL"))
    ap.add_argument("--no-record", action="store_true", help="print only; leave bench/results alone")
    ap.add_argument("--quick", action="store_true", help=f"{quick}, not recorded: that it runs")


def each_database(pg_url: str | None) -> Iterator[tuple[str, str]]:
    """(kind, URL) of a fresh SQLite file, then of a fresh PostgreSQL schema when ``pg_url`` is
    given; each is removed once the loop moves on."""
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ["sqlite"] + (["postgres"] if pg_url else []):
            with fresh_database(kind, Path(tmp), pg_url) as url:
                yield kind, url
