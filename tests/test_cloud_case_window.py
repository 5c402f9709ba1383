"""A hard case's window as named series (what the console plots)."""

from __future__ import annotations

import numpy as np

from cloud.case_window import named_series, type_scaler
from shared.equipment import tool_type
from shared.features import FeatureSpec, build_features, feature_names, fit_scaler


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
    assert series[1]["unit"] == "z", "without the model's scaler the values are z-scores and say so"
    assert series[-1]["values"][0] == names.index("processing")


def test_the_reference_deviation_follows_each_sensor_and_other_widths_keep_their_columns():
    names = feature_names(reference=True)
    series = named_series("cvd", _window(names))
    first = tool_type("cvd").sensor_names[0]
    assert [s["name"] for s in series[:2]] == [first, f"{first} vs its reference"]
    assert series[1]["unit"] == "z"
    assert series[1]["values"][0] == names.index("dz_00")
    unknown_ref = _window(names)
    unknown_ref[:, names.index("ref_known")] = 0.0  # no reference yet: the deviations are all 0
    assert not any("reference" in s["name"] for s in named_series("cvd", unknown_ref))
    assert [s["name"] for s in named_series("plasma_etch", _window(["a", "b", "c"]))] == ["f0", "f1", "f2"]
    unknown = named_series("no_such_type", _window(feature_names()))
    assert unknown[0]["name"] == "sensor 0" and unknown[-1]["name"] == "processing"


def _spec(ttype: str, reference_rows: int = 0) -> FeatureSpec:
    ttype_spec = tool_type(ttype)
    rng = np.random.default_rng(0)
    nominal = np.array([s.nominal for s in ttype_spec.sensors])
    spread = np.array([max(s.noise, 1e-3) * 5 for s in ttype_spec.sensors])
    scaler = fit_scaler({ttype: nominal + spread * rng.standard_normal((200, len(nominal)))})
    return FeatureSpec(window=6, step_s=60.0, scaler=scaler, reference_rows=reference_rows)


def test_with_the_models_scaler_sensors_come_back_in_their_units():
    spec = _spec("plasma_etch")
    ttype = tool_type("plasma_etch")
    raw = np.tile([s.nominal for s in ttype.sensors], (6, 1)).astype(np.float64)
    raw[:, 0] += np.arange(6) * 0.5
    raw[3, 1] = np.nan  # a Bad reading: the feature holds the mean there, never shown as a value
    raw[4, 2] = ttype.sensors[2].nominal + 1e6  # beyond z = 20: the model saw the clip
    window = build_features(raw, np.ones(6), "plasma_etch", spec)
    scaler = type_scaler(spec.to_dict(), "plasma_etch")
    assert scaler is not None
    series = named_series("plasma_etch", window, scaler)
    first = series[0]
    assert first["unit"] == ttype.sensors[0].unit
    assert abs(first["typical"] - scaler[0][0]) <= 1e-3 * scaler[1][0]
    np.testing.assert_allclose(first["values"], raw[:, 0], rtol=1e-4, atol=1e-3)
    assert series[1]["values"][3] is None and series[1]["missing"] == [3]
    assert series[2]["clipped"] == [4] and series[2]["values"][4] < raw[4, 2]
    assert "clipped" not in first


def test_the_reference_deviation_comes_back_in_units_and_a_scaler_that_does_not_fit_is_not_used():
    spec = _spec("cvd", reference_rows=12)
    ttype = tool_type("cvd")
    raw = np.tile([s.nominal for s in ttype.sensors], (6, 1)).astype(np.float64)
    ref = raw.copy()
    raw[:, 0] += 2.0  # 2 units above its own reference throughout
    window = build_features(raw, np.ones(6), "cvd", spec, ref=ref, since_up_h=np.full(6, 10.0))
    scaler = type_scaler(spec.to_dict(), "cvd")
    series = named_series("cvd", window, scaler)
    assert series[1]["name"] == f"{ttype.sensors[0].name} − its reference"
    assert series[1]["unit"] == ttype.sensors[0].unit
    np.testing.assert_allclose(series[1]["values"], 2.0, rtol=1e-3)
    assert type_scaler(spec.to_dict(), "plasma_etch") is None, "another type's scaler"
    assert type_scaler({"scaler": {"mean": [0.0], "std": [1.0]}}, "cvd") is None  # C-MAPSS' layout
    assert type_scaler({"scaler": {"cvd": {"mean": [0.0], "std": [0.0]}}}, "cvd") is None
    short = (scaler[0][:2], scaler[1][:2])  # fitted for another sensor layout of the type
    assert named_series("cvd", window, short)[0]["unit"] == "z"
