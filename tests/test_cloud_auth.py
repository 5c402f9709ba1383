"""Users and tokens: revocation (sign out, password change, removal, API tokens), the last admin
kept, and failed logins slowed down per user and client; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import free_port, login
from fastapi import FastAPI
from sqlalchemy import delete, select

from cloud.api import ApiContext, create_app
from cloud.auth import Users
from cloud.config import ApiConfig, RegistryConfig, RolloutConfig
from cloud.errors import AuthError, LoginThrottled
from cloud.login_throttle import LoginThrottle
from cloud.metrics import CloudMetrics
from cloud.registry import Registry
from cloud.rollout import RolloutManager
from cloud.service import api_server_config
from cloud.storage import Repo
from cloud.storage.models import LoginFailure


@contextmanager
def serve(app: FastAPI, **api: Any) -> Iterator[httpx.Client]:
    """``app`` on a free port of 127.0.0.1 with the cloud's uvicorn settings (``api``: more
    ApiConfig fields); real HTTP, since the client address is the throttle's key."""
    port = free_port()
    server = uvicorn.Server(api_server_config(app, ApiConfig(host="127.0.0.1", port=port, **api)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def api_context(repo: Repo, tmp_path: Path, users: Users, **fields: Any) -> ApiContext:
    """What the API's routes use, on ``repo``: ``users``, an empty registry and a rollout manager
    that publishes nowhere; ``fields`` set the rest (clock, ingest, notifier, metrics)."""
    metrics = fields.pop("metrics", CloudMetrics())
    keys = {"private_key": tmp_path / "k", "public_key": tmp_path / "p"}
    registry = Registry(repo, RegistryConfig(dir=tmp_path / "m", **keys))
    rollout = RolloutManager(repo, registry, lambda *_: None, RolloutConfig(), metrics)
    return ApiContext(repo, users, registry, rollout, lambda *_: None, metrics, **fields)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _users(repo: Repo, clock: Clock | None = None, **throttle: float) -> Users:
    tick = clock or Clock()
    return Users(repo, 3600, 2**4, tick, LoginThrottle(repo, clock=tick, **throttle))  # type: ignore[arg-type]


def test_the_throttle_waits_after_the_free_failures_doubling_per_user_and_client(repo: Repo):
    clock = Clock()
    th = LoginThrottle(repo, free=3, base_s=10, max_s=35, clock=clock)
    for _ in range(2):
        th.failed("ada", "10.0.0.9")
    assert th.wait_s("ada", "10.0.0.9") == 0  # two of three free
    th.failed("ada", "10.0.0.9")
    assert th.wait_s("ada", "10.0.0.9") == 10
    assert th.wait_s("ada", "10.0.0.1") == 0, "another client is not locked out"
    clock.t += 10
    th.failed("ada", "10.0.0.9")
    assert th.wait_s("ada", "10.0.0.9") == 20
    th.failed("ada", "10.0.0.9")
    th.failed("ada", "10.0.0.9")
    assert th.wait_s("ada", "10.0.0.9") == 35  # capped
    th.succeeded("ada", "10.0.0.9")
    assert th.wait_s("ada", "10.0.0.9") == 0
    with pytest.raises(ValueError):
        LoginThrottle(repo, base_s=60, max_s=30)


def test_every_worker_counts_the_same_failures_and_the_prune_forgets_old_keys(repo: Repo):
    clock = Clock()
    worker_1 = LoginThrottle(repo, free=4, base_s=10, max_s=35, forget_s=100, clock=clock)
    worker_2 = LoginThrottle(repo, free=4, base_s=10, max_s=35, forget_s=100, clock=clock)
    for th in (worker_1, worker_2, worker_1, worker_2):  # a balancer alternating between two workers
        th.failed("ada", "10.0.0.9")
    assert worker_1.wait_s("ada", "10.0.0.9") == worker_2.wait_s("ada", "10.0.0.9") == 10
    restarted = LoginThrottle(repo, free=4, base_s=10, max_s=35, forget_s=100, clock=clock)
    assert restarted.wait_s("ada", "10.0.0.9") == 10, "a restart forgets nothing"
    worker_1.failed("x" * 500, "y" * 500)  # cut to the key's width, not refused
    clock.t += 101
    worker_1.failed("bob", "10.0.0.9")
    assert repo.prune_older(LoginFailure.last_ts, clock.t - worker_1.forget_s) == 2
    with repo.transaction() as s:
        assert [r.username for r in s.scalars(select(LoginFailure))] == ["bob"]


def test_logins_are_refused_before_the_password_is_checked_while_throttled(repo: Repo):
    clock = Clock()
    users = _users(repo, clock, free=2, base_s=30)
    users.add("ada", "ada-password", "admin")
    for _ in range(2):
        with pytest.raises(AuthError, match="wrong"):
            users.login("ada", "guess", "10.0.0.9")
    with pytest.raises(LoginThrottled) as caught:
        users.login("ada", "ada-password", "10.0.0.9")  # even the right password waits
    assert caught.value.retry_after_s == 30
    assert users.login("ada", "ada-password", "10.0.0.1")[2] == "admin"  # ada, from her own desk
    clock.t += 30
    token, _expires, _role = users.login("ada", "ada-password", "10.0.0.9")
    assert users.resolve(token).username == "ada"


def test_sign_out_password_change_and_removal_revoke_tokens_and_the_last_admin_stays(repo: Repo):
    users = _users(repo)
    users.add("ada", "ada-password", "admin")
    users.add("olga", "olga-password", "operator")
    session, _, _ = users.login("olga", "olga-password")
    users.logout(session)
    with pytest.raises(AuthError, match="unknown token"):
        users.resolve(session)

    session, _, _ = users.login("olga", "olga-password")
    script = users.api_token("olga", "dashboard")
    users.add("olga", "new-password-1", "operator")  # a password reset ends her sessions …
    with pytest.raises(AuthError):
        users.resolve(session)
    assert users.resolve(script).username == "olga"  # … not the API tokens an admin issued
    (listed,) = users.tokens()
    assert listed.username == "olga" and listed.name == "dashboard" and script not in str(listed)
    assert users.revoke(listed.token_id.upper()).name == "dashboard"
    with pytest.raises(AuthError):
        users.resolve(script)
    with pytest.raises(AuthError, match="12 hex digits"):
        users.revoke("nope")
    with pytest.raises(AuthError, match="no API token"):
        users.revoke(listed.token_id)

    script = users.api_token("olga", "dashboard")
    session, _, _ = users.login("olga", "new-password-1")
    users.remove("olga")
    for token in (script, session):
        with pytest.raises(AuthError):
            users.resolve(token)
    with pytest.raises(AuthError, match="no user"):
        users.remove("olga")
    with pytest.raises(AuthError, match="last admin"):
        users.remove("ada")
    with pytest.raises(AuthError, match="last admin"):
        users.add("ada", "ada-password", "viewer")
    users.add("bea", "bea-password", "admin")
    users.add("ada", "ada-password", "viewer")  # another admin exists now
    with pytest.raises(AuthError, match="last admin"):
        users.remove("bea")


def test_the_api_signs_out_removes_users_lists_and_revokes_tokens_and_answers_429(repo: Repo, tmp_path: Path):
    users = _users(repo, free=2, base_s=30)
    ctx = api_context(repo, tmp_path, users)
    users.add("ada", "ada-password", "admin")
    users.add("vic", "vic-password", "viewer")
    with serve(create_app(ctx)) as client:
        admin, viewer = login(client, "ada"), login(client, "vic")
        assert client.get("/api/notifications", headers=admin).json() == []  # none configured
        assert client.get("/api/notifications", headers=viewer).status_code == 403
        assert client.post("/api/auth/logout", headers=viewer).status_code == 200
        assert client.get("/api/me", headers=viewer).status_code == 401, "signed out means the token is gone"

        token = client.post("/api/auth/api-tokens", json={"name": "grafana"}, headers=admin).json()["token"]
        (listed,) = client.get("/api/auth/api-tokens", headers=admin).json()
        assert listed["name"] == "grafana" and listed["username"] == "ada" and token not in str(listed)
        viewer = login(client, "vic")
        assert client.get("/api/auth/api-tokens", headers=viewer).status_code == 403
        assert client.delete(f"/api/auth/api-tokens/{listed['token_id']}", headers=viewer).status_code == 403
        assert client.delete(f"/api/auth/api-tokens/{listed['token_id']}", headers=admin).status_code == 200
        assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        assert client.delete(f"/api/auth/api-tokens/{listed['token_id']}", headers=admin).status_code == 404

        assert client.delete("/api/users/vic", headers=viewer).status_code == 403
        assert client.delete("/api/users/vic", headers=admin).json() == {"removed": "vic"}
        assert client.get("/api/me", headers=viewer).status_code == 401
        assert client.delete("/api/users/vic", headers=admin).status_code == 404
        assert client.delete("/api/users/ada", headers=admin).status_code == 409  # the last admin

        for _ in range(2):
            wrong = client.post("/api/auth/token", json={"username": "ada", "password": "guess-guess"})
            assert wrong.status_code == 401
        locked = client.post("/api/auth/token", json={"username": "ada", "password": "ada-password"})
        assert locked.status_code == 429 and locked.headers["Retry-After"] == "30", locked.text


def test_a_trusted_proxy_names_the_client_an_unknown_one_does_not(repo: Repo, tmp_path: Path):
    """Behind a proxy listed in api.trusted_proxies each client keeps its own lockout (the
    X-Forwarded-For address is the key); an unlisted proxy's header is ignored, so its clients share
    one address, and "*" or a malformed entry is refused by the config."""
    for trusted, shared in ((["127.0.0.1"], False), (["192.0.2.7"], True)):
        users = _users(repo, free=2, base_s=30)
        users.add("ada", "ada-password", "admin")
        with serve(create_app(api_context(repo, tmp_path, users)), trusted_proxies=trusted) as client:
            guess = {"username": "ada", "password": "guess-guess"}
            for _ in range(3):
                client.post("/api/auth/token", json=guess, headers={"X-Forwarded-For": "10.0.0.5"})
            other = client.post(
                "/api/auth/token",
                json={"username": "ada", "password": "ada-password"},
                headers={"X-Forwarded-For": "10.0.0.6"},
            )
            assert other.status_code == (429 if shared else 200), (trusted, other.text)
        with repo.transaction() as s:
            keys = {row.client for row in s.scalars(select(LoginFailure))}
            s.execute(delete(LoginFailure))
        assert keys == ({"127.0.0.1"} if shared else {"10.0.0.5"}), keys
    for bad in ("*", "proxy.example", "10.0.0.0/33"):
        with pytest.raises(ValueError, match="trusted_proxies"):
            ApiConfig(trusted_proxies=[bad])
