"""The simulator's OPC UA address space, built in batches as a tree of small folders.

Layout (``shared.equipment``, DESIGN.md §4), NodeIds are strings of the browse path::

    Objects/Fab/{area}/{tool}/Sensors/{sensor}     AnalogItemType Double, EngineeringUnits, EURange
    Objects/Fab/{area}/{tool}/Setpoints/{sp}       AnalogItemType Double, writable, EURange enforced
    Objects/Fab/{area}/{tool}/Counters/{counter}   Double (wafers, lots, energy_kwh,
                                                   last_lot_yield, last_lot_energy_kwh)
    Objects/Fab/{area}/{tool}/State                String, SEMI E10 state
    Objects/Fab/{area}/{tool}/Recipe               String
    Objects/Fab/{area}/{tool}/HostTool             property String, the id of the process tool a
                                                   sub-fab tool serves (sub-fab tools with a host)
    Objects/Fab/{area}/{tool}/InjectFault(mode)    method (shared node, referenced by every tool)
    Objects/Fab/{area}/{tool}/PerformMaintenance() method
    Objects/FabSimulator/{SimTime,Seed,Scenario,Tools,ValueChanges}  simulator facts

asyncua adds a node to a folder in time that grows with the folder's size (FACTS.md: the 4,000th
sibling costs about 17 ms), so no folder holds more than 200 tools (a bigger area becomes bays
``{area}-2``, ...), and nodes go in with one ``add_nodes`` call per tool, not one per node.
"""

# asyncua annotates with NewTypes (UInt32, Int16, DateTime) that reject the plain int/datetime it
# accepts at run time; checking those arguments here would only add casts.
# mypy: disable-error-code="arg-type"

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from asyncua import Server, ua
from asyncua.server.address_space import AttributeValue

from opcua_sim.fab import Fab
from opcua_sim.scenario import SIM_COUNTERS
from opcua_sim.tool import Tool

UNITS_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
# Counters: unit and EURange (what a value can be, not what it is now).
COUNTER_SPECS: dict[str, tuple[str, float, float]] = {
    "wafers": ("", 0.0, 1e9),
    "lots": ("", 0.0, 1e8),
    "energy_kwh": ("kWh", 0.0, 1e12),
    "last_lot_yield": ("%", 0.0, 100.0),
    "last_lot_energy_kwh": ("kWh", 0.0, 1e5),
}
_READ = ua.AccessLevel.CurrentRead.mask
_READ_WRITE = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.CurrentWrite.mask


@dataclass
class ToolNodes:
    """The nodes of one tool, with direct handles on their Value attributes (fast updates)."""

    tool: Tool
    node: ua.NodeId
    sensors: list[AttributeValue] = field(default_factory=list)
    setpoints: list[AttributeValue] = field(default_factory=list)
    setpoint_ids: list[ua.NodeId] = field(default_factory=list)
    counters: list[AttributeValue] = field(default_factory=list)
    state: AttributeValue | None = None
    recipe: AttributeValue | None = None


@dataclass
class AddressSpace:
    idx: int
    tools: list[ToolNodes]
    by_node: dict[ua.NodeId, ToolNodes]
    setpoint_nodes: dict[ua.NodeId, tuple[ToolNodes, int]]
    sim_time: AttributeValue
    value_changes: AttributeValue  # FabSimulator/ValueChanges: values written since start (benchmarks)
    event_type: ua.NodeId


def _qn(name: str, idx: int) -> ua.QualifiedName:
    return ua.QualifiedName(name, idx)


def _object(nodeid: ua.NodeId, parent: ua.NodeId, name: str, idx: int, folder: bool) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = _qn(name, idx)
    item.NodeClass = ua.NodeClass.Object
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.Organizes if folder else ua.ObjectIds.HasComponent)
    item.TypeDefinition = ua.NodeId(ua.ObjectIds.FolderType if folder else ua.ObjectIds.BaseObjectType)
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.EventNotifier = 0
    item.NodeAttributes = attrs
    return item


def _variable(
    nodeid: ua.NodeId,
    parent: ua.NodeId,
    name: str,
    idx: int,
    value: ua.Variant,
    dtype: int,
    access: int,
    type_def: int = ua.ObjectIds.BaseDataVariableType,
    prop: bool = False,
) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = _qn(name, 0 if prop else idx)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasProperty if prop else ua.ObjectIds.HasComponent)
    item.TypeDefinition = ua.NodeId(ua.ObjectIds.PropertyType if prop else type_def)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Value = value
    attrs.DataType = ua.NodeId(dtype)
    attrs.ValueRank = -1
    attrs.AccessLevel = access
    attrs.UserAccessLevel = access
    item.NodeAttributes = attrs
    return item


