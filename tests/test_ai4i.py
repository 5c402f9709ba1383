"""AI4I 2020 as windows of tool lives, and the detection figures its benchmark reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, REPO

from cloud.training import ai4i
from cloud.training.detection import at_threshold, average_precision, f1_threshold
from shared.errors import DatasetError


@pytest.fixture(scope="module")
def data() -> ai4i.Ai4i:
    if not (DATA / ai4i.FILE).exists():
        pytest.skip(f"AI4I 2020 not found at {DATA / ai4i.FILE} (CI has it; set FABPM_DATA elsewhere)")
    return ai4i.load(DATA)


def test_the_public_copy_loads_as_tool_lives_and_three_modes_follow_their_rules(data: ai4i.Ai4i) -> None:
    assert len(data) == 10_000
    assert data.flags.sum(0).tolist() == [46, 115, 95, 98, 19]  # TWF HDF PWF OSF RNF (its README)
    assert data.failure.sum() == 339
    assert len(np.unique(data.life)) == 120  # 119 tool changes
    rules = ai4i.rule_flags(data)
    for m, mode in enumerate(ai4i.MODES):
        if mode in rules:
            assert np.array_equal(rules[mode], data.flags[:, m] == 1), mode
    # a tool-wear failure ends its tool's life: the next product is made with a new tool
    twf = np.flatnonzero(data.flags[:, 0])
    assert (data.life[twf + 1] == data.life[twf] + 1).all()


def test_a_window_ends_at_its_product_and_never_reaches_into_another_tool_life(data: ai4i.Ai4i) -> None:
    mean, std = data.stats(np.arange(len(data)))
    ws = ai4i.windows(data, 8, mean, std)
    own = (data.inputs - mean) / std
    assert ws.x.shape == (10_000, 8, len(ai4i.FEATURES))
    assert np.allclose(ws.x[:, -1, :5], own, atol=1e-5)  # the last row is the product itself
    assert np.array_equal(ws.x[:, -1, 5:].argmax(1), data.quality)
    assert np.array_equal(ws.groups, data.life)
    for i in np.random.default_rng(0).choice(len(data), 300, replace=False):
        start = np.flatnonzero(data.life == data.life[i])[0]
        rows = np.arange(i - 7, i + 1)
        rows[rows < start] = start  # a life's first product repeated in place of the one before it
        assert np.allclose(ws.x[i, :, :5], own[rows], atol=1e-5), i
    assert np.array_equal(ws.labels, data.flags[:, :4].astype(np.float32))
    assert np.isnan(ws.rul).all()


def test_labels_ahead_are_the_next_products_failures_and_unknown_past_the_end(data: ai4i.Ai4i) -> None:
    mean, std = data.stats(np.arange(len(data)))
    ws = ai4i.windows(data, 1, mean, std, horizon=5)
    flags = data.flags[:, :4]
    for i in (0, 17, 4_321, 9_994):
        assert np.array_equal(ws.labels[i], flags[i + 1 : i + 6].max(0)), i
    assert np.isnan(ws.labels[-5:]).all() and not np.isnan(ws.labels[:-5]).any()
    with pytest.raises(ValueError, match="horizon"):
        ai4i.windows(data, 1, mean, std, horizon=-1)


def test_a_changed_or_broken_copy_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "ai4i2020"
    folder.mkdir()
    path = folder / "ai4i2020.csv"
    good = ",".join(ai4i._HEADER)
    row = "1,M14860,M,298.1,308.6,1551,42.8,0,0,0,0,0,0,0"
    with pytest.raises(DatasetError, match="cannot read"):
        ai4i.load(tmp_path)
    # a later public copy renamed one header: refused rather than read with shifted meanings
    path.write_text(good.replace("Machine failure", "Machine_failure") + "\n" + row + "\n" + row + "\n")
    with pytest.raises(DatasetError, match="header") as err:
        ai4i.load(tmp_path)
    assert str(path) in str(err.value)
    path.write_text(good + "\n" + row + "\n" + row.replace(",M,", ",X,") + "\n")
    with pytest.raises(DatasetError, match="row 3"):
        ai4i.load(tmp_path)
    path.write_text(good + "\n" + row + "\n" + row[:-1] + "2\n")
    with pytest.raises(DatasetError, match="other than 0 and 1"):
        ai4i.load(tmp_path)
    worn = row.replace(",0,0,0,0,0,0,0", ",7,0,0,0,0,0,0")  # tool wear 7: the same tool
    path.write_text("\ufeff" + good + "\n" + row + "\n" + worn + "\n")
    loaded = ai4i.load(tmp_path)  # the original's byte-order mark is read past
    assert loaded.life.tolist() == [0, 0] and loaded.inputs[1, 4] == 7.0


def test_detection_figures_on_hand_made_scores() -> None:
    truth = np.array([1, 0, 1, 0, np.nan])
    score = np.array([0.9, 0.8, 0.7, 0.1, 0.95])  # the unknown item is left out
    assert average_precision(truth, score) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert f1_threshold(truth, score) == 0.7  # alerting on the top three: F1 0.8
    figures = at_threshold(truth, score, np.full(5, 0.7))
    assert (figures["tp"], figures["fp"], figures["fn"]) == (2, 1, 0)
    assert figures["f1"] == pytest.approx(0.8)
    # tied scores share one threshold: no threshold splits them
    tied = np.array([0.5, 0.5, 0.5])
    assert average_precision(np.array([1, 0, 1]), tied) == pytest.approx(2 / 3)
    assert f1_threshold(np.array([1, 0, 1]), tied) == 0.5
    assert np.isnan(average_precision(np.zeros(3), score[:3]))
    assert f1_threshold(np.zeros(3), score[:3]) == np.inf  # nothing to find: never alert


def test_the_benchmark_runs_quickly_and_reports_every_arm(data: ai4i.Ai4i, tmp_path: Path) -> None:
    script = str(REPO / "bench" / "ai4i_modes.py")
    proc = subprocess.run(
        [sys.executable, script, "--quick", "--data", str(DATA), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    raw = json.loads((tmp_path / "ai4i_h0_quick.json").read_text())
    (seed,) = raw["seeds"]
    assert set(seed["arms"]) == {"dga_w1", "dga_w8", "logistic"}
    scored = seed["arms"]["logistic"]["any"]
    assert scored["tp"] + scored["fn"] == scored["positives"] > 0  # one fold's failures, each scored once
    assert "| HDF |" in proc.stdout and "top input read by the rule" in proc.stdout
    scores = np.load(tmp_path / "ai4i_h0_quick.npz")
    truth, logistic = scores["s0_truth"], scores["s0_logistic"]
    held = np.isfinite(truth[:, 0])  # one fold's products, scored by models that never saw them
    assert (
        0 < held.sum() < len(truth) and np.isfinite(logistic[held]).all() and np.isnan(logistic[~held]).all()
    )
    assert (tmp_path / "ai4i_h0_quick.png").stat().st_size > 10_000
    # no data where --data points: one line that names the file, no traceback
    missing = subprocess.run(
        [sys.executable, script, "--quick", "--data", str(tmp_path / "none"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "ai4i2020.csv" in missing.stderr and "Traceback" not in missing.stderr
