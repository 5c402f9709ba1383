"""Alarm flood suppression: a chattering or flooding tool cannot fill the outbox with alarms.

The edge forwards each OPC UA alarm of its tools as an ``alarm`` event, and events are never
dropped from the outbox (they are labels and history; past the hard ceiling the outbox refuses
new critical messages, alerts included). A tool whose alarm toggles around its limit ten times a
second (a chattering alarm, ISA-18.2's "three or more in a minute") would get there. So each
tool has a budget, a token bucket of ``per_tool_per_hour`` alarms with a burst of ``burst``:
alarms past it are held back, counted by message, and sent as one summary ``alarm`` event per
tool once the tool has had no alarm held back for ``quiet_s`` (or every ``summary_every_s`` while
the flood goes on, and at the edge's stop), so the cloud's history says how many, which messages
and when, in one row instead of thousands. A held-back alarm still names the failure mode it
carries for the failure event that follows it (``edge.pipeline``).

Bounds: per tool at most :data:`MAX_MESSAGES` distinct messages are counted by name, the rest
together as ``(other messages)``; the held-back state is one small record per tool.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.decisions import TokenBucket

MAX_MESSAGES = 20  # distinct messages counted by name in one summary
OTHER = "(other messages)"


@dataclass
class _Held:
    first_ts: float  # equipment clock, of the first alarm held back
    last_ts: float
    last_wall: float  # monotonic, of the last one held back
    since_wall: float  # monotonic, of the first one (or of the last summary of this flood)
    count: int = 0
    severity: int = 0  # the highest held back
    messages: Counter[str] = field(default_factory=Counter)


class AlarmFlood:
    """Per-tool alarm budget; thread-safe (alarms arrive on the event loop, summaries are taken
    from the scheduler's thread)."""

    def __init__(
        self,
        per_tool_per_hour: float,
        burst: int,
        quiet_s: float,
        summary_every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_tool_per_hour <= 0 or burst < 1 or quiet_s <= 0 or summary_every_s <= 0:
            raise ValueError("alarm budget: a positive rate, a burst of at least 1, positive intervals")
        self.rate_per_s = per_tool_per_hour / 3600.0
        self.burst = burst
        self.quiet_s = quiet_s
        self.summary_every_s = summary_every_s
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()

    def admit(self, tool: str, ts: float, message: str, severity: int) -> bool:
        """True: send this alarm; False: it is held back (counted for the tool's summary)."""
        with self._lock:
            bucket = self._buckets.get(tool)
            if bucket is None:
                bucket = self._buckets[tool] = TokenBucket(self.rate_per_s, self.burst, self.clock)
            if bucket.take():
                return True
            now = self.clock()
            held = self._held.get(tool)
            if held is None:
                held = self._held[tool] = _Held(first_ts=ts, last_ts=ts, last_wall=now, since_wall=now)
            held.count += 1
            held.first_ts, held.last_ts = min(held.first_ts, ts), max(held.last_ts, ts)
            held.last_wall = now
            held.severity = max(held.severity, severity)
            key = message if message in held.messages or len(held.messages) < MAX_MESSAGES else OTHER
            held.messages[key] += 1
            return False

    def summaries(self, force: bool = False) -> list[tuple[str, float, dict[str, Any]]]:
        """(tool, equipment time, detail) of each flood to report now: quiet for ``quiet_s``, held
        for ``summary_every_s`` (a flood that goes on is reported as it goes), or all (``force``)."""
        now = self.clock()
        out = []
        with self._lock:
            for tool, held in list(self._held.items()):
                quiet = now - held.last_wall >= self.quiet_s
                if not (force or quiet or now - held.since_wall >= self.summary_every_s):
                    continue
                del self._held[tool]
                top = ", ".join(f"{m} ×{n}" for m, n in held.messages.most_common(3))
                detail = {
                    "message": f"{held.count} alarms held back in a flood (more than "
                    f"{self.rate_per_s * 3600:g} an hour, burst {self.burst}): {top}"[:500],
                    "severity": held.severity,
                    "source": "edge",
                    "held_back": held.count,
                    "first_ts": held.first_ts,
                    "last_ts": held.last_ts,
                    "messages": dict(held.messages.most_common()),
                }
                out.append((tool, held.last_ts, detail))
        return out
