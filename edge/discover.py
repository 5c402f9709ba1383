"""``fabpm edge discover``: browse a server's address space and write a starting edge config.

Looks for tool folders in the layout of ``shared.equipment`` (a folder holding ``Sensors`` whose
variables match the sensor names of a known tool type) anywhere under ``Objects`` up to a depth,
and writes one ``[[tools]]`` entry per tool found, with its browse path. A sub-fab tool (pump,
abatement) whose object has a ``HostTool`` property (String: the id of the process tool it serves,
as the simulator publishes it) gets ``host = "..."``, which the eco rule needs; the properties are
found and read in batched TranslateBrowsePaths and Read calls. Other vendors' servers can then be
mapped by hand with ``[tools.tags]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from asyncua import Client, Node, ua

from edge.errors import SourceError
from edge.source import close_client, connect_client
from shared.equipment import TOOL_TYPES

_logger = logging.getLogger(__name__)


HOST_PROPERTY = "HostTool"
_CHUNK = 1000  # paths or values per request


@dataclass(frozen=True)
class FoundTool:
    tool_id: str
    tool_type: str
    path: str
    host: str | None = None  # sub-fab tools: the process tool they serve, when the server says


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
        await connect_client(client, timeout_s)
    except (OSError, TimeoutError, ua.UaError) as exc:
        raise SourceError(f"cannot connect to {endpoint}: {exc!r}") from exc
    try:
        found, nodes = await _browse(client, max_depth, max_nodes)
        hosts = await _hosts(client, [w for f, w in zip(found, nodes, strict=True) if _is_subfab(f)])
        return [
            FoundTool(f.tool_id, f.tool_type, f.path, hosts.get(w[0])) if _is_subfab(f) else f
            for f, w in zip(found, nodes, strict=True)
        ]
    finally:
        await close_client(client)


def _is_subfab(tool: FoundTool) -> bool:
    return TOOL_TYPES[tool.tool_type].subfab


# A found tool's NodeId and the namespace index of its browse name.
_Where = tuple[ua.NodeId, int]


async def _browse(client: Client, max_depth: int, max_nodes: int) -> tuple[list[FoundTool], list[_Where]]:
    """Tool folders breadth-first under ``Objects``, with where they are."""
    found: list[FoundTool] = []
    nodes: list[_Where] = []
    visited = 0
    frontier: list[tuple[Node, str]] = [(client.nodes.objects, "Objects")]
    for _ in range(max_depth):
        nxt: list[tuple[Node, str]] = []
        for node, path in frontier:
            children = await node.get_children(nodeclassmask=ua.NodeClass.Object)
            for child in children:
                visited += 1
                if visited > max_nodes:
                    _logger.warning("stopped browsing after %d nodes", max_nodes)
                    return found, nodes
                qname = await child.read_browse_name()
                name = str(qname.Name)
                if path == "Objects" and name == "Server":
                    continue
                child_path = f"{path}/{name}"
                sensors = await _child(child, "Sensors")
                if sensors is not None:
                    names = {str((await v.read_browse_name()).Name) for v in await sensors.get_children()}
                    ttype = _guess_type(names)
                    if ttype is not None:
                        found.append(FoundTool(name, ttype, child_path))
                        nodes.append((child.nodeid, qname.NamespaceIndex))
                        continue
                nxt.append((child, child_path))
        frontier = nxt
    return found, nodes


async def _hosts(client: Client, tools: list[_Where]) -> dict[ua.NodeId, str]:
    """The ``HostTool`` property of each tool object that has one (in the tool's namespace)."""
    paths: list[ua.BrowsePath] = []
    for node, ns in tools:
        # "." follows Aggregates references, HasProperty among them.
        rel = ua.RelativePath.from_string(f".{ns}:{HOST_PROPERTY}")
        paths.append(ua.BrowsePath(StartingNode=node, RelativePath=rel))
    props: list[tuple[ua.NodeId, ua.NodeId]] = []
    for start in range(0, len(paths), _CHUNK):
        results = await client.uaclient.translate_browsepaths_to_nodeids(paths[start : start + _CHUNK])
        for (node, _), res in zip(tools[start : start + _CHUNK], results, strict=True):
            if res.StatusCode.is_good() and res.Targets:
                target = res.Targets[0].TargetId
                props.append((node, ua.NodeId(target.Identifier, target.NamespaceIndex)))
    hosts: dict[ua.NodeId, str] = {}
    for start in range(0, len(props), _CHUNK):
        batch = props[start : start + _CHUNK]
        values = await client.uaclient.read_attributes([nid for _, nid in batch], ua.AttributeIds.Value)
        for (node, _), dv in zip(batch, values, strict=True):
            value = dv.Value.Value if dv.Value is not None else None
            good = dv.StatusCode is None or dv.StatusCode.is_good()
            if good and isinstance(value, str) and value:
                hosts[node] = value
    return hosts


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
    ids = {tool.tool_id for tool in tools}
    for tool in tools:
        lines += [
            "",
            "[[tools]]",
            f'id = "{tool.tool_id}"',
            f'type = "{tool.tool_type}"',
            f'path = "{tool.path}"',
        ]
        if tool.host is not None and tool.host in ids:
            lines.append(f'host = "{tool.host}"')
        elif tool.host is not None:
            # The config only accepts a configured tool as host (the eco rule watches its state).
            lines.append(f'# host = "{tool.host}"  # not found by discover: add that tool first')
    return "\n".join(lines) + "\n"
