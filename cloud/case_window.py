"""A hard case's window as named series, for people to look at (the console plots them).

The window is the edge model's input (:mod:`shared.features`): per step, the tool type's sensors
z-scored, their missing flags, the type one-hot and ``processing``; with the tool's own reference,
also each sensor's deviation from it (``dz``). What a person reads is returned: each sensor under
its name (with the steps where it was missing), its deviation from the reference when the window
has one and the reference is known somewhere in it, and ``processing``.

With the scaler the model was trained with (its manifest's ``input_spec``), sensors come back in
their own units (``z × std + mean``): a missing reading is ``None`` (the feature holds the type's
mean there, which was never measured), steps where the model saw a z clipped at ±20 are listed
(the value shown is the clip's bound), and ``typical`` is the type's mean. The deviation from the
reference comes back as a difference in the sensor's unit. Without the scaler (a model this cloud
never registered, or a type its scaler lacks) every series stays in z-scores and says so. A window
of any other width (another model's features) comes back column by column as ``f0``, ``f1``, …
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.equipment import MAX_SENSORS, tool_type
from shared.features import feature_names

Z_CLIP = 20.0  # shared.features clips z and dz here


def _values(col: np.ndarray, digits: int = 4) -> list[float | None]:
    return [None if not np.isfinite(v) else round(float(v), digits) for v in col]


def _digits(std: float) -> int:
    """Enough decimals to show a thousandth of the type's spread, at least 2."""
    return max(2, int(np.ceil(-np.log10(std))) + 3) if std > 0 else 4


def type_scaler(
    input_spec: Mapping[str, Any] | None, tool_type_name: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) of ``tool_type_name`` from a manifest's ``input_spec``; None where it has none."""
    scaler = (input_spec or {}).get("scaler")
    own = scaler.get(tool_type_name) if isinstance(scaler, Mapping) else None
    if not isinstance(own, Mapping):
        return None
    try:
        mean = np.asarray(own["mean"], dtype=np.float64)
        std = np.asarray(own["std"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    if mean.ndim != 1 or mean.shape != std.shape or not np.all(np.isfinite(mean)) or not np.all(std > 0):
        return None
    return mean, std


def named_series(
    tool_type_name: str, window: np.ndarray, scaler: tuple[np.ndarray, np.ndarray] | None = None
) -> list[dict[str, Any]]:
    """``[{"name", "values", "unit", "missing"?, "clipped"?, "typical"?}]`` for a (T, F) window of a
    tool of ``tool_type_name``; ``scaler`` (from :func:`type_scaler`) turns z back into units."""
    width = window.shape[1]
    layouts = [feature_names(), feature_names(reference=True)]
    names = next((n for n in layouts if len(n) == width), None)
    if names is None:
        return [{"name": f"f{i}", "values": _values(window[:, i]), "unit": ""} for i in range(width)]
    try:
        specs = tool_type(tool_type_name).sensors
        sensors: tuple[str, ...] = tuple(s.name for s in specs)
        units: tuple[str, ...] = tuple(s.unit for s in specs)
    except KeyError:  # a type this cloud does not know: the columns keep their places
        sensors = tuple(f"sensor {i}" for i in range(MAX_SENSORS))
        units = ("",) * MAX_SENSORS
    if scaler is not None and len(scaler[0]) != len(sensors):
        scaler = None  # fitted for another layout of this type: z-scores rather than wrong units
    col = {n: i for i, n in enumerate(names)}
    ref_known = f"dz_{0:02d}" in col and window[:, col["ref_known"]].max() > 0.5  # else dz is all 0
    out: list[dict[str, Any]] = []
    for i, sensor in enumerate(sensors):
        z = window[:, col[f"z_{i:02d}"]].astype(np.float64)
        missing = window[:, col[f"miss_{i:02d}"]] > 0.5
        series: dict[str, Any] = {"name": sensor, "missing": [int(j) for j in np.flatnonzero(missing)]}
        if scaler is None:
            series |= {"values": _values(z), "unit": "z"}
        else:
            mean, std = float(scaler[0][i]), float(scaler[1][i])
            digits = _digits(std)
            clipped = np.flatnonzero(~missing & (np.abs(z) >= Z_CLIP - 1e-3))
            series |= {
                "values": _values(np.where(missing, np.nan, z * std + mean), digits),
                "unit": units[i],
                "typical": round(mean, digits),
            }
            if len(clipped):
                series["clipped"] = [int(j) for j in clipped]
        out.append(series)
        if ref_known:
            dz = window[:, col[f"dz_{i:02d}"]].astype(np.float64)
            if scaler is None:
                out.append({"name": f"{sensor} vs its reference", "values": _values(dz), "unit": "z"})
            else:
                std = float(scaler[1][i])
                diff = _values(dz * std, _digits(std))
                out.append({"name": f"{sensor} − its reference", "values": diff, "unit": units[i]})
    out.append({"name": "processing", "values": _values(window[:, col["processing"]]), "unit": ""})
    return out
