"""The cloud's tables (SQLAlchemy 2 declarative). The Alembic migrations in ``migrations/`` create
exactly these; ``tests/test_cloud_ingest.py`` compares the migrated schema with this metadata.

Times are float seconds since the epoch (what the messages carry). JSON columns hold the parts of
messages that are read whole (predictions, summaries, manifests).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SeenMessage(Base):
    """One row per msg_id stored: the de-duplication key (inserted in the same transaction), kept
    ``storage.dedup_days``: far longer than an edge resends a message whose receipt it missed."""

    __tablename__ = "seen_messages"
    msg_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    edge_id: Mapped[str] = mapped_column(String(128))
    received_ts: Mapped[float] = mapped_column(Float, index=True)


class DeadLetter(Base):
    """A payload that failed validation, kept (truncated) with the reason for an engineer to look at."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    received_ts: Mapped[float] = mapped_column(Float, index=True)


class Edge(Base):
    __tablename__ = "edges"
    edge_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    site: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    models: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    health: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_update: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_seen_ts: Mapped[float] = mapped_column(Float)


class Tool(Base):
    __tablename__ = "tools"
    tool_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    edge_id: Mapped[str] = mapped_column(String(128), index=True)
    site: Mapped[str] = mapped_column(String(128))
    tool_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    risk: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_ts: Mapped[float] = mapped_column(Float)  # when its edge last sent something of it
    # The span it reported over on the equipment's clock (telemetry, alerts, events, cases): the
    # tool-months false alarms are counted over. None until a message carrying a source time.
    first_source_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_source_ts: Mapped[float | None] = mapped_column(Float, nullable=True)


class AlertRow(Base):
    __tablename__ = "alerts"
    msg_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    edge_id: Mapped[str] = mapped_column(String(128))
    site: Mapped[str] = mapped_column(String(128))
    tool_id: Mapped[str] = mapped_column(String(128), index=True)
    mode: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    rul_h: Mapped[float | None] = mapped_column(Float, nullable=True)
    rul_std_h: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_version: Mapped[str] = mapped_column(String(64))
    episode_start_ts: Mapped[float] = mapped_column(Float)
    ts: Mapped[float] = mapped_column(Float, index=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # When the cloud stored it (ts is the edge's); None for alerts stored before migration 0006.
    received_ts: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    # The source time of the window that raised it (shared.messages.Alert); None from older edges.
    source_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    # What whoever acknowledged it found on the tool: "fault" / "no_fault" (None: not said), a note.
    ack_finding: Mapped[str | None] = mapped_column(String(16), nullable=True)
    ack_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    ack_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The tool's sensors that looked wrong when it came (cloud/sensor_health.py, from the tool's
    # latest telemetry): check them before the tool. None for alerts stored before migration 0013.
    sensor_issues: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # The sensors that carry its risk, as its edge named them (shared.evidence: restored to the
    # tool's reference, the risk falls by ``contribution``): None from edges before it was added.
    evidence: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # Whether the tool's reference was known for that window (None: a model without one, or an
    # older edge): without one, no sensor can be named.
    reference_known: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # The mode whose precursors carry the risk, by its edge (shared.evidence.likely_mode); None
    # when no sensor did, or from older edges.
    likely_mode: Mapped[str | None] = mapped_column(String(64), nullable=True)

    @hybrid_property
    def equipment_ts(self) -> float:
        """When it was raised on the equipment's clock: the source time of its window, the
        edge's send time for alerts from edges that did not say it (before migration 0010)."""
        return self.source_ts if self.source_ts is not None else self.ts

    @equipment_ts.inplace.expression
    @classmethod
    def _equipment_ts_expression(cls) -> ColumnElement[float]:
        return func.coalesce(cls.source_ts, cls.ts)


class Case(Base):
    """A hard case, its window, the edge's prediction, the full model's verdict and the current label."""

    __tablename__ = "cases"
    case_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    msg_id: Mapped[str] = mapped_column(String(128), unique=True)
    edge_id: Mapped[str] = mapped_column(String(128))
    site: Mapped[str] = mapped_column(String(128))
    tool_id: Mapped[str] = mapped_column(String(128))
    tool_type: Mapped[str] = mapped_column(String(64))
    window_ts: Mapped[float] = mapped_column(Float)
    features: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, shape below
    steps: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    edge_prediction: Mapped[dict[str, Any]] = mapped_column(JSON)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(64))
    received_ts: Mapped[float] = mapped_column(Float, index=True)
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    verdict_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    verdict_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The current label (the newest row of label_history for this case).
    label_failed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    label_mode: Mapped[str | None] = mapped_column(String(64), nullable=True)
    label_rul_h: Mapped[float | None] = mapped_column(Float, nullable=True)
    label_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    label_ts: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_cases_tool_window", "tool_id", "window_ts"),)


