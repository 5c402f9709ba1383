"""The audit trail: who changed what, from where, with what outcome.

Every request that can change something (POST, PUT, PATCH, DELETE under ``/api/``) leaves one
``audit_log`` row once answered, whatever the answer: a refused attempt (a wrong password, 403,
409) is a fact an auditor wants too (two exceptions below). A row names the actor (the signed-in
user; for a login, the name tried), the role, the client address, the route
(``POST /api/rollouts/{rollout_id}/rollback``), its parameters (``rollout_id=3``, and the query
string), what the route noted from the body (the user and role added, the version rolled out,
the reason given) and the HTTP status. Bodies are not kept: they carry passwords, and the rest
of what they changed is in the tables they changed (labels keep their history, rollouts and
proposals their decisions). The CLI's user commands leave rows too (client ``cli:<os user>``,
status 0).

Not recorded: requests that name no user (no token, or one that does not resolve) and logins the
throttle refused (429) before checking the password. Anyone on the network could write those as
fast as the network carries them, and the table would grow without bound; every recorded row has
cost a user's token or a password check (scrypt, then the throttle). The log has the others.

Writing the row never fails the request: the change is made by then, so a database error is
logged (with the row's fields) and the answer goes out. Kept ``storage.audit_days`` (a year by
default), pruned hourly with the rest. Read it with ``GET /api/audit`` (admin) or the console's
Audit tab.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote

import anyio
from sqlalchemy import select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.errors import StorageError
from cloud.storage import Repo
from cloud.storage.models import AuditEntry

_logger = logging.getLogger(__name__)

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STATE_KEY = "audit_actor"  # request.state.audit_actor: (user, role), set by the API's auth
NOTE_KEY = "audit_note"  # what a route adds from its body (never a secret): "neo (operator)"


def note(state: Any, text: str) -> None:
    """Add ``text`` (what the request's body changed, never a secret) to this request's audit row;
    ``state`` is the request's ``state``."""
    setattr(state, NOTE_KEY, text)


def record(repo: Repo, entry: AuditEntry) -> None:
    """Store ``entry``; a database error is logged, never raised (the change is made by then)."""
    try:
        with repo.transaction() as s:
            s.add(entry)
    except StorageError as exc:
        _logger.warning(
            "audit row lost (%s): %s %s by %s from %s → %s",
            exc,
            entry.action,
            entry.target,
            entry.actor,
            entry.client,
            entry.status,
        )


def entry(
    actor: str, role: str, client: str, action: str, target: str, status: int, ts: float | None = None
) -> AuditEntry:
    """An :class:`AuditEntry`, each field cut to its column's width."""
    return AuditEntry(
        ts=time.time() if ts is None else ts,
        actor=actor[:128] or "-",
        role=role[:16],
        client=client[:64],
        action=action[:160],
        target=target[:300],
        status=status,
    )


def _from_scope(scope: Scope, status: int, ts: float) -> AuditEntry:
    route = scope.get("route")
    path = getattr(route, "path", None) or scope["path"]
    params = [f"{k}={v}" for k, v in (scope.get("path_params") or {}).items()]
    query = unquote(scope.get("query_string", b"").decode("latin-1"))
    state = scope.get("state") or {}
    actor, role = state.get(STATE_KEY, ("", ""))
    client = scope["client"][0] if scope.get("client") else ""
    target = ", ".join(x for x in (*params, query, state.get(NOTE_KEY, "")) if x)
    return entry(actor, role, client, f"{scope['method']} {path}", target, status, ts)


class AuditMiddleware:
    """ASGI middleware writing one audit row per answered change (see the module docstring)."""

    def __init__(self, app: ASGIApp, repo: Repo) -> None:
        self.app = app
        self.repo = repo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in CHANGES or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        status = 500  # an exception no handler answered
        ts = self.repo.clock()

        async def tap(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tap)
        finally:
            row = _from_scope(scope, status, ts)
            if row.actor != "-" and status != 429:  # see the module docstring: bounded by users
                await anyio.to_thread.run_sync(record, self.repo, row)


def rows(
    repo: Repo, limit: int = 200, actor: str | None = None, before_ts: float | None = None
) -> list[dict[str, Any]]:
    """The latest rows first (``before_ts`` pages back), optionally one actor's."""
    q = select(AuditEntry).order_by(AuditEntry.ts.desc(), AuditEntry.id.desc()).limit(limit)
    if actor:
        q = q.where(AuditEntry.actor == actor)
    if before_ts is not None:
        q = q.where(AuditEntry.ts < before_ts)
    with repo.transaction() as s:
        return [
            {
                "ts": r.ts,
                "actor": r.actor,
                "role": r.role,
                "client": r.client,
                "action": r.action,
                "target": r.target,
                "status": r.status,
            }
            for r in s.scalars(q)
        ]
