"""Each tool's own reference: what its sensors read just after it last came back up.

Tools of one type differ: each has its own sensor gains and a drift that grows with the days
since maintenance. On the simulator's fleet those differences are as large as a degradation
signature three days before a failure, so a model that sees only the last day of a tool
cannot tell a healthy tool that reads high from a degrading one (bench/results/models.md, B2).
The reference gives the model the tool's own starting point: after the tool returns from a
down state (maintenance or repair), the mean of its first ``rows`` grid rows in each operating
state (processing, idle), per sensor. From then on each row carries the reference of its own
state and the hours since the return, and :func:`shared.features.build_features` turns them
into ``dz_*`` features (the reading minus the reference, in the type's scaled units).

:class:`ReferenceTracker` is causal and consumes one grid row at a time, so the edge (row by
row, persisted across restarts) and the trainer (:func:`reference_series` over a whole export)
compute the same thing. Until a return has been seen, or while a state's first ``rows`` rows
are still being collected, the reference is unknown (NaN): never guessed. A gap in the rows
longer than ``max_gap_s`` (the edge was off or cut from the server) forgets the reference,
because maintenance may have happened unseen during it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

NAN = float("nan")
MAX_GAP_S = 2 * 3600.0  # shorter than any maintenance or repair the simulator models


class ReferenceTracker:
    """One tool's reference (see the module docstring). ``update`` once per grid row."""

    __slots__ = (
        "count",
        "known_start",
        "last_ts",
        "max_gap_s",
        "n_sensors",
        "rows",
        "seen",
        "since_s",
        "sums",
    )

    def __init__(self, n_sensors: int, rows: int, max_gap_s: float = MAX_GAP_S) -> None:
        if rows < 1:
            raise ValueError(f"reference rows must be at least 1, got {rows}")
        self.n_sensors = n_sensors
        self.rows = rows
        self.max_gap_s = max_gap_s
        self.sums = np.zeros((2, n_sensors))  # [idle, processing] × sensor
        self.count = np.zeros((2, n_sensors))  # valid values summed
        self.seen = [0, 0]  # rows of each state since the return (capped at ``rows``)
        self.known_start = False  # a return from down has been seen since the tracker started
        self.since_s = NAN  # seconds since that return
        self.last_ts = NAN  # grid time of the last row

    def forget(self) -> None:
        """Nothing is known until the next return from down."""
        self.sums[:] = 0.0
        self.count[:] = 0.0
        self.seen = [0, 0]
        self.known_start = False
        self.since_s = NAN

    def update(self, ts: float, values: np.ndarray, processing: bool, down: bool) -> tuple[np.ndarray, float]:
        """One grid row → (reference of the row's state (S,), NaN where unknown; hours since return).

        ``values`` are the row's raw readings (NaN where missing), ``ts`` its grid time.
        """
        gap = ts - self.last_ts
        if math.isfinite(gap) and gap > self.max_gap_s:
            self.forget()
        step = gap if math.isfinite(gap) and gap > 0 else 0.0
        self.last_ts = ts
        unknown = np.full(self.n_sensors, NAN)
        if down:
            # Down: the episode is over; the next up row starts a new reference.
            self.forget()
            self.known_start = True
            self.since_s = -1.0  # marks "down now": the first up row restarts at 0
            return unknown, NAN
        if not self.known_start:
            return unknown, NAN
        self.since_s = 0.0 if self.since_s < 0 else self.since_s + step
        p = 1 if processing else 0
        if self.seen[p] < self.rows:
            ok = np.isfinite(values)
            self.sums[p] += np.where(ok, values, 0.0)
            self.count[p] += ok
            self.seen[p] += 1
        if self.seen[p] < self.rows:
            return unknown, self.since_s / 3600.0
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = np.where(self.count[p] > 0, self.sums[p] / np.maximum(self.count[p], 1.0), NAN)
        return ref, self.since_s / 3600.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state, for the edge to keep across restarts."""
        return {
            "n_sensors": self.n_sensors,
            "rows": self.rows,
            "sums": self.sums.tolist(),
            "count": self.count.tolist(),
            "seen": list(self.seen),
            "known_start": self.known_start,
            "since_s": None if math.isnan(self.since_s) else self.since_s,
            "last_ts": None if math.isnan(self.last_ts) else self.last_ts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], max_gap_s: float = MAX_GAP_S) -> ReferenceTracker:
        """Rebuild from :meth:`to_dict`; raises ValueError on a state that does not fit."""
        t = cls(int(data["n_sensors"]), int(data["rows"]), max_gap_s)
        sums = np.asarray(data["sums"], dtype=np.float64)
        count = np.asarray(data["count"], dtype=np.float64)
        if sums.shape != t.sums.shape or count.shape != t.count.shape:
            raise ValueError(f"reference state has shape {sums.shape}, expected {t.sums.shape}")
        seen = [int(x) for x in data["seen"]]
        if len(seen) != 2:
            raise ValueError("reference state needs two row counts (idle, processing)")
        t.sums, t.count, t.seen = sums, count, seen
        t.known_start = bool(data["known_start"])
        t.since_s = NAN if data.get("since_s") is None else float(data["since_s"])
        t.last_ts = NAN if data.get("last_ts") is None else float(data["last_ts"])
        return t


def reference_series(
    t_s: np.ndarray, values: np.ndarray, processing: np.ndarray, down: np.ndarray, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """A whole series of grid rows → (ref (T, S) NaN where unknown, hours since return (T,))."""
    tracker = ReferenceTracker(values.shape[1], rows)
    ref = np.full(values.shape, NAN)
    since = np.full(len(t_s), NAN)
    for i in range(len(t_s)):
        ref[i], since[i] = tracker.update(float(t_s[i]), values[i], bool(processing[i]), bool(down[i]))
    return ref, since
