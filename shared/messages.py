"""MQTT payload schemas (DESIGN.md §4). One pydantic model per topic kind, versioned.

Every payload carries ``schema`` (``"<name>/<version>"``), ``msg_id`` (unique, the cloud
de-duplicates on it), ``edge_id``, ``site`` and ``ts`` (seconds since the epoch, float). Windows
travel as compact binary inside the JSON: float32 little-endian, base64 (:func:`encode_array`).

:func:`parse_payload` is the one entry for untrusted bytes: it raises :class:`SchemaError` with
the reason, never anything else, so a worker can count it and set it aside.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import SchemaError
from shared.topics import Kind

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
MAX_RECEIPT_IDS = 1000  # msg_ids per receipt: a full one is ~40 kB
_ID = Annotated[str, Field(min_length=1, max_length=128)]


def new_msg_id() -> str:
    """A unique message id (UUID4 hex)."""
    return uuid.uuid4().hex


class Message(BaseModel):
    """Fields every payload has. Subclasses set ``SCHEMA`` and ``KIND``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    SCHEMA: ClassVar[str] = ""
    KIND: ClassVar[Kind]

    schema_id: str = Field(alias="schema")
    msg_id: _ID = Field(default_factory=new_msg_id)
    edge_id: _ID
    site: _ID
    ts: float = Field(default_factory=time.time)

    def __init__(self, **data: Any) -> None:
        if "schema" not in data and "schema_id" not in data:
            data["schema"] = self.SCHEMA
        super().__init__(**data)

    def to_bytes(self) -> bytes:
        """JSON bytes with the field aliases (``schema``)."""
        return self.model_dump_json(by_alias=True).encode()


class Status(Message):
    SCHEMA: ClassVar[str] = "status/1"
    KIND: ClassVar[Kind] = Kind.STATUS
    state: Literal["online", "offline"]
    models: dict[str, str] = Field(default_factory=dict)  # role -> version
    health: dict[str, Any] = Field(default_factory=dict)
    last_update: dict[str, Any] = Field(default_factory=dict)  # outcome of the last model update


class AlertEvidence(BaseModel):
    """One sensor an alert names (``shared.evidence``): how much of the mode's probability goes
    away when the sensor alone is restored to the tool's reference, and how far it reads from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sensor: str = Field(min_length=1, max_length=64)
    contribution: float = Field(ge=-1.0, le=1.0, allow_inf_nan=False)  # probability points (0..1)
    deviation: float = Field(ge=-100.0, le=100.0, allow_inf_nan=False)  # type std units


class Alert(Message):
    SCHEMA: ClassVar[str] = "alert/1"
    KIND: ClassVar[Kind] = Kind.ALERT
    tool_id: _ID
    # The progressive mode the edge names: its release's namer on the window's embedding
    # (shared.naming) where the release has one for the tool type, else the most probable.
    mode: str
    # The tool's risk: the highest probability among its type's progressive modes within the
    # horizon, which the alert rule reads (the named mode's own when that is the most probable).
    probability: float = Field(ge=0.0, le=1.0)
    rul_h: float | None = None
    rul_std_h: float | None = None
    model_version: str
    episode_start_ts: float
    # The source time of the window that raised it: the equipment's clock, which failures and
    # maintenance are stamped with (``ts`` is when the edge sent it; with a simulator running
    # faster than real time the two differ by days). None from edges before it was added: the
    # cloud uses ``ts`` then. A cloud older than the edges rejects it (extra fields are refused):
    # upgrade the cloud first.
    source_ts: float | None = None
    # The sensors that carry the risk, largest first ([]: none stood out, or the tool has no
    # reference yet); None from edges before it was added. Same upgrade order as source_ts.
    evidence: list[AlertEvidence] | None = Field(default=None, max_length=8)
    # Whether the window had the tool's own reference (its readings after it last came back up):
    # without one no sensor can be named, and the model sees less. None: a model that uses no
    # reference, or an edge from before the field.
    reference_known: bool | None = None
    # The progressive mode whose precursor sensors (the equipment catalog's) carry the risk, when
    # any does (``shared.evidence.likely_mode``); it may differ from ``mode``.
    likely_mode: str | None = Field(default=None, max_length=64)


class HardCase(Message):
    SCHEMA: ClassVar[str] = "hardcase/1"
    KIND: ClassVar[Kind] = Kind.HARDCASE
    case_id: _ID
    tool_id: _ID
    tool_type: str
    window_ts: float  # source timestamp of the window's last step
    features: str  # encode_array of the (T, F) float32 feature window
    shape: tuple[int, int]
    feature_names: list[str] = Field(default_factory=list)
    edge_prediction: dict[str, Any]  # probs per mode, rul_h, rul_std_h, novelty
    reasons: list[str]
    model_version: str


class Event(Message):
    SCHEMA: ClassVar[str] = "event/1"
    KIND: ClassVar[Kind] = Kind.EVENT
    tool_id: _ID
    event: Literal["state", "failure", "maintenance", "alarm"]
    state: str | None = None
    mode: str | None = None
    source_ts: float
    detail: dict[str, Any] = Field(default_factory=dict)


_MODE = Annotated[str, Field(min_length=1, max_length=64)]
_PROBABILITY = Annotated[float, Field(ge=0.0, le=1.0)]
RISK_TRACE_MAX = 60  # risk points per telemetry message: one a second at the default 60 s


class RiskSample(BaseModel):
    """The tool's risk per mode at the end of one window it ran (``Telemetry.risk_trace``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ts: float = Field(allow_inf_nan=False)  # the window's end, on the equipment's clock
    risk: dict[_MODE, _PROBABILITY] = Field(max_length=32)


