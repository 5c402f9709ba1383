"""Back up and restore a cloud: its database, its models and the files its models point to.

``fabpm cloud backup --config cloud.toml --out DIR`` writes, while the cloud runs:

* ``database.sqlite``: a consistent copy of a SQLite database (SQLite's online backup: a
  snapshot even while workers write). PostgreSQL is not copied: ``pg_dump`` is the tool for a
  live PostgreSQL, and the command it needs (without the password) is printed and kept in
  ``BACKUP.json``.
* ``models/``: the registry's folder (each release's ONNX file, signed manifest and edge
  checkpoint).
* ``checkpoints/``: the full models that learning rounds improved, which live in the rounds'
  working folder, not the registry's: without them a restored cloud would judge hard cases with
  the base model it started with.
* ``keys/signing.pub``; ``keys/signing.key`` only with ``--with-signing-key`` (a secret: whoever
  holds it can sign models every edge accepts; the copy is made readable by its owner only).
* ``BACKUP.json``: when, the schema revision, the rows per table, each file's sha256 and the
  original path of every file the database names.

``fabpm cloud restore --config cloud.toml --from DIR`` checks every file's sha256 first (a
damaged or altered backup is refused before anything is written), copies the database (SQLite;
for PostgreSQL, ``pg_restore`` it first, then run this for the files), the models, checkpoints and
keys to where ``cloud.toml`` puts them, rewrites the paths the database holds to those places,
and migrates the schema. It refuses to overwrite a database, a registry folder or a key that is
there already unless ``--force``. Run it with the cloud stopped. A learning round that was running
at the backup fails at its next step after a restore (its working files are not kept) and the
next round starts afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, cast

from sqlalchemy import func, inspect, select, update
from sqlalchemy.engine import CursorResult, make_url

from cloud.config import CloudConfig
from cloud.errors import CloudError
from cloud.storage import Repo, make_engine, migrate
from cloud.storage.models import Base, ModelRow

MANIFEST = "BACKUP.json"
DATABASE = "database.sqlite"
FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sqlite_file(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    if not u.database or u.database == ":memory:":
        raise CloudError(f"storage.url {url!r}: an in-memory database cannot be backed up or restored")
    return Path(u.database)


def _pg_dump_hint(url: str) -> str:
    u = make_url(url)
    parts = ["pg_dump", "-Fc", f"-f {u.database}.dump"]
    if u.host:
        parts.append(f"-h {u.host}")
    if u.port:
        parts.append(f"-p {u.port}")
    if u.username:
        parts.append(f"-U {u.username}")
    return " ".join([*parts, str(u.database)])


def _counts(repo: Repo) -> dict[str, int]:
    names = set(inspect(repo.engine).get_table_names())
    with repo.transaction() as s:
        return {
            t.name: int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
            if t.name in names
        }


def _model_files(repo: Repo) -> set[str]:
    """Every file the models table names (artifacts, full and edge checkpoints)."""
    with repo.transaction() as s:
        rows = s.execute(select(ModelRow.artifact_path, ModelRow.full_checkpoint, ModelRow.edge_checkpoint))
        return {path for row in rows for path in row if path}


def backup(cfg: CloudConfig, out: Path, with_signing_key: bool = False) -> dict[str, Any]:
    """Write a backup of ``cfg``'s cloud into ``out`` (new or empty); its manifest."""
    if out.exists() and any(out.iterdir()):
        raise CloudError(f"{out} is not empty: a backup goes into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    source = _sqlite_file(cfg.storage.url)
    doc: dict[str, Any] = {"format": FORMAT, "created_ts": time.time(), "files": {}, "paths": {}}
    if source is not None:
        if not source.is_file():
            raise CloudError(f"storage.url names {source}, which does not exist")
        # SQLite's online backup copies a consistent snapshot while workers write (the WAL included).
        with (
            contextlib.closing(sqlite3.connect(source, timeout=30)) as src,
            contextlib.closing(sqlite3.connect(out / DATABASE)) as dst,
        ):
            src.backup(dst)
        doc["database"] = "sqlite"
        engine = make_engine(f"sqlite:///{out / DATABASE}")
    else:
        doc["database"] = make_url(cfg.storage.url).get_backend_name()
        doc["pg_dump"] = _pg_dump_hint(cfg.storage.url)
        engine = make_engine(cfg.storage.url)
    try:
        repo = Repo(engine)
        with engine.connect() as conn:
            doc["revision"] = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        doc["tables"] = _counts(repo)
        named = _model_files(repo)
    finally:
        engine.dispose()

    registry = cfg.registry.dir
    if registry.is_dir():
        shutil.copytree(registry, out / "models")
    for i, original in enumerate(sorted(named)):
        path = Path(original)
        inside = _relative_to(path, registry)
        if inside is not None:
            doc["paths"][original] = str(Path("models") / inside)
        elif path.is_file():
            rel = Path("checkpoints") / f"{i:04d}-{path.name}"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / rel)
            doc["paths"][original] = str(rel)
        else:
            doc.setdefault("missing", []).append(original)  # said in the manifest; nothing to copy
    keys = out / "keys"
    keys.mkdir()
    if cfg.registry.public_key.is_file():
        shutil.copyfile(cfg.registry.public_key, keys / "signing.pub")
    if with_signing_key:
        if not cfg.registry.private_key.is_file():
            raise CloudError(f"--with-signing-key: {cfg.registry.private_key} does not exist")
        _write_secret(keys / "signing.key", cfg.registry.private_key.read_bytes())
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        doc["files"][str(path.relative_to(out))] = _sha256(path)
    (out / MANIFEST).write_text(json.dumps(doc, indent=1))
    return doc


