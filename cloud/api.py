"""The REST API (FastAPI, OpenAPI at ``/docs`` and ``/openapi.json``) and the console's files.

Authentication: ``POST /api/auth/token`` with a user name and password gives a bearer token;
admins issue long-lived API tokens, list and revoke them, and remove users (with their tokens);
``POST /api/auth/logout`` ends the session presented. Wrong passwords slow down per user and
client (429 with Retry-After). Every ``/api`` route needs a token except the login and the
model artifact download (edges fetch artifacts over 2 MB by URL without credentials: the file is
signed and the edge verifies it before use). Roles: viewers read; operators label cases,
acknowledge alerts, shelve a tool's notifications, approve or reject tuning proposals and roll
back; admins also manage users, start rollouts and learning rounds. ``/health`` and ``/metrics``
are open for probes and scrapers.
"""

# No `from __future__ import annotations` here: FastAPI resolves the dependency annotations of
# the routes, which name closures of create_app, at definition time.
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from cloud.audit import STATE_KEY as AUDIT_ACTOR
from cloud.audit import AuditMiddleware
from cloud.audit import note as audit_note
from cloud.audit import rows as audit_rows
from cloud.auth import ROLES, Principal, Users
from cloud.case_window import named_series, type_scaler
from cloud.config import SensorsConfig
from cloud.digest import digest
from cloud.e10_report import CachedReports
from cloud.errors import (
    AuthError,
    CloudError,
    LoginThrottled,
    RegistryError,
    RolloutError,
    ShelvingError,
    UnknownUser,
)
from cloud.field_report import LEAD_H, MATCH_H, field_report
from cloud.labels import OPERATOR, Label, set_label
from cloud.learning import Learner
from cloud.metrics import CloudMetrics
from cloud.notify import Notifier
from cloud.registry import Registry
from cloud.rollout import RolloutManager
from cloud.sensor_health import DEFAULT_LIMITS, sensor_issues
from cloud.shelving import MAX_HOURS as MAX_SHELF_HOURS
from cloud.shelving import Shelves, Span, cancel, in_force, planned, shelve, unshelve
from cloud.storage.models import (
    AlertRow,
    Case,
    DeadLetter,
    Edge,
    EventRow,
    LabelRow,
    NotificationRow,
    SeenMessage,
    SensorIssueRow,
    ShelfRow,
    Tool,
    TuningRow,
    WorkerSession,
)
from cloud.storage.repo import Repo
from cloud.tool_history import MAX_LIMIT as HISTORY_MAX
from cloud.tool_history import tool_history
from shared.equipment import setpoint_units, type_modes
from shared.messages import Event, Tuning
from shared.topics import QOS, Kind, topic

_logger = logging.getLogger(__name__)
CONSOLE = Path(__file__).resolve().parent / "console"
Publish = Callable[[str, bytes, int, bool], None]


@dataclass
class ApiContext:
    """What the routes use; ``learner`` is None on workers that do not run learning."""

    repo: Repo
    users: Users
    registry: Registry
    rollout: RolloutManager
    publish: Publish
    metrics: CloudMetrics
    learner: Learner | None = None
    health: Callable[[], dict[str, Any]] = lambda: {"ok": True}
    clock: Callable[[], float] = time.time
    # The ingest path (topic, payload) → stored: events posted through the API take it, so they
    # are de-duplicated, stored and label cases exactly as the edge's own events do.
    ingest: Callable[[str, bytes], bool] | None = None
    notifier: Notifier | None = None  # None: no webhooks configured
    sensor_limits: SensorsConfig = DEFAULT_LIMITS  # the tools' sensor issues by default
    state_events_days: float = 90.0  # how long plain state changes are kept: the E10 report's reach


