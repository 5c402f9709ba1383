"""The model registry: signed edge models with their lineage.

:meth:`Registry.register` accepts a release only if its manifest verifies with the fleet's public
key (the same check the edge makes), copies the ONNX file and manifest under
``registry.dir/<version>/`` and records the model with its parent version, the learning round
and the full and edge checkpoints it came from. :meth:`Registry.announcements` builds the retained
:class:`~shared.messages.ModelAnnouncement` for each edge, with the artifact inline up to
``inline_max_bytes`` and by URL above.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select

from cloud.config import RegistryConfig
from cloud.errors import RegistryError
from cloud.storage.models import ModelRow
from cloud.storage.repo import Repo
from shared.errors import SignatureError
from shared.messages import ModelAnnouncement
from shared.signing import load_private_key, load_public_key, manifest_path, verify_release

_logger = logging.getLogger(__name__)


class Registry:
    """Registered models in the database, their files under ``cfg.dir``."""

    def __init__(self, repo: Repo, cfg: RegistryConfig, clock: Callable[[], float] = time.time) -> None:
        self.repo = repo
        self.cfg = cfg
        self.clock = clock

    def public_key(self) -> Ed25519PublicKey:
        try:
            return load_public_key(self.cfg.public_key)
        except SignatureError as exc:
            raise RegistryError(f"registry.public_key: {exc} (make one with `fabpm cloud keys`)") from exc

    def private_key(self) -> Ed25519PrivateKey:
        try:
            return load_private_key(self.cfg.private_key)
        except SignatureError as exc:
            raise RegistryError(f"registry.private_key: {exc} (make one with `fabpm cloud keys`)") from exc

    def register(
        self,
        artifact: Path,
        full_checkpoint: Path | None = None,
        round_id: int | None = None,
        edge_checkpoint: Path | None = None,
    ) -> ModelRow:
        """Verify and record a release; registering the same release again returns the same row.
        ``edge_checkpoint``: the torch checkpoint the ONNX file was exported from (the next
        learning round's student starts from it); copied beside the artifact, like the artifact,
        so the registry's folder alone holds what a round needs."""
        if edge_checkpoint is not None and not Path(edge_checkpoint).is_file():
            raise RegistryError(
                f"edge checkpoint {edge_checkpoint} does not exist, {artifact.name} not registered"
            )
        try:
            manifest = verify_release(artifact, self.public_key())
        except SignatureError as exc:
            raise RegistryError(f"{artifact.name} does not verify, not registered: {exc}") from exc
        existing = self.get(manifest.version, missing_ok=True)
        if existing is not None:
            if existing.manifest.get("sha256") != manifest.sha256:
                raise RegistryError(f"version {manifest.version} is registered with a different artifact")
            return existing
        folder = self.cfg.dir / manifest.version
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / artifact.name
        if artifact.resolve() != target.resolve():
            shutil.copyfile(artifact, target)
            shutil.copyfile(manifest_path(artifact), manifest_path(target))
        edge_copy = None
        if edge_checkpoint is not None:
            edge_copy = folder / Path(edge_checkpoint).name
            if Path(edge_checkpoint).resolve() != edge_copy.resolve():
                shutil.copyfile(edge_checkpoint, edge_copy)
        doc = json.loads(manifest_path(target).read_text())
        row = ModelRow(
            version=manifest.version,
            model_id=manifest.model_id,
            role=manifest.role,
            parent_version=manifest.parent_version,
            round_id=round_id,
            manifest=doc["manifest"],
            signature=doc["signature"],
            artifact_path=str(target),
            full_checkpoint=str(full_checkpoint) if full_checkpoint else None,
            edge_checkpoint=str(edge_copy) if edge_copy else None,
            status="registered",
            created_ts=self.clock(),
        )
        with self.repo.transaction() as s:
            s.add(row)
        _logger.info("registered %s %s (parent %s)", manifest.role, manifest.version, manifest.parent_version)
        return row

    def get(self, version: str, missing_ok: bool = False) -> ModelRow | None:
        with self.repo.transaction() as s:
            row = s.get(ModelRow, version)
        if row is None and not missing_ok:
            raise RegistryError(f"no model version {version!r}")
        return row

    def require(self, version: str) -> ModelRow:
        row = self.get(version)
        assert row is not None
        return row

    def models(self, role: str | None = None) -> list[ModelRow]:
        with self.repo.transaction() as s:
            q = select(ModelRow).order_by(ModelRow.created_ts.desc())
            if role:
                q = q.where(ModelRow.role == role)
            return list(s.scalars(q))

    def lineage(self, version: str) -> list[ModelRow]:
        """The model and its ancestors, newest first (stops at a parent not in the registry)."""
        chain: list[ModelRow] = []
        seen: set[str] = set()
        current: str | None = version
        while current and current not in seen:
            seen.add(current)
            row = self.get(current, missing_ok=True)
            if row is None:
                break
            chain.append(row)
            current = row.parent_version
        return chain

    def active(self, role: str = "edge-risk") -> ModelRow | None:
        with self.repo.transaction() as s:
            return s.scalars(
                select(ModelRow)
                .where(ModelRow.role == role, ModelRow.status == "active")
                .order_by(ModelRow.created_ts.desc())
                .limit(1)
            ).first()

    def activate(self, version: str) -> None:
        """Make ``version`` the model its role's edges run; the one active before is retired, so
        there is one active model per role (``active`` would otherwise keep the newest)."""
        with self.repo.transaction() as s:
            row = s.get(ModelRow, version)
            if row is None:
                raise RegistryError(f"no model version {version!r}")
            for other in s.scalars(
                select(ModelRow).where(ModelRow.role == row.role, ModelRow.status == "active")
            ):
                if other.version != version:
                    other.status = "retired"
            row.status = "active"

    def set_status(self, version: str, status: str) -> None:
        with self.repo.transaction() as s:
            row = s.get(ModelRow, version)
            if row is None:
                raise RegistryError(f"no model version {version!r}")
            row.status = status

    def announcement(self, row: ModelRow, site: str, edge_id: str, public_url: str = "") -> ModelAnnouncement:
        """The signed announcement of ``row`` for one edge's model topic."""
        path = Path(row.artifact_path)
        size = int(row.manifest.get("size", 0))
        inline = size <= self.cfg.inline_max_bytes
        url = None
        if not inline:
            url = (
                f"{public_url.rstrip('/')}/api/models/{row.version}/artifact" if public_url else path.as_uri()
            )
        return ModelAnnouncement(
            schema=ModelAnnouncement.SCHEMA,
            edge_id=edge_id,
            site=site,
            manifest=row.manifest,
            signature=row.signature,
            artifact_b64=base64.b64encode(path.read_bytes()).decode("ascii") if inline else None,
            artifact_url=url,
            target_edges=[edge_id],
        )
