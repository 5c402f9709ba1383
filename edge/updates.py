"""Signed model updates: verify, load beside the running model, check, swap atomically, keep the old.

A :class:`~shared.messages.ModelAnnouncement` arrives (retained) on the edge's model topic.
:meth:`Updater.handle` then, in order, and refusing with the reason at the first failure:

1. skips announcements for other edges, the version already running, and announcements already
   refused (by content: a forged announcement of a version does not block the genuine one);
2. verifies the Ed25519 signature over the manifest (``shared.signing``) with the edge's key;
3. fetches the artifact (inline base64, ``file://`` or ``https://``; at most ``max_artifact_mb``,
   with a timeout; or, for an announcement without an artifact of a version already in the store,
   such as the previous model on a rollback, the stored file) and verifies its size and sha256
   against the manifest;
4. loads it into a new onnxruntime session (in a worker thread: inference goes on meanwhile);
5. checks it on recent windows: output shapes, no NaN, and (risk models with the same window
   grid) a mean absolute probability difference to the running model ≤ ``max_disagreement``;
6. stores it on disk (``store_dir/risk/<version>.onnx``, ``store_dir/tuning/<type>/…``), points
   ``current.json`` at it by an atomic rename, keeping the previous version for rollback;
7. swaps the model reference (one assignment: the next batch uses the new model).

The outcome (accepted/refused, version, reason) goes to the status topic. Nothing here raises
into the caller: a bad update is reported and the running model stays.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import ssl
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.config import ModelsConfig
from edge.errors import ModelError, UpdateRejected
from edge.inference import RiskModel, TuningModel, build
from shared.errors import SignatureError
from shared.messages import ModelAnnouncement
from shared.signing import ModelManifest, manifest_path, verify_artifact, verify_manifest, verify_release

_logger = logging.getLogger(__name__)

Model = RiskModel | TuningModel
ROLE_KEY = {"edge-risk": "risk", "edge-tuning": "tuning"}


def slot_of(manifest: dict[str, Any] | ModelManifest) -> str:
    """Where a model runs: ``edge-risk``, or ``edge-tuning/<tool type>`` (one tuning model per type)."""
    doc = manifest.model_dump() if isinstance(manifest, ModelManifest) else manifest
    role = str(doc.get("role", "?"))
    if role == "edge-tuning":
        spec = doc.get("input_spec") or {}
        return f"{role}/{spec.get('tool_type', '?') if isinstance(spec, dict) else '?'}"
    return role


class ModelStore:
    """Accepted releases on disk and which one is current, per slot (:func:`slot_of`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, slot: str) -> Path:
        role, _, tool_type = slot.partition("/")
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in tool_type)
        return self.root / ROLE_KEY[role] / safe if tool_type else self.root / ROLE_KEY[role]

    def slots(self) -> set[str]:
        """Every slot with a current pointer on disk."""
        out: set[str] = set()
        for role, key in ROLE_KEY.items():
            for ptr in (self.root / key).rglob("current.json"):
                rel = ptr.parent.relative_to(self.root / key)
                out.add(f"{role}/{rel}" if str(rel) != "." else role)
        return out

    def pointer(self, role: str) -> dict[str, Any]:
        path = self._dir(role) / "current.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def path_of(self, role: str, version: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in version)
        return self._dir(role) / f"{safe}.onnx"

    def save(self, role: str, manifest: ModelManifest, signature: str, data: bytes) -> Path:
        folder = self._dir(role)
        folder.mkdir(parents=True, exist_ok=True)
        path = self.path_of(role, manifest.version)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        doc = {"manifest": manifest.model_dump(mode="json"), "signature": signature}
        mpath = manifest_path(path)
        mtmp = mpath.with_suffix(".part")
        mtmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        mtmp.replace(mpath)
        return path

    def set_current(self, role: str, version: str, previous: str | None) -> None:
        """Point at ``version`` (atomic rename: a crash leaves the old or the new pointer)."""
        folder = self._dir(role)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "current.json.part"
        tmp.write_text(json.dumps({"version": version, "previous": previous, "ts": time.time()}))
        tmp.replace(folder / "current.json")

    def load(self, role: str, version: str, key: Ed25519PublicKey, threads: int) -> Model:
        path = self.path_of(role, version)
        manifest = verify_release(path, key)
        return build(path.read_bytes(), manifest, threads)


