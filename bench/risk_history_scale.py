"""The risk history at fleet size: what the console's chart and the hourly prune cost.

Every telemetry message (about one a minute per tool) adds a row to ``risk_points``: 1.44 M rows
a day for 1,000 tools. This fills a fresh database (SQLite file, and PostgreSQL when
``--pg-url`` or ``FABPM_TEST_PG_URL`` is set) with ``--tools`` × ``--days`` of one-a-minute points
(two modes each), then measures, on each database:

* the chart's query (``Repo.risk_history``, thinned to 300 points) for one tool over 72 h and over
  30 d (that tool gets 30 days of points);
* the hourly prune of one hour's rows (the steady state) and of ``--backlog-h`` hours at once (the
  first prune after a cloud was down, or after ``risk_history_days`` was lowered), each in chunks
  (``Repo.prune_risk``'s default) and as one DELETE, in the same run, and how long an ingest write
  waits meanwhile (a telemetry row inserted from another thread while the prune runs: on SQLite
  one writer at a time, so that wait is the ingest stall);
* the table's size on disk (PostgreSQL: table and indexes).

    .venv/bin/python bench/risk_history_scale.py [--tools 1000] [--days 1] [--backlog-h 8]
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from _results import add_row
from sqlalchemy import insert, text

from cloud.storage.db import make_engine, migrate
from cloud.storage.models import RiskPoint
from cloud.storage.repo import Repo
from cloud.testing import fresh_database

DEFAULT_CHUNK = inspect.signature(Repo.prune_risk).parameters["chunk"].default

RESULTS = Path(__file__).resolve().parent / "results" / "cloud.md"
MINUTE = 60.0


CHARTED = "tool-charted"  # the tool whose chart is timed: 30 days of points, whatever --days


def fill(repo: Repo, tools: int, days: float, t_end: float) -> int:
    """One point a minute per tool over ``days`` up to ``t_end``, and 30 days of them for
    ``CHARTED``; rows written."""
    rng = np.random.default_rng(0)
    n = 0
    chunk: list[dict] = []
    charted = 30 * 24 * 60
    with repo.engine.begin() as conn:
        for m in range(charted):
            if m < charted - int(days * 24 * 60):  # before the fleet's days: the charted tool only
                ids = [CHARTED]
            else:
                ids = [CHARTED, *(f"tool-{k:04d}" for k in range(tools))]
            ts = t_end - (charted - m) * MINUTE
            wear = rng.uniform(0, 1, len(ids))
            for k, tool in enumerate(ids):
                risk = {"wear": float(wear[k]), "leak": 0.01}
                chunk.append({"tool_id": tool, "ts": ts, "source_ts": ts, "risk": risk})
            if len(chunk) >= 50_000:
                conn.execute(insert(RiskPoint), chunk)
                n += len(chunk)
                chunk = []
                print(f"  {n:,} rows", end="\r", flush=True)
        if chunk:
            conn.execute(insert(RiskPoint), chunk)
            n += len(chunk)
    print()
    return n


def timed(fn, repeat: int = 5) -> float:
    """Median seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def prune_with_ingest(repo: Repo, before_ts: float, chunk: int) -> tuple[int, float, float]:
    """(rows pruned, prune seconds, the longest a one-row insert waited while it ran)."""
    done = threading.Event()
    waits: list[float] = []

    def ingest() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            with repo.transaction() as s:
                now = time.time()
                s.add(RiskPoint(tool_id="tool-live", ts=now, source_ts=now, risk={"wear": 0.1}))
            waits.append(time.perf_counter() - t0)
            time.sleep(0.01)

    writer = threading.Thread(target=ingest, daemon=True)
    writer.start()
    time.sleep(0.1)
    t0 = time.perf_counter()
    gone = repo.prune_risk(before_ts, chunk)
    took = time.perf_counter() - t0
    done.set()
    writer.join(timeout=60)
    return gone, took, max(waits) if waits else float("nan")


