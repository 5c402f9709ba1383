"""OPC UA security for the simulator: certificates it can generate, policies, user/password login.

The server offers the policies named in :class:`SecuritySettings` (``None``,
``Basic256Sha256_Sign``, ``Basic256Sha256_SignAndEncrypt``). :func:`ensure_certificate` writes a
self-signed application certificate (DER) and its RSA key (PEM) with the application URI and
host name in the subject alternative names, as OPC UA requires, and reuses them when present and
valid. With ``users`` set, clients may log in with a user name and password (compared in
constant time); ``allow_anonymous=False`` makes that login mandatory.

The server accepts any client certificate that completes the handshake (the simulator is a test
bench); a production server would pin a trust list.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from opcua_sim.errors import SecurityError

_logger = logging.getLogger(__name__)
SERVER_URI = "urn:fabpm:sim:server"
CLIENT_URI = "urn:fabpm:sim:client"
POLICIES: dict[str, ua.SecurityPolicyType] = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
}


@dataclass(frozen=True)
class SecuritySettings:
    policies: tuple[str, ...] = ("None",)
    cert_dir: Path | None = None  # where the server's certificate and key live (generated if absent)
    users: Mapping[str, str] = field(default_factory=dict)  # user name -> password
    allow_anonymous: bool = True

    def __post_init__(self) -> None:
        for p in self.policies:
            if p not in POLICIES:
                raise SecurityError(f"security policy {p!r} unknown; known: {', '.join(POLICIES)}")
        if any(p != "None" for p in self.policies) and self.cert_dir is None:
            raise SecurityError("a Basic256Sha256 policy needs cert_dir for the server certificate")
        if not self.allow_anonymous and not self.users:
            raise SecurityError("anonymous login is off but no users are configured")

    @property
    def needs_certificate(self) -> bool:
        return any(p != "None" for p in self.policies)


def ensure_certificate(folder: Path, name: str, app_uri: str, server: bool = True) -> tuple[Path, Path]:
    """``folder/<name>_cert.der`` and ``folder/<name>_key.pem``, generated when missing or expired."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}_cert.der", folder / f"{name}_key.pem"
    try:
        if cert_path.exists() and key_path.exists():
            cert = x509.load_der_x509_certificate(cert_path.read_bytes())
            load_pem_private_key(key_path.read_bytes(), password=None)
            if cert.not_valid_after_utc > datetime.now(UTC):
                return cert_path, key_path
        key = cert_gen.generate_private_key()
        host = socket.gethostname()
        alt: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(app_uri),
            x509.DNSName(host),
            x509.DNSName("localhost"),
        ]
        use = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = cert_gen.generate_self_signed_app_certificate(
            key, f"fabpm {name}", {"organizationName": "fabpm"}, alt, extended=use, days=365
        )
        key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
        key_path.chmod(0o600)
        cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot prepare certificate {cert_path}: {exc}") from exc
    _logger.info("generated certificate %s for %s", cert_path, app_uri)
    return cert_path, key_path


class PasswordUserManager:
    """asyncua user manager: named users with passwords, and anonymous clients if allowed."""

    def __init__(self, users: Mapping[str, str], allow_anonymous: bool) -> None:
        self._users = dict(users)
        self._anonymous = allow_anonymous

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:
            return User(role=UserRole.User) if self._anonymous else None
        expected = self._users.get(username)
        given = (password or "").encode()
        if expected is not None and hmac.compare_digest(expected.encode(), given):
            return User(role=UserRole.User, name=username)
        return None
