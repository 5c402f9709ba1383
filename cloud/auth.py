"""Users, roles and bearer tokens.

Passwords are hashed with ``hashlib.scrypt`` (random 16-byte salt; cost ``n`` from the config,
r=8, p=1) and stored as ``scrypt$n$r$p$salt$hash`` (base64), so the cost can rise later without
invalidating old hashes. Tokens are 32 random bytes (URL-safe base64); only their sha256 is
stored. A login gives a session token that expires after ``token_ttl_s``; an admin can issue
long-lived API tokens (for scripts and dashboards). Roles are ordered: viewer < operator < admin.

Revocation: signing out ends that session token; changing a user's password or role ends all of
the user's sessions (not their API tokens, which an admin lists and revokes one by one); removing
a user removes every token of theirs. The last admin cannot be removed or demoted (nobody could
manage users any more). Failed logins slow down per user and client (:mod:`cloud.login_throttle`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cloud.errors import AuthError, LoginThrottled, UnknownUser
from cloud.login_throttle import LoginThrottle
from cloud.storage.models import ApiToken, User
from cloud.storage.repo import Repo

ROLES = ("viewer", "operator", "admin")
_R, _P, _DKLEN = 8, 1, 32


def hash_password(password: str, n: int = 2**14) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=_R, p=_P, dklen=_DKLEN, maxmem=256 * 1024 * 1024
    )
    b64 = base64.b64encode
    return f"scrypt${n}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(base64.b64decode(digest)),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    username: str
    role: str

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A long-lived API token as an admin sees it: never the token, an id to revoke it by."""

    token_id: str  # the first TOKEN_ID_CHARS hex digits of the token's sha256
    username: str
    name: str
    created_ts: float


TOKEN_ID_CHARS = 12


