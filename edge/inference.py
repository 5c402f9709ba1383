"""ONNX models on onnxruntime: the edge-risk model and the edge-tuning model (no torch here).

One ``InferenceSession`` per model, ``intra_op_num_threads`` from the config (one thread is the
right default on small shared machines, FACTS.md). Loading checks the model against its
manifest and the contract of CONTRACTS.md: input ``x`` of rank 3 (risk) or 2 (tuning), outputs
``probs``, ``rul``, ``rul_std``, ``embedding`` (risk) or ``yield``, ``energy`` (tuning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import ModelError
from shared.features import FeatureSpec
from shared.naming import ModeNamer
from shared.signing import ModelManifest, verify_release
from shared.uncertainty import novelty

_logger = logging.getLogger(__name__)

RISK_OUTPUTS = ("probs", "rul", "rul_std", "embedding")
TUNING_OUTPUTS = ("yield", "energy")


@dataclass(frozen=True, slots=True)
class Prediction:
    """A batch of risk predictions."""

    probs: np.ndarray  # (B, M)
    rul: np.ndarray  # (B,)
    rul_std: np.ndarray  # (B,)
    embedding: np.ndarray  # (B, E)
    novelty: np.ndarray  # (B,)


def _session(data: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad graph
        raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc


class RiskModel:
    """The edge-risk model and what its manifest says about it."""

    def __init__(self, data: bytes, manifest: ModelManifest, threads: int = 1) -> None:
        if manifest.role != "edge-risk":
            raise ModelError(f"manifest role is {manifest.role}, expected edge-risk")
        self.manifest = manifest
        try:
            self.spec = FeatureSpec.from_dict(manifest.input_spec)
            self.modes: list[str] = list(manifest.output_spec["modes"])
            centroids = manifest.output_spec.get("embedding_centroids")
            self.centroids = np.asarray(centroids, dtype=np.float64) if centroids else None
            self.novelty_scale = float(manifest.output_spec.get("novelty_scale", 1.0))
            # The release's calibration of the RUL interval (cloud.training.release.calibrate_std).
            self.rul_std_scale = float(manifest.output_spec.get("rul_std_scale", 1.0))
            if not (np.isfinite(self.rul_std_scale) and self.rul_std_scale > 0):
                raise ValueError(f"rul_std_scale must be a positive number, got {self.rul_std_scale}")
            # Which mode an alert is of, from the embedding (shared.naming); older releases: none.
            namer = manifest.output_spec.get("mode_namer")
            self.namer = ModeNamer.from_dict(namer) if namer else None
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"manifest input/output spec is malformed: {exc!r}") from exc
        self.input_name = str(manifest.input_spec.get("input_name", "x"))
        self.session = _session(data, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if self.input_name not in inputs or len(inputs[self.input_name].shape) != 3:
            raise ModelError(f"model needs a rank-3 input {self.input_name!r}; it has {list(inputs)}")
        names = [o.name for o in self.session.get_outputs()]
        missing = [n for n in RISK_OUTPUTS if n not in names]
        if missing:
            raise ModelError(f"model lacks outputs {missing} (has {names})")

    @property
    def version(self) -> str:
        return self.manifest.version

    def name_mode(self, tool_type: str, embedding: np.ndarray) -> str | None:
        """The progressive mode the release's namer gives one window's (E,) embedding; None when
        the release has no namer for the tool type (the most probable mode is named then)."""
        if self.namer is None:
            return None
        got = self.namer.name(tool_type, embedding)
        return None if got is None or got[0] not in self.modes else got[0]

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.manifest.thresholds)

    def predict(self, x: np.ndarray) -> Prediction:
        """(B, W, F) float32 features → predictions; ModelError if the outputs break the contract."""
        try:
            probs, rul, rul_std, emb = self.session.run(list(RISK_OUTPUTS), {self.input_name: x})
        except Exception as exc:
            raise ModelError(f"inference failed: {exc}") from exc
        batch = x.shape[0]
        probs = np.asarray(probs, dtype=np.float64).reshape(batch, -1)
        emb = np.asarray(emb, dtype=np.float64).reshape(batch, -1)
        if probs.shape[1] != len(self.modes):
            raise ModelError(f"probs has {probs.shape[1]} modes, manifest lists {len(self.modes)}")
        if self.centroids is not None and self.centroids.size:
            nov = novelty(emb, self.centroids, self.novelty_scale)
        else:
            nov = np.zeros(batch)
        return Prediction(
            probs=probs,
            rul=np.asarray(rul, dtype=np.float64).reshape(batch),
            rul_std=np.asarray(rul_std, dtype=np.float64).reshape(batch) * self.rul_std_scale,
            embedding=emb,
            novelty=nov,
        )


class TuningModel:
    """The edge-tuning surrogate: (B, D) setpoints then context → yield (%), energy (kWh) per lot."""

    def __init__(self, data: bytes, manifest: ModelManifest, threads: int = 1) -> None:
        if manifest.role != "edge-tuning":
            raise ModelError(f"manifest role is {manifest.role}, expected edge-tuning")
        self.manifest = manifest
        spec = manifest.input_spec
        try:
            self.setpoints: list[str] = list(spec["setpoints"])
            self.context: list[str] = list(spec["context"])
            self.tool_type = str(spec["tool_type"])
        except (KeyError, TypeError) as exc:
            raise ModelError(f"tuning manifest input_spec is malformed: {exc!r}") from exc
        self.input_name = str(spec.get("input_name", "x"))
        self.session = _session(data, threads)
        names = [o.name for o in self.session.get_outputs()]
        missing = [n for n in TUNING_OUTPUTS if n not in names]
        if missing:
            raise ModelError(f"tuning model lacks outputs {missing} (has {names})")

    @property
    def version(self) -> str:
        return self.manifest.version

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, D) raw rows → (yield (B,), energy (B,))."""
        try:
            yld, energy = self.session.run(list(TUNING_OUTPUTS), {self.input_name: x.astype(np.float32)})
        except Exception as exc:
            raise ModelError(f"tuning inference failed: {exc}") from exc
        return np.asarray(yld).reshape(-1), np.asarray(energy).reshape(-1)


def load_verified(path: Path, key: Ed25519PublicKey, threads: int) -> RiskModel | TuningModel:
    """Load a release from disk after verifying its manifest and digest (``shared.signing``)."""
    manifest = verify_release(path, key)
    data = path.read_bytes()
    return build(data, manifest, threads)


def build(data: bytes, manifest: ModelManifest, threads: int) -> RiskModel | TuningModel:
    if manifest.role == "edge-risk":
        return RiskModel(data, manifest, threads)
    return TuningModel(data, manifest, threads)


def describe(model: Any) -> dict[str, Any]:
    return {"role": model.manifest.role, "version": model.version, "model_id": model.manifest.model_id}