def _analog(
    items: list[ua.AddNodesItem],
    nodeid: str,
    parent: ua.NodeId,
    name: str,
    idx: int,
    value: float,
    unit: str,
    lo: float,
    hi: float,
    writable: bool,
) -> ua.NodeId:
    nid = ua.NodeId(nodeid, idx)
    items.append(
        _variable(
            nid,
            parent,
            name,
            idx,
            ua.Variant(float(value), ua.VariantType.Double),
            ua.ObjectIds.Double,
            _READ_WRITE if writable else _READ,
            ua.ObjectIds.AnalogItemType,
        )
    )
    rng = ua.Range(Low=float(lo), High=float(hi))
    items.append(
        _variable(
            ua.NodeId(f"{nodeid}.EURange", idx),
            nid,
            "EURange",
            idx,
            ua.Variant(rng, ua.VariantType.ExtensionObject),
            ua.ObjectIds.Range,
            _READ,
            prop=True,
        )
    )
    eu = ua.EUInformation(
        NamespaceUri=UNITS_URI,
        UnitId=-1,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(unit),
    )
    items.append(
        _variable(
            ua.NodeId(f"{nodeid}.EngineeringUnits", idx),
            nid,
            "EngineeringUnits",
            idx,
            ua.Variant(eu, ua.VariantType.ExtensionObject),
            ua.ObjectIds.EUInformation,
            _READ,
            prop=True,
        )
    )
    return nid


async def _add(server: Server, items: list[ua.AddNodesItem]) -> None:
    for result in await server.iserver.isession.add_nodes(items):
        result.StatusCode.check()


MethodFn = Callable[..., Awaitable[list[ua.Variant]]]


async def build(server: Server, fab: Fab, idx: int, inject: MethodFn, maintain: MethodFn) -> AddressSpace:
    """Create the whole tree for ``fab`` in namespace ``idx``; methods call ``inject``/``maintain``."""
    objects = ua.NodeId(ua.ObjectIds.ObjectsFolder)
    sim = ua.NodeId("FabSimulator", idx)
    fab_node = ua.NodeId("Fab", idx)
    items = [_object(sim, objects, "FabSimulator", idx, False), _object(fab_node, objects, "Fab", idx, True)]
    now = ua.Variant(fab.time_at(fab.t), ua.VariantType.DateTime)
    items.append(
        _variable(
            ua.NodeId("FabSimulator/SimTime", idx), sim, "SimTime", idx, now, ua.ObjectIds.DateTime, _READ
        )
    )
    facts = {
        "Seed": fab.scenario.seed,
        "Scenario": fab.scenario.name,
        "Tools": len(fab.tools),
        "ValueChanges": 0,
    }
    for name, value in facts.items():
        vt = ua.VariantType.String if isinstance(value, str) else ua.VariantType.Int64
        dt = ua.ObjectIds.String if isinstance(value, str) else ua.ObjectIds.Int64
        items.append(
            _variable(
                ua.NodeId(f"FabSimulator/{name}", idx), sim, name, idx, ua.Variant(value, vt), dt, _READ
            )
        )
    for area in dict.fromkeys(t.area for t in fab.tools):
        items.append(_object(ua.NodeId(f"Fab/{area}", idx), fab_node, area, idx, True))
    await _add(server, items)
    sim_node = server.get_node(sim)
    mode_arg = ua.Argument(
        Name="mode",
        DataType=ua.NodeId(ua.ObjectIds.String),
        ValueRank=-1,
        Description=ua.LocalizedText(
            "failure mode (shared.equipment): fail now; '<mode>:degrade' starts its degradation now"
        ),
    )
    inject_m = await sim_node.add_method(idx, "InjectFault", inject, [mode_arg], [])
    maintain_m = await sim_node.add_method(idx, "PerformMaintenance", maintain, [], [])
    event_type = await server.create_custom_event_type(
        idx,
        "ToolAlarmEventType",
        ua.ObjectIds.BaseEventType,
        [
            ("ToolId", ua.VariantType.String),
            ("Mode", ua.VariantType.String),
            ("Kind", ua.VariantType.String),
            ("Sudden", ua.VariantType.Boolean),
        ],
    )
    out: list[ToolNodes] = []
    refs: list[ua.AddReferencesItem] = []
    for tool in fab.tools:
        out.append(await _build_tool(server, tool, idx))
        for method in (inject_m, maintain_m):
            ref = ua.AddReferencesItem()
            ref.SourceNodeId = out[-1].node
            ref.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
            ref.IsForward = True
            ref.TargetNodeId = method.nodeid
            ref.TargetNodeClass = ua.NodeClass.Method
            refs.append(ref)
    for status in await server.iserver.isession.add_references(refs):
        status.check()
    aspace = server.iserver.aspace
    sp_nodes = {nid: (tn, k) for tn in out for k, nid in enumerate(tn.setpoint_ids)}
    return AddressSpace(
        idx=idx,
        tools=out,
        by_node={tn.node: tn for tn in out},
        setpoint_nodes=sp_nodes,
        sim_time=aspace[ua.NodeId("FabSimulator/SimTime", idx)].attributes[ua.AttributeIds.Value],
        value_changes=aspace[ua.NodeId("FabSimulator/ValueChanges", idx)].attributes[ua.AttributeIds.Value],
        event_type=event_type.nodeid,
    )


