"""The edge daemon's typed config: one TOML/YAML file plus ``FABPM_EDGE__A__B=value`` overrides.

Loaded once by :func:`load_edge_config` in ``main()`` and passed down. Every section is a
``StrictModel`` (unknown keys are errors naming the dotted key). Relative paths are resolved
against ``state_dir``. ``examples/edge.toml`` shows every key with its default.

Tags: each ``[[tools]]`` entry names a tool, its type (``shared.equipment``) and either the browse
path of its folder (the default layout below it: ``Sensors/<name>``, ``Setpoints/<name>``,
``Counters/<name>``, ``State``) or per-tag overrides in ``[tools.tags]`` by NodeId
(``ns=2;s=...``) or by browse path (``Objects/Fab/...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from shared.config import StrictModel, load_config
from shared.equipment import NAMESPACE_URI, TOOL_TYPES
from shared.errors import ConfigError
from shared.topics import check_segment

Envelope = dict[str, dict[str, tuple[float, float]]]
SECURITY_POLICIES = ("None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")


class OpcUaConfig(StrictModel):
    endpoint: str = "opc.tcp://127.0.0.1:4840/fabpm/"
    namespace_uri: str = NAMESPACE_URI  # browse names in tag paths without a prefix use it
    security_policy: Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: Path | None = None  # client certificate (DER or PEM) for a secure policy
    private_key: Path | None = None
    server_certificate: Path | None = None  # pin the server's certificate
    username: str | None = None
    password: SecretStr | None = None  # SecretStr: shown as ****** in a repr, a dump or a log
    mode: Literal["subscribe", "poll"] = "subscribe"  # poll is also the fallback when subscribing fails
    publishing_interval_ms: float = Field(default=1000.0, gt=0)
    sampling_interval_ms: float = Field(default=1000.0, ge=0)
    queue_size: int = Field(default=10, ge=1, le=10000)  # per monitored item: keeps every sample of a burst
    deadband_abs: float = Field(default=0.0, ge=0)  # absolute deadband on numeric tags; 0 = every change
    # Large subscriptions lost their connection under load (FACTS.md): split into several, and
    # create the monitored items in chunks.
    max_items_per_subscription: int = Field(default=1000, ge=1, le=50000)
    create_chunk: int = Field(default=500, ge=1, le=10000)
    poll_interval_s: float = Field(default=1.0, gt=0)
    read_chunk: int = Field(default=1000, ge=1, le=20000)
    request_timeout_s: float = Field(default=10.0, gt=0)
    # asyncua's default 1 s watchdog disconnects during slow large reads (FACTS.md).
    watchdog_interval_s: float = Field(default=10.0, gt=0)
    # No publish response (data or keep-alive; keep-alives are requested every ≤ a third of it)
    # for this long while connected → reconnect.
    silence_timeout_s: float = Field(default=30.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    subscribe_events: bool = True  # alarms as OPC UA events from the Server object

    @model_validator(mode="after")
    def _secure_needs_certificate(self) -> OpcUaConfig:
        if self.security_policy != "None" and (self.certificate is None or self.private_key is None):
            raise ValueError(f"security_policy {self.security_policy} needs certificate and private_key")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class ToolConfig(StrictModel):
    id: str
    type: str
    path: str | None = None  # browse path of the tool folder, e.g. Objects/Fab/etch/etch-01
    tags: dict[str, str] = Field(default_factory=dict)  # tag name -> NodeId or browse path
    host: str | None = None  # sub-fab tools (pumps, abatement): the process tool they serve

    @field_validator("id")
    @classmethod
    def _id_segment(cls, value: str) -> str:
        return check_segment(value, "tool id")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in TOOL_TYPES:
            raise ValueError(f"unknown tool type {value!r}; known: {', '.join(sorted(TOOL_TYPES))}")
        return value

    @model_validator(mode="after")
    def _host_only_for_subfab(self) -> ToolConfig:
        if self.host is not None and not TOOL_TYPES[self.type].subfab:
            raise ValueError(f"host is for sub-fab tools; {self.type} is not one")
        return self

    @model_validator(mode="after")
    def _has_tags(self) -> ToolConfig:
        if self.path is None:
            missing = [s for s in TOOL_TYPES[self.type].sensor_names if s not in self.tags]
            if missing:
                raise ValueError(f"no path given, so every sensor needs a tag; missing {missing}")
        return self


class MqttConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None  # client certificate login
    key_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None  # default: fabpm-edge-<edge_id>
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    max_inflight: int = Field(default=100, ge=1, le=65535)  # unacknowledged QoS 1 messages handed to paho
    publish_batch: int = Field(default=200, ge=1, le=10000)
    # Keep alerts, events, hard cases and tuning records in the outbox until the cloud's receipt
    # says they are stored (not just until the broker's PUBACK), sending again what has no receipt
    # after receipt_timeout_s (the wait doubling at each try): a broker crash then loses nothing
    # (B10). While the cloud sends no receipts at all (it is away), only one row per
    # receipt_timeout_s goes again, as a probe (edge/outbox.py). The broker must let the edge read
    # its receipt topic (deploy/mosquitto/acl).
    receipts: bool = True
    receipt_timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _pairs(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.cert_file is not None and not self.tls:
            raise ValueError("a client certificate needs tls = true")
        return self


class OutboxConfig(StrictModel):
    path: Path = Path("outbox.sqlite")
    quota_mb: float = Field(default=256.0, gt=0)
    # NORMAL in WAL mode survives kill -9 (the WAL is in the OS); FULL also survives power loss.
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"


class ModelsConfig(StrictModel):
    risk: Path | None = None  # ONNX file with <stem>.manifest.json beside it
    tuning: list[Path] = Field(default_factory=list)  # one signed release per tool type
    public_key: Path | None = None  # Ed25519 PEM; without it nothing is loaded or accepted
    store_dir: Path = Path("models")  # accepted updates and the previous model for rollback
    intra_op_threads: int = Field(default=1, ge=1, le=64)
    max_artifact_mb: float = Field(default=64.0, gt=0)
    download_timeout_s: float = Field(default=30.0, gt=0)
    # The CA that signed the cloud's HTTPS certificate, for artifacts fetched by URL (the plant's
    # PKI); None: the system's CAs.
    download_ca_file: Path | None = None
    check_windows: int = Field(default=32, ge=1, le=4096)  # recent windows an update is checked on
    # Mean absolute difference of failure probabilities allowed between the new and running model.
    max_disagreement: float = Field(default=0.5, gt=0, le=1)


class DecisionsConfig(StrictModel):
    thresholds: dict[str, float] = Field(default_factory=dict)  # overrides of the manifest's
    infer_every_steps: int = Field(default=1, ge=1)
    # Held values expire this many steps after a tool's stream stops (edge.windows).
    max_stale_steps: float = Field(default=3.0, gt=0)
    hardcase_per_hour: float = Field(default=60.0, ge=0)  # upload budget: token bucket rate
    hardcase_burst: int = Field(default=10, ge=0)
    # The most of that budget one tool may take (its own token bucket), so a tool that reads as
    # novel at every window cannot starve the others; an edge with fewer than 1/share tools gives
    # each tool 1/N of the budget, so the whole budget stays usable.
    hardcase_tool_share: float = Field(default=0.25, gt=0, le=1)
    pending_cases_max: int = Field(default=10000, ge=1)
    verdict_ttl_s: float = Field(default=7 * 86400.0, gt=0)


class TuningConfig(StrictModel):
    mode: Literal["off", "advise", "auto"] = "off"
    interval_s: float = Field(default=3600.0, gt=0)
    envelope: dict[str, dict[str, tuple[float, float]]] = Field(
        default_factory=dict
    )  # type -> sp -> (lo, hi)
    max_step: dict[str, dict[str, float]] = Field(default_factory=dict)  # type -> sp -> largest change
    min_interval_s: float = Field(default=600.0, ge=0)  # between writes to one tag
    max_writes_per_hour: int = Field(default=6, ge=0)  # per tool
    readback_tolerance: float = Field(default=1e-3, ge=0)  # relative
    weights: dict[str, float] = Field(default_factory=lambda: {"yield": 1.0, "energy": 0.1})
    approval_timeout_s: float = Field(default=86400.0, gt=0)
    # Sub-fab eco rule (auto mode): a pump or abatement unit with a host idles while the host is
    # not processing (idle_mode = 1), through the same guards (idle_mode needs an envelope).
    eco: bool = True
    # How proposals are made: the run-to-run optimiser pooled per tool type (edge.tuning_pool;
    # what B9 measures, the default), or the offline surrogate's one-step search (B9: it lost
    # yield, since the surrogate is trained across a wandering optimum).
    optimiser: Literal["surrogate", "pooled"] = "pooled"

    @field_validator("envelope")
    @classmethod
    def _ordered(
        cls, value: dict[str, dict[str, tuple[float, float]]]
    ) -> dict[str, dict[str, tuple[float, float]]]:
        for ttype, table in value.items():
            if ttype not in TOOL_TYPES:
                raise ValueError(f"unknown tool type {ttype!r}")
            for name, (lo, hi) in table.items():
                if name not in TOOL_TYPES[ttype].setpoint_names:
                    raise ValueError(f"{ttype} has no setpoint {name!r}")
                if lo > hi:
                    raise ValueError(f"{ttype}.{name}: low {lo} above high {hi}")
        return value


class AlarmsConfig(StrictModel):
    """Each tool's alarm budget (edge.alarm_flood): alarms past it are held back and sent as one
    summary per flood, so a chattering alarm cannot fill the outbox."""

    per_tool_per_hour: float = Field(default=120.0, gt=0)
    burst: int = Field(default=30, ge=1)
    quiet_s: float = Field(default=60.0, gt=0)  # a flood's summary goes when it has been quiet this long
    summary_every_s: float = Field(default=600.0, gt=0)  # ... or this often while it goes on


class ScheduleConfig(StrictModel):
    health_s: float = Field(default=30.0, gt=0)
    telemetry_s: float = Field(default=60.0, gt=0)
    housekeeping_s: float = Field(default=300.0, gt=0)
    model_check_s: float = Field(default=600.0, gt=0)


class MetricsConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)  # 0 = no HTTP endpoint


class EdgeConfig(StrictModel):
    site: str = "site1"
    edge_id: str = "edge1"
    state_dir: Path = Path("edge-state")
    opcua: OpcUaConfig = OpcUaConfig()
    tools: list[ToolConfig] = Field(default_factory=list)
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    models: ModelsConfig = ModelsConfig()
    decisions: DecisionsConfig = DecisionsConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    tuning: TuningConfig = TuningConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("site", "edge_id")
    @classmethod
    def _segment(cls, value: str) -> str:
        return check_segment(value, "id")

    @model_validator(mode="after")
    def _unique_tools(self) -> EdgeConfig:
        seen: set[str] = set()
        for tool in self.tools:
            if tool.id in seen:
                raise ValueError(f"tool id {tool.id!r} appears twice")
            seen.add(tool.id)
        for tool in self.tools:
            if tool.host is not None and tool.host not in seen:
                raise ValueError(f"tool {tool.id!r}: host {tool.host!r} is not a configured tool")
        return self

    def resolve(self, path: Path) -> Path:
        """A config path: absolute as given, relative ones under ``state_dir``."""
        return path if path.is_absolute() else self.state_dir / path


def load_edge_config(path: Path | None, env: Mapping[str, str] | None = None) -> EdgeConfig:
    """Load the edge config; :class:`ConfigError` naming each bad key otherwise."""
    cfg = load_config(EdgeConfig, path, env, prefix="FABPM_EDGE")
    if path is not None and not cfg.state_dir.is_absolute():
        # A relative state_dir is relative to the config file, not to wherever the daemon started.
        cfg = cfg.model_copy(update={"state_dir": (path.parent / cfg.state_dir).resolve()})
    named = [("risk", cfg.models.risk), ("public_key", cfg.models.public_key)]
    named += [(f"tuning.{i}", p) for i, p in enumerate(cfg.models.tuning)]
    for name, value in named:
        if value is not None and not cfg.resolve(value).exists():
            raise ConfigError(f"{path}: models.{name}: {cfg.resolve(value)} does not exist")
    return cfg
