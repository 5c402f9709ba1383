"""How sure a share measured on few cases is: Wilson's score interval (numpy only).

Used where the cloud states a precision or a warned share from a few dozen alerts or failures:
the figures a release's alert rule was chosen on (``cloud.training.alert_choice``) and the
field report of the alerts (``cloud.field_report``). Wilson's interval stays inside [0, 1] and is
not empty at 0 of n or n of n, unlike the normal approximation.
"""

from __future__ import annotations

import math

Z90 = 1.6449  # standard errors of a two-sided 90% interval


def wilson(k: float, n: float, z: float = Z90) -> tuple[float, float]:
    """Wilson's interval for ``k`` of ``n`` (two-sided, ``z`` standard errors; NaN when n is 0)."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"wilson: {k} of {n} is not a share")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
