"""Training, distillation, export, quantization and release of fabpm's models (torch; cloud side).

Modules: ``cmapss`` (NASA C-MAPSS FD001 and its standard protocol), ``simdata`` (windows and labels
from ``fabpm sim export`` sets, split by tool), ``trainer`` (the training loop: early stopping,
checkpoints, CUDA autocast, DDP), ``distil`` (edge model from the full one), ``export`` (ONNX),
``quantize`` (static INT8 with adaptive per-layer precision), ``parity`` (FP32 vs released graph),
``release`` (signed manifest), ``tuning`` (yield/energy surrogate), ``pipeline`` (the API the
cloud's incremental learning calls), ``cli`` (``fabpm train``). Errors: ``cloud.training.errors``.
"""
