"""The error tree of ``cloud.training``.

::

    FabpmError (shared.errors)
    └── TrainingError        training cannot start or finish (bad data, bad config)
        ├── ExportError      a model does not export to ONNX or the graph does not validate
        ├── QuantizeError    INT8 quantization or calibration failed
        └── ParityError      a released graph disagrees with its FP32 source beyond tolerance

``shared.models.checkpoint.CheckpointError`` and ``shared.errors.DatasetError`` pass through.
"""

from shared.errors import FabpmError


class TrainingError(FabpmError):
    """Training cannot start or finish; the message says what is wrong with the data or config."""


class ExportError(TrainingError):
    """ONNX export failed or produced an invalid graph."""


class QuantizeError(TrainingError):
    """Quantization or calibration failed."""


class ParityError(TrainingError):
    """A quantized or exported graph is outside its stated tolerance of the FP32 model."""
