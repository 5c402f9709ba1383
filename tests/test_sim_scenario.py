"""Scenario files: defaults, scaling, and errors that name the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

from opcua_sim.errors import ScenarioError, UnknownToolTypeError
from opcua_sim.scenario import default_scenario, load_scenario, scale_tools, tag_count, with_seed
from shared.errors import ConfigError, FabpmError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "scenarios"


def test_default_fab_has_at_least_1200_tags_and_matches_the_example_file():
    sc = default_scenario()
    assert tag_count(sc) >= 1200
    assert load_scenario(EXAMPLES / "default_fab.yaml") == sc
    assert load_scenario(None) == sc


def test_scaling_reaches_10000_tags_with_exact_tool_count():
    sc = scale_tools(default_scenario(), 480)
    assert sc.n_tools == 480
    assert tag_count(sc) >= 10_000
    small = scale_tools(default_scenario(), 7)
    assert small.n_tools == 7
    with pytest.raises(ScenarioError, match="--tools"):
        scale_tools(default_scenario(), 0)
    with pytest.raises(ScenarioError, match="--seed"):
        with_seed(default_scenario(), 2**40)


def test_drift_scenario_loads_from_toml():
    sc = load_scenario(EXAMPLES / "drift.toml")
    assert sc.name == "drift" and [d.day for d in sc.drifts] == [20.0, 20.0]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("areas:\n  - name: etch\n    tools:\n      - {type: etcher, count: 2}\n", "areas.0.tools.0.type"),
        ("areas:\n  - name: etch\n    tools:\n      - {type: cmp, count: -3}\n", "areas.0.tools.0.count"),
        ("areas:\n  - name: etch\n    tools:\n      - {type: cmp, cnt: 3}\n", "areas.0.tools.0.cnt"),
        (
            "areas:\n  - name: e\n    tools: [{type: cmp, count: 1}]\nmaintenance: {pm_h: 0}\n",
            "maintenance.pm_h",
        ),
        (
            "areas:\n  - name: e\n    tools: [{type: cmp, count: 1}]\n"
            "drifts:\n  - {day: 3, sensor_offsets: {nope: 1}}\n",
            "drifts.0.sensor_offsets",
        ),
        (
            "areas:\n  - name: e\n    tools: [{type: cmp, count: 1}]\nsensor_faults: {stuck_median_min: 0}\n",
            "sensor_faults.stuck_median_min",
        ),
        ("areas: []\n", "areas"),
        ("name: x\n", "areas"),
    ],
)
def test_bad_scenarios_name_the_field(tmp_path: Path, text: str, where: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert where in str(info.value)
    assert isinstance(info.value, ConfigError | FabpmError)


def test_unknown_tool_type_has_its_own_error_listing_known_types(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text('[[areas]]\nname = "a"\ntools = [{ type = "stepper", count = 1 }]\n')
    with pytest.raises(UnknownToolTypeError, match=r"areas\.0\.tools\.0\.type.*'stepper'.*plasma_etch"):
        load_scenario(path)


def test_malformed_file_and_missing_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("areas: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid yaml"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "missing.toml")


def test_security_settings_and_users_file_errors(tmp_path: Path):
    from opcua_sim.cli import _users
    from opcua_sim.errors import SecurityError
    from opcua_sim.security import SecuritySettings, ensure_certificate

    with pytest.raises(SecurityError, match="needs cert_dir"):
        SecuritySettings(policies=("Basic256Sha256_Sign",))
    with pytest.raises(SecurityError, match="unknown"):
        SecuritySettings(policies=("Basic128",))
    with pytest.raises(SecurityError, match="no users"):
        SecuritySettings(allow_anonymous=False)
    users = tmp_path / "users.toml"
    users.write_text('operator = "pw"\nviewer = ""\n')
    with pytest.raises(SecurityError, match="viewer"):
        _users(users)
    users.write_text('operator = "pw"\n')
    assert _users(users) == {"operator": "pw"}
    cert, key = ensure_certificate(tmp_path / "certs", "server", "urn:test")
    first = cert.read_bytes()
    assert ensure_certificate(tmp_path / "certs", "server", "urn:test") == (cert, key)
    assert cert.read_bytes() == first  # reused while valid


def test_how_long_sensor_faults_last_is_the_scenario_s(tmp_path: Path):
    """sensor_faults.stuck_median_min: a plant's stuck sensor stays until fixed; the simulator's
    default (60 min) is short. Ten times it makes the stuck values ten times longer (medians of a
    lognormal with σ = 1 over dozens of faults)."""
    import json
    import statistics

    from opcua_sim.export import export
    from opcua_sim.scenario import SensorFaults

    def median_min(stuck_median_min: float, out: Path) -> float:
        sc = with_seed(scale_tools(default_scenario(), 6), 3)
        faults = SensorFaults(mean_days_between=0.5, dropout_fraction=0.0, stuck_median_min=stuck_median_min)
        export(sc.model_copy(update={"sensor_faults": faults}), 20.0, out)
        events = [json.loads(line) for line in (out / "ground_truth.jsonl").read_text().splitlines()]
        stuck = [e for e in events if e["kind"] == "sensor_fault"]
        assert len(stuck) > 100 and {e["fault"] for e in stuck} == {"stuck"}
        return statistics.median((e["end_t_s"] - e["t_s"]) / 60 for e in stuck)

    short, long = median_min(60.0, tmp_path / "a"), median_min(600.0, tmp_path / "b")
    assert 40 < short < 90 and 400 < long < 900
