"""The audit trail (cloud/audit.py): every change through the API, answered however it was, and
the CLI's user commands leave a row naming who, from where, what and the outcome; no body (no
password) is kept; only admins read it; the hourly prune keeps a year."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import login
from test_cloud_auth import _users, api_context, serve

from cloud import cli
from cloud.api import create_app
from cloud.storage import Repo


def test_every_change_through_the_api_is_recorded_with_its_outcome(repo: Repo, tmp_path: Path):
    users = _users(repo, free=2, base_s=30)
    users.add("ada", "ada-password", "admin")
    users.add("vic", "vic-password", "viewer")
    with serve(create_app(api_context(repo, tmp_path, users))) as client:
        wrong = {"username": "ada", "password": "guess"}
        assert client.post("/api/auth/token", json=wrong).status_code == 401
        ada, vic = login(client, "ada"), login(client, "vic")
        new = {"username": "olga", "password": "olga-secret-1", "role": "operator"}
        assert client.post("/api/users", json=new, headers=vic).status_code == 403
        assert client.post("/api/users", json=new, headers=ada).status_code == 200
        assert client.get("/api/me", headers=ada).status_code == 200  # reading is not a change
        assert client.delete("/api/users/olga", headers=ada).status_code == 200
        assert client.delete("/api/users/nobody", headers=ada).status_code == 404
        assert client.post("/api/notifications/test?target=ops", headers=ada).status_code in (404, 409)
        assert client.post("/api/users", json=new).status_code == 401  # no user named: not recorded
        assert client.post("/api/users", json=new, headers={"Authorization": "Bearer x"}).status_code == 401
        assert client.get("/api/audit", headers=vic).status_code == 403
        guess = {"username": "mallory", "password": "guess"}
        codes = [client.post("/api/auth/token", json=guess).status_code for _ in range(3)]
        assert codes == [401, 401, 429]  # the third refused by the throttle: not recorded
        got = client.get("/api/audit", headers=ada).json()
        mine = client.get("/api/audit", params={"actor": "vic"}, headers=ada).json()
    seen = [(r["actor"], r["role"], r["action"], r["target"], r["status"]) for r in reversed(got)]
    assert seen[:7] == [
        ("ada", "", "POST /api/auth/token", "", 401),
        ("ada", "", "POST /api/auth/token", "", 200),
        ("vic", "", "POST /api/auth/token", "", 200),
        ("vic", "viewer", "POST /api/users", "", 403),  # refused before the body was read
        ("ada", "admin", "POST /api/users", "olga (operator)", 200),
        ("ada", "admin", "DELETE /api/users/{username}", "username=olga", 200),
        ("ada", "admin", "DELETE /api/users/{username}", "username=nobody", 404),
    ]
    assert seen[7][2:4] == ("POST /api/notifications/test", "target=ops")
    assert seen[8:] == [("mallory", "", "POST /api/auth/token", "", 401)] * 2
    assert len(seen) == 10 and {r["client"] for r in got} == {"127.0.0.1"}
    assert "olga-secret-1" not in repr(got), "no request body is kept"
    assert [r["action"] for r in mine] == ["POST /api/users", "POST /api/auth/token"]


def test_the_clis_user_commands_are_recorded(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "cloud.toml"
    config.write_text(f'[storage]\nurl = "{db_url}"\n')
    monkeypatch.setenv("FABPM_CLOUD_PASSWORD", "ada-password")
    monkeypatch.setattr(cli.getpass, "getuser", lambda: "root")

    def user(cmd: str, name: str, *more: str) -> int:
        return cli.main(["user", cmd, "--config", str(config), "--username", name, *more])

    assert user("add", "ada", "--role", "admin") == 0
    assert user("add", "bob", "--role", "viewer") == 0
    assert user("remove", "bob") == 0
    from cloud.audit import rows
    from cloud.storage import make_engine

    engine = make_engine(db_url)
    try:
        got = [(r["actor"], r["client"], r["action"], r["target"], r["status"]) for r in rows(Repo(engine))]
    finally:
        engine.dispose()
    assert got == [
        ("cli:root", "cli:root", "fabpm cloud user remove", "bob", 0),
        ("cli:root", "cli:root", "fabpm cloud user add", "bob (viewer)", 0),
        ("cli:root", "cli:root", "fabpm cloud user add", "ada (admin)", 0),
    ]
