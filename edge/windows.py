"""Per-tool sliding windows on the model's time grid, built from SourceTimestamps.

The model was trained on rows sampled every ``step_s`` seconds (the manifest's
``input_spec.step_s``; simulated seconds for the simulator). Values arrive whenever the server
publishes them. :class:`ToolWindow` keeps each sensor's last value and its source timestamp and,
when a value stamped at or after the next grid point arrives, closes that grid row with the last
value of each sensor stamped before it (sample and hold, like the exporter's periodic samples).
A sensor's last good value holds while the tool's stream goes on: a subscription (or a poll)
sends a value only when it changes, so a sensor that sits still behind a deadband, or a stuck
sensor the server still calls Good, is held exactly as the exporter's samples hold it. Once the
tool's stream stops (the link is down) the held values expire ``max_stale_steps`` steps after
the tool's last value, and a Bad value is missing until a good one comes (NaN in the row): never
a made-up number. A jump of more than a window (an outage, a restarted server)
starts the window afresh rather than filling it with empty rows, and so does source time going
back by more than a window.

With a model whose spec has ``reference_rows`` (``shared.reference``), each closed row also goes
through the tool's :class:`~shared.reference.ReferenceTracker`, so every row carries the tool's
own reference and the hours since it last came back up, exactly as the trainer computes them.
The tracker's state is what the edge keeps across restarts (:mod:`edge.references`).

A second tracker, ``watching``, takes the first rows the edge sees of the tool in each state,
from its start (and again after a gap; kept across restarts with the reference), never waiting
for a return from down: not a model input (the model was trained on the reference above), only
the baseline an alert's evidence falls back on while the tool has no reference yet
(``shared.evidence``: what moved since the edge began watching).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.equipment import E10State, tool_type
from shared.features import FeatureSpec, build_features
from shared.reference import ReferenceTracker

NAN = float("nan")
# A tool that is down has failed or is being maintained: no risk to predict until it is back,
# and its return starts a new reference.
DOWN = frozenset({E10State.UNSCHEDULED_DOWN.value, E10State.SCHEDULED_DOWN.value})
# Running wafers: production, and the engineering (qualification) runs after maintenance, as the
# trainer's windows count them (cloud.training.simdata) and the simulator's physics runs them.
PROCESSING = frozenset({E10State.PRODUCTIVE.value, E10State.ENGINEERING.value})


@dataclass(frozen=True, slots=True)
class ReadyWindow:
    """A full window, ready for the model."""

    tool_id: str
    tool_type: str
    ts: float  # grid time of the last row
    values: np.ndarray  # (W, S) raw, NaN = missing
    processing: np.ndarray  # (W,)
    closed_at: float  # wall clock (monotonic) when the last row closed: decision latency starts here
    ref: np.ndarray | None = None  # (W, S) the tool's reference per row, NaN = unknown
    since_up_h: np.ndarray | None = None  # (W,) hours since the tool came back up, NaN = unknown
    watch_ref: np.ndarray | None = None  # (W, S) the edge's first readings of the tool per row's state


class ToolWindow:
    """One tool's sensor rows on the grid ``k · step_s``; see the module docstring."""

    __slots__ = (
        "_back",
        "_count",
        "_filled",
        "_new_rows",
        "_proc",
        "_ref",
        "_since",
        "_ts",
        "_values",
        "_watch",
        "bad_s",
        "closed_at",
        "last",
        "last_ts",
        "latest",
        "max_age",
        "next_t",
        "processing",
        "reference",
        "sensors",
        "state",
        "step",
        "tool_id",
        "tool_type",
        "unchanged_s",
        "watching",
        "window",
    )

    def __init__(
        self,
        tool_id: str,
        tool_type_name: str,
        window: int,
        step_s: float,
        max_stale_steps: float,
        reference_rows: int = 0,
    ):
        self.tool_id = tool_id
        self.tool_type = tool_type_name
        self.sensors = tool_type(tool_type_name).sensor_names
        self.window = window
        self.step = float(step_s)
        self.max_age = max_stale_steps * self.step
        n = len(self.sensors)
        self.last = np.full(n, NAN)
        self.last_ts = np.full(n, -math.inf)
        # The tool's latest source timestamp before the row being closed: the stream vouches that
        # sensors it did not update were unchanged until then.
        self.latest = -math.inf
        self._back = 0  # far-back values in a row (see update)
        self.processing = False
        self.state = ""
        self.next_t: float | None = None
        self._values = np.full((window, n), NAN, dtype=np.float32)  # ring buffer
        self._proc = np.zeros(window, dtype=np.float32)
        self._ts = np.zeros(window)
        self.reference = ReferenceTracker(n, reference_rows) if reference_rows > 0 else None
        self._ref = np.full((window, n), NAN) if self.reference is not None else None
        self._since = np.full(window, NAN) if self.reference is not None else None
        self.watching = ReferenceTracker(n, reference_rows) if reference_rows > 0 else None
        self._watch = np.full((window, n), NAN) if self.watching is not None else None
        self._count = 0  # rows written in total
        self._filled = 0  # rows in the buffer since the last restart of the window
        self._new_rows = 0  # rows since the last take()
        self.closed_at = 0.0
        # Sensor health on the grid's clock (telemetry; the cloud judges it): per sensor, the
        # processing time its value has not changed (a stuck sensor the server still calls Good;
        # idle time does not count, where a clipped idle value may sit still), and the time
        # without a good value while the tool's other sensors report (a link down is not a sensor's).
        self.unchanged_s = np.zeros(n)
        self.bad_s = np.zeros(n)

    def update(self, sensor: int, value: float, ts: float) -> None:
        """One sensor value (NaN when Bad) stamped ``ts``."""
        if self.next_t is None:
            self.next_t = (math.floor(ts / self.step) + 1) * self.step
        elif ts >= self.next_t:
            self.close_until(ts)
            self._back = 0
        elif ts < self.next_t - self.step * (self.window + 1):
            # Far back: a quiet sensor's SourceTimestamp is when it last changed (a poll, or the
            # first values of a new subscription), which can be days old while the tool's other
            # sensors are current. Only a whole round of far-back values, none current between
            # them, means source time itself went back (a restarted server, a reset clock).
            self._back += 1
            if self._back > len(self.sensors):
                self.restart(ts)
        else:
            self._back = 0
        self.last[sensor] = value
        self.last_ts[sensor] = ts
        if ts > self.latest:
            self.latest = ts

    def restart(self, ts: float) -> None:
        """Source time went back by more than a window (a restarted simulator, a reset clock)."""
        self.next_t = (math.floor(ts / self.step) + 1) * self.step
        self.last[:] = NAN
        self.last_ts[:] = -math.inf
        self.latest = -math.inf
        self._back = 0
        self._filled = 0
        self.unchanged_s[:] = 0.0
        self.bad_s[:] = 0.0
        if self.reference is not None:
            # A new source clock: the old rows' times mean nothing against it.
            self.reference.forget()
            self.reference.last_ts = NAN
        if self.watching is not None:
            self.watching.forget()
            self.watching.last_ts = NAN

    def set_state(self, state: str, ts: float) -> None:
        if self.next_t is not None and ts >= self.next_t:
            self.close_until(ts)
        self.state = state
        self.processing = state in PROCESSING

    def close_until(self, ts: float, now: float = 0.0) -> None:
        """Close every grid row at or before ``ts``."""
        if self.next_t is None:
            return
        steps = int((ts - self.next_t) // self.step) + 1
        if steps > self.window:
            # A gap longer than a window: only the last ``window`` rows could matter, and they
            # would be empty. Start afresh.
            self.next_t += (steps - 1) * self.step
            self._filled = 0
            steps = 1
        for _ in range(steps):
            g = self.next_t
            fresh = (g - np.maximum(self.last_ts, self.latest)) <= self.max_age
            row = self._count % self.window
            prev = self._values[(row - 1) % self.window].copy() if self._filled else None
            self._values[row] = np.where(fresh, self.last, NAN)
            self._sensor_health(self._values[row], prev)
            self._proc[row] = 1.0 if self.processing else 0.0
            self._ts[row] = g
            if self.reference is not None:
                assert self._ref is not None and self._since is not None
                self._ref[row], self._since[row] = self.reference.update(
                    g, self._values[row], self.processing, self.state in DOWN
                )
            if self.watching is not None:
                assert self._watch is not None
                self._watch[row] = self._watched(g, self._values[row])
            self._count += 1
            self._filled += 1
            self._new_rows += 1
            self.next_t = g + self.step
        self.closed_at = now

    def _watched(self, g: float, values: np.ndarray) -> np.ndarray:
        """The row's baseline from the first rows the edge saw of the tool (module docstring):
        rows while down do not count; after a gap, or at the start, watching begins again."""
        assert self.watching is not None
        if self.state in DOWN:
            return np.full(len(values), NAN)
        if not self.watching.known_start:
            self.watching.known_start, self.watching.since_s = True, -1.0
        ref, _ = self.watching.update(g, values, self.processing, False)
        return ref

    def _sensor_health(self, row: np.ndarray, prev: np.ndarray | None) -> None:
        """Advance :attr:`unchanged_s` and :attr:`bad_s` by the row just closed."""
        good = np.isfinite(row)
        if good.any():
            self.bad_s = np.where(good, 0.0, self.bad_s + self.step)
        if prev is None:
            return
        compared = good & np.isfinite(prev)
        same = compared & (row == prev)
        self.unchanged_s[compared & ~same] = 0.0
        if self.processing:
            self.unchanged_s[same] += self.step

    def ready(self, every: int) -> bool:
        """A full window with at least ``every`` new rows since the last :meth:`take`."""
        return self._filled >= self.window and self._new_rows >= every

    def take(self) -> ReadyWindow:
        """The current window in time order (oldest row first)."""
        self._new_rows = 0
        start = self._count % self.window
        order = np.r_[start : self.window, 0:start]
        return ReadyWindow(
            tool_id=self.tool_id,
            tool_type=self.tool_type,
            ts=float(self._ts[(self._count - 1) % self.window]),
            values=self._values[order].copy(),
            processing=self._proc[order].copy(),
            closed_at=self.closed_at,
            ref=None if self._ref is None else self._ref[order].copy(),
            since_up_h=None if self._since is None else self._since[order].copy(),
            watch_ref=None if self._watch is None else self._watch[order].copy(),
        )

    @property
    def rows_written(self) -> int:
        """Grid rows closed since the window was made (telemetry counts its period with it)."""
        return self._count

    @property
    def rows_held(self) -> int:
        """Rows in the buffer since the window last restarted (a gap or a new model)."""
        return self._filled

    def newest_row_ts(self) -> float | None:
        """The source time of the newest grid row; None before the first (telemetry's clock)."""
        return float(self._ts[(self._count - 1) % self.window]) if self._filled else None

    def take_rows(self, n: int) -> np.ndarray:
        """The last ``n`` rows (oldest first) without marking anything as taken (telemetry)."""
        n = min(n, self._filled, self.window)
        idx = [(self._count - n + k) % self.window for k in range(n)]
        return self._values[idx].copy()


def features(win: ReadyWindow, spec: FeatureSpec) -> np.ndarray:
    """(W, F) float32 model input for one window (``shared.features``)."""
    if spec.reference_rows > 0 and win.ref is None:
        raise ValueError(f"{win.tool_id}: the model needs the tool's reference; this window has none")
    return build_features(win.values, win.processing, win.tool_type, spec, win.ref, win.since_up_h)
