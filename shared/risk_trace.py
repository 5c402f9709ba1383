"""A tool's risk over time, thinned for sending and for charts with every peak kept.

The edge keeps one point per inference step (the window's end, on the equipment's clock) and
sends them with each telemetry message (``Telemetry.risk_trace``); the cloud stores them and
thins them again for the console's chart. Both thin the same way: into equal time buckets, each
giving its newest time and, per mode, its highest risk, because a peak the chart or the message
dropped is the one an engineer would have wanted to see.
"""

from __future__ import annotations

from collections.abc import Sequence

RiskAt = tuple[float, dict[str, float]]  # (source time, risk per mode)


def thin_peaks(points: Sequence[RiskAt], max_points: int) -> list[RiskAt]:
    """``points`` (oldest first) as at most ``max_points``: unchanged when they fit, else one per
    equal time bucket, with the bucket's newest time and per mode its highest risk."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if len(points) <= max_points:
        return list(points)
    t0 = points[0][0]
    width = (points[-1][0] - t0) / max_points or 1.0
    buckets: dict[int, RiskAt] = {}
    for ts, risk in points:
        b = min(int((ts - t0) / width), max_points - 1)
        peak = buckets[b][1] if b in buckets else {}
        for mode, value in risk.items():
            peak[mode] = max(value, peak.get(mode, 0.0))
        buckets[b] = (ts, peak)
    return [buckets[b] for b in sorted(buckets)]
