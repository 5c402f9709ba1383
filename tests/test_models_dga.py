"""The DGA transformer: shapes, gates, the gate's meaning, dropping = masking, ONNX, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from shared.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shared.models.dga import DGA, OUTPUT_NAMES, DGAConfig, flops

CFG = DGAConfig(n_features=7, window=12, n_modes=3, d_model=16, n_heads=2, n_layers=2, d_ff=32, embed_dim=8)


@pytest.fixture
def model() -> DGA:
    torch.manual_seed(0)
    return DGA(CFG).eval()


def test_shapes_and_ranges(model: DGA):
    x = torch.randn(5, CFG.window, CFG.n_features)
    out = model(x)
    assert out["probs"].shape == (5, 3)
    assert out["rul"].shape == (5,)
    assert out["rul_std"].shape == (5,)
    assert out["embedding"].shape == (5, 8)
    assert out["gates"].shape == (5, CFG.window)
    assert ((out["probs"] > 0) & (out["probs"] < 1)).all()
    assert (out["rul"] >= 0).all() and (out["rul_std"] > 0).all()
    assert torch.allclose(out["embedding"].norm(dim=-1), torch.ones(5), atol=1e-5)


def test_rul_stays_within_the_target_range_in_torch_and_onnx(model: DGA, tmp_path):
    """Every training target is min(RUL, cap): a head that overshoots either end reads 0 or the cap."""
    import onnxruntime as ort

    from cloud.training.export import export_dga

    x = torch.randn(6, CFG.window, CFG.n_features)
    for bias, bound in ((+5.0, CFG.rul_cap), (-5.0, 0.0)):
        with torch.no_grad():
            model.rul_head.bias.fill_(bias)  # the normalised RUL far outside [0, 1]
            out = model(x)
        assert ((out["rul_norm"] > 1) if bias > 0 else (out["rul_norm"] < 0)).all()
        assert torch.equal(out["rul"], torch.full((6,), bound))
        path = export_dga(model, tmp_path / f"b{bias}.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(sess.run(["rul"], {"x": x.numpy()})[0], np.full(6, bound, np.float32))


def test_gates_strictly_inside_unit_interval(model: DGA):
    out = model(torch.randn(4, CFG.window, CFG.n_features) * 10)
    g = out["gates"]
    assert ((g > 0) & (g < 1)).all()


class _FixedGate(nn.Module):
    """Replaces the gate MLP with fixed logits, so one token's gate can be forced to ~0."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, h: Tensor) -> Tensor:
        return self.logits.expand(h.shape[0], -1)


def test_token_with_gate_near_zero_changes_nothing(model: DGA):
    torch.manual_seed(1)
    logits = torch.randn(1, CFG.window)
    logits[0, 4] = -60.0  # g ≈ 1e-26
    model.gate = _FixedGate(logits)
    x = torch.randn(3, CFG.window, CFG.n_features)
    y = x.clone()
    y[:, 4] = torch.randn(3, CFG.n_features) * 100.0  # whatever token 4 holds
    a, b = model(x), model(y)
    for key in ("probs", "rul", "rul_std", "embedding"):
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)
    # and a token with an ordinary gate does change the output (the test can fail)
    z = x.clone()
    z[:, 5] = torch.randn(3, CFG.n_features) * 100.0
    assert not torch.allclose(model(z)["embedding"], a["embedding"], atol=1e-4)