async def _build_tool(server: Server, tool: Tool, idx: int) -> ToolNodes:
    base = f"Fab/{tool.area}/{tool.tool_id}"
    node = ua.NodeId(base, idx)
    items = [_object(node, ua.NodeId(f"Fab/{tool.area}", idx), tool.tool_id, idx, False)]
    folders = {}
    for name in ("Sensors", "Setpoints", "Counters"):
        folders[name] = ua.NodeId(f"{base}/{name}", idx)
        items.append(_object(folders[name], node, name, idx, True))
    spec = tool.tt.tool
    sensor_ids = [
        _analog(
            items,
            f"{base}/Sensors/{s.name}",
            folders["Sensors"],
            s.name,
            idx,
            s.nominal,
            s.unit,
            s.lo,
            s.hi,
            False,
        )
        for s in spec.sensors
    ]
    sp_ids = [
        _analog(
            items,
            f"{base}/Setpoints/{p.name}",
            folders["Setpoints"],
            p.name,
            idx,
            float(v),
            p.unit,
            p.lo,
            p.hi,
            True,
        )
        for p, v in zip(spec.setpoints, tool.setpoints, strict=True)
    ]
    counter_ids = []
    for name in SIM_COUNTERS:
        unit, lo, hi = COUNTER_SPECS[name]
        path = f"{base}/Counters/{name}"
        counter_ids.append(_analog(items, path, folders["Counters"], name, idx, 0.0, unit, lo, hi, False))
    state_id, recipe_id = ua.NodeId(f"{base}/State", idx), ua.NodeId(f"{base}/Recipe", idx)
    items.append(
        _variable(
            state_id,
            node,
            "State",
            idx,
            ua.Variant(str(tool.e10), ua.VariantType.String),
            ua.ObjectIds.String,
            _READ,
        )
    )
    items.append(
        _variable(
            recipe_id,
            node,
            "Recipe",
            idx,
            ua.Variant(tool.recipe_name(), ua.VariantType.String),
            ua.ObjectIds.String,
            _READ,
        )
    )
    if tool.host is not None:
        # A property of the tool object (HasProperty, PropertyType), in the simulator's namespace
        # as it is no standard property; in the same add_nodes call as the rest of the tool.
        host = _variable(
            ua.NodeId(f"{base}.HostTool", idx),
            node,
            "HostTool",
            idx,
            ua.Variant(tool.host.tool_id, ua.VariantType.String),
            ua.ObjectIds.String,
            _READ,
            prop=True,
        )
        host.BrowseName = _qn("HostTool", idx)
        items.append(host)
    await _add(server, items)
    aspace = server.iserver.aspace

    def value_of(nid: ua.NodeId) -> AttributeValue:
        return aspace[nid].attributes[ua.AttributeIds.Value]

    return ToolNodes(
        tool=tool,
        node=node,
        sensors=[value_of(n) for n in sensor_ids],
        setpoints=[value_of(n) for n in sp_ids],
        setpoint_ids=sp_ids,
        counters=[value_of(n) for n in counter_ids],
        state=value_of(state_id),
        recipe=value_of(recipe_id),
    )


def counter_values(tool: Tool) -> list[float]:
    """The values of ``SIM_COUNTERS`` for a tool now."""
    return [tool.wafers_now(), tool.lots, tool.energy_kwh, tool.last_lot_yield, tool.last_lot_energy_kwh]