class LabelRow(Base):
    """Every label a case was ever given, by whom and why: the label history."""

    __tablename__ = "label_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.case_id"), index=True)
    failed: Mapped[bool] = mapped_column(Boolean)
    mode: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rul_h: Mapped[float | None] = mapped_column(Float, nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # "failure", "maintenance", "operator"
    actor: Mapped[str] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(Text, default="")
    created_ts: Mapped[float] = mapped_column(Float, index=True)


class EventRow(Base):
    __tablename__ = "events"
    msg_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    edge_id: Mapped[str] = mapped_column(String(128))
    site: Mapped[str] = mapped_column(String(128))
    tool_id: Mapped[str] = mapped_column(String(128))
    event: Mapped[str] = mapped_column(String(16))
    state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    mode: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source_ts: Mapped[float] = mapped_column(Float, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_events_tool_ts", "tool_id", "source_ts"),)


class TuningRow(Base):
    """A tuning proposal and where it stands; ``history`` lists every action on it."""

    __tablename__ = "tuning"
    proposal_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    edge_id: Mapped[str] = mapped_column(String(128))
    site: Mapped[str] = mapped_column(String(128))
    tool_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # proposal/approval/rejection/applied/refused
    setpoints: Mapped[dict[str, float]] = mapped_column(JSON)
    previous: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    expected: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    updated_ts: Mapped[float] = mapped_column(Float)


class User(Base):
    __tablename__ = "users"
    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    created_ts: Mapped[float] = mapped_column(Float)


class ApiToken(Base):
    """Bearer tokens, stored as sha256 of the token; ``expires_ts`` None for long-lived API tokens."""

    __tablename__ = "api_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("users.username"))
    name: Mapped[str] = mapped_column(String(128))
    expires_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_ts: Mapped[float] = mapped_column(Float)


class ModelRow(Base):
    """A registered, signed edge model and where it came from (lineage: parent, round, checkpoint)."""

    __tablename__ = "models"
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    parent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    round_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    signature: Mapped[str] = mapped_column(Text)
    artifact_path: Mapped[str] = mapped_column(Text)
    full_checkpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    edge_checkpoint: Mapped[str | None] = mapped_column(Text, nullable=True)  # torch, the ONNX's source
    status: Mapped[str] = mapped_column(String(16))  # registered/canary/active/retired/rolled_back
    created_ts: Mapped[float] = mapped_column(Float)


class RolloutRow(Base):
    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(ForeignKey("models.version"))
    previous_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stage: Mapped[str] = mapped_column(String(16))  # canary/all/rolled_back
    canary_edges: Mapped[list[str]] = mapped_column(JSON)
    started_ts: Mapped[float] = mapped_column(Float)
    updated_ts: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, default="")
    observations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LearningRound(Base):
    """One incremental-learning round: the persisted state machine (step, status, what each step made)."""

    __tablename__ = "learning_rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(32))
    step: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # running/done/rejected/failed/rolled_back
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[str] = mapped_column(Text, default="")
    label_watermark: Mapped[float] = mapped_column(Float)  # labels up to this time are in the round
    created_ts: Mapped[float] = mapped_column(Float)
    updated_ts: Mapped[float] = mapped_column(Float)


class Lease(Base):
    """A named lease: ``owner`` holds it until ``expires_ts`` unless it renews it. Taken and renewed
    with one conditional UPDATE (see :meth:`cloud.storage.repo.Repo.take_lease`), so of N workers on
    one database exactly one holds it; a worker that dies loses it when it expires."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_ts: Mapped[float] = mapped_column(Float)


class WorkerSession(Base):
    """A cloud worker's MQTT session in its share group, renewed (``heartbeat_ts``) while the
    worker runs. The broker keeps routing a share of the group's messages to a session whose worker
    is gone, for as long as the session lives; a row whose heartbeat stopped names such a session,
    and another worker adopts it (:mod:`cloud.sessions`)."""

    __tablename__ = "worker_sessions"
    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    share_group: Mapped[str] = mapped_column(String(128))
    heartbeat_ts: Mapped[float] = mapped_column(Float)
    leaving: Mapped[bool] = mapped_column(Boolean, default=False)  # ending its session; not a live peer


class RiskPoint(Base):
    """A tool's failure risk per mode at one of the edge's inference steps (``Telemetry.risk_trace``;
    from older edges, the risk at each telemetry message): the history the console plots, on the
    equipment's clock (``source_ts``) as the tool's history is. Kept ``storage.risk_history_days``
    by ``ts``, when the edge sent it; older points are deleted every hour
    (:meth:`cloud.storage.repo.Repo.prune_risk`)."""

    __tablename__ = "risk_points"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tool_id: Mapped[str] = mapped_column(String(128))
    ts: Mapped[float] = mapped_column(Float, index=True)
    # The window's end on the equipment's clock; None never written since migration 0018
    source_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    risk: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (Index("ix_risk_points_tool_source_ts", "tool_id", "source_ts"),)


class SensorIssueRow(Base):
    """One stretch in which a sensor of a tool looked wrong (:mod:`cloud.sensor_health`): opened by
    the first telemetry that showed it, closed (``end_ts``) by the first that did not. Times on
    the equipment's clock but ``received_ts`` and ``closed_ts`` (when the cloud opened and ended
    it: what notifications and retention go by)."""

    __tablename__ = "sensor_issues"
    __table_args__ = (
        Index("ix_sensor_issues_tool_end", "tool_id", "end_ts"),
        # one open stretch per tool, sensor and issue, whichever worker opens it (migration 0015)
        Index(
            "uq_sensor_issues_open",
            "tool_id",
            "sensor",
            "issue",
            unique=True,
            sqlite_where=text("end_ts IS NULL"),
            postgresql_where=text("end_ts IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tool_id: Mapped[str] = mapped_column(String(128))
    edge_id: Mapped[str] = mapped_column(String(128))
    site: Mapped[str] = mapped_column(String(128))
    sensor: Mapped[str] = mapped_column(String(128))
    issue: Mapped[str] = mapped_column(String(16))  # unchanged / no_good_value
    start_ts: Mapped[float] = mapped_column(Float)  # when it began (the edge's measure says how long)
    last_ts: Mapped[float] = mapped_column(Float)  # the latest telemetry that showed it
    hours: Mapped[float] = mapped_column(Float)  # how long it had lasted then
    end_ts: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_ts: Mapped[float] = mapped_column(Float, index=True)
    closed_ts: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)  # when it ended


class ShelfRow(Base):
    """One stretch in which an operator shelved a tool's notifications (:mod:`cloud.shelving`):
    from ``start_ts`` to ``end_ts`` (the planned end, or when someone unshelved it earlier), both
    on the cloud's clock, which is what a notification is queued by."""

    __tablename__ = "shelves"
    __table_args__ = (Index("ix_shelves_tool_end", "tool_id", "end_ts"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tool_id: Mapped[str] = mapped_column(String(128))
    site: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    by: Mapped[str] = mapped_column(String(128))
    start_ts: Mapped[float] = mapped_column(Float)
    planned_end_ts: Mapped[float] = mapped_column(Float)
    end_ts: Mapped[float] = mapped_column(Float, index=True)
    ended_by: Mapped[str | None] = mapped_column(String(128), nullable=True)  # unshelved early by


class NotificationRow(Base):
    """One alert or rollback for one webhook target (:mod:`cloud.notify`): pending until the target
    answers 2xx (delivered), or until the attempts run out or the pending queue overflows (failed,
    dropped). Unique per (target, subject): each is queued once per target."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("target", "subject", name="uq_notifications_target_subject"),
        Index("ix_notifications_status_next", "status", "next_ts"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(160))  # "alert:<msg_id>" or "rollback:<rollout id>"
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # pending/delivered/failed/dropped/shelved/withdrawn
    attempts: Mapped[int] = mapped_column(Integer)
    next_ts: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str] = mapped_column(Text)
    created_ts: Mapped[float] = mapped_column(Float)
    done_ts: Mapped[float | None] = mapped_column(Float, nullable=True)


class LoginFailure(Base):
    """Failed logins in a row for one (user name, client address) key (:mod:`cloud.login_throttle`),
    in the database so that every worker counts the same failures and a restart forgets none."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_last_ts", "last_ts"),)
    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    blocked_until: Mapped[float] = mapped_column(Float)  # wall clock; 0 while the free tries last
    last_ts: Mapped[float] = mapped_column(Float)  # the latest failure (the prune forgets old keys)


class AuditEntry(Base):
    """One change made through the API or the CLI (:mod:`cloud.audit`): who, from where, what, with
    what outcome. Written after the request, whatever its outcome (a refused attempt is a fact too)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_ts", "ts"), Index("ix_audit_log_actor_ts", "actor", "ts"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(128))  # the user; for a login, the name tried; "-" unknown
    role: Mapped[str] = mapped_column(String(16))  # the actor's role then; "" when not signed in
    client: Mapped[str] = mapped_column(String(64))  # the client's address, or "cli:<os user>"
    action: Mapped[str] = mapped_column(String(160))  # "POST /api/rollouts/{rollout_id}/rollback"
    target: Mapped[str] = mapped_column(String(300))  # the path's parameters: "rollout_id=3"
    status: Mapped[int] = mapped_column(Integer)  # the HTTP status (0: the CLI)