@pytest.mark.parametrize("keep_ratio", [0.25, 0.5, 0.75])
def test_dropping_lowest_gate_tokens_equals_masking_them(model: DGA, keep_ratio: float):
    x = torch.randn(6, CFG.window, CFG.n_features)
    full = model(x)
    k = math.ceil(keep_ratio * CFG.window)
    idx = torch.topk(full["gates"], k, dim=1).indices
    mask = torch.zeros(6, CFG.window, dtype=torch.bool).scatter_(1, idx, True)
    dropped = model(x, keep_ratio=keep_ratio)
    masked = model(x, token_mask=mask)
    for key in ("probs", "rul", "rul_std", "embedding"):
        torch.testing.assert_close(dropped[key], masked[key], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(dropped["rul_std"], full["rul_std"])  # dropping did something
    assert flops(CFG, keep_ratio) < flops(CFG)


def test_checkpoint_rebuilds_its_model_alone(model: DGA, tmp_path):
    meta = {"feature_spec": {"window": CFG.window}, "modes": ["a", "b", "c"], "metrics": {"rmse": 1.0}}
    path = save_checkpoint(tmp_path / "m.pt", model, meta)
    rebuilt, got = load_checkpoint(path)
    assert isinstance(rebuilt, DGA) and rebuilt.cfg == CFG
    assert got["modes"] == ["a", "b", "c"] and got["metrics"] == {"rmse": 1.0}
    x = torch.randn(2, CFG.window, CFG.n_features)
    torch.testing.assert_close(rebuilt(x)["rul"], model(x)["rul"])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("keep_ratio", [None, 0.5])
def test_onnx_matches_torch_with_dynamic_batch(model: DGA, tmp_path, keep_ratio):
    import onnxruntime as ort

    from cloud.training.export import export_dga

    path = export_dga(model, tmp_path / "m.onnx", keep_ratio=keep_ratio)
    assert not model.training
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)
    assert sess.get_inputs()[0].name == "x"
    for batch in (1, 9):
        x = torch.randn(batch, CFG.window, CFG.n_features)
        got = sess.run(None, {"x": x.numpy()})
        with torch.no_grad():
            ref = model(x, keep_ratio=keep_ratio)
        for name, arr in zip(OUTPUT_NAMES, got, strict=True):
            np.testing.assert_allclose(arr, ref[name].numpy(), atol=1e-4, rtol=1e-4)


def test_config_round_trip_and_validation():
    assert DGAConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ValueError):
        DGAConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError):
        DGAConfig.from_dict({**CFG.to_dict(), "bogus": 1})


ONE_HEAD = DGAConfig(
    n_features=5, window=9, n_modes=1, d_model=8, n_heads=1, n_layers=1, d_ff=16, embed_dim=4
)


@pytest.mark.parametrize("cfg", [CFG, ONE_HEAD])
def test_lean_graph_computes_what_the_model_does_in_fewer_nodes(cfg: DGAConfig, tmp_path):
    """The release's hand-built graph (cloud.training.lean_graph): the model's outputs for any
    batch, with the gates, the clamps and every folded constant, in fewer nodes than the exporter's."""
    import onnx
    import onnxruntime as ort

    from cloud.training.export import export_dga
    from cloud.training.lean_graph import lean_graph

    torch.manual_seed(2)
    model = DGA(cfg).eval()
    with torch.no_grad():  # every parameter away from its initial value (zero biases, gate at 2)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.gate.fc2.bias.fill_(-1.0)
    proto = lean_graph(model)
    path = tmp_path / "lean.onnx"
    onnx.save(proto, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES) and sess.get_inputs()[0].name == "x"
    assert len(proto.graph.node) < len(onnx.load(str(export_dga(model, tmp_path / "exp.onnx"))).graph.node)
    x = torch.randn(9, cfg.window, cfg.n_features) * 2
    with torch.no_grad():
        ref = model(x)
    assert 0.05 < float(ref["gates"].min()) and float(ref["gates"].max()) < 0.95, "gates not exercised"
    for batch in (1, 9):
        got = sess.run(None, {"x": x[:batch].numpy()})
        for name, arr in zip(OUTPUT_NAMES, got, strict=True):
            np.testing.assert_allclose(arr, ref[name][:batch].numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
    for bias, bound in ((+5.0, cfg.rul_cap), (-5.0, 0.0)):  # the RUL clamp at both ends
        with torch.no_grad():
            model.rul_head.bias.fill_(bias)
        got = ort.InferenceSession(lean_graph(model).SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(got.run(["rul"], {"x": x.numpy()})[0], np.full(9, bound, np.float32))