class Updater:
    """Handles model announcements for one edge; see the module docstring."""

    def __init__(
        self,
        cfg: ModelsConfig,
        store: ModelStore,
        key: Ed25519PublicKey,
        edge_id: str,
        current: Callable[[str], Model | None],
        swap: Callable[[str, Model], None],
        recent: Callable[[], Sequence[Any]],
        features_for: Callable[[Any, RiskModel], np.ndarray | None],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.key = key
        self.edge_id = edge_id
        self._current = current
        self._swap = swap
        self._recent = recent
        self._features_for = features_for
        self.refused: dict[str, str] = {}  # announcement fingerprint -> reason
        self.last: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def handle(self, ann: ModelAnnouncement) -> dict[str, Any] | None:
        """Process one announcement; the outcome (also kept in :attr:`last`), None when skipped."""
        if ann.target_edges is not None and self.edge_id not in ann.target_edges:
            return None
        async with self._lock:
            version = str(ann.manifest.get("version", "?"))
            role = str(ann.manifest.get("role", "?"))
            slot = slot_of(ann.manifest)
            running = self._current(slot) if role in ROLE_KEY else None
            if running is not None and running.version == version:
                return None
            # Refusals are remembered per announcement, not per version: a forged "version 2" must
            # not block the genuine one.
            fingerprint = _fingerprint(ann)
            if fingerprint in self.refused:
                return None
            try:
                model, manifest = await self._accept(ann)
            except (UpdateRejected, SignatureError, ModelError) as exc:
                reason = str(exc)
                self.refused[fingerprint] = reason
                _logger.warning("model update %s (%s) refused: %s", version, role, reason)
                self.last = {"version": version, "role": role, "outcome": "refused", "reason": reason}
                self.last["ts"] = time.time()
                return self.last
            previous = running.version if running is not None else None
            self.store.set_current(slot, manifest.version, previous)
            # The outcome is recorded before the swap: the swap publishes the edge's status, which
            # must not pair the new version with the previous announcement's refusal.
            self.last = {
                "version": manifest.version,
                "role": manifest.role,
                "outcome": "accepted",
                "previous": previous,
                "ts": time.time(),
            }
            self._swap(slot, model)
            _logger.info("model %s now %s (was %s)", slot, manifest.version, previous)
            return self.last

    async def _accept(self, ann: ModelAnnouncement) -> tuple[Model, ModelManifest]:
        manifest = verify_manifest(ann.manifest, ann.signature, self.key)
        if manifest.role not in ROLE_KEY:
            raise UpdateRejected(f"unknown role {manifest.role}")
        max_bytes = int(self.cfg.max_artifact_mb * 1024 * 1024)
        if manifest.size > max_bytes:
            raise UpdateRejected(f"artifact of {manifest.size} bytes exceeds {max_bytes}")
        slot = slot_of(manifest)
        stored = self.store.path_of(slot, manifest.version)
        if ann.artifact_b64 is None and ann.artifact_url is None and stored.exists():
            # A rollback: the cloud re-announces a version this edge already holds (the previous
            # one); the bytes on disk are checked against the newly verified manifest like any others.
            data = await asyncio.to_thread(stored.read_bytes)
        else:
            data = await asyncio.to_thread(self._fetch, ann, max_bytes)
        verify_artifact(manifest, data)
        model = await asyncio.to_thread(build, data, manifest, self.cfg.intra_op_threads)
        await asyncio.to_thread(self._check, model)
        await asyncio.to_thread(self.store.save, slot, manifest, ann.signature, data)
        return model, manifest

    def _fetch(self, ann: ModelAnnouncement, max_bytes: int) -> bytes:
        if ann.artifact_b64 is not None:
            try:
                return base64.b64decode(ann.artifact_b64, validate=True)
            except ValueError as exc:
                raise UpdateRejected(f"inline artifact is not base64: {exc}") from exc
        url = ann.artifact_url
        if url is None:
            raise UpdateRejected("announcement has neither artifact_b64 nor artifact_url")
        if not url.startswith(("https://", "file://")):
            raise UpdateRejected(f"artifact URL must be https:// or file://, got {url[:40]!r}")
        try:
            context = ssl.create_default_context(
                cafile=str(self.cfg.download_ca_file) if self.cfg.download_ca_file else None
            )
            with urllib.request.urlopen(url, timeout=self.cfg.download_timeout_s, context=context) as resp:
                data = resp.read(max_bytes + 1)
        except (OSError, ValueError) as exc:
            raise UpdateRejected(f"cannot fetch {url}: {exc}") from exc
        if len(data) > max_bytes:
            raise UpdateRejected(f"artifact at {url} exceeds {max_bytes} bytes")
        return bytes(data)

    def _check(self, model: Model) -> None:
        """Shapes, NaN and agreement with the running model on recent windows."""
        if isinstance(model, TuningModel):
            width = len(model.setpoints) + len(model.context)
            yld, energy = model.predict(np.zeros((4, width), dtype=np.float32))
            if (
                yld.shape != (4,)
                or energy.shape != (4,)
                or not (np.isfinite(yld).all() and np.isfinite(energy).all())
            ):
                raise UpdateRejected("tuning model outputs have the wrong shape or are not finite")
            return
        running = self._current("edge-risk")
        windows = list(self._recent())[-self.cfg.check_windows :]
        new_x = [f for w in windows if (f := self._features_for(w, model)) is not None]
        if not new_x:
            spec = model.spec
            new_x = [np.zeros((spec.window, spec.n_features), dtype=np.float32)]
        x = np.stack(new_x).astype(np.float32)
        pred = model.predict(x)
        b = len(x)
        if pred.probs.shape != (b, len(model.modes)) or pred.rul.shape != (b,) or pred.rul_std.shape != (b,):
            raise UpdateRejected(f"output shapes {pred.probs.shape}, {pred.rul.shape} do not fit batch {b}")
        for name, arr in (("probs", pred.probs), ("rul", pred.rul), ("rul_std", pred.rul_std)):
            if not np.isfinite(arr).all():
                raise UpdateRejected(f"{name} has NaN or infinite values on recent windows")
        if ((pred.probs < 0) | (pred.probs > 1)).any():
            raise UpdateRejected("probs outside [0, 1]")
        if not isinstance(running, RiskModel) or len(new_x) != len(windows) or not windows:
            return
        old_x = [self._features_for(w, running) for w in windows]
        if any(o is None for o in old_x):
            return
        old = running.predict(np.stack([o for o in old_x if o is not None]).astype(np.float32))
        common = [m for m in model.modes if m in running.modes]
        if not common:
            return
        a = pred.probs[:, [model.modes.index(m) for m in common]]
        c = old.probs[:, [running.modes.index(m) for m in common]]
        diff = float(np.abs(a - c).mean())
        if diff > self.cfg.max_disagreement:
            raise UpdateRejected(
                f"disagrees with the running model {running.version} on recent windows: "
                f"mean |Δp| {diff:.3f} > {self.cfg.max_disagreement}"
            )


def _fingerprint(ann: ModelAnnouncement) -> str:
    digest = hashlib.sha256()
    for part in (
        json.dumps(ann.manifest, sort_keys=True),
        ann.signature,
        ann.artifact_b64 or "",
        ann.artifact_url or "",
    ):
        digest.update(part.encode())
    return digest.hexdigest()


def announcement_for(artifact: Path, inline: bool = True) -> ModelAnnouncement:
    """Build an announcement from a signed release on disk (tools and tests; the cloud has its own)."""
    doc = json.loads(manifest_path(artifact).read_text())
    fields: dict[str, Any] = {
        "edge_id": "cloud",
        "site": "cloud",
        "manifest": doc["manifest"],
        "signature": doc["signature"],
    }
    if inline:
        fields["artifact_b64"] = base64.b64encode(artifact.read_bytes()).decode("ascii")
    else:
        fields["artifact_url"] = artifact.resolve().as_uri()
    return ModelAnnouncement(**fields)