class Login(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class NewUser(Login):
    role: str = Field(pattern="^(viewer|operator|admin)$")


class NewToken(BaseModel):
    name: str = Field(min_length=1, max_length=128)


class LabelIn(BaseModel):
    failed: bool
    mode: str | None = Field(None, max_length=64)
    rul_h: float | None = Field(None, ge=0)
    note: str = Field("", max_length=2000)


class EventIn(BaseModel):
    """A failure or maintenance of a tool recorded outside the edge (a CMMS, a technician)."""

    event: Literal["failure", "maintenance"]
    mode: str | None = Field(None, max_length=64)  # required for a failure: one of the tool type's
    at_ts: float  # when it happened (epoch seconds)
    note: str = Field("", max_length=2000)


class RolloutIn(BaseModel):
    version: str
    canary_edges: list[str] | None = None


class AckIn(BaseModel):
    finding: Literal["fault", "no_fault"] | None = None  # what an inspection of the tool found
    note: str = Field(default="", max_length=2000)


class ShelveIn(BaseModel):
    """Hold a tool's notifications back for ``hours`` (cloud/shelving.py)."""

    hours: float = Field(gt=0, le=MAX_SHELF_HOURS)
    reason: str = Field(min_length=1, max_length=500)
    # planned ahead (at most a month); None or a time past: now
    start_ts: float | None = Field(default=None, allow_inf_nan=False)


class Decision(BaseModel):
    reason: str = Field("", max_length=2000)


def _row(obj: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns if c.key not in exclude}


def _span(span: Span | None) -> dict[str, Any] | None:
    return None if span is None else asdict(span)


def case_dict(case: Case) -> dict[str, Any]:
    """A case without its window; ``tool_modes`` lists the modes its tool can fail by (the models
    give a probability for every mode of every type: the console shows and labels only these)."""
    return _row(case, exclude=("features",)) | {"tool_modes": type_modes(case.tool_type)}


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="fabpm cloud", version="1", description="Fleet, cases, labels, models, rollouts, tuning"
    )
    bearer = HTTPBearer(auto_error=False)

    app.add_middleware(AuditMiddleware, repo=ctx.repo)

    def principal(
        request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        if creds is None:
            raise HTTPException(401, "bearer token required", headers={"WWW-Authenticate": "Bearer"})
        try:
            who = ctx.users.resolve(creds.credentials)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc
        setattr(request.state, AUDIT_ACTOR, (who.username, who.role))  # the audit row's actor
        return who

    def role(needed: str) -> Callable[[Principal], Principal]:
        def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
            if not who.can(needed):
                raise HTTPException(403, f"{who.role} may not do this; it needs {needed}")
            return who

        return check

    Viewer = Annotated[Principal, Depends(role("viewer"))]
    Operator = Annotated[Principal, Depends(role("operator"))]
    Admin = Annotated[Principal, Depends(role("admin"))]

    # ---- auth --------------------------------------------------------------------------------
    @app.post("/api/auth/token", tags=["auth"])
    def login(body: Login, request: Request) -> dict[str, Any]:
        """A session token. After ``auth.login_free_failures`` wrong passwords for one user from one
        client, 429 with Retry-After (cloud/login_throttle.py)."""
        client = request.client.host if request.client else ""
        setattr(request.state, AUDIT_ACTOR, (body.username, ""))  # the name tried, right or wrong
        try:
            token, expires, user_role = ctx.users.login(body.username, body.password, client)
        except LoginThrottled as exc:
            _logger.warning("login for %r from %s refused: %s", body.username, client, exc)
            wait = str(max(1, math.ceil(exc.retry_after_s)))
            raise HTTPException(429, str(exc), headers={"Retry-After": wait}) from exc
        except AuthError as exc:
            raise HTTPException(401, str(exc)) from exc
        return {"access_token": token, "token_type": "bearer", "expires_ts": expires, "role": user_role}

    @app.post("/api/auth/logout", tags=["auth"])
    def logout(
        request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> dict[str, Any]:
        """Ends the session (or revokes the API token) presented; the console's Sign out calls it."""
        if creds is not None and (who := ctx.users.logout(creds.credentials)) is not None:
            setattr(request.state, AUDIT_ACTOR, (who.username, who.role))  # the audit row's actor
        return {"signed_out": True}

    @app.get("/api/me", tags=["auth"])
    def me(who: Viewer) -> dict[str, Any]:
        return {"username": who.username, "role": who.role, "roles": list(ROLES)}

    @app.post("/api/auth/api-tokens", tags=["auth"])
    def api_token(body: NewToken, who: Admin, request: Request) -> dict[str, Any]:
        audit_note(request.state, f"name {body.name}")
        return {"token": ctx.users.api_token(who.username, body.name), "name": body.name}

    @app.post("/api/users", tags=["auth"])
    def add_user(body: NewUser, _who: Admin, request: Request) -> dict[str, Any]:
        audit_note(request.state, f"{body.username} ({body.role})")
        try:
            ctx.users.add(body.username, body.password, body.role)
        except AuthError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"username": body.username, "role": body.role}

    @app.get("/api/users", tags=["auth"])
    def list_users(_who: Admin) -> list[dict[str, Any]]:
        return [{"username": u.username, "role": u.role, "created_ts": u.created_ts} for u in ctx.users.all()]

    @app.delete("/api/users/{username}", tags=["auth"])
    def remove_user(username: str, who: Admin) -> dict[str, Any]:
        """Removes the user and every token of theirs; 409 for the last admin."""
        try:
            ctx.users.remove(username)
        except UnknownUser as exc:
            raise HTTPException(404, str(exc)) from exc
        except AuthError as exc:
            raise HTTPException(409, str(exc)) from exc
        _logger.info("user %s removed by %s", username, who.username)
        return {"removed": username}

    @app.get("/api/auth/api-tokens", tags=["auth"])
    def list_api_tokens(_who: Admin) -> list[dict[str, Any]]:
        """The long-lived API tokens by id, user and name (never the token itself)."""
        return [asdict(t) for t in ctx.users.tokens()]

    @app.delete("/api/auth/api-tokens/{token_id}", tags=["auth"])
    def revoke_api_token(token_id: str, who: Admin) -> dict[str, Any]:
        try:
            info = ctx.users.revoke(token_id)
        except AuthError as exc:
            raise HTTPException(404, str(exc)) from exc
        _logger.info(
            "API token %s (%s of %s) revoked by %s", token_id, info.name, info.username, who.username
        )
        return {"revoked": asdict(info)}

    @app.get("/api/audit", tags=["auth"])
    def audit_log(
        _who: Admin,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        actor: Annotated[str | None, Query(max_length=128)] = None,
        before_ts: float | None = None,
    ) -> list[dict[str, Any]]:
        """Who changed what, from where, with what outcome, latest first (cloud/audit.py);
        ``before_ts`` pages back."""
        return audit_rows(ctx.repo, limit, actor, before_ts)

    # ---- fleet -------------------------------------------------------------------------------
    @app.get("/api/fleet", tags=["fleet"])
    def fleet(_who: Viewer) -> list[dict[str, Any]]:
        with ctx.repo.transaction() as s:
            return [_row(e) for e in s.scalars(select(Edge).order_by(Edge.site, Edge.edge_id))]

    @app.get("/api/tools", tags=["fleet"])
    def tools(
        _who: Viewer,
        edge_id: str | None = None,
        unchanged_h: Annotated[float | None, Query(gt=0, le=24 * 366)] = None,
        bad_h: Annotated[float | None, Query(gt=0, le=24 * 366)] = None,
    ) -> list[dict[str, Any]]:
        """Each tool as the cloud knows it; ``sensor_issues``: its sensors that have not changed for
        ``unchanged_h`` hours of processing, or had no good value for ``bad_h`` hours (default:
        ``[sensors]`` in cloud.toml), by the health its edge last reported (cloud/sensor_health.py)."""
        unchanged_h = ctx.sensor_limits.unchanged_h if unchanged_h is None else unchanged_h
        bad_h = ctx.sensor_limits.bad_h if bad_h is None else bad_h
        now = ctx.clock()
        with ctx.repo.transaction() as s:
            q = select(Tool).order_by(Tool.tool_id)
            if edge_id:
                q = q.where(Tool.edge_id == edge_id)
            shelves = Shelves(s, now, now)
            return [
                _row(t)
                | {
                    "sensor_issues": sensor_issues(t.summary or {}, unchanged_h, bad_h),
                    "shelf": _span(shelves.covering(t.tool_id, now)),
                }
                for t in s.scalars(q)
            ]

    e10_reports = CachedReports(ctx.repo, ctx.state_events_days)

    @app.get("/api/e10", tags=["fleet"])
    def availability(_who: Viewer, days: Annotated[float, Query(gt=0, le=3650)] = 30) -> dict[str, Any]:
        """SEMI E10 figures per tool and for the fleet over the last ``days`` on the equipment's
        clock, from the state changes the edges reported: hours per state, equipment uptime,
        failures, MTBF, MTTR (cloud/e10_report.py); at most ``storage.state_events_days``. A
        window's figures are reused for a minute."""
        try:
            return e10_reports.get(ctx.clock(), days)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

    @app.get("/api/digest", tags=["fleet"])
    def fleet_digest(_who: Viewer, hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24.0) -> dict[str, Any]:
        """The fleet's last ``hours`` in figures and a few sentences: alerts and how many nobody
        acknowledged, failures and maintenance, sensors looking wrong, shelves now and planned,
        tuning proposals waiting, learning rounds and rollbacks (cloud/digest.py); what a webhook
        of kind ``digest`` gets each morning."""
        with ctx.repo.transaction() as s:
            return digest(s, ctx.clock(), hours)

    @app.get("/api/sensor-issues", tags=["fleet"])
    def sensor_issue_list(
        _who: Viewer,
        tool_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Stretches in which a sensor looked stuck or Bad (cloud/sensor_health.py): the open ones
        first, then the newest ended; ``end_ts`` null while it lasts."""
        with ctx.repo.transaction() as s:
            q = select(SensorIssueRow)
            if tool_id:
                q = q.where(SensorIssueRow.tool_id == tool_id)
            q = q.order_by(SensorIssueRow.end_ts.is_not(None), SensorIssueRow.last_ts.desc()).limit(limit)
            return [_row(r) for r in s.scalars(q)]

    @app.get("/api/tools/{tool_id}/risk", tags=["fleet"])
    def tool_risk(
        tool_id: str,
        _who: Viewer,
        hours: Annotated[float, Query(gt=0, le=24 * 366)] = 72.0,
        points: Annotated[int, Query(ge=10, le=2000)] = 300,
    ) -> dict[str, Any]:
        """The tool's risk per mode over its last ``hours`` (at most ``points``, peaks kept) and its
        alerts in that time: what the console's trend chart draws. On the equipment's clock, as
        the tool's history: the hours end at the newest source time the tool reported
        (``until_ts``; the cloud's clock for a tool that never said one)."""
        with ctx.repo.transaction() as s:
            tool = s.get(Tool, tool_id)
            if tool is None:
                raise HTTPException(404, "no such tool")
            until = tool.last_source_ts if tool.last_source_ts is not None else ctx.clock()
            since = until - hours * 3600
            modes = type_modes(tool.tool_type) if tool.tool_type else None
            at = AlertRow.equipment_ts
            alerts = s.scalars(select(AlertRow).where(AlertRow.tool_id == tool_id, at >= since).order_by(at))
            marks = [
                {"ts": a.equipment_ts, "mode": a.mode, "probability": a.probability, "evidence": a.evidence}
                for a in alerts
            ]
            # failures and maintenance, so the chart shows how far ahead the risk rose
            q = select(EventRow.source_ts, EventRow.event, EventRow.mode).where(
                EventRow.tool_id == tool_id,
                EventRow.source_ts >= since,
                EventRow.event.in_(("failure", "maintenance")),
            )
            rows = s.execute(q.order_by(EventRow.source_ts))
            events = [{"ts": ts, "event": ev, "mode": m} for ts, ev, m in rows]
        history = ctx.repo.risk_history(tool_id, since, points)
        return {
            "tool_id": tool_id,
            "tool_modes": modes,
            "since_ts": since,
            "until_ts": until,
            "points": [{"ts": ts, "risk": risk} for ts, risk in history],
            "alerts": marks,
            "events": events,
        }

    @app.get("/api/tools/{tool_id}/history", tags=["fleet"])
    def history(
        tool_id: str,
        _who: Viewer,
        limit: Annotated[int, Query(ge=1, le=HISTORY_MAX)] = 50,
        before_ts: float | None = None,
        states: bool = False,
    ) -> dict[str, Any]:
        """The tool's failures, maintenance, alarms and alerts (``states``: every change of state
        too), newest first, on the equipment's clock, with its last failure and maintenance;
        ``before_ts`` pages back (cloud/tool_history.py)."""
        with ctx.repo.transaction() as s:
            if s.get(Tool, tool_id) is None:
                raise HTTPException(404, "no such tool")
            return tool_history(s, tool_id, limit, before_ts, states)

    @app.post("/api/tools/{tool_id}/events", tags=["fleet"])
    def tool_event(tool_id: str, body: EventIn, who: Operator, request: Request) -> dict[str, Any]:
        """Record a failure or maintenance the edge did not see (from a CMMS or a technician): it
        labels the tool's cases before it as the edge's events do (cloud/labels.py). ``at_ts`` may
        be up to a year back and not in the future."""
        audit_note(request.state, " ".join(x for x in (body.event, body.mode, f"at {body.at_ts:.0f}") if x))
        if ctx.ingest is None:
            raise HTTPException(503, "this worker does not ingest")
        now = ctx.clock()
        if not now - 366 * 86400 <= body.at_ts <= now + 300:
            raise HTTPException(422, f"at_ts {body.at_ts:.0f} is not within the last year (now {now:.0f})")
        with ctx.repo.transaction() as s:
            tool = s.get(Tool, tool_id)
            if tool is None:
                raise HTTPException(404, "no such tool")
            edge_id, site, ttype = tool.edge_id, tool.site, tool.tool_type
        modes = type_modes(ttype) if ttype else None
        if body.event == "failure" and (body.mode is None or (modes is not None and body.mode not in modes)):
            raise HTTPException(422, f"a failure needs its mode, one of {', '.join(modes or ['(any)'])}")
        msg = Event(
            schema=Event.SCHEMA,
            edge_id=edge_id,
            site=site,
            tool_id=tool_id,
            event=body.event,
            mode=body.mode if body.event == "failure" else None,
            source_ts=body.at_ts,
            detail={"source": "api", "by": who.username, "note": body.note},
        )
        if not ctx.ingest(topic(site, edge_id, Kind.EVENT), msg.to_bytes()):
            raise HTTPException(503, "the event was not stored (database); send it again")
        with ctx.repo.transaction() as s:
            actor = f"event:{msg.msg_id}"
            labelled = s.scalar(select(func.count()).select_from(LabelRow).where(LabelRow.actor == actor))
        _logger.info("%s of %s at %.0f recorded by %s", body.event, tool_id, body.at_ts, who.username)
        return {"msg_id": msg.msg_id, "labelled": int(labelled or 0)}

    @app.post("/api/tools/{tool_id}/shelve", tags=["fleet"])
    def shelve_tool(tool_id: str, body: ShelveIn, who: Operator, request: Request) -> dict[str, Any]:
        """Hold the tool's alerts and sensor issues back from the webhooks for ``hours`` (at most a
        week), with a reason everyone sees; they are still stored and shown (cloud/shelving.py).
        Shelving a shelved tool replaces its shelf; ``start_ts`` plans one ahead (a PM on the
        calendar), which may not overlap another that has not ended."""
        when = "" if body.start_ts is None else f" from {body.start_ts:.0f}"
        audit_note(request.state, f"{body.hours:g} h{when}: {body.reason}")
        with ctx.repo.transaction() as s:
            tool = s.get(Tool, tool_id)
            if tool is None:
                raise HTTPException(404, "no such tool")
            try:
                row = shelve(s, tool, body.hours, body.reason, who.username, ctx.clock(), body.start_ts)
            except ShelvingError as exc:
                raise HTTPException(422, str(exc)) from exc
            _logger.info(
                "%s shelved by %s for %g h%s: %s", tool_id, who.username, body.hours, when, body.reason
            )
            return _row(row)

    @app.post("/api/shelves/{shelf_id}/cancel", tags=["fleet"])
    def cancel_shelf(shelf_id: int, who: Operator) -> dict[str, Any]:
        """Take a planned shelf back before it starts, or end an active one now."""
        with ctx.repo.transaction() as s:
            try:
                row = cancel(s, shelf_id, who.username, ctx.clock())
            except LookupError as exc:
                raise HTTPException(404, str(exc)) from exc
            except ShelvingError as exc:
                raise HTTPException(409, str(exc)) from exc
            _logger.info("shelf %d of %s cancelled by %s", shelf_id, row.tool_id, who.username)
            return _row(row)

    @app.post("/api/tools/{tool_id}/unshelve", tags=["fleet"])
    def unshelve_tool(tool_id: str, who: Operator) -> dict[str, Any]:
        """End the tool's shelf now: its next alerts are sent again (the held-back ones are not)."""
        with ctx.repo.transaction() as s:
            row = unshelve(s, tool_id, who.username, ctx.clock())
            if row is None:
                raise HTTPException(404, f"{tool_id} is not shelved")
            _logger.info("%s unshelved by %s", tool_id, who.username)
            return _row(row)

    @app.get("/api/shelves", tags=["fleet"])
    def shelves(
        _who: Viewer, tool_id: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        """Shelves, the latest to start first, with ``active`` true for those in force now and
        ``planned`` for those still to start."""
        now = ctx.clock()
        with ctx.repo.transaction() as s:
            q = select(ShelfRow)
            if tool_id:
                q = q.where(ShelfRow.tool_id == tool_id)
            rows = s.scalars(q.order_by(ShelfRow.start_ts.desc(), ShelfRow.id.desc()).limit(limit))
            return [
                _row(r)
                | {
                    "active": in_force(r.start_ts, r.end_ts, now),
                    "planned": planned(r.start_ts, r.end_ts, now),
                }
                for r in rows
            ]

    @app.get("/api/alerts", tags=["alerts"])
    def alerts(_who: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        """The newest alerts; ``shelved``: the shelf their tool was under when the cloud stored
        them (their notifications were held back), or null."""
        with ctx.repo.transaction() as s:
            rows = list(s.scalars(select(AlertRow).order_by(AlertRow.ts.desc()).limit(limit)))
            got = [a.received_ts for a in rows if a.received_ts is not None]
            shelves = Shelves(s, min(got), max(got)) if got else None
            return [
                _row(a)
                | {
                    "shelved": _span(
                        shelves.covering(a.tool_id, a.received_ts)
                        if shelves is not None and a.received_ts is not None
                        else None
                    )
                }
                for a in rows
            ]

    @app.get("/api/alerts/field", tags=["alerts"])
    def alerts_in_the_field(
        _who: Viewer,
        days: Annotated[float, Query(gt=0, le=3650)] = 90,
        lead_h: Annotated[float, Query(gt=0)] = LEAD_H,
        match_h: Annotated[float, Query(gt=0)] = MATCH_H,
    ) -> dict[str, Any]:
        """How the alerts of the last ``days`` did against the failures and maintenance reported:
        each alert's outcome, precision, failures warned ≥ ``lead_h`` ahead, lead times
        (cloud/field_report.py)."""
        return field_report(ctx.repo, ctx.clock(), days, lead_h, match_h)

    @app.post("/api/alerts/{msg_id}/ack", tags=["alerts"])
    def ack_alert(msg_id: str, who: Operator, request: Request, body: AckIn | None = None) -> dict[str, Any]:
        """Acknowledge an alert, optionally with what was found on the tool (``fault`` /
        ``no_fault``) and a note; the field report counts a finding (cloud/field_report.py).
        Acknowledging again replaces the finding (a later inspection knows more)."""
        body = body or AckIn()
        audit_note(request.state, body.finding or "")
        with ctx.repo.transaction() as s:
            alert = s.get(AlertRow, msg_id)
            if alert is None:
                raise HTTPException(404, "no such alert")
            alert.acknowledged_by = who.username
            alert.ack_ts = ctx.clock()
            if body.finding is not None or body.note:
                alert.ack_finding, alert.ack_note = body.finding, body.note or None
            return _row(alert)

    # ---- cases and labels ------------------------------------------------------------------
    @app.get("/api/notifications", tags=["alerts"])
    def notifications(
        _who: Operator, limit: Annotated[int, Query(ge=1, le=1000)] = 200
    ) -> list[dict[str, Any]]:
        """The newest notifications to webhooks (cloud/notify.py), alerts and rollbacks: pending,
        delivered, failed after their attempts, or dropped when a target's queue overflowed, with
        the last error and the line the target was sent."""
        with ctx.repo.transaction() as s:
            rows = s.scalars(select(NotificationRow).order_by(NotificationRow.id.desc()).limit(limit))
            return [
                _row(r, exclude=("payload",)) | {"kind": r.payload.get("kind"), "text": r.payload.get("text")}
                for r in rows
            ]

    @app.post("/api/notifications/test", tags=["alerts"])
    def test_notification(target: str, who: Admin) -> dict[str, Any]:
        """Send a test message to the webhook named ``target`` now; what it answered."""
        if ctx.notifier is None:
            raise HTTPException(404, "no webhooks are configured ([[notify.webhooks]])")
        try:
            ok, outcome = ctx.notifier.send_test(target, who.username)
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from exc
        return {"target": target, "delivered": ok, "outcome": outcome}

    @app.get("/api/cases", tags=["cases"])
    def cases(
        _who: Viewer,
        status: Annotated[str, Query(pattern="^(all|unlabelled|labelled|pending)$")] = "all",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        with ctx.repo.transaction() as s:
            q = select(Case).order_by(Case.received_ts.desc()).limit(limit)
            if status == "unlabelled":
                q = q.where(Case.label_failed.is_(None))
            elif status == "labelled":
                q = q.where(Case.label_failed.is_not(None))
            elif status == "pending":
                q = q.where(Case.verdict.is_(None))
            return [case_dict(c) for c in s.scalars(q)]

    @app.get("/api/cases/{case_id}", tags=["cases"])
    def case(case_id: str, _who: Viewer) -> dict[str, Any]:
        row = ctx.repo.get_case(case_id)
        if row is None:
            raise HTTPException(404, "no such case")
        out = case_dict(row)
        out["labels"] = [_row(r) for r in ctx.repo.label_history(case_id)]
        return out

    @app.get("/api/cases/{case_id}/window", tags=["cases"])
    def case_window(case_id: str, _who: Viewer) -> dict[str, Any]:
        """The case's window as named series (cloud/case_window.py): what the console plots."""
        row = ctx.repo.get_case(case_id)
        if row is None:
            raise HTTPException(404, "no such case")
        # The scaler of the model that built the window turns its z-scores back into units.
        model = ctx.registry.get(row.model_version, missing_ok=True)
        scaler = type_scaler(model.manifest.get("input_spec") if model else None, row.tool_type)
        return {
            "case_id": row.case_id,
            "tool_id": row.tool_id,
            "tool_type": row.tool_type,
            "window_ts": row.window_ts,
            "steps": row.steps,
            "edge_prediction": row.edge_prediction,
            "verdict": row.verdict,
            "tool_modes": type_modes(row.tool_type),
            "model_version": row.model_version,
            "scale": "z" if scaler is None else "units",
            "series": named_series(row.tool_type, ctx.repo.case_window(row), scaler),
        }

    @app.post("/api/cases/{case_id}/labels", tags=["cases"])
    def label(case_id: str, body: LabelIn, who: Operator, request: Request) -> dict[str, Any]:
        audit_note(request.state, f"failed {body.failed}" + (f", {body.mode}" if body.mode else ""))
        with ctx.repo.transaction() as s:
            row = s.get(Case, case_id)
            if row is None:
                raise HTTPException(404, "no such case")
            modes = type_modes(row.tool_type)
            if body.failed and body.mode is not None and modes is not None and body.mode not in modes:
                why = f"{body.mode!r} is not a failure mode of {row.tool_type}; its modes: {', '.join(modes)}"
                raise HTTPException(422, why)
            lab = Label(
                body.failed, body.mode if body.failed else None, body.rul_h, OPERATOR, who.username, body.note
            )
            set_label(s, row, lab, ctx.clock())
        ctx.metrics.labels.labels(OPERATOR).inc()
        return case(case_id, who)

    @app.get("/api/cases/{case_id}/labels", tags=["cases"])
    def labels(case_id: str, _who: Viewer) -> list[dict[str, Any]]:
        return [_row(r) for r in ctx.repo.label_history(case_id)]

    @app.get("/api/dead-letters", tags=["ingest"])
    def dead_letters(
        _who: Operator, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        with ctx.repo.transaction() as s:
            rows = s.scalars(select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit))
            return [
                _row(d, exclude=("payload",)) | {"head": d.payload[:200].decode("utf-8", "replace")}
                for d in rows
            ]

    @app.get("/api/workers", tags=["ingest"])
    def workers(_who: Viewer) -> list[dict[str, Any]]:
        """The cloud workers' MQTT sessions (cloud/sessions.py): seconds since each renewed its row;
        negative while another worker is adopting that session."""
        now = ctx.clock()
        with ctx.repo.transaction() as s:
            rows = s.scalars(select(WorkerSession).order_by(WorkerSession.client_id))
            return [_row(w) | {"age_s": round(now - w.heartbeat_ts, 1)} for w in rows]

    # ---- models and rollouts ---------------------------------------------------------------
    @app.get("/api/models", tags=["models"])
    def models(_who: Viewer) -> list[dict[str, Any]]:
        return [_row(m, exclude=("signature",)) for m in ctx.registry.models()]

    @app.get("/api/models/{version}", tags=["models"])
    def model(version: str, _who: Viewer) -> dict[str, Any]:
        try:
            row = ctx.registry.require(version)
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from exc
        return _row(row) | {"lineage": [m.version for m in ctx.registry.lineage(version)]}

    @app.get("/api/models/{version}/artifact", tags=["models"])
    def artifact(version: str) -> FileResponse:
        row = ctx.registry.get(version, missing_ok=True)
        if row is None:
            raise HTTPException(404, "no such model")
        return FileResponse(row.artifact_path, media_type="application/octet-stream")

    @app.get("/api/rollouts", tags=["rollouts"])
    def rollouts(_who: Viewer) -> list[dict[str, Any]]:
        return [_row(r) for r in ctx.rollout.rollouts()]

    @app.post("/api/rollouts", tags=["rollouts"])
    def start_rollout(body: RolloutIn, _who: Admin, request: Request) -> dict[str, Any]:
        audit_note(request.state, f"version {body.version}")
        try:
            return _row(ctx.rollout.start(body.version, body.canary_edges))
        except (RolloutError, RegistryError) as exc:
            raise HTTPException(409, str(exc)) from exc

    @app.post("/api/rollouts/{rollout_id}/rollback", tags=["rollouts"])
    def rollback(rollout_id: int, body: Decision, who: Operator, request: Request) -> dict[str, Any]:
        audit_note(request.state, body.reason[:200])
        try:
            return _row(ctx.rollout.rollback(rollout_id, f"by {who.username}: {body.reason}"))
        except RolloutError as exc:
            raise HTTPException(409, str(exc)) from exc

    @app.post("/api/rollouts/{rollout_id}/promote", tags=["rollouts"])
    def promote(rollout_id: int, _who: Admin) -> dict[str, Any]:
        try:
            return _row(ctx.rollout.promote(rollout_id))
        except RolloutError as exc:
            raise HTTPException(409, str(exc)) from exc

    # ---- tuning ------------------------------------------------------------------------------
    @app.get("/api/tuning", tags=["tuning"])
    def tuning(_who: Viewer, status: str | None = None) -> list[dict[str, Any]]:
        with ctx.repo.transaction() as s:
            q = select(TuningRow).order_by(TuningRow.updated_ts.desc()).limit(500)
            if status:
                q = q.where(TuningRow.status == status)
            rows = list(s.scalars(q))
            ids = {t.tool_id for t in rows}
            types = {
                tid: ttype
                for tid, ttype in s.execute(select(Tool.tool_id, Tool.tool_type).where(Tool.tool_id.in_(ids)))
            }
            # the units of its setpoints, so a proposal reads "1200 → 1175 W", not a bare number
            return [_row(t) | {"units": setpoint_units(types.get(t.tool_id))} for t in rows]

    def decide(
        proposal_id: str, action: Literal["approval", "rejection"], who: Principal, reason: str
    ) -> dict[str, Any]:
        with ctx.repo.transaction() as s:
            row = s.get(TuningRow, proposal_id)
            if row is None:
                raise HTTPException(404, "no such proposal")
            if row.status != "proposal":
                raise HTTPException(409, f"proposal is {row.status}, not awaiting a decision")
            msg = Tuning(
                schema=Tuning.SCHEMA,
                edge_id=row.edge_id,
                site=row.site,
                tool_id=row.tool_id,
                action=action,
                proposal_id=proposal_id,
                setpoints=row.setpoints,
                previous=row.previous,
                expected=row.expected,
                reason=reason,
                actor=who.username,
            )
            # Our own message comes back on the shared subscription: recorded as seen, it is a duplicate.
            s.add(SeenMessage(msg_id=msg.msg_id, kind="tuning", edge_id=row.edge_id, received_ts=ctx.clock()))
            row.status = action
            row.history = [
                *row.history,
                {"action": action, "actor": who.username, "ts": msg.ts, "reason": reason},
            ]
            row.updated_ts = ctx.clock()
            # Written before the publish: the echo that comes back on our subscription then waits on
            # this row's key and ends up a duplicate, whichever transaction the broker lets finish first.
            s.flush()
            ctx.publish(topic(row.site, row.edge_id, Kind.TUNING), msg.to_bytes(), QOS[Kind.TUNING], False)
            return _row(row)

    @app.post("/api/tuning/{proposal_id}/approve", tags=["tuning"])
    def approve(proposal_id: str, body: Decision, who: Operator, request: Request) -> dict[str, Any]:
        audit_note(request.state, body.reason[:200])
        return decide(proposal_id, "approval", who, body.reason)

    @app.post("/api/tuning/{proposal_id}/reject", tags=["tuning"])
    def reject(proposal_id: str, body: Decision, who: Operator, request: Request) -> dict[str, Any]:
        audit_note(request.state, body.reason[:200])
        return decide(proposal_id, "rejection", who, body.reason)

    # ---- learning ----------------------------------------------------------------------------
    @app.get("/api/learning/rounds", tags=["learning"])
    def rounds(_who: Viewer) -> list[dict[str, Any]]:
        if ctx.learner is None:
            return []
        return [_row(r) for r in ctx.learner.rounds()]

    @app.post("/api/learning/rounds", tags=["learning"], status_code=202)
    def new_round(_who: Admin) -> dict[str, Any]:
        learner = ctx.learner
        if learner is None:
            raise HTTPException(409, "this worker does not run learning")
        if learner.open_round() is not None:
            raise HTTPException(409, "a round is running")
        n = learner.new_labels()
        if n < 1:
            raise HTTPException(409, "no new labels since the last round")
        threading.Thread(
            target=learner.trigger, args=("manual",), name="learning-manual", daemon=True
        ).start()
        return {"started": True, "new_labels": n}

    # ---- probes and the console -------------------------------------------------------------
    @app.get("/health", tags=["ops"])
    def health() -> Response:
        state = ctx.health()
        return Response(
            content=json.dumps(state),
            media_type="application/json",
            status_code=200 if state.get("ok") else 503,
        )

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console/")

    if CONSOLE.is_dir():
        app.mount("/console", StaticFiles(directory=CONSOLE, html=True), name="console")

    @app.exception_handler(CloudError)
    def cloud_error(_request: Any, exc: CloudError) -> Response:
        _logger.warning("API error: %s", exc)
        return Response(json.dumps({"detail": str(exc)}), status_code=503, media_type="application/json")

    return app
