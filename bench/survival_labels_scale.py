"""What one survival-label pass costs on a year's worth of unlabelled cases (reported, no target).

``cloud/labels.label_survivors`` runs every ``learning.label_survivors_s`` (600 s) and looks at
every unlabelled case, each against the failures and maintenance within a horizon after it. The
cases a maintenance censored stay unlabelled for good, so they pile up and are looked at on every
pass. This fills a fresh database (SQLite file, and PostgreSQL when ``--pg-url`` or
``FABPM_TEST_PG_URL`` is set) with ``--tools`` tools over ``--days`` days: a state event an hour
per tool (the events table the check searches), a maintenance a week, ten censored hard cases
before each, and one case per tool that ran a horizon on (to be labelled); then times two passes.

    .venv/bin/python bench/survival_labels_scale.py [--tools 200] [--days 120]
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
from sqlalchemy import insert

from cloud.labels import label_survivors
from cloud.storage.db import make_engine, migrate
from cloud.storage.models import Case, EventRow, Tool
from cloud.storage.repo import Repo

RESULTS = Path(__file__).resolve().parent / "results" / "cloud.md"
H = 3600.0
DAY = 86400.0


def _case(n: int, tool: str, window_ts: float) -> dict[str, Any]:
    return {
        "case_id": f"c{n}", "msg_id": f"m{n}", "edge_id": "e", "site": "s", "tool_id": tool,
        "tool_type": "cvd", "window_ts": window_ts, "features": b"", "steps": 1, "n_features": 1,
        "edge_prediction": {}, "reasons": [], "model_version": "1", "received_ts": 0.0,
    }  # fmt: skip


def _rows(tools: int, days: int) -> Iterator[tuple[type, list[dict[str, Any]]]]:
    end = days * DAY
    yield Tool, [
        {"tool_id": f"T{t}", "edge_id": "e", "site": "s", "tool_type": "cvd", "summary": {}, "risk": {},
         "last_ts": 0.0, "first_source_ts": 0.0, "last_source_ts": end}
        for t in range(tools)
    ]  # fmt: skip
    n = 0
    for t in range(tools):
        tool = f"T{t}"
        yield EventRow, [
            {"msg_id": f"ev{t}-{k}", "edge_id": "e", "site": "s", "tool_id": tool, "event": "state",
             "state": "productive", "source_ts": k * H, "detail": {}}
            for k in range(days * 24)
        ]  # fmt: skip
        pms, cases = [], []
        for d in range(0, days, 7):
            at = d * DAY + 12 * H
            pms.append({"msg_id": f"pm{t}-{d}", "edge_id": "e", "site": "s", "tool_id": tool,
                        "event": "maintenance", "source_ts": at, "detail": {}})  # fmt: skip
            for c in range(10):  # within the horizon before it: censored, unlabelled for good
                n += 1
                cases.append(_case(n, tool, at - (c + 1) * 6 * H))
        n += 1
        cases.append(_case(n, tool, end - 100 * H))  # ran 100 h on: the pass labels it
        yield EventRow, pms
        yield Case, cases


def measure(url: str, tools: int, days: int) -> tuple[int, int, list[float]]:
    engine = make_engine(url)
    try:
        migrate(engine)
        repo = Repo(engine)
        cases = 0
        with repo.transaction() as s:
            for table, rows in _rows(tools, days):
                s.execute(insert(table), rows)
                cases += len(rows) if table is Case else 0
        times, labelled = [], 0
        for _ in range(2):
            started = time.perf_counter()
            with repo.transaction() as s:
                labelled += label_survivors(s, 72.0, 0.0)
            times.append(time.perf_counter() - started)
        return cases, labelled, times
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", type=int, default=200)
    ap.add_argument("--days", type=int, default=120)
    database_options(ap, "20 tools × 14 days")
    ns = ap.parse_args()
    if ns.quick:
        ns.tools, ns.days, ns.no_record = 20, 14, True
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for kind, url in each_database(ns.pg_url):
        cases, labelled, (first, second) = measure(url, ns.tools, ns.days)
        line = (
            f"| survival labels | `.venv/bin/python bench/survival_labels_scale.py --tools {ns.tools} "
            f"--days {ns.days}` | {kind}: {cases:,} unlabelled cases ({cases - ns.tools:,} censored), "
            f"{ns.tools * ns.days * 24:,} state events; pass 1: {labelled} labelled in {first:.2f} s, "
            f"pass 2 (nothing left to label): {second:.2f} s | {platform.machine()}, 2 cores | {stamp} |"
        )
        print(line)
        if not ns.no_record:
            add_row(RESULTS, line)


if __name__ == "__main__":
    main()
