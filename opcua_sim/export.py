"""``fabpm sim export``: a labelled run-to-failure data set, from the same generator, without OPC UA.

Each tool's event timeline runs once to the end (:class:`~opcua_sim.tool.Tool` with
``record=True``); its history becomes arrays by ``searchsorted`` on the sample times, and the
readings come from :func:`opcua_sim.physics.sensor_values` in one vectorized call per tool. The
format is ``shared.dataset`` (``dataset.json``, ``tools/<id>.npz``, ``ground_truth.jsonl``).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from opcua_sim.errors import SimError
from opcua_sim.fab import Fab
from opcua_sim.history import DAY
from opcua_sim.physics import SUBFAB_LOADS, Context, sensor_values, tool_key
from opcua_sim.scenario import Scenario, tag_count
from opcua_sim.tool import Tool
from shared import e10
from shared.dataset import DatasetInfo, ToolInfo, ToolSeries, write_info, write_series
from shared.equipment import ALL_MODES, E10_CODES, E10State

_logger = logging.getLogger(__name__)
# Lot ends are kept (the tuning model learns yield and energy from them); state changes are
# in the arrays already.
TRUTH_KINDS = ("onset", "failure", "maintenance", "setpoint", "sensor_fault", "lot", "lot_aborted", "back_up")
_PRODUCTIVE = E10_CODES[E10State.PRODUCTIVE]
_STANDBY = E10_CODES[E10State.STANDBY]
_PROCESSING_CODES = np.array([E10_CODES[E10State.PRODUCTIVE], E10_CODES[E10State.ENGINEERING]])
_DOWN_CODES = np.array([E10_CODES[E10State.SCHEDULED_DOWN], E10_CODES[E10State.UNSCHEDULED_DOWN]])


def tool_series(fab: Fab, tool: Tool, ts: np.ndarray, end_s: float, host: ToolSeries | None) -> ToolSeries:
    """Arrays of one tool's recorded run at sample times ``ts`` (the tool must be advanced to ``end_s``)."""
    h = tool.history
    if h is None:
        raise SimError("tool_series needs a Fab built with record=True")
    tt = tool.tt
    n = len(ts)
    seg = np.searchsorted(np.asarray(h.seg_t), ts, side="right") - 1
    state = np.asarray(h.seg_state, dtype=np.int8)[seg]
    recipe = np.asarray(h.seg_recipe, dtype=np.int64)[seg]
    lot_start = np.asarray(h.seg_lot_start)[seg]
    down = np.isin(state, _DOWN_CODES)
    if tool.subfab:
        host_busy = np.isin(host.state, _PROCESSING_CODES) if host is not None else True
        processing = ~down & host_busy
        state = np.where(down, state, np.where(processing, _PRODUCTIVE, _STANDBY)).astype(np.int8)
        recipe = (
            np.maximum(host.recipe, 0).astype(np.int64) % SUBFAB_LOADS
            if host is not None
            else np.zeros(n, int)
        )
    else:
        processing = np.isin(state, _PROCESSING_CODES)
    sp_idx = np.searchsorted(np.asarray(h.sp_t), ts, side="right") - 1
    setpoints = np.stack(h.sp_values)[sp_idx]
    health = np.zeros((n, len(tool.modes)))
    episodes = list(h.episodes) + [
        (i, float(tool.onset[i]), np.inf, float(tool.ttf[i]))
        for i in range(len(tool.modes))
        if not np.isnan(tool.onset[i])
    ]
    for m, onset, stop, ttf in episodes:
        i0, i1 = np.searchsorted(ts, [onset, stop])
        health[i0:i1, m] = np.clip((ts[i0:i1] - onset) / ttf, 0.0, 1.0)
    maint = np.asarray(h.maint_t)
    since = (ts - maint[np.searchsorted(maint, ts, side="right") - 1]) / DAY
    gain, offset, noise = fab.drift.sensors_at(tool.type_name, ts)
    period = float(ts[1] - ts[0]) if n > 1 else 1.0
    ctx = Context(
        processing=processing,
        down=down,
        recipe=np.maximum(recipe, 0),
        phase_s=ts - lot_start,
        setpoints=setpoints,
        health=health,
        days_since_pm=since,
        drift_rate=np.broadcast_to(tool.drift_rate, (n, tt.n_sensors)),
        gain=gain * tool.tool_gain,
        offset=offset,
        noise_scale=noise,
        key=np.full(n, tool_key(fab.scenario.seed, tool.index)),
        tick=(ts // fab.scenario.tick_s).astype(np.int64),
        severity=fab.scenario.degradation.severity,
        spike_p=min(1.0, fab.scenario.sensor_faults.spike_per_hour * period / 3600.0),
    )
    values = sensor_values(tt, ctx).astype(np.float32)
    for f in h.faults:
        i0, i1 = np.searchsorted(ts, [f.start, f.end])
        if i1 > i0:
            values[i0:i1, f.sensor] = np.nan if f.kind == "dropout" else values[i0, f.sensor]
    fail_t = np.array([f[0] for f in h.failures])
    j = np.searchsorted(fail_t, ts, side="left")
    has = j < len(fail_t)
    jj = np.minimum(j, max(len(fail_t) - 1, 0))
    rul = np.where(has, (fail_t[jj] - ts) / 3600.0 if len(fail_t) else 0.0, np.nan)
    modes = np.array([f[1] for f in h.failures] or [-1], dtype=np.int16)[jj]
    sudden = np.array([f[2] for f in h.failures] or [False], dtype=bool)[jj]
    return ToolSeries(
        t_s=ts.astype(np.float64),
        values=values,
        setpoints=setpoints.astype(np.float32),
        state=state,
        recipe=np.where(processing & ~np.asarray(tool.subfab), recipe, -1).astype(np.int8),
        rul_h=rul.astype(np.float32),
        censor_h=((end_s - ts) / 3600.0).astype(np.float32),
        fail_mode=np.where(has, modes, -1).astype(np.int16),
        sudden=np.where(has, sudden, False),
    )


def _fleet_summary(fleet: list[e10.E10Metrics]) -> dict[str, float]:
    """Fleet SEMI E10 figures: hours summed over tools, uptime and MTBF from the sums."""
    total = e10.pool(fleet)
    return {
        "equipment_uptime_pct": round(total.equipment_uptime_pct, 3),
        "mtbf_productive_h": round(total.mtbf_productive_h, 2),
        "mttr_h": round(total.mttr_h, 2),
        "unscheduled_down_h": round(total.unscheduled_down_h, 2),
        "failures": total.failures,
    }


MERGE_FAN_IN = 128  # files merged at once (well under the usual limit of open files)


def _merge_by_time(paths: list[Path], target: Path) -> None:
    """Merge time-sorted ``t_s<TAB>json`` files into one JSONL file sorted by time (stable: equal
    times keep the order of ``paths``), in rounds of at most MERGE_FAN_IN open files."""
    round_no = 0
    while len(paths) > MERGE_FAN_IN:
        merged = []
        for i in range(0, len(paths), MERGE_FAN_IN):
            dest = paths[0].parent / f"merge{round_no}-{i:06d}.tsv"
            _merge_files(paths[i : i + MERGE_FAN_IN], dest, keep_key=True)
            merged.append(dest)
        paths, round_no = merged, round_no + 1
    _merge_files(paths, target, keep_key=False)


def _merge_files(paths: list[Path], dest: Path, keep_key: bool) -> None:
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(p.open(encoding="utf-8")) for p in paths]
        with dest.open("w", encoding="utf-8") as out:
            for line in heapq.merge(*files, key=lambda x: float(x.split("\t", 1)[0])):
                out.write(line if keep_key else line.split("\t", 1)[1])


