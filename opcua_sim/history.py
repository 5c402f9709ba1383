"""What a tool records as it runs: state segments, degradation episodes, maintenance, sensor
faults, setpoint changes and failures. The exporter turns a :class:`History` into arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DAY = 86400.0
HOUR = 3600.0
INF = math.inf


@dataclass
class SensorFault:
    sensor: int
    kind: str  # "dropout" (Bad status, NaN) or "stuck" (the value freezes)
    start: float
    end: float
    held: float | None = None  # the frozen value of a stuck sensor (server side)


@dataclass
class History:
    """What the exporter needs to rebuild a tool's run as arrays."""

    seg_t: list[float] = field(default_factory=list)
    seg_state: list[int] = field(default_factory=list)
    seg_recipe: list[int] = field(default_factory=list)
    seg_lot_start: list[float] = field(default_factory=list)
    episodes: list[tuple[int, float, float, float]] = field(default_factory=list)  # mode, onset, end, ttf
    maint_t: list[float] = field(default_factory=list)
    sp_t: list[float] = field(default_factory=list)
    sp_values: list[np.ndarray] = field(default_factory=list)
    faults: list[SensorFault] = field(default_factory=list)
    failures: list[tuple[float, int, bool]] = field(default_factory=list)  # t, ALL_MODES index, sudden