def _write_secret(path: Path, data: bytes) -> None:
    """``data`` into ``path``, readable by its owner only from the first byte (no umask window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _relative_to(path: Path, folder: Path) -> Path | None:
    try:
        return path.resolve().relative_to(folder.resolve())
    except ValueError:
        return None


def read_backup(src: Path) -> dict[str, Any]:
    """The manifest of the backup in ``src``, every file checked against it; CloudError otherwise."""
    try:
        doc = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CloudError(f"{src}: no readable {MANIFEST} ({exc}); is this a fabpm cloud backup?") from exc
    if doc.get("format") != FORMAT:
        raise CloudError(f"{src}: backup format {doc.get('format')!r}, this fabpm reads {FORMAT}")
    bad = [
        rel
        for rel, digest in doc["files"].items()
        if not (src / rel).is_file() or _sha256(src / rel) != digest
    ]
    if bad:
        raise CloudError(
            f"{src}: {len(bad)} file(s) missing or changed since the backup: {', '.join(bad[:5])}"
        )
    return doc


def restore(cfg: CloudConfig, src: Path, force: bool = False) -> dict[str, Any]:
    """Restore the backup in ``src`` to where ``cfg`` puts things (see the module docstring); what
    was restored."""
    doc = read_backup(src)
    target = _sqlite_file(cfg.storage.url)
    if doc["database"] == "sqlite" and target is None:
        raise CloudError(
            "the backup holds a SQLite database, storage.url names another kind: copy it by hand"
        )
    if doc["database"] != "sqlite" and target is not None:
        raise CloudError(f"the backup holds no database ({doc['database']}: restore it with pg_restore)")
    registry = cfg.registry.dir
    if not force:
        if target is not None and target.exists():
            raise CloudError(f"{target} exists; pass --force to replace it")
        if registry.is_dir() and any(registry.iterdir()):
            raise CloudError(f"registry.dir {registry} is not empty; pass --force to replace it")
        if (src / "keys" / "signing.key").is_file() and cfg.registry.private_key.exists():
            raise CloudError(f"{cfg.registry.private_key} exists; pass --force to replace it")
        pub, theirs = cfg.registry.public_key, src / "keys" / "signing.pub"
        if theirs.is_file() and pub.exists() and pub.read_bytes() != theirs.read_bytes():
            # this machine's key pair would no longer match: its models would stop verifying
            raise CloudError(f"{pub} holds another public key; pass --force to replace it")
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in (target, target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
            stale.unlink(missing_ok=True)  # a WAL left beside an old file would be replayed into the copy
        shutil.copyfile(src / DATABASE, target)
    if (src / "models").is_dir():
        shutil.rmtree(registry, ignore_errors=True)
        shutil.copytree(src / "models", registry)
    restored_ckpts = cfg.learning.work_dir / "restored"
    new_paths: dict[str, str] = {}
    for original, rel in doc["paths"].items():
        if rel.startswith("models/"):
            new_paths[original] = str(registry / Path(rel).relative_to("models"))
        else:
            dest = restored_ckpts / Path(rel).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dest)
            new_paths[original] = str(dest)
    if (src / "keys" / "signing.pub").is_file():
        cfg.registry.public_key.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "keys" / "signing.pub", cfg.registry.public_key)
    if (src / "keys" / "signing.key").is_file():
        _write_secret(cfg.registry.private_key, (src / "keys" / "signing.key").read_bytes())
    engine = make_engine(cfg.storage.url)
    try:
        revision = migrate(engine)
        repo = Repo(engine)
        rewritten = 0
        with repo.transaction() as s:
            for column in (ModelRow.artifact_path, ModelRow.full_checkpoint, ModelRow.edge_checkpoint):
                for old, new in new_paths.items():
                    if old != new:
                        done = s.execute(update(ModelRow).where(column == old).values({column.key: new}))
                        rewritten += cast(CursorResult[Any], done).rowcount
        counts = _counts(repo)
    finally:
        engine.dispose()
    return {"revision": revision, "tables": counts, "paths_rewritten": rewritten, "files": len(doc["files"])}
