"""A hard case's window as named series (what the console plots)."""

from __future__ import annotations

import numpy as np

from cloud.case_window import named_series
from shared.equipment import tool_type
from shared.features import feature_names


def _window(names: list[str], steps: int = 6) -> np.ndarray:
    """Each column holds its own index, so a series shows which column it was read from."""
    return np.tile(np.arange(len(names), dtype=np.float32), (steps, 1))


def test_sensor_columns_are_named_for_the_tool_types_sensors():
    names = feature_names()
    window = _window(names)
    window[:, [i for i, n in enumerate(names) if n.startswith("miss_")]] = 0.0
    window[2, names.index("miss_01")] = 1.0
    series = named_series("plasma_etch", window)
    sensors = tool_type("plasma_etch").sensor_names
    assert [s["name"] for s in series] == [*sensors, "processing"]
    assert series[1]["values"][0] == names.index("z_01") and series[1]["missing"] == [2]
    assert series[-1]["values"][0] == names.index("processing")


def test_the_reference_deviation_follows_each_sensor_and_other_widths_keep_their_columns():
    names = feature_names(reference=True)
    series = named_series("cvd", _window(names))
    first = tool_type("cvd").sensor_names[0]
    assert [s["name"] for s in series[:2]] == [first, f"{first} vs its reference"]
    assert series[1]["values"][0] == names.index("dz_00")
    unknown_ref = _window(names)
    unknown_ref[:, names.index("ref_known")] = 0.0  # no reference yet: the deviations are all 0
    assert not any("reference" in s["name"] for s in named_series("cvd", unknown_ref))
    assert [s["name"] for s in named_series("plasma_etch", _window(["a", "b", "c"]))] == ["f0", "f1", "f2"]
    unknown = named_series("no_such_type", _window(feature_names()))
    assert unknown[0]["name"] == "sensor 0" and unknown[-1]["name"] == "processing"
