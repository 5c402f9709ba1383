"""``fabpm bench [ID ...] [--quick]``: run the benchmark scripts in ``bench/`` one after another.

Each benchmark is a script ``bench/<id>_<name>.py`` that prints its figures and appends them to its
results file; this runner only finds and starts them, so each one also runs on its own.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from shared.errors import FabpmError

_logger = logging.getLogger(__name__)


def bench_dir() -> Path:
    """``bench/`` of the checkout this package runs from (an editable install)."""
    folder = Path(__file__).resolve().parent.parent / "bench"
    if not folder.is_dir():
        raise FabpmError(f"no bench/ folder beside {Path(__file__).resolve().parent}: run from a checkout")
    return folder


def find(ids: list[str], folder: Path) -> list[Path]:
    scripts = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    if not ids:
        return scripts
    chosen: list[Path] = []
    for wanted in ids:
        w = wanted.lower()
        # "b1" is b1_cmapss and b1_cv, not b10_faults: an id matches up to an underscore
        hits = [p for p in scripts if p.stem.lower() == w or p.stem.lower().startswith(w + "_")]
        hits = hits or [p for p in scripts if p.stem.lower().startswith(w)]
        if not hits:
            known = ", ".join(p.stem for p in scripts) or "none"
            raise FabpmError(f"no benchmark matches {wanted!r}; known: {known}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def has_quick(script: Path) -> bool:
    """Whether the script takes ``--quick`` (small sizes): its source names the flag as a string."""
    return '"--quick"' in script.read_text(encoding="utf-8")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fabpm bench", description=__doc__)
    parser.add_argument("ids", nargs="*", help="benchmark ids or name prefixes, e.g. b1 b3 (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that each runs")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ns = parser.parse_args(argv)
    scripts = find(ns.ids, bench_dir())
    if ns.list:
        for p in scripts:
            print(p.stem)
        return 0
    failed = []
    for script in scripts:
        if ns.quick and not has_quick(script):
            # Analysis helpers (b2_diagnose reads a run's folder) and full-size-only sizings: a
            # quick run that started them at full size would not be quick.
            _logger.info("%s has no quick mode: left out of a --quick run", script.stem)
            continue
        cmd = [sys.executable, str(script)] + (["--quick"] if ns.quick else [])
        _logger.info("running %s", " ".join(cmd))
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(script.stem)
    if failed:
        _logger.error("benchmarks failed: %s", ", ".join(failed))
        return 1
    return 0
