"""``fabpm edge discover`` against the real simulator: every tool found with its type and path, and
each sub-fab tool's host read from its ``HostTool`` property into a config that loads."""

from __future__ import annotations

from pathlib import Path

from edge.config import load_edge_config
from edge.discover import discover, render_config
from opcua_sim.testing import running_sim


async def test_discover_fills_in_the_host_of_each_subfab_tool(tmp_path: Path):
    async with running_sim(tools=12, seed=3, speed=0) as sim:
        found = await discover(sim.endpoint, timeout_s=30.0)
    tools = sim.fab.tools
    hosts = {t.tool_id: t.host.tool_id for t in tools if t.host is not None}
    assert hosts, "the scenario has sub-fab tools serving process tools"
    assert {(f.tool_id, f.tool_type) for f in found} == {(t.tool_id, t.tt.tool.name) for t in tools}
    assert {f.tool_id: f.host for f in found if f.host is not None} == hosts
    path = tmp_path / "edge.toml"
    path.write_text(render_config(sim.endpoint, found))
    cfg = load_edge_config(path)
    assert {t.id: t.host for t in cfg.tools if t.host is not None} == hosts
    # A host that discover did not find (not browsed, another server) is left as a comment: the
    # config only accepts a configured tool as host.
    partial = [f for f in found if f.tool_id not in set(hosts.values())]
    path.write_text(render_config(sim.endpoint, partial))
    assert "# host = " in path.read_text()
    assert all(t.host is None for t in load_edge_config(path).tools)
