"""The error tree of ``edge``.

::

    FabpmError (shared.errors)
    └── EdgeError                 anything the edge daemon raises on purpose
        ├── SourceError           the OPC UA server cannot be reached, a tag does not resolve, a read fails
        ├── ModelError            an ONNX model does not load or does not honour the contract
        ├── UpdateRejected        a model update was refused (signature, digest, size, checks); says why
        ├── OutboxError           the disk outbox cannot be opened or written
        ├── PublishError          the MQTT link cannot be configured or set up
        └── WriteRefused          a setpoint write was refused by a guard (range, envelope, rate) or
                                  did not read back; carries the reason

Library errors (asyncua, onnxruntime, sqlite3, paho) are translated at the boundary with
``raise X(...) from exc``.
"""

from __future__ import annotations

from shared.errors import FabpmError


class EdgeError(FabpmError):
    """Root of the edge daemon's errors."""


class SourceError(EdgeError):
    """The tag source failed: connection, browse path resolution, read or write."""


class ModelError(EdgeError):
    """An ONNX model cannot be loaded or breaks the model contract."""


class UpdateRejected(EdgeError):
    """A model update was refused; the message says which check failed."""


class OutboxError(EdgeError):
    """The disk outbox cannot be opened or written."""


class PublishError(EdgeError):
    """The MQTT link cannot be configured (TLS files, credentials)."""


class WriteRefused(EdgeError):
    """A setpoint write was refused by a guard or failed its read-back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
