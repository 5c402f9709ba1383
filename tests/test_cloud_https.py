"""HTTPS for the console and the API (certificates from deploy/mosquitto/make-test-ca.sh), and an
edge fetching a large model artifact from it, trusting the plant's CA (``models.download_ca_file``)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import cloud_config, free_port
from pydantic import ValidationError

from cloud.config import ApiConfig
from cloud.errors import CloudError
from cloud.service import CloudService
from cloud.testing import signed_release
from edge.config import ModelsConfig
from edge.errors import UpdateRejected
from edge.updates import ModelStore, Updater

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    script = REPO / "deploy/mosquitto/make-test-ca.sh"
    subprocess.run([str(script), str(out), "cloud-1"], check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture
def service(db_url: str, mosquitto, tmp_path: Path, certs: Path) -> Iterator[CloudService]:
    api = {
        "enabled": True,
        "port": free_port(),
        "tls_cert_file": str(certs / "console.crt"),
        "tls_key_file": str(certs / "console.key"),
        "auth": {"scrypt_n": 2**4},
    }
    cfg = cloud_config(db_url, mosquitto.port, tmp_path, api=api, registry={"inline_max_bytes": 0})
    svc = CloudService(cfg)
    svc.start()
    yield svc
    svc.stop()


def _updater(tmp_path: Path, ca: Path | None) -> Updater:
    models = ModelsConfig(store_dir=tmp_path / "edge-models", download_ca_file=ca, download_timeout_s=10)
    noop = lambda *_a: None  # noqa: E731 (the fetch under test touches none of these)
    store = ModelStore(tmp_path / "edge-models")
    return Updater(models, store, None, "edge-1", noop, noop, lambda: [], noop)  # type: ignore[arg-type]


def test_the_api_speaks_https_and_an_edge_fetches_a_large_artifact_trusting_the_plant_ca(
    service: CloudService, tmp_path: Path, certs: Path
):
    port = service.cfg.api.port
    health = httpx.get(
        f"https://127.0.0.1:{port}/health", verify=ssl.create_default_context(cafile=certs / "ca.crt")
    )
    assert health.status_code == 200
    with pytest.raises(httpx.HTTPError):  # no plain HTTP beside it
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)

    content = b"an edge model, larger than inline_max_bytes"
    artifact = signed_release(service.cfg.registry, tmp_path, content=content)
    row = service.registry.register(artifact)
    ann = service.registry.announcement(row, "fab1", "edge-1", service.rollout.public_url)
    assert ann.artifact_b64 is None and ann.artifact_url == f"https://127.0.0.1:{port}/api/models/v1/artifact"

    assert _updater(tmp_path, certs / "ca.crt")._fetch(ann, 1 << 20) == artifact.read_bytes()
    with pytest.raises(UpdateRejected, match="CERTIFICATE_VERIFY_FAILED"):  # the system CAs do not know it
        _updater(tmp_path, None)._fetch(ann, 1 << 20)


def test_a_half_or_missing_certificate_pair_is_a_clear_error(db_url: str, mosquitto, tmp_path: Path):
    with pytest.raises(ValidationError, match="tls_cert_file and tls_key_file go together"):
        ApiConfig(tls_cert_file=tmp_path / "console.crt")
    api = {
        "port": free_port(),
        "tls_cert_file": str(tmp_path / "no.crt"),
        "tls_key_file": str(tmp_path / "no.key"),
    }
    api |= {"enabled": True}
    svc = CloudService(cloud_config(db_url, mosquitto.port, tmp_path, api=api))
    try:
        with pytest.raises(CloudError, match=r"api\.tls_cert_file: .*no\.crt is not a file"):
            svc.start()
    finally:
        svc.stop()
