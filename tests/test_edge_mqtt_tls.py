"""The MQTT relay over TLS against a real Mosquitto: client-certificate login (a client without a
certificate is refused) and user/password login over TLS (a wrong password is refused, retried
with back-off, reported once, and never logged); the relay loop stops on a cancel."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, wait_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from test_edge_support import until

from edge.config import MqttConfig
from edge.mqtt import MqttRelay
from edge.outbox import Outbox
from shared.topics import Kind


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool, san: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key) -> None:
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _pki(folder: Path) -> Path:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate for ``edge1``."""
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("fabpm test CA", ca_key, "fabpm test CA", ca_key, ca=True)
    _write(folder, "ca", ca, ca_key)
    for name, san in (("server", True), ("edge1", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(folder, name, _cert(name, key, "fabpm test CA", ca_key, ca=False, san=san), key)
    return folder


@contextlib.contextmanager
def _running_broker(conf: Path, port: int, settings: str) -> Iterator[None]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    # max_queued_messages raised as in every test broker (FACTS.md). Started as root, Mosquitto
    # drops to its own user before loading the certificates and the password file, which then
    # cannot read pytest's private temporary folder; "user root" is ignored when not root.
    conf.write_text(
        f"listener {port} 127.0.0.1\n{settings}max_queued_messages 1000000\nlog_type error\nuser root\n"
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """TLS with client certificates required; the certificate's CN is the user name."""
    pki = _pki(tmp_path / "pki")
    port = free_port()
    settings = (
        f"cafile {pki}/ca.pem\ncertfile {pki}/server.pem\nkeyfile {pki}/server.key\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
    )
    with _running_broker(tmp_path / "mosquitto.conf", port, settings):
        yield port, pki


USER, SECRET = "edge1", "s3cret-Pa55-7f1c"


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """TLS without client certificates; logins from a password file made by mosquitto_passwd."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package mosquitto): no password file")
    pki = _pki(tmp_path / "pki")
    passwords = tmp_path / "passwords"
    subprocess.run([tool, "-c", "-b", str(passwords), USER, SECRET], check=True, capture_output=True)
    assert SECRET not in passwords.read_text(), "mosquitto_passwd stores a hash"
    port = free_port()
    settings = (
        f"cafile {pki}/ca.pem\ncertfile {pki}/server.pem\nkeyfile {pki}/server.key\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
    )
    with _running_broker(tmp_path / "mosquitto.conf", port, settings):
        yield port, pki


async def _publishes_one_event(cfg: MqttConfig, box: Outbox) -> MqttRelay:
    """A relay with ``cfg`` connects and delivers one queued event; returned stopped."""
    box.put(Kind.EVENT, "fabpm/v1/s1/e1/event", b'{"x": 1}', 1)
    relay = MqttRelay(cfg, "s1", "e1", box)
    relay.start()
    task = asyncio.create_task(relay.run())
    try:
        assert await until(lambda: relay.connected, 15)
        assert await relay.flushed(10)
    finally:
        task.cancel()
        await relay.stop()
    return relay


async def test_client_certificate_login_over_tls(tmp_path: Path, tls_broker):
    port, pki = tls_broker
    cfg = MqttConfig(
        port=port,
        tls=True,
        ca_file=pki / "ca.pem",
        cert_file=pki / "edge1.pem",
        key_file=pki / "edge1.key",
        reconnect_min_s=0.5,
        reconnect_max_s=1.0,
    )
    box = Outbox(tmp_path / "o.sqlite", 1_000_000)
    await _publishes_one_event(cfg, box)
    # Without a client certificate the broker refuses the TLS handshake.
    bare = MqttRelay(cfg.model_copy(update={"cert_file": None, "key_file": None}), "s1", "e2", box)
    bare.start()
    try:
        await asyncio.sleep(2.0)
        assert not bare.connected
    finally:
        await bare.stop()


def test_tls_config_errors_are_clear(tmp_path: Path):
    from edge.errors import PublishError

    with pytest.raises(PublishError, match="TLS"):
        MqttRelay(
            MqttConfig(tls=True, ca_file=tmp_path / "missing.pem"),
            "s1",
            "e1",
            Outbox(tmp_path / "o.sqlite", 1000),
        )
    with pytest.raises(ValueError, match="cert_file and key_file"):
        MqttConfig(tls=True, cert_file=tmp_path / "a.pem")


async def test_the_relay_stops_when_a_wake_and_the_cancel_come_in_the_same_step(tmp_path: Path):
    # On Python 3.11, asyncio.wait_for returns normally when its inner wait finishes in the step
    # the cancel arrives in, and the cancel is lost: the relay loop (and the daemon's TaskGroup
    # around it) then never stopped. No broker is needed: the loop runs unconnected.
    box = Outbox(tmp_path / "o.sqlite", 1000)
    relay = MqttRelay(MqttConfig(port=free_port()), "s1", "e1", box)
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0)  # the loop is now waiting for a wake
    relay.wake()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    box.close()
    assert done, "the relay loop swallowed its cancel"
    assert task.cancelled()


async def test_user_and_password_login_over_tls(tmp_path: Path, password_broker, caplog):
    caplog.set_level(logging.DEBUG)  # everything any logger says, paho's and asyncio's included
    port, pki = password_broker
    cfg = MqttConfig(
        port=port,
        tls=True,
        ca_file=pki / "ca.pem",
        username=USER,
        password=SecretStr(SECRET),
        reconnect_min_s=0.5,
        reconnect_max_s=1.0,
    )
    box = Outbox(tmp_path / "o.sqlite", 1_000_000)
    relay = await _publishes_one_event(cfg, box)
    assert relay.refusals == 0 and relay.refused is None
    # A wrong password: refused at every try (paho's back-off, 1 s here), the relay loop keeps
    # running, the refusal is logged once with what to check, and neither password is written.
    wrong_pw = "wr0ng-Pa55-02aa"
    wrong = MqttRelay(cfg.model_copy(update={"password": SecretStr(wrong_pw)}), "s1", "e2", box)
    wrong.start()
    task = asyncio.create_task(wrong.run())
    try:
        assert await until(lambda: wrong.refusals >= 3, 20)
        assert not wrong.connected and not task.done()
        assert wrong.refused is not None and "not authorized" in wrong.refused.lower()
    finally:
        task.cancel()
        await wrong.stop()
    refusals = [r for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refusals) == 1 and "mqtt.password" in refusals[0].getMessage()
    logged = caplog.text + repr(cfg) + str(cfg.model_dump())
    assert SECRET not in logged and wrong_pw not in logged
