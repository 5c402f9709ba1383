"""shared.evidence: which sensors carry a risk, each restored alone to the tool's reference."""

from __future__ import annotations

import numpy as np
import pytest

from shared.equipment import MAX_SENSORS
from shared.evidence import (
    contributions,
    deviations,
    explain,
    likely_mode,
    restored_windows,
    sensor_evidence,
)
from shared.features import feature_names

NAMES = feature_names(("plasma_etch",), reference=True)
COL = {n: i for i, n in enumerate(NAMES)}
SENSORS = [f"s{j}" for j in range(5)]
W = 8


def window(z: np.ndarray, dz: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """(W, F) features with the sensors' z and dz given as (W, 5); reference known everywhere
    unless ``known`` (W,) says otherwise."""
    x = np.zeros((W, len(NAMES)), dtype=np.float32)
    x[:, COL["processing"]] = 1.0
    k = np.ones(W, dtype=bool) if known is None else known
    x[:, COL["ref_known"]] = k
    for j in range(5):
        x[:, COL[f"z_{j:02d}"]] = z[:, j]
        x[:, COL[f"dz_{j:02d}"]] = np.where(k, dz[:, j], 0.0)
    return x


def model(batch: np.ndarray) -> np.ndarray:
    """A stand-in risk model over two modes: mode 0 reads sensor 2's z (high above its usual 1.0),
    mode 1 sensors 0 and 1 together (either one alone is enough)."""
    z = batch[:, :, [COL[f"z_{j:02d}"] for j in range(5)]].mean(axis=1)  # (B, 5)
    p0 = 1.0 / (1.0 + np.exp(-4.0 * (z[:, 2] - 2.0)))
    p1 = 1.0 / (1.0 + np.exp(-4.0 * (np.maximum(z[:, 0], z[:, 1]) - 2.0)))
    return np.stack([p0, p1], axis=1)


def test_the_sensor_that_left_its_reference_carries_the_risk():
    z = np.full((W, 5), 1.0, dtype=np.float32)  # every sensor at its reference, 1 std above the mean
    dz = np.zeros((W, 5), dtype=np.float32)
    z[:, 2] += 3.0
    dz[:, 2] = 3.0
    x = window(z, dz)
    ev = sensor_evidence(x, NAMES, SENSORS, 0, model)
    assert [e.sensor for e in ev] == ["s2"]
    p = model(x[None])[0, 0]
    restored = model(restored_windows(x, NAMES, 5))[:, 0]
    assert restored[2] == pytest.approx(model(window(np.full((W, 5), 1.0), np.zeros((W, 5)))[None])[0, 0])
    assert ev[0].contribution == pytest.approx(p - restored[2])
    assert ev[0].deviation == pytest.approx(3.0)
    assert ev[0].to_dict() == {"sensor": "s2", "contribution": round(p - restored[2], 4), "deviation": 3.0}


def test_two_sensors_that_tell_the_same_story_share_the_credit_and_the_cap_holds():
    z = np.full((W, 5), 0.0, dtype=np.float32)
    dz = np.zeros((W, 5), dtype=np.float32)
    z[:, 0] = dz[:, 0] = 4.0
    z[:, 1] = dz[:, 1] = 4.0
    x = window(z, dz)
    c, p = contributions(x, NAMES, 5, 1, model)
    assert c is not None and np.all(np.abs(c) < 0.1 * p), "either alone keeps the risk: neither carries it"
    assert sensor_evidence(x, NAMES, SENSORS, 1, model) == []
    z[:, 3] = dz[:, 3] = 4.0  # mode 0 ignores sensor 3; a low floor names the top ones only
    assert len(sensor_evidence(window(z, dz), NAMES, SENSORS, 1, model, top=1, min_share=0.0)) == 0
    z[:, 0] = dz[:, 0] = 0.0  # now sensor 1 alone carries mode 1
    assert [e.sensor for e in sensor_evidence(window(z, dz), NAMES, SENSORS, 1, model, top=1)] == ["s1"]


def test_rows_without_a_reference_keep_their_readings_and_no_reference_gives_no_evidence():
    z = np.full((W, 5), 3.0, dtype=np.float32)
    dz = np.full((W, 5), 3.0, dtype=np.float32)
    known = np.arange(W) >= W - 2  # the reference formed two rows ago
    x = window(z, dz, known)
    out = restored_windows(x, NAMES, 5)
    assert out is not None and out.shape == (5, W, len(NAMES))
    assert np.all(out[2, ~known, COL["z_02"]] == 3.0) and np.all(out[2, known, COL["z_02"]] == 0.0)
    assert np.all(out[2, :, COL["z_01"]] == 3.0), "only the restored sensor changes"
    assert deviations(x, NAMES, 5) == pytest.approx([3.0] * 5)
    assert restored_windows(window(z, dz, np.zeros(W, dtype=bool)), NAMES, 5) is None
    plain = feature_names(("plasma_etch",), reference=False)
    assert sensor_evidence(np.zeros((W, len(plain)), np.float32), plain, SENSORS, 0, model) == []
    assert len(NAMES) == len(plain) + MAX_SENSORS + 2


def test_the_likely_mode_is_the_one_whose_precursors_carry_the_risk():
    """Sensor 2 carries the risk (mode 0's input) though the alert names mode 1: the catalog's
    precursors of mode "A" include sensor 2, so the sensors point to "A"."""
    z = np.zeros((W, 5), dtype=np.float32)
    dz = np.zeros((W, 5), dtype=np.float32)
    z[:, 2] = dz[:, 2] = 4.0
    x = window(z, dz)
    precursors = {"A": (0, ["s2", "s3"]), "B": (1, ["s0", "s1"])}
    why = explain(x, NAMES, SENSORS, 1, model, precursors)
    assert why.likely_mode == "A" and why.sensors == [], "mode 1 itself is carried by no sensor"
    assert explain(x, NAMES, SENSORS, 0, model, {}).likely_mode is None, "no catalog, no mode"
    # the mean over a mode's precursors: one carrying sensor of two beats one of four
    assert (
        likely_mode(
            np.array([0.2, 0.0, 0.2, 0.0, 0.0]), SENSORS, {"A": ["s0", "s1"], "B": ["s2", "s3", "s4"]}
        )
        == "A"
    )
    assert likely_mode(np.array([-0.1, 0.0, 0.0, 0.0, 0.0]), SENSORS, {"A": ["s0"]}) is None
    no_ref = window(z, dz, np.zeros(W, dtype=bool))
    assert explain(no_ref, NAMES, SENSORS, 0, model, precursors).likely_mode is None


def test_without_a_reference_a_sensor_is_restored_to_the_first_readings_the_edge_saw():
    """``against``: the deviations from the edge's first readings of the tool; the reference
    features stay unknown, only the sensor's z moves back, where its baseline is known."""
    z = np.full((W, 5), 1.0, dtype=np.float32)
    z[:, 2] += 3.0
    x = window(z, np.zeros((W, 5), np.float32), np.zeros(W, dtype=bool))  # no reference in the window
    assert sensor_evidence(x, NAMES, SENSORS, 0, model) == []
    against = np.zeros((W, 5))
    against[:, 2] = 3.0
    against[:2] = np.nan  # the baseline formed two rows in
    out = restored_windows(x, NAMES, 5, against)
    assert (
        out is not None and np.all(out[2, 2:, COL["z_02"]] == 1.0) and np.all(out[2, :2, COL["z_02"]] == 4.0)
    )
    assert np.all(out[:, :, COL["dz_02"]] == 0.0) and np.all(out[:, :, COL["ref_known"]] == 0.0)
    why = explain(x, NAMES, SENSORS, 0, model, {"A": (0, ["s2"])}, against=against)
    assert [e.sensor for e in why.sensors] == ["s2"] and why.sensors[0].deviation == pytest.approx(3.0)
    assert why.likely_mode == "A"
    assert restored_windows(x, NAMES, 5, np.full((W, 5), np.nan)) is None, "no baseline yet"
    with pytest.raises(ValueError, match="against has shape"):
        restored_windows(x, NAMES, 5, np.zeros((W, 4)))


def test_a_model_that_breaks_the_contract_is_refused():
    x = window(np.ones((W, 5), np.float32), np.ones((W, 5), np.float32))
    with pytest.raises(ValueError, match="predict gave"):
        contributions(x, NAMES, 5, 0, lambda b: np.zeros((1, 2)))
    with pytest.raises(ValueError, match="mode 7"):
        contributions(x, NAMES, 5, 7, model)
