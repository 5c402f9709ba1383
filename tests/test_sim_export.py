"""``fabpm sim export``: the data set format, labels, determinism and the drift scenario."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from opcua_sim import cli
from opcua_sim.export import export
from opcua_sim.scenario import Drift, default_scenario, load_scenario, scale_tools, with_seed
from shared import e10
from shared.dataset import ARRAYS, read_info, read_series
from shared.equipment import ALL_MODES, E10_CODES, E10State

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "scenarios"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "a"
    export(scale_tools(with_seed(default_scenario(), 11), 20), 30, out)
    return out


def test_export_writes_the_shared_dataset_format(dataset: Path):
    info = read_info(dataset)
    assert len(info.tools) == 20 and info.days == 30 and info.horizon_h == 72.0
    assert info.modes == list(ALL_MODES) and info.sample_period_s == 600.0
    for tool in info.tools:
        s = read_series(dataset, tool)
        assert s.values.shape == (30 * 144, len(tool.sensors)) and s.setpoints.shape[1] == len(tool.setpoints)
        assert np.all(np.diff(s.t_s) == 600.0)
    lines = (dataset / "ground_truth.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines]
    assert [e["t_s"] for e in events] == sorted(e["t_s"] for e in events)
    assert {"onset", "failure", "maintenance", "setpoint", "sensor_fault", "lot"} <= {
        e["kind"] for e in events
    }


def test_labels_follow_the_ground_truth(dataset: Path):
    info = read_info(dataset)
    events = [json.loads(x) for x in (dataset / "ground_truth.jsonl").read_text().splitlines()]
    failures = [e for e in events if e["kind"] == "failure"]
    assert failures and any(e["sudden"] for e in failures)
    checked = 0
    for tool in info.tools:
        s = read_series(dataset, tool)
        mine = [e for e in failures if e["tool"] == tool.tool_id]
        if not mine:
            assert np.isnan(s.rul_h).all() and (s.fail_mode == -1).all()
            continue
        first = mine[0]
        before = s.t_s < first["t_s"]
        expected = (first["t_s"] - s.t_s[before]) / 3600.0
        np.testing.assert_allclose(s.rul_h[before], expected, rtol=1e-5, atol=1e-3)
        assert (s.fail_mode[before] == ALL_MODES.index(first["mode"])).all()
        assert (s.sudden[before] == first["sudden"]).all()
        # the tool is down right after a failure
        after = np.searchsorted(s.t_s, first["t_s"])
        if after < len(s.t_s):
            assert s.state[after] == E10_CODES[E10State.UNSCHEDULED_DOWN]
        checked += 1
    assert checked >= 3
    np.testing.assert_allclose(s.censor_h, (30 * 86400 - s.t_s) / 3600, rtol=1e-5)


def test_dropouts_are_nan_and_precursors_rise_before_progressive_failures(dataset: Path):
    info = read_info(dataset)
    nan_seen = 0
    rises = 0
    for tool in info.tools:
        s = read_series(dataset, tool)
        nan_seen += int(np.isnan(s.values).any())
        m = s.fail_mode
        close = (s.rul_h < 24) & ~s.sudden & (m >= 0) & (s.state == E10_CODES[E10State.PRODUCTIVE])
        far = (s.rul_h > 24 * 8) | np.isnan(s.rul_h)
        far &= s.state == E10_CODES[E10State.PRODUCTIVE]
        if close.sum() > 5 and far.sum() > 50:
            z = np.abs(np.nanmean(s.values[close], 0) - np.nanmean(s.values[far], 0)) / (
                np.nanstd(s.values[far], 0) + 1e-9
            )
            rises += int((z > 1.0).sum() >= 2)
    assert nan_seen >= 3
    assert rises >= 2


def test_export_is_deterministic(dataset: Path, tmp_path: Path):
    again = tmp_path / "b"
    export(scale_tools(with_seed(default_scenario(), 11), 20), 30, again)
    a, b = read_info(dataset), read_info(again)
    assert [t.tool_id for t in a.tools] == [t.tool_id for t in b.tools]
    for ta, tb in zip(a.tools, b.tools, strict=True):
        sa, sb = read_series(dataset, ta), read_series(again, tb)
        for name in ARRAYS:
            np.testing.assert_array_equal(getattr(sa, name), getattr(sb, name))
    assert (dataset / "ground_truth.jsonl").read_bytes() == (again / "ground_truth.jsonl").read_bytes()
    other = tmp_path / "c"
    export(scale_tools(with_seed(default_scenario(), 12), 20), 2, other)
    assert not np.array_equal(
        np.nan_to_num(read_series(other, read_info(other).tools[0]).values),
        np.nan_to_num(read_series(dataset, a.tools[0]).values[: 2 * 144]),
    )


def test_e10_figures_from_an_export(dataset: Path):
    info = read_info(dataset)
    s = read_series(dataset, info.tools[0])
    m = e10.from_series(s.state, info.sample_period_s)
    assert m.total_h == pytest.approx(30 * 24) and 50 < m.equipment_uptime_pct <= 100


def test_drift_scenario_shifts_the_sensors_from_its_day(tmp_path: Path):
    plain = scale_tools(with_seed(default_scenario(), 3), 8)
    offsets = plain.model_copy(
        update={
            "drifts": [Drift(day=20, tool_types=["plasma_etch"], sensor_offsets={"chamber_pressure": 3.0})]
        }
    )
    export(plain, 24, tmp_path / "base")
    export(offsets, 24, tmp_path / "offset")
    etch = next(t for t in read_info(tmp_path / "base").tools if t.tool_type == "plasma_etch")
    p, d = read_series(tmp_path / "base", etch), read_series(tmp_path / "offset", etch)
    j = etch.sensors.index("chamber_pressure")
    before, after = d.t_s < 20 * 86400, d.t_s >= 20 * 86400
    diff = d.values[:, j] - p.values[:, j]
    assert np.nanmax(np.abs(diff[before])) == 0.0
    assert np.nanmedian(diff[after]) == pytest.approx(3.0, abs=1e-3)


def test_drift_scenario_changes_the_recipe_mix(tmp_path: Path):
    sc = scale_tools(load_scenario(EXAMPLES / "drift.toml"), 16)
    export(sc, 40, tmp_path / "drift")
    info = read_info(tmp_path / "drift")
    recipes = np.concatenate(
        [read_series(tmp_path / "drift", t).recipe for t in info.tools if t.tool_type == "plasma_etch"]
    )
    t_s = np.concatenate(
        [read_series(tmp_path / "drift", t).t_s for t in info.tools if t.tool_type == "plasma_etch"]
    )
    busy = recipes >= 0
    metal = recipes == 2  # metal_etch
    share_before = metal[busy & (t_s < 20 * 86400)].mean()
    share_after = metal[busy & (t_s >= 20 * 86400)].mean()
    assert share_before < 0.45 < share_after


def test_cli_export_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "cli"
    assert cli.main(["export", "--days", "1", "--tools", "3", "--seed", "4", "--out", str(out)]) == 0
    assert "wrote 3 tools" in capsys.readouterr().out
    assert len(read_info(out).tools) == 3
    later = tmp_path / "later"  # a simulated timeline that continues another (the demo's reruns)
    args = ["export", "--days", "1", "--tools", "3", "--start", "2026-03-01", "--out", str(later)]
    assert cli.main(args) == 0
    assert read_info(later).extra["start"] == "2026-03-01T00:00:00+00:00"
    with pytest.raises(SystemExit):
        cli.main(["export", "--days", "1", "--start", "March", "--out", str(later)])
    assert "is not an ISO 8601 time" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("areas:\n  - name: a\n    tools: [{type: laser, count: 1}]\n")
    from opcua_sim.errors import ScenarioError

    with pytest.raises(ScenarioError, match=r"areas\.0\.tools\.0\.type"):
        cli.main(["export", "--days", "1", "--out", str(out), "--scenario", str(bad)])


def test_plot_draws_a_run_to_failure(tmp_path: Path):
    from opcua_sim.plot import plot_run

    out, tool_id = plot_run(
        scale_tools(default_scenario(), 12), 40, tmp_path / "run.png", tool_type="vacuum_pump"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and tool_id.startswith("PUMP")
    from opcua_sim.errors import SimError

    with pytest.raises(SimError, match="--tool"):
        plot_run(scale_tools(default_scenario(), 12), 5, tmp_path / "x.png", tool_id="NOPE01")


def test_cli_states_e10_figures_of_an_export(dataset: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["e10", str(dataset)]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| fleet")]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "20" and 50.0 < float(cells[2]) <= 100.0 and int(cells[6]) >= 1


def test_export_and_server_path_give_the_same_readings(tmp_path: Path):
    """One generator: the exporter's arrays equal the live fab's readings at the same instants."""
    from opcua_sim.fab import Fab

    sc = scale_tools(with_seed(default_scenario(), 21), 10)
    sc = sc.model_copy(update={"sensor_faults": sc.sensor_faults.model_copy(update={"spike_per_hour": 0.0})})
    export(sc, 2, tmp_path / "ds")
    info = read_info(tmp_path / "ds")
    series = {t.tool_id: read_series(tmp_path / "ds", t) for t in info.tools}
    live = Fab(sc)
    compared = 0
    for k in range(3, 288, 29):
        t = k * info.sample_period_s
        live.advance_to(t)
        for type_name, tools in live.groups.items():
            readings = live.readings(type_name)
            for row, tool in enumerate(tools):
                exported = series[tool.tool_id].values[k]
                ok = ~np.isnan(exported) & ~np.isnan(readings[row])
                for f in tool.faults:  # stuck values freeze at different instants on the two paths
                    ok[f.sensor] = False
                np.testing.assert_allclose(readings[row][ok], exported[ok], rtol=1e-5, atol=1e-4)
                compared += int(ok.sum())
    assert compared > 1000


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    ranks = np.concatenate([pos, neg]).argsort().argsort() + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def test_no_single_sensor_threshold_separates_the_last_72_hours(dataset: Path):
    """Recipes, tool-to-tool spread and several modes keep every one-sensor threshold weak."""
    info = read_info(dataset)
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for tool in info.tools:
        s = read_series(dataset, tool)
        busy = s.state == E10_CODES[E10State.PRODUCTIVE]
        soon = busy & (s.rul_h < 72) & ~s.sudden
        later = busy & ~(s.rul_h < 72)
        pos, neg = pooled.setdefault(tool.tool_type, ([], []))
        pos.append(s.values[soon])
        neg.append(s.values[later])
    checked = 0
    for pos_list, neg_list in pooled.values():
        pos, neg = np.concatenate(pos_list), np.concatenate(neg_list)
        if len(pos) < 50:
            continue
        best = max(
            abs(_auc(np.nan_to_num(pos[:, j]), np.nan_to_num(neg[:, j])) - 0.5) + 0.5
            for j in range(pos.shape[1])
        )
        assert best < 0.9
        checked += 1
    assert checked >= 2


def test_ground_truth_merge_in_rounds_gives_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import opcua_sim.export as exporter

    sc = scale_tools(with_seed(default_scenario(), 2), 12)
    export(sc, 3, tmp_path / "one")
    monkeypatch.setattr(exporter, "MERGE_FAN_IN", 3)  # several merge rounds
    export(sc, 3, tmp_path / "rounds")
    one = (tmp_path / "one" / "ground_truth.jsonl").read_bytes()
    assert one == (tmp_path / "rounds" / "ground_truth.jsonl").read_bytes() and one
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == [
        "dataset.json",
        "ground_truth.jsonl",
        "tools",
    ]
