"""Setpoint control inside the daemon: when to tune, the eco rule, and the writes to the source.

:class:`SetpointControl` connects the pure parts of ``edge.tuning`` (guards, proposals, the outcome
guard) to the running edge: it tunes a tool after each of its lots (a lot end is a change of the
``last_lot_yield``/``last_lot_energy_kwh`` counters at a new source time) and on the tuning
schedule, applies approvals from the cloud, and in ``auto`` mode idles the sub-fab units whose
host tool is not processing (``tuning.eco``). Every write goes through :class:`edge.tuning.Tuner`
(guards, read-back, record).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from edge.config import EdgeConfig
from edge.errors import EdgeError, WriteRefused
from edge.inference import TuningModel
from edge.pipeline import Pipeline
from edge.source import TagRef, TagSource
from edge.tuning import Tuner
from shared.messages import Message, Tuning

_logger = logging.getLogger(__name__)


class SetpointControl:
    """See the module docstring."""

    def __init__(
        self,
        cfg: EdgeConfig,
        tags: Sequence[TagRef],
        source: TagSource,
        pipeline: Pipeline,
        models: dict[str, Any],
        emit: Callable[[Message], None],
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self.cfg = cfg
        self.tags = list(tags)
        self.source = source
        self.pipeline = pipeline
        self.models = models  # the daemon's dict: slot -> model, swapped in place by updates
        self._spawn = spawn
        self.tuner = Tuner(
            cfg.tuning,
            cfg.site,
            cfg.edge_id,
            self._write_setpoint,
            self._range_of,
            emit,
            cfg.resolve(Path("tuning.jsonl")),
            pending_path=cfg.resolve(Path("tuning_pending.json")),
            pools_path=cfg.resolve(Path("tuning_pools.json")),
        )
        # Take-backs a guard or a link outage refused: retried before anything new is tried on
        # that tool, since leaving a change that lowered yield in place is the worse failure.
        self._pending_revert: dict[str, dict[str, float]] = {}
        self._served_by: dict[str, list[str]] = {}
        for t in cfg.tools:
            if t.host is not None:
                self._served_by.setdefault(t.host, []).append(t.id)
        self._lot_ts: dict[str, float] = {}
        pipeline.on_counter = self._on_counter
        pipeline.on_state = self._on_state

    async def on_command(self, msg: Tuning) -> None:
        """An approval or rejection from the cloud."""
        await self.tuner.on_command(msg, self._ttype, self._current_setpoint)

    def _ttype(self, tool: str) -> str:
        info = self.pipeline.tools.get(tool)
        if info is None:  # a proposal made before a restart, for a tool since removed from the config
            raise WriteRefused(f"{tool} is not configured on this edge")
        return info.tool_type

    def _current_setpoint(self, tool: str, name: str) -> float:
        return self.pipeline.tools[tool].setpoints.get(name, float("nan"))

    def _index(self, tool: str, name: str) -> int:
        for i, ref in enumerate(self.tags):
            if ref.tool_id == tool and ref.group == "setpoint" and ref.name == name:
                return i
        raise EdgeError(f"{tool} has no configured setpoint tag {name}")

    async def _write_setpoint(self, tool: str, name: str, value: float) -> float:
        back = await self.source.write(self._index(tool, name), value)
        self.pipeline.tools[tool].setpoints[name] = back
        return back

    async def _range_of(self, tool: str, name: str) -> tuple[float, float] | None:
        try:
            return await self.source.eu_range(self._index(tool, name))
        except EdgeError:
            return None

    async def tune_once(self) -> None:
        """One round of proposals for every tool a tuning model covers."""
        for tool in self.pipeline.tools:
            await self.tune_tool(tool)

    async def tune_tool(self, tool: str, lot_yield: float | None = None) -> None:
        """After a lot: take back a change that made yield worse, else propose (and in auto mode
        apply) the next step for one tool."""
        info = self.pipeline.tools[tool]
        model = self.models.get(f"edge-tuning/{info.tool_type}")
        if self.cfg.tuning.mode == "off" or not isinstance(model, TuningModel):
            return
        if lot_yield is not None:
            back = self.tuner.outcome.observe(tool, lot_yield)
            if back is not None:
                _logger.warning("%s: the last setpoint change lowered yield; taking it back", tool)
                self._pending_revert[tool] = back
        pending = self._pending_revert.get(tool)
        if pending is not None:
            if await self.tuner.apply(tool, info.tool_type, pending, info.setpoints, actor="edge-revert"):
                del self._pending_revert[tool]
            else:
                _logger.warning("%s: take-back refused; retried after the next lot, nothing new tried", tool)
            return
        if not self.tuner.outcome.may_tune(tool):
            return
        context = {**self._sensor_means(tool), **info.counters}
        needed = [n for n in model.setpoints if n not in info.setpoints]
        needed += [n for n in model.context if n not in context]
        if needed:
            return  # not everything the surrogate needs has been read yet
        msg = self.tuner.propose(model, tool, info.tool_type, info.setpoints, context)
        if msg is not None and self.cfg.tuning.mode == "auto":
            before = {n: info.setpoints[n] for n in msg.setpoints}
            if await self.tuner.apply(tool, info.tool_type, msg.setpoints, info.setpoints, msg.proposal_id):
                self.tuner.outcome.applied(tool, before)

    def _on_counter(self, tool: str, name: str, ts: float) -> None:
        """A lot ended (its yield or energy counter changed at a new source time)."""
        if self.cfg.tuning.mode == "off" or self._lot_ts.get(tool) == ts:
            return
        self._lot_ts[tool] = ts
        self._spawn(self._after_lot(tool))

    def _on_state(self, tool: str, state: str) -> None:
        """Eco rule: the sub-fab units serving ``tool`` idle while it is not processing."""
        if self.cfg.tuning.mode != "auto" or not self.cfg.tuning.eco:
            return
        want = 0.0 if state == "productive" else 1.0
        for unit in self._served_by.get(tool, []):
            info = self.pipeline.tools[unit]
            if info.setpoints.get("idle_mode") != want:
                self._spawn(self._eco(unit, info.tool_type, want))

    async def _eco(self, unit: str, ttype: str, want: float) -> None:
        info = self.pipeline.tools[unit]
        await self.tuner.apply(unit, ttype, {"idle_mode": want}, dict(info.setpoints), actor="edge-eco")

    async def _after_lot(self, tool: str) -> None:
        # Runs as its own task, after the rest of the batch: both counters are current by then.
        lot_yield = self.pipeline.tools[tool].counters.get("last_lot_yield")
        await self.tune_tool(tool, lot_yield)

    def _sensor_means(self, tool: str) -> dict[str, float]:
        return {
            k: v["mean"] for k, v in self.pipeline.summary(tool, 1_000_000).items() if v["mean"] is not None
        }
