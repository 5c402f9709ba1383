"""Each tool's own reference (shared.reference): the tracker, its features, the edge's copy of
what the trainer computes, and keeping it across an edge restart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cloud.training import simdata
from edge import references
from edge.windows import ToolWindow, features
from shared.equipment import E10_CODES, MAX_SENSORS
from shared.features import FeatureSpec, Scaler, build_features
from shared.reference import MAX_GAP_S, ReferenceTracker, reference_series

STEP = 1800.0
STATE_OF_CODE = {code: state.value for state, code in E10_CODES.items()}


def test_reference_is_the_mean_of_the_first_rows_of_each_state_after_a_return():
    tr = ReferenceTracker(n_sensors=2, rows=2)
    ts = iter(np.arange(100) * STEP)
    # Before any return from down nothing is known, whatever the tool reads.
    ref, since = tr.update(next(ts), np.array([5.0, 5.0]), processing=True, down=False)
    assert np.isnan(ref).all() and math.isnan(since)
    tr.update(next(ts), np.array([0.0, 0.0]), processing=False, down=True)
    # Up again: processing rows 1, 3 (sensor 1 missing in one), idle row 2.
    ref, since = tr.update(next(ts), np.array([1.0, 10.0]), processing=True, down=False)
    assert np.isnan(ref).all() and since == 0.0
    ref, _ = tr.update(next(ts), np.array([7.0, 7.0]), processing=False, down=False)
    assert np.isnan(ref).all()  # one idle row of two
    ref, since = tr.update(next(ts), np.array([3.0, math.nan]), processing=True, down=False)
    assert ref.tolist() == [2.0, 10.0] and since == 1.0  # two rows of 30 min after the return
    # Later processing rows do not move it; the idle reference completes on its own rows.
    ref, _ = tr.update(next(ts), np.array([100.0, 100.0]), processing=True, down=False)
    assert ref.tolist() == [2.0, 10.0]
    ref, _ = tr.update(next(ts), np.array([9.0, 9.0]), processing=False, down=False)
    assert ref.tolist() == [8.0, 8.0]
    # The saved state carries on exactly as the tracker would have.
    again = ReferenceTracker.from_dict(json.loads(json.dumps(tr.to_dict())))
    t = next(ts)
    a, b = tr.update(t, np.array([1.0, 1.0]), True, False), again.update(t, np.array([1.0, 1.0]), True, False)
    assert a[0].tolist() == b[0].tolist() == [2.0, 10.0] and a[1] == b[1] == 2.5
    # A gap longer than MAX_GAP_S: maintenance may have happened unseen, so it is forgotten.
    ref, since = tr.update(t + MAX_GAP_S + STEP, np.array([1.0, 1.0]), True, False)
    assert np.isnan(ref).all() and math.isnan(since)
    with pytest.raises(ValueError, match="shape"):
        ReferenceTracker.from_dict({**tr.to_dict(), "sums": [[0.0], [0.0]]})


def _spec(rows: int) -> FeatureSpec:
    mean = {"vacuum_pump": (0.0,) * 10}
    std = {"vacuum_pump": (2.0,) * 10}
    return FeatureSpec(window=3, step_s=STEP, scaler=Scaler(mean=mean, std=std), reference_rows=rows)


def test_reference_features_are_the_reading_minus_the_reference_and_need_it():
    spec = _spec(1)
    names = list(spec.names)
    assert names[-2:] == ["ref_known", "since_up"] and FeatureSpec.from_dict(spec.to_dict()) == spec
    values = np.array([[4.0] * 10, [6.0] * 10, [math.nan] + [8.0] * 9])
    ref = np.array([[math.nan] * 10, [2.0] * 10, [2.0] * 10])
    since = np.array([math.nan, 0.0, 24.0 * 45])
    f = build_features(values, np.ones(3), "vacuum_pump", spec, ref, since)
    dz = f[:, names.index("dz_00") : names.index("dz_00") + MAX_SENSORS]
    assert dz[0].tolist() == [0.0] * MAX_SENSORS  # no reference yet: 0, never guessed
    assert dz[1].tolist() == [2.0] * 10 + [0.0] * (MAX_SENSORS - 10)  # (6 - 2) / std 2; padding 0
    assert dz[2, :10].tolist() == [0.0] + [3.0] * 9  # a missing reading has no difference either
    assert f[:, names.index("ref_known")].tolist() == [0.0, 1.0, 1.0]
    assert f[:, names.index("since_up")].tolist() == [0.0, 0.0, 1.5]  # 45 days / 30
    with pytest.raises(ValueError, match="reference"):
        build_features(values, np.ones(3), "vacuum_pump", spec)
    # An old spec (no reference) keeps its features and names.
    saved = {k: v for k, v in spec.to_dict().items() if k != "reference_rows"}
    old = FeatureSpec.from_dict({**saved, "feature_names": []})
    assert old.reference_rows == 0 and old.n_features == spec.n_features - MAX_SENSORS - 2


def test_the_edge_windows_carry_the_reference_features_the_trainer_computes(tmp_path: Path):
    """The edge feeds rows one at a time, the trainer a whole export: the same features."""
    from opcua_sim.export import export
    from opcua_sim.scenario import load_scenario, scale_tools, with_seed

    export(scale_tools(with_seed(load_scenario(None), 5), 8), 30.0, tmp_path / "set")
    info, series = simdata.load(tmp_path / "set")
    spec = simdata.fit_spec(info, series, window=6, step_s=STEP, reference_rows=3)
    _, tools, _ = simdata.dataset_windows(tmp_path / "set", spec=spec, stride=1)
    every = round(STEP / info.sample_period_s)
    compared = returns = 0
    for tool, tw in zip(info.tools, tools, strict=True):
        s = series[tool.tool_id]
        sel = np.arange(0, len(s.t_s), every)
        by_end = {float(t): i for i, t in enumerate(tw.t_end_s)}
        win = ToolWindow(tool.tool_id, tool.tool_type, spec.window, STEP, max_stale_steps=2, reference_rows=3)
        for k, i in enumerate(sel):
            # Values stamped just before their grid point close the previous row on arrival.
            t = float(s.t_s[i]) - 1.0
            win.set_state(STATE_OF_CODE[int(s.state[i])], t)
            for j, v in enumerate(s.values[i]):
                win.update(j, float(v), t)
            prev = float(s.t_s[sel[k - 1]]) if k else None
            if prev in by_end and win.ready(1):
                got = win.take()
                assert got.ts == prev
                want = tw.ws.x[by_end[prev]]
                np.testing.assert_allclose(features(got, spec), want, atol=1e-5)
                compared += 1
                returns += int(features(got, spec)[-1, list(spec.names).index("ref_known")] > 0)
    assert compared > 1000 and returns > 100, (compared, returns)


def test_reference_series_is_the_tracker_row_by_row():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 3))
    down = np.zeros(50, bool)
    down[10:13] = True
    proc = rng.random(50) < 0.5
    ref, since = reference_series(np.arange(50) * STEP, values, proc, down, rows=4)
    assert np.isnan(ref[:13]).all() and np.isfinite(since[13:]).all()
    first_proc = np.flatnonzero(proc[13:])[:4] + 13
    assert np.allclose(ref[first_proc[-1]], values[first_proc].mean(axis=0))


def test_saved_references_are_read_back_and_a_bad_file_is_set_aside(tmp_path: Path):
    path = tmp_path / "references.json"
    assert references.load(path) is None
    tr = ReferenceTracker(2, 2)
    tr.update(0.0, np.zeros(2), False, True)
    tr.update(STEP, np.ones(2), True, False)
    references.save(path, {"step_s": STEP, "rows": 2, "tools": {"T1": tr.to_dict()}})
    data = references.load(path)
    assert data is not None and ReferenceTracker.from_dict(data["tools"]["T1"]).to_dict() == tr.to_dict()
    path.write_text("{ half a file")
    assert references.load(path) is None
    assert not path.exists() and (tmp_path / "references.json.bad").exists()
    path.write_text(json.dumps({"format": references.FORMAT, "step_s": "x", "rows": 2, "tools": {}}))
    assert references.load(path) is None, "a wrong type is set aside too, never a crash at start"
