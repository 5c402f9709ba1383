"""Export a DGA (or the tuning surrogate) to ONNX with a dynamic batch axis.

The edge-risk graph follows CONTRACTS.md: input ``x`` float32 (B, window, F); outputs ``probs``
(B, M), ``rul`` (B,), ``rul_std`` (B,), ``embedding`` (B, E), in that order. The window length is
fixed at export (the positional table and, with token dropping, ``k = ceil(keep_ratio · T)`` are
constants of the graph); only the batch axis is dynamic.

We use torch's TorchScript-based exporter (``dynamo=False``): on torch 2.13 it exports this model
in ~0.2 s against ~4 s for the dynamo exporter, gives bit-identical outputs, and its graph is what
``onnxruntime.quantization`` expects. Its deprecation warnings are silenced here (pytest turns
warnings into errors); when it is gone, :func:`export_onnx` falls back to the dynamo exporter,
which needs ``onnxscript`` (FACTS.md).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from cloud.training.errors import ExportError
from shared.models.dga import DGA, INPUT_NAME, OUTPUT_NAMES, ExportWrapper

_logger = logging.getLogger(__name__)

OPSET = 17


def export_module(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: tuple[str, ...],
    opset: int = OPSET,
) -> Path:
    """Export ``module`` (put in eval mode, and left so) with a dynamic axis 0 on every tensor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    axes = {input_name: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
            )
        except (TypeError, RuntimeError, NotImplementedError) as legacy_exc:
            _logger.warning("legacy ONNX exporter failed (%s); trying the dynamo exporter", legacy_exc)
            try:
                batch = torch.export.Dim("batch", min=1, max=65536)
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    dynamo=True,
                    input_names=[input_name],
                    output_names=list(output_names),
                    dynamic_shapes=({0: batch},),
                    opset_version=max(opset, 18),
                )
            except Exception as exc:  # the dynamo exporter raises many kinds; report them as one
                raise ExportError(f"ONNX export of {type(module).__name__} failed: {exc}") from exc
    module.eval()  # the exporter restores the mode it found; make sure callers get eval back
    try:
        onnx.checker.check_model(onnx.load(str(path)))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: exported graph does not validate: {exc}") from exc
    return path


def export_dga(model: DGA, path: Path, keep_ratio: float | None = None, opset: int = OPSET) -> Path:
    """Export the edge-risk graph of ``model`` (token dropping baked in when ``keep_ratio`` < 1)."""
    model.eval()
    wrapper = ExportWrapper(model, keep_ratio).eval()
    example = torch.zeros(2, model.cfg.window, model.cfg.n_features)
    out = export_module(wrapper, example, path, INPUT_NAME, OUTPUT_NAMES, opset)
    _logger.info("exported %s (keep_ratio=%s, %d bytes)", out, keep_ratio, out.stat().st_size)
    return out
