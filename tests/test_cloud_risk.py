"""Each tool's risk history from telemetry: stored, thinned for a chart with its peaks kept, pruned
(real databases: SQLite; PostgreSQL when CI has it)."""

from __future__ import annotations

import pytest

from cloud.ingest import Ingestor
from cloud.metrics import CloudMetrics
from cloud.storage import Repo
from cloud.storage.models import Tool
from shared.messages import Telemetry
from shared.topics import Kind, topic


def _telemetry(ts: float, risk: dict[str, float], tool: str = "etch-01", **more: str) -> bytes:
    msg = Telemetry(
        edge_id="edge-1", site="fab1", tool_id=tool, period_s=60, summary={}, risk=risk, ts=ts, **more
    )
    return msg.to_bytes()


def test_risk_is_kept_per_tool_thinned_with_its_peaks_and_pruned(repo: Repo):
    ingest = Ingestor(repo, CloudMetrics())
    t0 = 1_000_000.0
    for i in range(1000):  # a reading a minute for about 17 hours; one spike at minute 500
        wear = 0.9 if i == 500 else 0.1 + i / 10_000
        assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), _telemetry(t0 + 60 * i, {"wear": wear}))
    assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), _telemetry(t0, {"seal": 0.5}, "cvd-01"))
    assert ingest.handle(topic("fab1", "edge-1", Kind.TELEMETRY), _telemetry(t0, {}, "cvd-01"))  # no risk

    full = repo.risk_history("etch-01", t0, max_points=2000)
    assert len(full) == 1000 and full[0] == (t0, {"wear": 0.1})
    chart = repo.risk_history("etch-01", t0, max_points=100)
    assert 90 <= len(chart) <= 100
    assert [ts for ts, _ in chart] == sorted(ts for ts, _ in chart)
    assert max(r["wear"] for _, r in chart) == pytest.approx(0.9)  # the spike survives the thinning
    assert chart[-1][0] == full[-1][0]
    assert repo.risk_history("etch-01", t0 + 60 * 990, max_points=100) == full[990:]
    assert len(repo.risk_history("cvd-01", 0, 100)) == 1

    # In chunks of 64 (many transactions, the last one short): etch-01's first 900 minutes and
    # cvd-01's point, none of the newer ones.
    assert repo.prune_risk(t0 + 60 * 900, chunk=64) == 900 + 1
    assert len(repo.risk_history("etch-01", 0, 2000)) == 100
    assert repo.prune_risk(t0 + 60 * 950, chunk=50) == 50  # exactly one full chunk, then an empty one
    assert repo.risk_history("etch-01", 0, 2000) == full[950:]
    with pytest.raises(ValueError, match="chunk"):
        repo.prune_risk(t0, chunk=0)


def _type(repo: Repo, tool_id: str) -> str | None:
    with repo.transaction() as s:
        tool = s.get(Tool, tool_id)
        assert tool is not None
        return tool.tool_type


def test_telemetry_tells_the_cloud_a_tools_type(repo: Repo):
    """A tool's type arrives with its telemetry (before any hard case); telemetry from an older
    edge, without it, leaves the known type as it is."""
    ingest = Ingestor(repo, CloudMetrics())
    where = topic("fab1", "edge-1", Kind.TELEMETRY)
    assert ingest.handle(where, _telemetry(1000.0, {"wear": 0.1}, "pump-01"))
    assert _type(repo, "pump-01") is None
    ingest = Ingestor(repo, CloudMetrics())  # a new worker: nothing cached as fresh
    assert ingest.handle(where, _telemetry(2000.0, {"wear": 0.1}, "pump-01", tool_type="vacuum_pump"))
    assert _type(repo, "pump-01") == "vacuum_pump"
    ingest = Ingestor(repo, CloudMetrics())
    assert ingest.handle(where, _telemetry(3000.0, {"wear": 0.1}, "pump-01"))
    assert _type(repo, "pump-01") == "vacuum_pump"
