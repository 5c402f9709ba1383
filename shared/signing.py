"""Signed model manifests (DESIGN.md §4): Ed25519 over canonical JSON, sha256 of the artifact.

A release on disk is two files side by side::

    <name>.onnx            the model
    <name>.manifest.json   {"manifest": {...}, "signature": "<base64 Ed25519>"}

The edge holds only the public key. :func:`verify_release` checks the signature, then the size
and sha256 of the artifact bytes, and raises :class:`SignatureError` saying which check failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import SignatureError

MANIFEST_SUFFIX = ".manifest.json"


class ModelManifest(BaseModel):
    """What the edge needs to trust and run a model without anything else."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_id: str
    version: str
    parent_version: str | None = None
    role: Literal["edge-risk", "edge-tuning"]
    created_ts: float
    input_spec: dict[str, Any]  # feature_names, window, scaler {mean, std}, tool_types, input name
    output_spec: dict[str, Any]  # output names and meanings, modes, horizon_h
    thresholds: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)  # on the frozen sets
    precision: dict[str, Any] = Field(default_factory=dict)  # which layers INT8, which FP32
    sha256: str
    size: int


def canonical(obj: dict[str, Any]) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new Ed25519 key pair as PEM files (the private one readable by the owner only)."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{path}: cannot read an Ed25519 private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{path}: cannot read an Ed25519 public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key")
    return key


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign_manifest(manifest: ModelManifest, key: Ed25519PrivateKey) -> str:
    """Base64 Ed25519 signature over the canonical manifest."""
    return base64.b64encode(key.sign(canonical(manifest.model_dump(mode="json")))).decode("ascii")


def verify_manifest(manifest: dict[str, Any], signature: str, key: Ed25519PublicKey) -> ModelManifest:
    """Check the signature, then the manifest's shape; SignatureError on either failure."""
    try:
        sig = base64.b64decode(signature, validate=True)
        key.verify(sig, canonical(manifest))
    except (ValueError, InvalidSignature) as exc:
        raise SignatureError("manifest signature does not verify") from exc
    try:
        return ModelManifest.model_validate(manifest)
    except ValidationError as exc:
        raise SignatureError(f"signed manifest is malformed: {exc.errors()[0]['msg']}") from exc


def verify_artifact(manifest: ModelManifest, data: bytes) -> None:
    """The artifact bytes must match the manifest's size and sha256."""
    if len(data) != manifest.size:
        raise SignatureError(f"artifact is {len(data)} bytes, manifest says {manifest.size} (truncated?)")
    digest = sha256_bytes(data)
    if digest != manifest.sha256:
        raise SignatureError(
            f"artifact sha256 {digest[:12]}… does not match the manifest's {manifest.sha256[:12]}…"
        )


def write_release(
    artifact: Path, fields: dict[str, Any], key: Ed25519PrivateKey
) -> tuple[ModelManifest, Path]:
    """Sign ``artifact``: build the manifest from ``fields`` plus its sha256/size, write it beside."""
    data = artifact.read_bytes()
    manifest = ModelManifest.model_validate({**fields, "sha256": sha256_bytes(data), "size": len(data)})
    path = manifest_path(artifact)
    doc = {"manifest": manifest.model_dump(mode="json"), "signature": sign_manifest(manifest, key)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(path)
    return manifest, path


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.stem + MANIFEST_SUFFIX)


def verify_release(artifact: Path, key: Ed25519PublicKey) -> ModelManifest:
    """Verify the manifest beside ``artifact`` and the artifact itself."""
    path = manifest_path(artifact)
    try:
        doc = json.loads(path.read_text())
        manifest_doc, signature = doc["manifest"], doc["signature"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{path}: unreadable manifest: {exc}") from exc
    manifest = verify_manifest(manifest_doc, signature, key)
    try:
        data = artifact.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{artifact}: unreadable artifact: {exc}") from exc
    verify_artifact(manifest, data)
    return manifest
