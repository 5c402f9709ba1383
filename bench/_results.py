"""Shared by the benchmark scripts: append a row to a results table in ``bench/results/``."""

from __future__ import annotations

from pathlib import Path


def add_row(results: Path, line: str) -> None:
    """Add a row to the results table (before the notes, when the file has them)."""
    results.parent.mkdir(parents=True, exist_ok=True)
    text = results.read_text() if results.exists() else ""
    head, sep, notes = text.partition("\n## Notes\n")
    results.write_text(
        head.rstrip("\n") + "\n" + line + "\n" + ("\n" + sep.lstrip("\n") + notes if sep else "")
    )
