"""``fabpm sim plot``: one tool's sensors over a run to failure, as a PNG.

The picture a reader needs to judge whether the precursors look real: every precursor sensor of
the failing mode plus one sensor the mode does not touch, raw readings (thin, with gaps where a
dropout made them Bad) and a rolling median of the readings taken while processing (bold), with
the onset, the failure and maintenance marked and down time shaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from opcua_sim.degradation import SIGNATURES
from opcua_sim.errors import SimError
from opcua_sim.export import _PROCESSING_CODES, tool_series
from opcua_sim.fab import Fab
from opcua_sim.history import DAY
from opcua_sim.scenario import Scenario
from opcua_sim.tool import Tool
from shared.equipment import ALL_MODES, E10_CODES, E10State

_logger = logging.getLogger(__name__)


def _pick(fab: Fab, tool_id: str | None, tool_type: str) -> tuple[Tool, tuple[float, int, bool]]:
    """The tool and its first progressive failure that has at least 4 days of history before it."""
    if tool_id and tool_id not in fab.by_id:
        raise SimError(f"--tool: no tool {tool_id!r} in this fab")
    candidates = [fab.by_id[tool_id]] if tool_id else [t for t in fab.tools if t.type_name == tool_type]
    for tool in candidates:
        assert tool.history is not None
        for failure in tool.history.failures:
            if not failure[2] and failure[0] > 4 * DAY:
                return tool, failure
    raise SimError("no progressive failure in this run: try more --days or another --seed/--type")


def plot_run(
    scenario: Scenario, days: float, out: Path, *, tool_id: str | None = None, tool_type: str = "vacuum_pump"
) -> tuple[Path, str]:
    """Simulate ``days``, draw the first suitable run to failure into ``out``; returns (path, tool id)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fab = Fab(scenario, record=True)
    end = days * DAY
    for tool in sorted(fab.tools, key=lambda t: t.subfab):
        tool.advance_to(end)
    tool, (t_fail, mode_index, _) = _pick(fab, tool_id, tool_type)
    assert tool.history is not None
    mode = ALL_MODES[mode_index]
    episode = next(
        ep for ep in tool.history.episodes if tool.modes[ep[0]] == mode and abs(ep[2] - t_fail) < 1.0
    )
    onset = episode[1]
    t0, t1 = max(0.0, min(onset, t_fail - 3 * DAY) - 3 * DAY), min(end, t_fail + 1.5 * DAY)
    ts = np.arange(0.0, end, 300.0)
    host = tool_series(fab, tool.host, ts, end, None) if tool.host is not None else None
    series = tool_series(fab, tool, ts, end, host)
    window = (ts >= t0) & (ts <= t1)
    names = list(tool.tt.tool.sensor_names)
    shown = [s for s in SIGNATURES[mode] if s in names]
    shown += [s for s in names if s not in shown][:1]
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 1.9 * len(shown) + 0.8), sharex=True)
    days_axis = ts[window] / DAY
    processing = np.isin(series.state[window], _PROCESSING_CODES)
    down = np.isin(
        series.state[window], [E10_CODES[E10State.SCHEDULED_DOWN], E10_CODES[E10State.UNSCHEDULED_DOWN]]
    )
    maint = [t / DAY for t in tool.history.maint_t if t0 <= t <= t1]
    for ax, name in zip(np.atleast_1d(axes), shown, strict=True):
        j = names.index(name)
        v = series.values[window, j].astype(float)
        ax.plot(days_axis, v, lw=0.4, color="0.55")
        busy = np.where(processing, v, np.nan)
        k = 144  # 12 h of 5-minute samples: the trend through the recipe-driven load changes
        med = np.full(len(busy), np.nan)
        for i in range(len(busy)):
            chunk = busy[max(0, i - k) : i + 1]
            if np.isfinite(chunk).any():
                med[i] = np.nanmedian(chunk)
        ax.plot(days_axis, med, lw=1.6, color="tab:blue")
        unit = tool.tt.tool.sensors[j].unit
        tag = " (precursor)" if name in SIGNATURES[mode] else " (not affected)"
        ax.set_ylabel(f"{name}\n[{unit}]{tag}", fontsize=7)
        ax.axvline(onset / DAY, color="tab:orange", ls="--", lw=1.2)
        ax.axvline(t_fail / DAY, color="tab:red", lw=1.5)
        for m in maint:
            ax.axvline(m, color="tab:green", ls=":", lw=1.0)
        ylo, yhi = ax.get_ylim()
        ax.fill_between(days_axis, ylo, yhi, where=down, color="tab:red", alpha=0.08, step="mid")
        ax.set_ylim(ylo, yhi)
        ax.tick_params(labelsize=7)
    last = np.atleast_1d(axes)[-1]
    last.set_xlabel("simulated days since the scenario start", fontsize=8)
    fig.suptitle(
        f"{tool.tool_id} ({tool.type_name}): {mode} — onset (orange, dashed) to failure (red) after "
        f"{(t_fail - onset) / DAY:.1f} days; maintenance dotted green; down time shaded; "
        f"bold = 12 h median while processing",
        fontsize=8,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    _logger.info("plotted %s %s to %s", tool.tool_id, mode, out)
    return out, tool.tool_id
