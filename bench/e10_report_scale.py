"""What the fleet's SEMI E10 report costs at fleet size (sizing, no target).

``GET /api/e10`` (cloud/e10_report.py) reads every state change of every tool in its window; the
console's Fleet tab asks for it every 5 s, which is why a window's figures are reused for a
minute. This fills a fresh database (SQLite file, and PostgreSQL when ``--pg-url`` or
``FABPM_TEST_PG_URL`` is set) with ``--tools`` tools over ``--days`` days of state changes
(``--changes-per-day``, productive and standby in turn, with a 6 h repair every ``--mtbf-days``;
the simulator's tools change state about 14 times a day, one lot in and out), then times the
report over 30 and 7 days, the plain way (every change walked in Python, which must give the
same figures) over 30 days, and a cached call.

    .venv/bin/python bench/e10_report_scale.py [--tools 1000] [--days 30]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _results import add_row, database_options, each_database
from sqlalchemy import insert, select

from cloud.e10_report import CachedReports, e10_report
from cloud.storage.db import make_engine, migrate
from cloud.storage.models import EventRow, Tool
from cloud.storage.repo import Repo
from shared.e10 import from_transitions

RESULTS = Path(__file__).resolve().parent / "results" / "cloud.md"
H = 3600.0
DAY = 86400.0


def _rows(
    tools: int, days: int, per_day: int, mtbf_days: float
) -> Iterator[tuple[type, list[dict[str, Any]]]]:
    end = days * DAY
    yield Tool, [
        {"tool_id": f"T{t}", "edge_id": "e", "site": "s", "tool_type": "cvd", "summary": {}, "risk": {},
         "last_ts": 0.0, "first_source_ts": 0.0, "last_source_ts": end}
        for t in range(tools)
    ]  # fmt: skip
    step, every = DAY / per_day, max(1, round(per_day * mtbf_days))
    for t in range(tools):
        rows, k, ts = [], 0, (t % 7) * 60.0
        while ts < end:
            k += 1
            failing = k % every == 0  # about one failure per mtbf_days
            state = "unscheduled_down" if failing else ("productive" if k % 2 else "standby")
            rows.append({"msg_id": f"ev{t}-{k}", "edge_id": "e", "site": "s", "tool_id": f"T{t}",
                         "event": "failure" if failing else "state", "state": state, "source_ts": ts,
                         "detail": {}})  # fmt: skip
            ts += 6 * H if failing else step
        yield EventRow, rows


def by_transitions(repo: Repo, now: float, days: float) -> tuple[int, float]:
    """The same fleet figures the plain way, every change fetched and walked in Python
    (``shared.e10.from_transitions``): the reference the SQL is checked and timed against. Every
    tool here reports until ``now`` and has a change before the window."""
    since = now - days * DAY
    changes: dict[str, list[tuple[float, str]]] = {}
    with repo.transaction() as s:
        q = select(EventRow.tool_id, EventRow.source_ts, EventRow.state).where(EventRow.source_ts <= now)
        for tool, ts, state in s.execute(q):
            changes.setdefault(tool, []).append((ts, state))
    failures, down = 0, 0.0
    for seen in changes.values():
        m = from_transitions(seen, now, since)
        failures, down = failures + m.failures, down + m.unscheduled_down_h
    return failures, down


def measure(url: str, ns: argparse.Namespace) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        migrate(engine)
        repo = Repo(engine)
        changes = 0
        with repo.transaction() as s:
            for table, rows in _rows(ns.tools, ns.days, ns.changes_per_day, ns.mtbf_days):
                s.execute(insert(table), rows)
                changes += len(rows) if table is EventRow else 0
        out: dict[str, Any] = {"changes": changes}
        for days in (30, 7):
            started = time.perf_counter()
            report = e10_report(repo, 0.0, days, 90)
            out[f"d{days}_s"] = time.perf_counter() - started
            out[f"d{days}_failures"] = report["fleet"]["failures"]
        started = time.perf_counter()
        failures, down = by_transitions(repo, ns.days * DAY, 30)
        out["python_s"] = time.perf_counter() - started
        fleet = e10_report(repo, 0.0, 30, 90)["fleet"]
        out["agree"] = failures == fleet["failures"] and abs(down - fleet["unscheduled_down_h"]) < 1e-6 * max(
            1, down
        )
        cached = CachedReports(repo, 90)
        cached.get(0.0, 30)
        started = time.perf_counter()
        cached.get(0.0, 30)
        out["cached_s"] = time.perf_counter() - started
        return out
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--changes-per-day", type=int, default=24)
    ap.add_argument("--mtbf-days", type=float, default=10.0)
    database_options(ap, "20 tools × 14 days")
    ns = ap.parse_args()
    if ns.quick:
        ns.tools, ns.days, ns.no_record = 20, 14, True
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for kind, url in each_database(ns.pg_url):
        m = measure(url, ns)
        line = (
            f"| E10 report | `.venv/bin/python bench/e10_report_scale.py --tools {ns.tools} "
            f"--days {ns.days} --changes-per-day {ns.changes_per_day}` | "
            f"{kind}: {m['changes']:,} state changes; "
            f"30 days: {m['d30_s']:.2f} s ({m['d30_failures']} failures) against {m['python_s']:.2f} s "
            f"for every change walked in Python ({m['python_s'] / m['d30_s']:.1f}×; same figures: "
            f"{'yes' if m['agree'] else 'NO'}), 7 days: {m['d7_s']:.2f} s, "
            f"cached: {1000 * m['cached_s']:.2f} ms | {platform.machine()}, 2 cores | {stamp} |"
        )
        print(line)
        if not ns.no_record:
            add_row(RESULTS, line)


if __name__ == "__main__":
    main()