class Users:
    def __init__(
        self,
        repo: Repo,
        token_ttl_s: int,
        scrypt_n: int,
        clock: Callable[[], float] = time.time,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.repo = repo
        self.token_ttl_s = token_ttl_s
        self.scrypt_n = scrypt_n
        self.clock = clock
        self.throttle = throttle or LoginThrottle(repo, clock=clock)

    @cached_property
    def _decoy(self) -> str:
        """Checked against for unknown user names, so that a wrong name costs the scrypt a wrong
        password costs: the answer's time does not tell which names exist. Made at the first
        unknown name, not at every start (``fabpm cloud user`` builds Users too)."""
        return hash_password(secrets.token_urlsafe(16), self.scrypt_n)

    @staticmethod
    def _admins(s: Session) -> int:
        # The admins' rows are locked (PostgreSQL) until the transaction ends: two admins removing
        # each other at once cannot both see the other one left.
        return len(s.scalars(select(User.username).where(User.role == "admin").with_for_update()).all())

    @staticmethod
    def _end_sessions(s: Session, username: str) -> None:
        s.execute(delete(ApiToken).where(ApiToken.username == username, ApiToken.expires_ts.is_not(None)))

    def add(self, username: str, password: str, role: str) -> None:
        """Create or update a user (password and role); an update ends the user's sessions."""
        if role not in ROLES:
            raise AuthError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if not username or len(username) > 128 or len(password) < 8:
            raise AuthError("user names are 1-128 characters and passwords at least 8")
        hashed = hash_password(password, self.scrypt_n)
        with self.repo.transaction() as s:
            user = s.get(User, username)
            if user is None:
                s.add(User(username=username, password_hash=hashed, role=role, created_ts=self.clock()))
                return
            if user.role == "admin" and role != "admin" and self._admins(s) == 1:
                raise AuthError(f"{username} is the last admin: make another admin first")
            user.password_hash = hashed
            user.role = role
            self._end_sessions(s, username)

    def remove(self, username: str) -> None:
        """Remove a user and every token of theirs; UnknownUser, or AuthError for the last admin."""
        with self.repo.transaction() as s:
            user = s.get(User, username)
            if user is None:
                raise UnknownUser(f"no user {username!r}")
            if user.role == "admin" and self._admins(s) == 1:
                raise AuthError(f"{username} is the last admin: make another admin first")
            s.execute(delete(ApiToken).where(ApiToken.username == username))
            s.delete(user)

    def tokens(self) -> list[TokenInfo]:
        """The long-lived API tokens (sessions are not listed: they expire by themselves)."""
        with self.repo.transaction() as s:
            rows = s.scalars(
                select(ApiToken).where(ApiToken.expires_ts.is_(None)).order_by(ApiToken.created_ts)
            )
            return [TokenInfo(r.token_hash[:TOKEN_ID_CHARS], r.username, r.name, r.created_ts) for r in rows]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke the API token whose id (:class:`TokenInfo`) is ``token_id``."""
        token_id = token_id.lower()
        if len(token_id) != TOKEN_ID_CHARS or any(c not in "0123456789abcdef" for c in token_id):
            raise AuthError(
                f"a token id is {TOKEN_ID_CHARS} hex digits, as GET /api/auth/api-tokens lists them"
            )
        with self.repo.transaction() as s:
            rows = list(
                s.scalars(
                    select(ApiToken).where(
                        ApiToken.token_hash.startswith(token_id), ApiToken.expires_ts.is_(None)
                    )
                )
            )
            if len(rows) != 1:
                raise AuthError(
                    f"no API token {token_id}" if not rows else f"token id {token_id} is ambiguous"
                )
            info = TokenInfo(token_id, rows[0].username, rows[0].name, rows[0].created_ts)
            s.delete(rows[0])
        return info

    def all(self) -> list[User]:
        with self.repo.transaction() as s:
            return list(s.scalars(select(User).order_by(User.username)))

    def login(self, username: str, password: str, client: str = "") -> tuple[str, float, str]:
        """A session token, its expiry and the role; AuthError for wrong credentials, LoginThrottled
        (before the password is checked) after too many failures for this user from ``client``."""
        wait = self.throttle.wait_s(username, client)
        if wait > 0:
            raise LoginThrottled(wait)
        with self.repo.transaction() as s:
            user = s.get(User, username)
        if (
            not verify_password(password, user.password_hash if user is not None else self._decoy)
            or user is None
        ):
            self.throttle.failed(username, client)
            raise AuthError("wrong user name or password")
        self.throttle.succeeded(username, client)
        expires = self.clock() + self.token_ttl_s
        return self._issue(username, "session", expires), expires, user.role

    def api_token(self, username: str, name: str) -> str:
        """A long-lived token for ``username`` (revoked by deleting it)."""
        with self.repo.transaction() as s:
            if s.get(User, username) is None:
                raise AuthError(f"no user {username!r}")
        return self._issue(username, name, None)

    def _issue(self, username: str, name: str, expires: float | None) -> str:
        token = secrets.token_urlsafe(32)
        with self.repo.transaction() as s:
            s.add(
                ApiToken(
                    token_hash=_token_hash(token),
                    username=username,
                    name=name[:128],
                    expires_ts=expires,
                    created_ts=self.clock(),
                )
            )
        return token

    def resolve(self, token: str) -> Principal:
        problem = ""
        principal = None
        with self.repo.transaction() as s:
            row = s.get(ApiToken, _token_hash(token))
            user = s.get(User, row.username) if row is not None else None
            if row is None:
                problem = "unknown token"
            elif row.expires_ts is not None and row.expires_ts < self.clock():
                s.delete(row)  # committed: expired tokens do not pile up
                problem = "token expired; log in again"
            elif user is None:
                problem = "the token's user no longer exists"
            else:
                principal = Principal(user.username, user.role)
        if principal is None:
            raise AuthError(problem)
        return principal

    def logout(self, token: str) -> Principal | None:
        """End the session (or revoke the API token) ``token``; whose it was (None: unknown)."""
        with self.repo.transaction() as s:
            row = s.get(ApiToken, _token_hash(token))
            if row is None:
                return None
            user = s.get(User, row.username)
            s.delete(row)
            return Principal(user.username, user.role) if user is not None else None