def size_mb(repo: Repo, url: str) -> float:
    if url.startswith("sqlite"):
        return Path(url.removeprefix("sqlite:///")).stat().st_size / 1e6
    with repo.engine.connect() as conn:
        return float(conn.execute(text("SELECT pg_total_relation_size('risk_points')")).scalar() or 0) / 1e6


def measure(kind: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = make_engine(url)
    migrate(engine)
    repo = Repo(engine)
    t_end = time.time()
    t0 = time.perf_counter()
    rows = fill(repo, args.tools, args.days, t_end)
    fill_s = time.perf_counter() - t0
    if kind == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE risk_points"))
    out: dict[str, Any] = {"rows": rows, "fill_s": fill_s, "size_mb": size_mb(repo, url)}
    out["q72h_s"] = timed(lambda: repo.risk_history(CHARTED, t_end - 72 * 3600, 300))
    out["q30d_s"] = timed(lambda: repo.risk_history(CHARTED, t_end - 30 * 86400 - 1, 300))
    # The charted tool's points before the fleet's days go now, so that the timed prunes cut what
    # steady state would: the fleet's oldest hour, then a backlog of hours.
    oldest = t_end - args.days * 86400
    repo.prune_risk(oldest)
    # Each prune cuts the next slice of the fleet's oldest hours: in chunks (Repo's default) and
    # as one DELETE (a chunk larger than the table), the same number of hours each.
    cut = oldest
    for label, hours in (("1h", 1.0), (f"{args.backlog_h:g}h", args.backlog_h)):
        for how, chunk in (("chunked", DEFAULT_CHUNK), ("one", 10**12)):
            cut += hours * 3600
            gone, took, wait = prune_with_ingest(repo, cut, chunk)
            out[f"{label}_{how}"] = (gone, took, wait)
    engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tools", type=int, default=1000)
    ap.add_argument("--days", type=float, default=1.0, help="days of history, one point a minute per tool")
    ap.add_argument("--backlog-h", type=float, default=8.0, help="hours pruned at once after a pause")
    ap.add_argument("--pg-url", default=os.environ.get("FABPM_TEST_PG_URL"))
    ap.add_argument("--no-record", action="store_true", help="do not add a row to bench/results/cloud.md")
    args = ap.parse_args()
    if 2 * (args.backlog_h + 1) >= args.days * 24:
        raise SystemExit(
            f"2 × (--backlog-h {args.backlog_h} + 1 h) must be less than --days {args.days} × 24 h"
        )
    targets: list[tuple[str, str | None]] = [("sqlite", None)]
    if args.pg_url:
        targets.append(("postgresql", args.pg_url))
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, pg in targets:
            print(f"{kind}: {args.tools} tools × {args.days:g} days")
            with fresh_database(kind, Path(tmp), pg) as url:
                r = measure(kind, url, args)
            prunes = "; ".join(
                f"{label} ({r[f'{label}_chunked'][0]:,} / {r[f'{label}_one'][0]:,} rows): chunked "
                f"{r[f'{label}_chunked'][1]:.2f} s, an ingest write waited "
                f"≤ {r[f'{label}_chunked'][2]:.2f} s; "
                f"one DELETE {r[f'{label}_one'][1]:.2f} s, waited ≤ {r[f'{label}_one'][2]:.2f} s"
                for label in ("1h", f"{args.backlog_h:g}h")
            )
            line = (
                f"{kind}: {r['rows']:,} rows ({r['size_mb']:.0f} MB, filled in {r['fill_s']:.0f} s); "
                f"chart query 72 h {r['q72h_s'] * 1e3:.0f} ms, 30 d {r['q30d_s'] * 1e3:.0f} ms; "
                f"prune {prunes}"
            )
            print(line)
            parts.append(line)
    if not args.no_record:
        opts = f"--tools {args.tools} --days {args.days:g} --backlog-h {args.backlog_h:g}"
        cmd = f"`.venv/bin/python bench/risk_history_scale.py {opts}`"
        add_row(
            RESULTS,
            f"| risk history | {cmd} | {'; '.join(parts)} | {platform.machine()}, {os.cpu_count()} cores "
            f"| {datetime.now(UTC):%Y-%m-%d} |",
        )


if __name__ == "__main__":
    main()
