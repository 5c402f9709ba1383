"""Fixtures shared by every test: free ports, a real Mosquitto, the data folder, PostgreSQL."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("FABPM_DATA", REPO.parent / "shared" / "data"))


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Broker:
    """A Mosquitto process the test owns; ``stop``/``start`` simulate an outage."""

    port: int
    conf: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None


def write_mosquitto_conf(folder: Path, port: int) -> Path:
    """A test broker config. ``max_queued_messages`` is raised because Mosquitto's default of 1000
    dropped up to 24% of a QoS 1 burst to a slow subscriber (FACTS.md), which makes counts flaky."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {folder}/\n"
        "max_queued_messages 1000000\n"
        "max_inflight_messages 100\n"
        "log_type error\n"
    )
    return conf


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on a free port, stopped at the end of the test."""
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.fail("mosquitto is not installed: run scripts/bootstrap.sh")
    port = free_port()
    broker = Broker(port=port, conf=write_mosquitto_conf(tmp_path / "broker", port))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def data_dir() -> Path:
    """``../shared/data``; tests that need it skip with the reason when it is absent."""
    if not (DATA / "cmapss" / "train_FD001.txt").exists():
        pytest.skip(f"public data sets not found at {DATA} (CI has them; set FABPM_DATA elsewhere)")
    return DATA


def pg_url() -> str | None:
    """PostgreSQL URL for the storage tests (scripts/test.sh sets it when a server answers)."""
    return os.environ.get("FABPM_TEST_PG_URL")


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL (one test body, both sides of
    the seam); the PostgreSQL case skips where no server is configured (CI always has one)."""
    from cloud.testing import fresh_database  # imported here: most tests never need the cloud

    if request.param == "postgres" and not pg_url():
        pytest.skip("no PostgreSQL (FABPM_TEST_PG_URL unset)")
    with fresh_database(request.param, tmp_path, pg_url()) as url:
        yield url


@pytest.fixture
def repo(db_url: str) -> Iterator[Any]:
    """A migrated :class:`cloud.storage.Repo` on ``db_url`` (SQLite, and PostgreSQL when configured)."""
    from cloud.storage import Repo, make_engine, migrate

    engine = make_engine(db_url)
    migrate(engine)
    yield Repo(engine)
    engine.dispose()


def cloud_config(db_url: str, broker_port: int, tmp_path: Path, **sections: dict[str, Any]) -> Any:
    """A :class:`cloud.config.CloudConfig` for a test worker: the database, the test's broker, the
    registry under ``tmp_path``, learning and the API off; ``sections`` add to (or replace keys in)
    each section."""
    from cloud.config import CloudConfig

    base: dict[str, dict[str, Any]] = {
        "storage": {"url": db_url},
        "mqtt": {"port": broker_port},
        "api": {"enabled": False},
        "registry": {
            "dir": str(tmp_path / "models"),
            "private_key": str(tmp_path / "k/signing.key"),
            "public_key": str(tmp_path / "k/signing.pub"),
        },
        "learning": {"enabled": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return CloudConfig.model_validate(base)


def login(client: Any, name: str) -> dict[str, str]:
    """Sign ``name`` in (its password is ``<name>-password``) on an httpx client of the API; the
    bearer header."""
    r = client.post("/api/auth/token", json={"username": name, "password": f"{name}-password"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}