class Telemetry(Message):
    SCHEMA: ClassVar[str] = "telemetry/1"
    KIND: ClassVar[Kind] = Kind.TELEMETRY
    tool_id: _ID
    period_s: float
    # tag -> {mean, min, max, last} over the period, and the sensor's health now (older edges
    # leave these out): unchanged_s (processing time its value has not changed), bad_s (time
    # without a good value while the tool's other sensors report), on the equipment's clock.
    summary: dict[str, dict[str, float | None]]
    risk: dict[str, float] = Field(default_factory=dict)
    # The tool's type, so the cloud knows it before the tool's first hard case (which carries it
    # too). None from edges before it was added; a cloud older than the edges rejects it (extra
    # fields are refused): upgrade the cloud first, as for Alert.source_ts.
    tool_type: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    # The source time of the summary's newest row: the equipment's clock, on which the cloud
    # measures how long each tool reported (false alarms per tool-month). None from older edges;
    # as above, upgrade the cloud first.
    source_ts: float | None = None
    # The risk at each inference step since the previous telemetry, on the equipment's clock
    # (``shared.risk_trace``: thinned to RISK_TRACE_MAX with every peak kept; [] when no window
    # was run): the cloud's risk chart. None from older edges, whose chart gets ``risk`` once per
    # message; as above, upgrade the cloud first.
    risk_trace: list[RiskSample] | None = Field(default=None, max_length=RISK_TRACE_MAX)


class Tuning(Message):
    SCHEMA: ClassVar[str] = "tuning/1"
    KIND: ClassVar[Kind] = Kind.TUNING
    tool_id: _ID
    # "expired": the edge dropped a proposal nobody decided on within its approval timeout.
    action: Literal["proposal", "approval", "rejection", "applied", "refused", "expired"]
    proposal_id: _ID
    setpoints: dict[str, float]
    previous: dict[str, float] = Field(default_factory=dict)
    expected: dict[str, float] = Field(default_factory=dict)  # e.g. yield, energy
    reason: str = ""
    actor: str = "edge"
    # The tool's type (a proposal carries it), so the console can give each setpoint its unit
    # before the tool's first telemetry. None from older edges and from the cloud's own approvals;
    # a cloud older than the edges rejects it: upgrade the cloud first, as for Telemetry.tool_type.
    tool_type: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class Verdict(Message):
    SCHEMA: ClassVar[str] = "verdict/1"
    KIND: ClassVar[Kind] = Kind.VERDICT
    case_id: _ID  # correlation id: the hard case answered
    tool_id: _ID
    probs: dict[str, float]
    rul_h: float
    rul_std_h: float
    model_version: str
    latency_ms: float | None = None


class ModelAnnouncement(Message):
    SCHEMA: ClassVar[str] = "model/1"
    KIND: ClassVar[Kind] = Kind.MODEL
    manifest: dict[str, Any]  # the signed manifest (shared.signing)
    signature: str  # base64 Ed25519 over the canonical manifest
    artifact_url: str | None = None  # HTTPS location; or the artifact inline below
    artifact_b64: str | None = None
    target_edges: list[str] | None = None  # None: every edge on the topic


class Receipt(Message):
    """The cloud stored these messages of the edge (each ``msg_id`` once, whatever the redeliveries):
    the edge may forget them. ``edge_id`` is the edge the receipt is for."""

    SCHEMA: ClassVar[str] = "receipt/1"
    KIND: ClassVar[Kind] = Kind.RECEIPT
    msg_ids: list[_ID] = Field(min_length=1, max_length=MAX_RECEIPT_IDS)


SCHEMAS: dict[str, type[Message]] = {
    cls.SCHEMA: cls
    for cls in (Status, Alert, HardCase, Event, Telemetry, Tuning, Verdict, ModelAnnouncement, Receipt)
}
BY_KIND: dict[Kind, type[Message]] = {cls.KIND: cls for cls in SCHEMAS.values()}


def parse_payload(raw: bytes, expected: Kind | None = None) -> Message:
    """Validate untrusted bytes into a message; :class:`SchemaError` with the reason otherwise."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise SchemaError(f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SchemaError("payload is not a JSON object")
    schema = data.get("schema")
    cls = SCHEMAS.get(schema) if isinstance(schema, str) else None
    if cls is None:
        raise SchemaError(f"unknown schema {schema!r}")
    if expected is not None and cls.KIND != expected:
        raise SchemaError(f"schema {schema} does not belong on a {expected.value} topic")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SchemaError(f"{schema}: {where}: {first['msg']}") from exc


def encode_array(arr: np.ndarray) -> str:
    """float32 little-endian bytes, base64: the compact window encoding."""
    return base64.b64encode(np.ascontiguousarray(arr, dtype="<f4").tobytes()).decode("ascii")


def decode_array(data: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_array`; SchemaError when the size does not match ``shape``."""
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as exc:
        raise SchemaError(f"window is not base64: {exc}") from exc
    count = int(np.prod(shape))
    if len(raw) != 4 * count:
        raise SchemaError(f"window has {len(raw)} bytes, shape {shape} needs {4 * count}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
