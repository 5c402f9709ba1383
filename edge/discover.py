"""``fabpm edge discover``: browse a server's address space and write a starting edge config.

Looks for tool folders in the layout of ``shared.equipment`` (a folder holding ``Sensors`` whose
variables match the sensor names of a known tool type) anywhere under ``Objects`` up to a depth,
and writes one ``[[tools]]`` entry per tool found, with its browse path. Other vendors' servers
can then be mapped by hand with ``[tools.tags]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from asyncua import Client, Node, ua

from edge.errors import SourceError
from shared.equipment import TOOL_TYPES

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundTool:
    tool_id: str
    tool_type: str
    path: str


def _guess_type(sensor_names: set[str]) -> str | None:
    best, best_hits = None, 0
    for name, ttype in TOOL_TYPES.items():
        hits = len(sensor_names & set(ttype.sensor_names))
        if hits == len(ttype.sensor_names) and hits > best_hits:
            best, best_hits = name, hits
    return best


async def discover(
    endpoint: str, max_depth: int = 5, timeout_s: float = 10.0, max_nodes: int = 20000
) -> list[FoundTool]:
    """Tool folders found under ``Objects`` of the server at ``endpoint``."""
    client = Client(endpoint, timeout=timeout_s, watchdog_intervall=max(10.0, timeout_s))
    try:
        await client.connect()
    except (OSError, TimeoutError, ua.UaError) as exc:
        raise SourceError(f"cannot connect to {endpoint}: {exc!r}") from exc
    found: list[FoundTool] = []
    visited = 0
    try:
        frontier: list[tuple[Node, str]] = [(client.nodes.objects, "Objects")]
        for _ in range(max_depth):
            nxt: list[tuple[Node, str]] = []
            for node, path in frontier:
                children = await node.get_children(nodeclassmask=ua.NodeClass.Object)
                for child in children:
                    visited += 1
                    if visited > max_nodes:
                        _logger.warning("stopped browsing after %d nodes", max_nodes)
                        return found
                    name = str((await child.read_browse_name()).Name)
                    if path == "Objects" and name == "Server":
                        continue
                    child_path = f"{path}/{name}"
                    sensors = await _child(child, "Sensors")
                    if sensors is not None:
                        names = {str((await v.read_browse_name()).Name) for v in await sensors.get_children()}
                        ttype = _guess_type(names)
                        if ttype is not None:
                            found.append(FoundTool(name, ttype, child_path))
                            continue
                    nxt.append((child, child_path))
            frontier = nxt
    finally:
        await client.disconnect()
    return found


async def _child(node: Node, name: str) -> Node | None:
    for child in await node.get_children(nodeclassmask=ua.NodeClass.Object):
        if (await child.read_browse_name()).Name == name:
            return child
    return None


def render_config(endpoint: str, tools: list[FoundTool]) -> str:
    """A TOML config with every found tool; the rest is left at the defaults of ``EdgeConfig``."""
    lines = [
        "# Written by `fabpm edge discover`; see examples/edge.toml for every key.",
        'site = "site1"',
        'edge_id = "edge1"',
        'state_dir = "edge-state"',
        "",
        "[opcua]",
        f'endpoint = "{endpoint}"',
        "",
        "[mqtt]",
        'host = "127.0.0.1"',
        "port = 1883",
        "",
        "[models]",
        '# risk = "models/risk.onnx"',
        '# public_key = "keys/model.pub"',
    ]
    for tool in tools:
        lines += [
            "",
            "[[tools]]",
            f'id = "{tool.tool_id}"',
            f'type = "{tool.tool_type}"',
            f'path = "{tool.path}"',
        ]
    return "\n".join(lines) + "\n"
