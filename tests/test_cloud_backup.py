"""Backup and restore (cloud/backup.py): a consistent copy of the database (SQLite) with the models
and the improved full models it points to, checked by sha256 before a restore writes anything;
restored elsewhere, every model path points to the restored files and they verify; on
PostgreSQL the files are backed up and the paths rewritten, the database left to pg_dump."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
from conftest import cloud_config, free_port

from cloud import backup
from cloud.auth import Users
from cloud.cli import main as cloud_cli
from cloud.config import CloudConfig
from cloud.errors import CloudError
from cloud.registry import Registry
from cloud.storage import Repo, make_engine, migrate
from cloud.storage.models import DeadLetter
from cloud.testing import signed_release
from shared.signing import generate_keypair, load_public_key, verify_release


def _cfg(db_url: str, root: Path) -> CloudConfig:
    return cloud_config(db_url, free_port(), root, learning={"work_dir": str(root / "learning")})


def _cloud_with_a_model(db_url: str, root: Path) -> None:
    cfg = _cfg(db_url, root)
    engine = make_engine(db_url)
    try:
        migrate(engine)
        repo = Repo(engine)
        full = root / "learning" / "round-00001" / "full.pt"  # a round's improved full model
        full.parent.mkdir(parents=True)
        full.write_bytes(b"full model weights")
        edge = root / "work" / "edge.pt"
        edge.parent.mkdir(parents=True)
        edge.write_bytes(b"edge weights")
        (root / "release").mkdir()
        release = signed_release(cfg.registry, root / "release", "r7")
        Registry(repo, cfg.registry).register(release, full_checkpoint=full, edge_checkpoint=edge)
        Users(repo, 3600, 2**4).add("ada", "ada-password", "admin")
    finally:
        engine.dispose()


def test_a_backup_restored_elsewhere_points_to_its_own_files(db_url: str, tmp_path: Path):
    a, saved, b = tmp_path / "a", tmp_path / "backup", tmp_path / "b"
    _cloud_with_a_model(db_url, a)
    doc = backup.backup(_cfg(db_url, a), saved)
    assert doc["tables"]["models"] == 1 and doc["tables"]["users"] == 1
    assert "models/r7/edge.onnx" in doc["files"] and "keys/signing.pub" in doc["files"]
    assert "keys/signing.key" not in doc["files"], "the private key only when asked"
    assert any(rel.startswith("checkpoints/") for rel in doc["files"]), "the round's full model"
    sqlite = db_url.startswith("sqlite")
    assert ("database.sqlite" in doc["files"]) == sqlite and ("pg_dump" in doc) == (not sqlite)
    with pytest.raises(CloudError, match="not empty"):
        backup.backup(_cfg(db_url, a), saved)

    shutil.rmtree(a)  # the machine is gone (on PostgreSQL the database stays: pg_restore's part)
    restored_url = f"sqlite:///{b / 'cloud.db'}" if sqlite else db_url
    cfg_b = _cfg(restored_url, b)
    got = backup.restore(cfg_b, saved)
    assert got["tables"]["models"] == 1 and got["paths_rewritten"] == 3
    engine = make_engine(restored_url)
    try:
        repo = Repo(engine)
        row = Registry(repo, cfg_b.registry).get("r7")
        assert row is not None and Path(row.artifact_path).parent == b / "models" / "r7"
        verify_release(Path(row.artifact_path), load_public_key(cfg_b.registry.public_key))
        assert Path(row.full_checkpoint or "").read_bytes() == b"full model weights"
        assert Path(row.edge_checkpoint or "").read_bytes() == b"edge weights"
        assert Users(repo, 3600, 2**4).login("ada", "ada-password")[2] == "admin"
    finally:
        engine.dispose()
    with pytest.raises(CloudError, match="pass --force"):
        backup.restore(cfg_b, saved)  # nothing is overwritten unasked


def test_a_changed_backup_is_refused_before_anything_is_written(db_url: str, tmp_path: Path):
    a, saved, b = tmp_path / "a", tmp_path / "backup", tmp_path / "b"
    _cloud_with_a_model(db_url, a)
    assert (
        cloud_cli(["backup", "--config", str(_toml(db_url, a)), "--out", str(saved), "--with-signing-key"])
        == 0
    )
    key = saved / "keys" / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    (saved / "models" / "r7" / "edge.onnx").write_bytes(b"something else")
    with pytest.raises(
        CloudError, match=r"1 file\(s\) missing or changed since the backup: models/r7/edge.onnx"
    ):
        backup.restore(_cfg(f"sqlite:///{b / 'cloud.db'}", b), saved)
    assert not b.exists()


def _toml(db_url: str, root: Path) -> Path:
    path = root / "cloud.toml"
    path.write_text(
        f'[storage]\nurl = "{db_url}"\n[registry]\ndir = "{root / "models"}"\n'
        f'private_key = "{root / "k/signing.key"}"\npublic_key = "{root / "k/signing.pub"}"\n'
        f'[learning]\nwork_dir = "{root / "learning"}"\n'
    )
    return path


def test_a_sqlite_backup_taken_while_a_worker_writes_is_whole(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'a' / 'cloud.db'}"
    engine = make_engine(url)
    migrate(engine)
    repo, stop, written = Repo(engine), threading.Event(), [0]

    def worker() -> None:  # ingest writing dead letters in small transactions throughout
        while not stop.is_set():
            with repo.transaction() as s:
                s.add(DeadLetter(topic="x", reason="r", payload=b"{", size=1, received_ts=0.0))
            written[0] += 1

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        while written[0] < 50:
            time.sleep(0.01)
        doc = backup.backup(_cfg(url, tmp_path / "a"), tmp_path / "backup")
    finally:
        stop.set()
        thread.join()
        engine.dispose()
    with contextlib.closing(sqlite3.connect(tmp_path / "backup" / "database.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (rows,) = db.execute("SELECT count(*) FROM dead_letters").fetchone()
    assert 50 <= rows <= written[0] and doc["tables"]["dead_letters"] == rows


def test_a_restore_keeps_a_machines_own_keys_unless_forced(db_url: str, tmp_path: Path):
    a, saved = tmp_path / "a", tmp_path / "backup"
    _cloud_with_a_model(db_url, a)
    backup.backup(_cfg(db_url, a), saved, with_signing_key=True)

    def target(name: str) -> CloudConfig:
        root = tmp_path / name
        return _cfg(f"sqlite:///{root / 'cloud.db'}" if db_url.startswith("sqlite") else db_url, root)

    own = target("c")
    generate_keypair(own.registry.private_key, own.registry.public_key)  # c has its own pair
    with pytest.raises(CloudError, match=r"signing\.key exists; pass --force"):
        backup.restore(own, saved)
    backup.restore(own, saved, force=True)
    assert own.registry.private_key.read_bytes() == (saved / "keys" / "signing.key").read_bytes()
    assert stat.S_IMODE(own.registry.private_key.stat().st_mode) == 0o600
    other = target("d")
    generate_keypair(tmp_path / "elsewhere.key", other.registry.public_key)  # d trusts another pair
    with pytest.raises(CloudError, match="holds another public key; pass --force"):
        backup.restore(other, saved)
