"""The mode namer (shared.naming): fitted on embeddings, shipped in the manifest, used by alerts."""

from __future__ import annotations

import numpy as np
import pytest
from test_edge_support import keys, release, spec

from cloud.training.release import mode_namer
from cloud.training.windows import WindowSet
from edge.config import DecisionsConfig
from edge.decisions import Decider
from edge.errors import ModelError
from edge.inference import RiskModel
from shared.equipment import ALL_MODES, TOOL_TYPES
from shared.naming import MIN_WINDOWS, ModeNamer, fit_namer
from shared.signing import load_public_key, verify_release

ETCH = TOOL_TYPES["plasma_etch"].warnable_mode_names
PROGRESSIVE = {t.name: t.warnable_mode_names for t in TOOL_TYPES.values()}


def _windows(counts: list[int], seed: int, dim: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of etch windows before a failure of each progressive mode (``counts`` of each):
    mode k moves direction k, among a shared drift that every degradation shows and noise."""
    rng = np.random.default_rng(seed)
    emb, labels = [], []
    for k, n in enumerate(counts):
        e = rng.normal(size=(n, dim)) + 2.0  # the shared "something degrades" part
        e[:, k] += 1.5
        lab = np.zeros((n, len(ALL_MODES)), np.float32)
        lab[:, ALL_MODES.index(ETCH[k])] = 1.0
        emb.append(e)
        labels.append(lab)
    return np.concatenate(emb), np.concatenate(labels)


def test_the_namer_names_rare_modes_too_and_needs_windows_of_every_mode():
    """Fitted on 10:1:1 windows, it names each mode on new windows far above chance (the most
    common one does not win every doubtful window); a mode with too few windows: no namer."""
    emb, labels = _windows([400, 40, 40], seed=0)
    namer = fit_namer(emb, labels, ["plasma_etch"] * len(emb), ALL_MODES, PROGRESSIVE)
    assert set(namer.types) == {"plasma_etch"} and namer.types["plasma_etch"].windows == (400, 40, 40)
    test, truth = _windows([200, 200, 200], seed=1)
    named = [namer.name("plasma_etch", e) for e in test]
    for mode in ETCH:
        fails = truth[:, ALL_MODES.index(mode)] == 1.0
        got = [n is not None and n[0] == mode for n, f in zip(named, fails, strict=True) if f]
        assert np.mean(got) > 0.6, (mode, np.mean(got))
    assert namer.name("cvd", test[0]) is None, "a type without a namer"
    assert namer.name("plasma_etch", test[0][:3]) is None, "an embedding of another size"
    # windows with no failure in the horizon, or unknown, are not fitted on
    extra = np.full((5, len(ALL_MODES)), np.nan, np.float32)
    again = fit_namer(
        np.concatenate([emb, np.zeros((5, 6))]),
        np.concatenate([labels, extra]),
        ["plasma_etch"] * (len(emb) + 5),
        ALL_MODES,
        PROGRESSIVE,
    )
    assert again.types["plasma_etch"].windows == (400, 40, 40)
    few, few_labels = _windows([400, 40, MIN_WINDOWS - 1], seed=0)
    assert fit_namer(few, few_labels, ["plasma_etch"] * len(few), ALL_MODES, PROGRESSIVE).types == {}


def test_a_namer_survives_the_manifest_and_a_malformed_one_is_refused(tmp_path):
    emb, labels = _windows([100, 50, 50], seed=2)
    namer = fit_namer(emb, labels, ["plasma_etch"] * len(emb), ALL_MODES, PROGRESSIVE)
    back = ModeNamer.from_dict(namer.to_dict())
    assert [back.name("plasma_etch", e) for e in emb[:20]] == [namer.name("plasma_etch", e) for e in emb[:20]]
    bad = namer.to_dict()
    bad["plasma_etch"]["weight"] = bad["plasma_etch"]["weight"][:-1]
    with pytest.raises(ValueError, match="plasma_etch"):
        ModeNamer.from_dict(bad)
    priv, pub = keys(tmp_path)
    path = release(tmp_path / "bad", priv, "1", output_extra={"mode_namer": bad})
    with pytest.raises(ModelError, match="malformed"):
        RiskModel(path.read_bytes(), verify_release(path, load_public_key(pub)))


def test_an_alert_names_the_namers_mode_and_keeps_the_risk_it_was_raised_on(tmp_path):
    """The tiny model gives every mode the same probability, so the most probable is the first of
    the type's; a release whose namer says esc_degradation for any window has its alerts name that,
    at the same probability. Without a namer the most probable is named, as before."""
    k, e = len(ETCH), spec().n_features  # the tiny model's embedding: its features' mean
    always = {  # weights 0: the bias alone decides, whatever the embedding
        "modes": list(ETCH), "mean": [0.0] * e, "scale": [1.0] * e, "weight": [[0.0] * k] * e,
        "bias": [0.0 if m != "esc_degradation" else 3.0 for m in ETCH], "windows": [30] * k,
    }  # fmt: skip
    priv, pub = keys(tmp_path)
    for namer, want in (({"plasma_etch": always}, "esc_degradation"), (None, ETCH[0])):
        extra = {"mode_namer": namer} if namer else {}
        path = release(tmp_path / str(want), priv, "1", output_extra=extra)
        model = RiskModel(path.read_bytes(), verify_release(path, load_public_key(pub)))
        x = np.ones((1, model.spec.window, model.spec.n_features), np.float32)
        pred = model.predict(x)
        named = model.name_mode("plasma_etch", pred.embedding[0])
        assert named == (want if namer else None)
        decider = Decider(DecisionsConfig(), "s", "e", clock=lambda: 0.0)
        decider.set_thresholds(
            {"alert_probability": 0.01, "alert_persistence_steps": 1, "alert_clear_probability": 0.005}
        )
        got = decider.decide(
            "etch-01", "plasma_etch", 0.0, x[0], list(model.spec.names), model.modes,
            pred.probs[0], 1.0, 1.0, 0.0, "1", named=named,
        )  # fmt: skip
        assert got.alert is not None and got.alert.mode == want
        progressive = [model.modes.index(m) for m in ETCH]
        assert got.alert.probability == pytest.approx(pred.probs[0, progressive].max())


def test_the_release_fits_its_namer_on_windows_before_a_failure_of_each_type():
    """cloud.training.release.mode_namer reads each window's tool type from its type_* features."""
    emb, labels = _windows([60, 30, 30], seed=3)
    names = ["z_00", "type_plasma_etch", "type_cvd"]
    x = np.zeros((len(emb), 4, 3), np.float32)
    x[:, -1, 1] = 1.0  # etch windows
    ws = WindowSet(x=x, rul=np.zeros(len(emb), np.float32), labels=labels, groups=np.arange(len(emb)))
    namer = mode_namer(emb, ws, names, list(ALL_MODES))
    assert set(namer.types) == {"plasma_etch"}
    x[:, -1, 1], x[:, -1, 2] = 0.0, 1.0  # the same windows, said to be CVD's: no etch mode fails there
    assert mode_namer(emb, ws, names, list(ALL_MODES)).types == {}
    assert mode_namer(emb, ws, ["z_00", "a", "b"], list(ALL_MODES)).types == {}  # C-MAPSS: no types
