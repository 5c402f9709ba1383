"""The shared contracts: config loading, message schemas, topics, signing, features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field

from shared import messages as m
from shared.config import StrictModel, apply_overrides, load_config
from shared.equipment import ALL_MODES, MAX_SENSORS, TOOL_TYPES, tool_type
from shared.errors import ConfigError, SchemaError, SignatureError
from shared.features import FeatureSpec, build_features, fit_scaler
from shared.signing import generate_keypair, load_private_key, load_public_key, verify_release, write_release
from shared.topics import Kind, cloud_subscription, parse_topic, topic


class _Mqtt(StrictModel):
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)


class _Cfg(StrictModel):
    site: str = "fab1"
    mqtt: _Mqtt = _Mqtt()


def test_config_file_and_env_overrides(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('site = "fab9"\n[mqtt]\nhost = "broker"\n')
    cfg = load_config(_Cfg, path, env={"FABPM__MQTT__PORT": "8883", "OTHER": "x"})
    assert (cfg.site, cfg.mqtt.host, cfg.mqtt.port) == ("fab9", "broker", 8883)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[mqtt]\nport = 'abc'\n", "mqtt.port"),
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[mqtt]\nhots = 'x'\n", "mqtt.hots"),
        ("site = \n", "not valid"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, needle: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(_Cfg, path)


def test_override_through_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="not a table"):
        apply_overrides({"site": "x"}, {"FABPM__SITE__X": "1"}, "FABPM")


def test_yaml_config(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  port: 1884\n")
    assert load_config(_Cfg, path).mqtt.port == 1884


def test_message_round_trip_and_schema_field():
    alert = m.Alert(
        edge_id="e1",
        site="s1",
        tool_id="t1",
        mode="bearing_wear",
        probability=0.9,
        model_version="1",
        episode_start_ts=1.0,
    )
    raw = alert.to_bytes()
    assert json.loads(raw)["schema"] == "alert/1"
    back = m.parse_payload(raw, Kind.ALERT)
    assert back == alert and back.evidence is None, "an edge from before the evidence"
    moving = [m.AlertEvidence(sensor="a", contribution=0.3, deviation=-2.5)]
    named = alert.model_copy(update={"evidence": moving})
    assert m.parse_payload(named.to_bytes(), Kind.ALERT) == named


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"schema": "nope/9"}', "unknown schema"),
        (b'{"schema": "alert/1", "edge_id": "e", "site": "s"}', "tool_id"),
        (
            b'{"schema":"alert/1","edge_id":"e","site":"s","tool_id":"t","mode":"m","probability":1.5,'
            b'"model_version":"1","episode_start_ts":0}',
            "probability",
        ),
        (
            b'{"schema":"alert/1","edge_id":"e","site":"s","tool_id":"t","mode":"m","probability":0.9,'
            b'"model_version":"1","episode_start_ts":0,"evidence":[{"sensor":"a","contribution":NaN,'
            b'"deviation":1}]}',
            "evidence.0.contribution",
        ),
        (
            b'{"schema":"alert/1","edge_id":"e","site":"s","tool_id":"t","mode":"m","probability":0.9,'
            b'"model_version":"1","episode_start_ts":0,"evidence":[{"sensor":"a","contribution":0.1}]}',
            "evidence.0.deviation",
        ),
    ],
)
def test_malformed_payloads_raise_schema_error(raw: bytes, needle: str):
    with pytest.raises(SchemaError, match=needle):
        m.parse_payload(raw)


def test_payload_on_the_wrong_topic_is_refused():
    status = m.Status(edge_id="e", site="s", state="online")
    with pytest.raises(SchemaError, match="does not belong"):
        m.parse_payload(status.to_bytes(), Kind.ALERT)


def test_window_encoding():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(m.decode_array(m.encode_array(arr), (3, 4)), arr)
    with pytest.raises(SchemaError, match="shape"):
        m.decode_array(m.encode_array(arr), (4, 4))


def test_topics():
    t = topic("fab1", "edge-a", Kind.HARDCASE)
    assert t == "fabpm/v1/fab1/edge-a/hardcase"
    assert parse_topic(t).edge == "edge-a"
    assert cloud_subscription(Kind.ALERT) == "$share/fabpm-cloud/fabpm/v1/+/+/alert"
    with pytest.raises(ValueError, match="site"):
        topic("fab/1", "e", Kind.ALERT)
    with pytest.raises(ValueError):
        parse_topic("fabpm/v1/a/b/unknown")


def _release(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    art = tmp_path / "model.onnx"
    art.write_bytes(b"model-bytes" * 100)
    fields = {
        "model_id": "risk",
        "version": "3",
        "role": "edge-risk",
        "created_ts": 1.0,
        "input_spec": {},
        "output_spec": {},
    }
    write_release(art, fields, load_private_key(tmp_path / "k.pem"))
    return art, tmp_path / "k.pub"


def test_signed_release_verifies(tmp_path: Path):
    art, pub = _release(tmp_path)
    assert verify_release(art, load_public_key(pub)).version == "3"


def test_tampered_truncated_and_wrongly_signed_releases_are_refused(tmp_path: Path):
    art, pub = _release(tmp_path)
    key = load_public_key(pub)
    original = art.read_bytes()
    art.write_bytes(original[:-5])
    with pytest.raises(SignatureError, match="truncated"):
        verify_release(art, key)
    art.write_bytes(original[:-1] + b"X")
    with pytest.raises(SignatureError, match="sha256"):
        verify_release(art, key)
    art.write_bytes(original)
    doc_path = art.with_name("model.manifest.json")
    doc = json.loads(doc_path.read_text())
    doc["manifest"]["version"] = "4"
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match="signature"):
        verify_release(art, key)
    other = tmp_path / "other"
    generate_keypair(other / "k.pem", other / "k.pub")
    doc["manifest"]["version"] = "3"
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match="signature"):
        verify_release(art, load_public_key(other / "k.pub"))


def test_features_shape_missing_mask_and_round_trip():
    etch = tool_type("plasma_etch")
    rng = np.random.default_rng(0)
    raw = np.array([s.nominal for s in etch.sensors]) + rng.normal(size=(20, len(etch.sensors)))
    spec = FeatureSpec(window=20, step_s=600.0, scaler=fit_scaler({"plasma_etch": raw}))
    raw[3, 2] = np.nan
    feats = build_features(raw, np.ones(20, dtype=bool), "plasma_etch", spec)
    assert feats.shape == (20, spec.n_features) == (20, 2 * MAX_SENSORS + len(TOOL_TYPES) + 1)
    assert feats[3, 2] == 0.0 and feats[3, MAX_SENSORS + 2] == 1.0
    assert np.isfinite(feats).all()
    assert abs(float(feats[:, 0].mean())) < 0.5
    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert np.array_equal(build_features(raw, np.ones(20, dtype=bool), "plasma_etch", again), feats)
    with pytest.raises(ValueError, match="sensors"):
        build_features(raw[:, :3], np.ones(20, dtype=bool), "plasma_etch", spec)


def test_catalog_is_consistent():
    assert len(ALL_MODES) == len(set(ALL_MODES)), "mode names must be unique across tool types"
    for t in TOOL_TYPES.values():
        names = set(t.sensor_names)
        assert sum(not m.sudden for m in t.modes) >= 3
        for mode in t.modes:
            assert set(mode.sensors) <= names, f"{t.name}.{mode.name} names an unknown sensor"
    with pytest.raises(KeyError, match="known"):
        tool_type("stepper")