def export(
    scenario: Scenario,
    days: float,
    out: Path,
    *,
    sample_period_s: float = 600.0,
    horizon_h: float = 72.0,
) -> DatasetInfo:
    """Simulate ``days`` of ``scenario`` and write the data set into ``out``; returns its info."""
    if days <= 0:
        raise SimError(f"--days: must be > 0, got {days}")
    if sample_period_s <= 0:
        raise SimError(f"--sample-period-s: must be > 0, got {sample_period_s}")
    started = time.perf_counter()
    # Each tool's events arrive in time order while it runs; they wait in a file per tool and are
    # merged at the end, so the memory held does not grow with the size of the fab.
    lines: list[str] = []
    failures = 0

    def collect(event: dict[str, Any]) -> None:
        nonlocal failures
        failures += event["kind"] == "failure"
        lines.append(f"{event['t_s']!r}\t{json.dumps(event)}\n")

    fab = Fab(scenario, record=True, truth_kinds=TRUTH_KINDS)
    fab.listeners.append(collect)
    end = days * DAY
    ts = np.arange(0.0, end, sample_period_s)
    out.mkdir(parents=True, exist_ok=True)
    parts = Path(tempfile.mkdtemp(prefix=".truth-", dir=out))
    tools: list[ToolInfo] = []
    hosts: dict[str, ToolSeries] = {}
    fleet: list[e10.E10Metrics] = []
    # Hosts first: a sub-fab tool's load follows its host's processing.
    for tool in sorted(fab.tools, key=lambda t: t.subfab):
        tool.advance_to(end)
        host = hosts.get(tool.host.tool_id) if tool.host is not None else None
        series = tool_series(fab, tool, ts, end, host)
        if not tool.subfab:
            hosts[tool.tool_id] = series
        fleet.append(e10.from_series(series.state, sample_period_s))
        tool_info = ToolInfo(
            tool_id=tool.tool_id,
            tool_type=tool.type_name,
            area=tool.area,
            sensors=list(tool.tt.tool.sensor_names),
            setpoints=list(tool.tt.tool.setpoint_names),
            file=f"tools/{tool.tool_id}.npz",
        )
        write_series(out, tool_info, series)
        tools.append(tool_info)
        (parts / f"{len(tools):06d}.tsv").write_text("".join(lines), encoding="utf-8")
        lines.clear()
    tools.sort(key=lambda i: fab.by_id[i.tool_id].index)
    try:
        _merge_by_time(sorted(parts.iterdir()), out / "ground_truth.jsonl")
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    elapsed = time.perf_counter() - started
    info = DatasetInfo(
        seed=scenario.seed,
        days=days,
        sample_period_s=sample_period_s,
        horizon_h=horizon_h,
        tools=tools,
        scenario=scenario.name,
        modes=list(ALL_MODES),
        extra={
            "start": scenario.start.isoformat(),
            "tick_s": scenario.tick_s,
            "hosts": {t.tool_id: t.host.tool_id for t in fab.tools if t.host is not None},
            "tags": tag_count(scenario),
            "drift_days": [d.day for d in scenario.drifts],
            "failures": failures,
            "e10_fleet": _fleet_summary(fleet),
            "wall_s": round(elapsed, 3),
        },
    )
    write_info(out, info)
    _logger.info(
        "exported %d tools × %.1f days to %s in %.2f s (%.0f tool-days/s)",
        len(tools),
        days,
        out,
        elapsed,
        len(tools) * days / max(elapsed, 1e-9),
    )
    return info
