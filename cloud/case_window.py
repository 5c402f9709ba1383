"""A hard case's window as named series, for people to look at (the console plots them).

The window is the edge model's input (:mod:`shared.features`): per step, the tool type's sensors
z-scored, their missing flags, the type one-hot and ``processing``; with the tool's own reference,
also each sensor's deviation from it (``dz``). What a person reads is returned: each sensor's z
under the sensor's name (with the steps where it was missing), its deviation from the reference
when the window has one and the reference is known somewhere in it, and ``processing``. A window
of any other width (another model's features) comes back column by column as ``f0``, ``f1``, …
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.equipment import MAX_SENSORS, tool_type
from shared.features import feature_names


def _values(col: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in col]


def named_series(tool_type_name: str, window: np.ndarray) -> list[dict[str, Any]]:
    """``[{"name", "values", "missing"?}]`` for a (T, F) window of a tool of ``tool_type_name``."""
    width = window.shape[1]
    layouts = [feature_names(), feature_names(reference=True)]
    names = next((n for n in layouts if len(n) == width), None)
    if names is None:
        return [{"name": f"f{i}", "values": _values(window[:, i])} for i in range(width)]
    try:
        sensors: tuple[str, ...] = tool_type(tool_type_name).sensor_names
    except KeyError:  # a type this cloud does not know: the columns keep their places
        sensors = tuple(f"sensor {i}" for i in range(MAX_SENSORS))
    col = {n: i for i, n in enumerate(names)}
    out: list[dict[str, Any]] = []
    for i, sensor in enumerate(sensors):
        missing = window[:, col[f"miss_{i:02d}"]] > 0.5
        out.append(
            {
                "name": sensor,
                "values": _values(window[:, col[f"z_{i:02d}"]]),
                "missing": [int(j) for j in np.flatnonzero(missing)],
            }
        )
        if f"dz_{i:02d}" in col and window[:, col["ref_known"]].max() > 0.5:  # else dz is all 0
            dz = window[:, col[f"dz_{i:02d}"]]
            out.append({"name": f"{sensor} vs its reference", "values": _values(dz)})
    out.append({"name": "processing", "values": _values(window[:, col["processing"]])})
    return out
