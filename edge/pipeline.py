"""The hot path: tag values → per-tool windows → batched inference → decisions → outbox.

:class:`Pipeline` is fed by the tag source (``on_values``, ``on_event``) on the event loop, keeps
the per-tool windows, and runs every ready window through the current risk model in one batch
(:meth:`Pipeline.infer_ready`). It knows nothing about MQTT: messages go to ``emit``.

Equipment events: a change of the ``State`` tag becomes an ``Event`` (``state``; ``failure`` on
entering unscheduled down; ``maintenance`` on entering scheduled down), and OPC UA alarms become
``alarm`` events naming the tool and, when the text names one, the failure mode. A failure or
maintenance resets the tool's alert rule, and no window is judged while the tool is down. The
first State value read of each tool after the edge starts is sent too (``previous`` ""), with
the id of that change (:func:`state_msg_id`), so the cloud knows each tool's state from the start.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.alarm_flood import AlarmFlood
from edge.decisions import Decider, message
from edge.errors import ModelError
from edge.inference import RiskModel
from edge.metrics import EdgeMetrics
from edge.source import SourceEvent, TagRef, Value
from edge.windows import DOWN, ReadyWindow, ToolWindow, features
from shared.equipment import ALL_MODES, E10State, tool_type
from shared.evidence import Explanation, explain, reference_known
from shared.messages import RISK_TRACE_MAX, Event, Message, RiskSample, new_msg_id
from shared.reference import ReferenceTracker
from shared.risk_trace import RiskAt, thin_peaks

_logger = logging.getLogger(__name__)

SENSOR, STATE, SETPOINT, COUNTER, OTHER = 0, 1, 2, 3, 4
MODE_MATCH_S = 3600.0  # an alarm this close (source time) to a failure names its mode
RISK_TRACE_HELD = 3600  # risk points kept per tool between two telemetry messages
Emit = Callable[[Message], None]


def state_msg_id(edge_id: str, tool: str, state: str, source_ts: float) -> str:
    """The id of the event a change of ``State`` becomes: the same change read again after a
    restart (the same tool, state and SourceTimestamp) gets the same id, which the cloud stores
    once. A server that stamps a value when it is read rather than when it changed gets a new
    id each time: a repeated state, which the E10 figures count once."""
    key = f"{edge_id}\x1f{tool}\x1f{state}\x1f{source_ts!r}".encode()
    return "state-" + hashlib.sha256(key).hexdigest()[:32]


@dataclass
class ToolInfo:
    tool_id: str
    tool_type: str
    setpoints: dict[str, float]
    counters: dict[str, float]
    last_mode: str | None = None  # the mode named by the last alarm, for the failure event
    last_mode_ts: float | None = None
    risk: float = float("nan")  # the highest of ``probs``: what the alert rule reads
    probs: dict[str, float] = field(default_factory=dict)  # per mode of the tool's type, last window
    # The State last read ("" before the first since the edge started): kept here rather than in
    # the window, which a model with another grid replaces (its state then starts from "").
    state: str = ""
    # (window end, probs) at each step run since the last telemetry took them (take_trace); the
    # oldest go first past RISK_TRACE_HELD, which telemetry every minute never nears
    trace: deque[RiskAt] = field(default_factory=lambda: deque(maxlen=RISK_TRACE_HELD))


def mode_named(text: str) -> str | None:
    """The failure mode an alarm's text names, as a whole word: "fan_bearing_wear" is not
    "bearing_wear" (a substring match read every abatement fan failure as a pump's bearing)."""
    words = set(re.split(r"[^A-Za-z0-9_]+", text))
    return next((m for m in ALL_MODES if m in words), None)


class Pipeline:
    """Routing, windows, inference and decisions for one edge; see the module docstring."""

    def __init__(
        self,
        tags: Sequence[TagRef],
        tool_types: dict[str, str],
        decider: Decider,
        emit: Emit,
        metrics: EdgeMetrics,
        max_stale_steps: float,
        infer_every: int,
        recent: int = 64,
        clock: Callable[[], float] = time.perf_counter,
        alarm_flood: AlarmFlood | None = None,
    ) -> None:
        self.tags = list(tags)
        self.alarm_flood = alarm_flood  # None: every alarm is forwarded
        self.decider = decider
        self.emit = emit
        self.metrics = metrics
        self.max_stale_steps = max_stale_steps
        self.infer_every = infer_every
        self.clock = clock
        self.tools = {t: ToolInfo(t, ty, {}, {}) for t, ty in tool_types.items()}
        self.windows: dict[str, ToolWindow] = {}
        self.recent: deque[ReadyWindow] = deque(maxlen=recent)
        self.model: RiskModel | None = None
        self.latencies: deque[float] = deque(maxlen=100_000)
        self.on_counter: Callable[[str, str, float], None] | None = None  # (tool, counter, source ts)
        self.on_state: Callable[[str, str], None] | None = None  # (tool, new state)
        self.failure_grace_s = 1.0  # wall seconds a failure event waits for its alarm
        # failure events waiting out that grace, by msg_id: sent at once on a stop (send_waiting)
        self._waiting: dict[str, tuple[asyncio.TimerHandle, Callable[[], None]]] = {}
        self.values = 0
        self.bad = 0
        self._dirty: set[str] = set()
        # index -> (kind, tool, sensor index or name)
        self._routes: list[tuple[int, str, int | str]] = []
        self._sensor_pos: dict[str, dict[str, int]] = {}
        # Routed before any model: a new edge may wait days for its first release, and the tools'
        # state changes (labels, SEMI E10 figures) and setpoints must not wait with it. Sensor
        # values have no window to go to until a model says the grid.
        self._build_routes()

    def set_model(self, model: RiskModel | None) -> None:
        """Use ``model`` from the next batch on; rebuilds the windows when its grid differs."""
        old = self.model
        self.model = model
        if model is None:
            return
        self.decider.set_thresholds(model.thresholds)
        spec = model.spec
        if (
            old is None
            or old.spec.window != spec.window
            or old.spec.step_s != spec.step_s
            or old.spec.reference_rows != spec.reference_rows
            or not self.windows
        ):  # the routes are rebuilt too: a sensor's index depends on the window
            kept = self.reference_states()  # a tool's reference outlives a model swap when it fits
            self.windows = {
                t: ToolWindow(
                    t, info.tool_type, spec.window, spec.step_s, self.max_stale_steps, spec.reference_rows
                )
                for t, info in self.tools.items()
            }
            self._routes = []
            if kept is not None:
                self.restore_references(kept)
        if not self._routes:
            self._build_routes()

    def reference_states(self) -> dict[str, Any] | None:
        """Every tool's reference tracker (``shared.reference``), to keep across restarts; None
        when the windows carry none (the running model uses no reference)."""
        if not self.windows:
            return None
        first = next(iter(self.windows.values()))
        if first.reference is None:
            return None
        return {
            "step_s": first.step,
            "rows": first.reference.rows,
            "tools": {t: w.reference.to_dict() for t, w in self.windows.items() if w.reference is not None},
            # the first readings an alert's evidence falls back on (edge.windows' watching tracker):
            # after a short restart the edge still knows what the tool read when it began watching
            "watching": {t: w.watching.to_dict() for t, w in self.windows.items() if w.watching is not None},
        }

    def restore_references(self, data: dict[str, Any]) -> int:
        """Take back saved trackers that fit the current windows (same grid step and rows per
        state); returns how many tools got theirs. A tool whose saved state does not fit, or
        does not parse, starts unknown: its next return from down gives it a reference."""
        restored = 0
        for tool, state in dict(data.get("tools") or {}).items():
            tracker = self._saved_tracker(data, tool, state, "reference")
            if tracker is not None:
                self.windows[tool].reference = tracker
                restored += 1
        for tool, state in dict(data.get("watching") or {}).items():  # absent in older files
            tracker = self._saved_tracker(data, tool, state, "watching")
            if tracker is not None:
                self.windows[tool].watching = tracker
        return restored

    def _saved_tracker(
        self, data: dict[str, Any], tool: str, state: Any, which: str
    ) -> ReferenceTracker | None:
        """A saved tracker (``which``: "reference" or "watching") that fits the tool's window now,
        or None (logged when it does not parse)."""
        win = self.windows.get(tool)
        now = None if win is None else getattr(win, which)
        if win is None or now is None:
            return None
        if float(data.get("step_s", -1.0)) != win.step or int(data.get("rows", -1)) != now.rows:
            return None
        try:
            tracker = ReferenceTracker.from_dict(state, now.max_gap_s)
        except (KeyError, TypeError, ValueError) as exc:
            _logger.warning("saved %s of %s ignored: %s", which, tool, exc)
            return None
        return tracker if tracker.n_sensors == len(win.sensors) else None

    def _build_routes(self) -> None:
        routes: list[tuple[int, str, int | str]] = []
        for ref in self.tags:
            win = self.windows.get(ref.tool_id)
            if ref.group == "sensor" and win is not None and ref.name in win.sensors:
                routes.append((SENSOR, ref.tool_id, win.sensors.index(ref.name)))
            elif ref.group == "state":
                routes.append((STATE, ref.tool_id, ref.name))
            elif ref.group == "setpoint":
                routes.append((SETPOINT, ref.tool_id, ref.name))
            elif ref.group == "counter":
                routes.append((COUNTER, ref.tool_id, ref.name))
            else:
                routes.append((OTHER, ref.tool_id, ref.name))
        self._routes = routes

    # -- ingest (called by the source, on the event loop) ---------------------------------------

    def on_values(self, batch: list[Value]) -> None:
        routes = self._routes
        windows = self.windows
        dirty = self._dirty
        now = self.clock()
        bad = 0
        for index, value, ts, good in batch:
            if index >= len(routes):
                continue
            kind, tool, key = routes[index]
            if kind == SENSOR:
                win = windows[tool]
                if not good:
                    bad += 1
                    value = math.nan
                elif type(value) is not float:
                    value = _number(value)
                nxt = win.next_t
                if nxt is not None and ts >= nxt:
                    win.close_until(ts, now)
                    dirty.add(tool)
                win.update(key, value, ts)  # type: ignore[arg-type]
            elif not good:
                bad += 1
            elif kind == STATE:
                self._on_state(tool, str(value), ts, now)
            elif kind == SETPOINT:
                self.tools[tool].setpoints[str(key)] = _number(value)
            elif kind == COUNTER:
                self._on_counter(tool, str(key), _number(value), ts)
        self.values += len(batch)
        self.bad += bad
        self.metrics.values.inc(len(batch))
        if bad:
            self.metrics.bad_values.inc(bad)

    def _on_counter(self, tool: str, name: str, value: float, ts: float) -> None:
        info = self.tools[tool]
        before = info.counters.get(name)
        info.counters[name] = value
        if before is not None and before != value and self.on_counter is not None:
            self.on_counter(tool, name, ts)

    def _on_state(self, tool: str, state: str, ts: float, now: float) -> None:
        win = self.windows.get(tool)
        if win is not None:
            if win.next_t is not None and ts >= win.next_t:
                win.close_until(ts, now)
                self._dirty.add(tool)
            win.set_state(state, ts)
        info = self.tools[tool]
        previous, info.state = info.state, state
        if state == previous:
            return
        if self.on_state is not None:
            self.on_state(tool, state)
        kind = "state"
        if state == E10State.UNSCHEDULED_DOWN.value:
            kind = "failure"
        elif state == E10State.SCHEDULED_DOWN.value:
            kind = "maintenance"
        if kind != "state":
            self.decider.reset(tool)
        # The first value since the edge started is sent too (``previous`` ""): the cloud's SEMI
        # E10 figures then start when the edge starts watching, not at the tool's first change.
        # Its id is the change's (state_msg_id), so a change already sent before a restart is
        # stored once: its SourceTimestamp is when the tool entered the state, not when it was read.
        msg_id = state_msg_id(self.decider.edge_id, tool, state, ts)

        def send() -> None:
            # The failure's mode comes from the alarm, which travels on another OPC UA path (events,
            # not data) and may arrive just after the state change: use it when it is near in time.
            near = info.last_mode_ts is not None and abs(info.last_mode_ts - ts) <= MODE_MATCH_S
            mode = info.last_mode if kind == "failure" and near else None
            self._waiting.pop(msg_id, None)
            self._emit_event(tool, kind, mode, ts, {"previous": previous}, state=state, msg_id=msg_id)

        if kind == "failure" and self.failure_grace_s > 0:
            try:
                handle = asyncio.get_running_loop().call_later(self.failure_grace_s, send)
                self._waiting[msg_id] = (handle, send)
                return
            except RuntimeError:  # no event loop (offline use): send at once
                pass
        send()

    def send_waiting(self) -> int:
        """Send now the failure events still waiting for their alarm (the daemon stops: the
        outbox closes next, and a failure is the label source); returns how many."""
        waiting = list(self._waiting.values())
        for handle, send in waiting:
            handle.cancel()
            send()
        return len(waiting)

    def on_event(self, ev: SourceEvent) -> None:
        """An OPC UA alarm/event: forwarded when it names one of this edge's tools."""
        tool: str | None = ev.source if ev.source in self.tools else None
        if tool is None:
            # Whole tokens only: "etch-1" must not match inside "etch-10".
            tokens = set(re.split(r"[^A-Za-z0-9_.-]+", f"{ev.message} {ev.fields.get('ToolId', '')}"))
            tool = next((t for t in self.tools if t in tokens), None)
        if tool is None:
            return
        mode = mode_named(f"{ev.message} {ev.fields.get('Mode', '')}")
        if mode is not None:
            self.tools[tool].last_mode = mode
            self.tools[tool].last_mode_ts = ev.ts
        if self.alarm_flood is not None and not self.alarm_flood.admit(
            tool, ev.ts, ev.message[:200], ev.severity
        ):
            self.metrics.alarms_held.inc()
            return  # counted for the tool's flood summary (edge.alarm_flood)
        detail = {"message": ev.message[:500], "severity": ev.severity, "source": ev.source[:200]}
        self._emit_event(tool, "alarm", mode, ev.ts, detail)

    def send_alarm_summaries(self, force: bool = False) -> int:
        """Send the summaries of the alarm floods that are over (``force``: all, at a stop); how many."""
        if self.alarm_flood is None:
            return 0
        summaries = self.alarm_flood.summaries(force)
        for tool, ts, detail in summaries:
            self._emit_event(tool, "alarm", None, ts, detail)
        return len(summaries)

    def _emit_event(
        self,
        tool: str,
        kind: str,
        mode: str | None,
        ts: float,
        detail: dict[str, object],
        state: str | None = None,
        msg_id: str | None = None,
    ) -> None:
        """Queue one equipment event of ``tool`` and count it; a new ``msg_id`` unless given."""
        self.emit(
            message(
                Event,
                msg_id=msg_id or new_msg_id(),
                edge_id=self.decider.edge_id,
                site=self.decider.site,
                tool_id=tool,
                event=kind,
                mode=mode,
                source_ts=ts,
                detail=detail,
                state=state,
            )
        )
        self.metrics.events.labels(kind).inc()

    # -- inference ----------------------------------------------------------------------------

    def infer_ready(self) -> int:
        """Run every ready window through the model in one batch; the number of windows run."""
        model = self.model
        if model is None or not self._dirty:
            self._dirty.clear()
            return 0
        ready = [
            self.windows[t].take()
            for t in self._dirty
            if self.windows[t].ready(self.infer_every) and self.windows[t].state not in DOWN
        ]
        self._dirty.clear()
        if not ready:
            return 0
        spec = model.spec
        x = np.stack([features(w, spec) for w in ready])
        pred = model.predict(x)
        names = list(spec.names)
        for i, win in enumerate(ready):
            decision = self.decider.decide(
                win.tool_id,
                win.tool_type,
                win.ts,
                x[i],
                names,
                model.modes,
                pred.probs[i],
                float(pred.rul[i]),
                float(pred.rul_std[i]),
                float(pred.novelty[i]),
                model.version,
                functools.partial(self._explain, model, x[i], win),
                model.name_mode(win.tool_type, pred.embedding[i]),
            )
            info = self.tools[win.tool_id]
            info.risk = decision.risk
            info.probs = decision.probs
            if all(0.0 <= p <= 1.0 for p in decision.probs.values()):  # NaN would void the telemetry
                info.trace.append((win.ts, dict(decision.probs)))
            if decision.alert is not None:
                self.emit(decision.alert)
                self.metrics.alerts.inc()
            if decision.hard_case is not None:
                self.emit(decision.hard_case)
                self.metrics.hard_cases.labels("sent").inc()
            elif decision.reasons:
                self.metrics.hard_cases.labels("over_budget").inc()
            self.recent.append(win)
        done = self.clock()
        for win in ready:
            lat = done - win.closed_at
            self.latencies.append(lat)
            self.metrics.latency.observe(lat)
        self.metrics.windows.inc(len(ready))
        return len(ready)

    def _explain(self, model: RiskModel, x: np.ndarray, win: ReadyWindow, mode_index: int) -> Explanation:
        """The sensors that carry an alert's risk and the mode whose precursors they are
        (``shared.evidence``); for a tool without a reference yet, against the edge's first
        readings of it. An explanation that fails costs the alert nothing: it goes without one,
        and the reason is logged."""
        tool = win.tool_id
        try:
            tt = tool_type(win.tool_type)
            names = list(model.spec.names)
            against = None
            if win.watch_ref is not None and reference_known(x, names) is False:
                std = np.asarray(model.spec.scaler.std[win.tool_type], dtype=np.float64)
                against = (win.values - win.watch_ref) / std  # NaN where either is unknown
            precursors = {
                m.name: (model.modes.index(m.name), m.sensors)
                for m in tt.modes
                if not m.sudden and m.name in model.modes
            }
            predict = lambda b: model.predict(b).probs  # noqa: E731
            return explain(x, names, tt.sensor_names, mode_index, predict, precursors, against=against)
        except (ModelError, ValueError, KeyError) as exc:
            _logger.warning("alert of %s sent without its sensors: %s", tool, exc)
            return Explanation([], None)

    def take_trace(self, tool: str) -> list[RiskSample]:
        """The tool's risk at each step run since the last call, oldest first, thinned to
        ``RISK_TRACE_MAX`` with every peak kept (``Telemetry.risk_trace``); emptied."""
        trace = self.tools[tool].trace
        points = thin_peaks(list(trace), RISK_TRACE_MAX)
        trace.clear()
        return [RiskSample(ts=ts, risk=risk) for ts, risk in points]

    def rows_written(self, tool: str) -> int:
        """Grid rows the tool's window has closed since the edge started (telemetry's period)."""
        win = self.windows.get(tool)
        return 0 if win is None else win.rows_written

    def newest_ts(self, tool: str) -> float | None:
        """The source time of the tool's newest grid row (what its summary ends at), if any."""
        win = self.windows.get(tool)
        return None if win is None else win.newest_row_ts()

    def summary(self, tool: str, rows: int) -> dict[str, dict[str, float | None]]:
        """Per sensor mean/min/max/last over the last ``rows`` grid rows, and its health now:
        ``unchanged_s`` (processing time its value has not changed) and ``bad_s`` (time without a
        good value while the tool's other sensors report), on the equipment's clock (telemetry)."""
        win = self.windows.get(tool)
        if win is None or win.rows_held == 0:
            return {}
        n = min(rows, win.rows_held, win.window)
        latest = win.take_rows(n)
        out: dict[str, dict[str, float | None]] = {}
        for j, name in enumerate(win.sensors):
            col = latest[:, j]
            ok = col[np.isfinite(col)]
            if ok.size == 0:
                out[name] = {"mean": None, "min": None, "max": None, "last": None}
            else:
                out[name] = {
                    "mean": float(ok.mean()),
                    "min": float(ok.min()),
                    "max": float(ok.max()),
                    "last": float(ok[-1]),
                }
            out[name]["unchanged_s"] = float(win.unchanged_s[j])
            out[name]["bad_s"] = float(win.bad_s[j])
        return out


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
