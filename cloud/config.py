"""The cloud's configuration: one :class:`CloudConfig`, loaded once by ``fabpm cloud run``.

TOML (or YAML) with ``FABPM_CLOUD__SECTION__KEY=value`` environment overrides
(:func:`shared.config.load_config`). ``examples/cloud.toml`` shows every key with its default.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.config import StrictModel, load_config


class TlsConfig(StrictModel):
    """Client TLS for the broker: the CA that signed the broker's certificate, and our own pair."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_hostname: bool = False  # only for test CAs whose certificates name 127.0.0.1 wrongly


class MqttConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = ""  # empty: fabpm-cloud-<hostname> (stable across restarts; one per worker)
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    share_group: str = "fabpm-cloud"  # every worker in one group splits the edge→cloud traffic
    keepalive_s: int = Field(default=30, ge=5)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    publish_timeout_s: float = Field(default=5.0, gt=0)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)  # the back-off cap between reconnect attempts
    session_expiry_s: int = Field(
        default=3600, ge=0
    )  # the broker keeps our queue this long while we are away
    receive_maximum: int = Field(
        default=100, ge=1, le=65535
    )  # unacked QoS 1 messages the broker may send at once
    # Sessions of workers that are gone (cloud/sessions.py): each worker renews its row every
    # heartbeat_s; a row not renewed for orphan_after_s names a session another worker adopts.
    heartbeat_s: float = Field(default=10.0, gt=0)
    orphan_after_s: float = Field(default=60.0, gt=0)
    adopt_orphans: bool = True
    drain_quiet_s: float = Field(default=1.0, gt=0)  # a session is drained once nothing came this long
    drain_max_s: float = Field(default=60.0, gt=0)  # ... or after this long at most

    @model_validator(mode="after")
    def _orphans_are_not_late_heartbeats(self) -> MqttConfig:
        if self.orphan_after_s < 3 * self.heartbeat_s:
            raise ValueError(
                f"mqtt.orphan_after_s ({self.orphan_after_s:g}) must be at least 3 × mqtt.heartbeat_s "
                f"({self.heartbeat_s:g}): a live worker one heartbeat late would have its session taken"
            )
        return self


class StorageConfig(StrictModel):
    url: str = "sqlite:///fabpm-cloud.db"  # postgresql+psycopg://user@host/db in production
    echo: bool = False
    pool_size: int = Field(default=5, ge=1)
    # Each tool's risk per mode from telemetry (about a row a minute per tool) is kept this long
    # for the console's trend charts; older rows are deleted every hour.
    risk_history_days: float = Field(default=30.0, gt=0)
    # Retention, pruned with the risk history: de-duplication keys (an edge resends what it got no
    # receipt for within hours; longer keeps a redelivery from being stored twice after a long
    # outage), the equipment's state and alarm events (failures and maintenance stay: they bound
    # the labels), and dead letters. Cases, labels and alerts are the training data: kept.
    dedup_days: float = Field(default=30.0, gt=0)
    state_events_days: float = Field(default=90.0, gt=0)
    dead_letters_days: float = Field(default=30.0, gt=0)
    # Who changed what through the API or the CLI (cloud/audit.py): a year, for the yearly audit;
    # ended shelves (cloud/shelving.py) are kept as long.
    audit_days: float = Field(default=365.0, gt=0)


class ServingConfig(StrictModel):
    checkpoint: Path | None = None  # the full DGA checkpoint (shared.models.checkpoint); None: no verdicts
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA when supported
    threads: int = Field(
        default=1, ge=1
    )  # torch.set_num_threads: one per process on small machines (FACTS.md)
    max_batch: int = Field(default=32, ge=1)
    max_wait_ms: float = Field(default=10.0, ge=0)
    queue_size: int = Field(default=2048, ge=1)
    keep_ratio: float | None = Field(default=None, gt=0, le=1)  # DGA token dropping at inference
    trace: bool = True  # TorchScript-trace the model per window length (see cloud.serving.FullModel)
    retry_pending_s: float = Field(default=30.0, gt=0)  # how often cases left without a verdict are re-queued


class AuthConfig(StrictModel):
    token_ttl_s: int = Field(default=12 * 3600, ge=60)
    scrypt_n: int = Field(default=2**14, ge=2)  # hashlib.scrypt cost; tests lower it
    # Failed logins per user name and client (cloud/login_throttle.py): this many are free, then
    # each attempt waits lockout_s, doubling per failure up to lockout_max_s.
    login_free_failures: int = Field(default=5, ge=1)
    login_lockout_s: float = Field(default=30.0, gt=0)
    login_lockout_max_s: float = Field(default=900.0, gt=0)

    @model_validator(mode="after")
    def _lockout_order(self) -> AuthConfig:
        if self.login_lockout_max_s < self.login_lockout_s:
            raise ValueError(
                f"login_lockout_max_s ({self.login_lockout_max_s}) must be ≥ "
                f"login_lockout_s ({self.login_lockout_s})"
            )
        return self


class ApiConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Where edges fetch artifacts over registry.inline_max_bytes; edges take https:// only. Empty:
    # https://host:port with TLS below, http://host:port without (inline artifacts only, then).
    public_url: str = ""
    # HTTPS for the console and the API (PEM files; both or neither). Without them, on an address
    # other than loopback, passwords and tokens cross the network in clear: the worker warns.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Proxies whose X-Forwarded-For names the client (addresses or networks, e.g. "10.0.0.0/8"):
    # behind an HTTPS proxy on another host, list it, or every login failure and audit row carries
    # the proxy's address and one user's lockout locks out the whole plant. Never "*": anyone could
    # then claim any address and walk past the login throttle.
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    auth: AuthConfig = AuthConfig()

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {item!r} is not an IP address or network (e.g. 10.0.0.0/8)"
                ) from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file is not None else "http"


class RegistryConfig(StrictModel):
    dir: Path = Path("fabpm-cloud/models")
    private_key: Path = Path("fabpm-cloud/keys/signing.key")
    public_key: Path = Path("fabpm-cloud/keys/signing.pub")
    inline_max_bytes: int = Field(default=2 * 1024 * 1024, ge=0)  # larger artifacts travel by URL


class RolloutConfig(StrictModel):
    canary_edges: list[str] = Field(default_factory=list)  # empty: the first edge seen, alphabetically
    watch_s: float = Field(default=900.0, ge=0)  # how long the canary runs before the rest get it
    min_observations: int = Field(default=5, ge=0)  # hard cases from the canary under the new model
    confirm_timeout_s: float = Field(default=600.0, gt=0)  # the canary must report the new version by then
    max_error_increase: float = Field(default=0.05, ge=0)  # edge-vs-full-model error may grow this much
    tick_s: float = Field(default=10.0, gt=0)


class LearningConfig(StrictModel):
    enabled: bool = True  # any number of workers may learn: one at a time runs a round (a lease)
    lease_s: float = Field(default=60.0, gt=0)  # a dead worker's round is taken over this long after
    work_dir: Path = Path("fabpm-cloud/learning")
    interval_h: float | None = Field(default=24.0, gt=0)  # time trigger; None: off
    min_new_labels: int = Field(default=200, ge=1)  # label-count trigger
    check_labels_s: float = Field(default=60.0, gt=0)
    # How often cases whose tool reported for a whole horizon after them with no failure or
    # maintenance are labelled "did not fail" (cloud/labels.label_survivors); None: only
    # failures, maintenance and operators label. It runs with learning off too.
    label_survivors_s: float | None = Field(default=600.0, gt=0)
    replay_size: int = Field(
        default=2000, ge=0
    )  # old labelled windows mixed into fine-tuning against forgetting
    holdout_fraction: float = Field(default=0.25, gt=0, lt=1)  # of the new labels, frozen as the new test set
    # The gate rejects a candidate when it is gate_confidence sure (a bootstrap over the frozen
    # set's tools, gate_resamples draws) that it lost more than gate_tolerance of AUC on either
    # frozen set. 0.95: the 90% interval that bench B8 reports lies wholly below -gate_tolerance.
    # 0.5 is about the plain comparison of point estimates, which a frozen set of a few tools
    # makes reject good candidates on noise (bench/results/cloud.md, B8 ninth session).
    gate_tolerance: float = Field(default=0.01, ge=0)
    gate_confidence: float = Field(default=0.95, ge=0.5, lt=1)
    gate_resamples: int = Field(default=1000, ge=100, le=100_000)
    # The AUC ranks: a candidate whose risks all moved up (or down) together scores the same, yet
    # under the alert threshold it keeps from the running model it raises more false alarms (or
    # warns fewer failures). So the gate also rejects a candidate when it is gate_confidence sure
    # that its share of a frozen set's windows at or above that threshold moved the harmful way by
    # more than this (0.05: five points of the windows that did not fail, or of those that did).
    # None: no such check.
    gate_alarm_tolerance: float | None = Field(default=0.05, ge=0, le=1)
    ddp_nproc: int = Field(default=1, ge=1)  # >1: fine-tuning runs under torchrun with DDP (gloo on the CPU)
    # The pipeline's preset (PipelineConfig.sized): "small" is the demo's, "tiny" the tests'.
    size: Literal["default", "small", "tiny"] = "default"
    # Caps that keep a round (labels → model on the edge) within minutes on a small CPU (bench B8);
    # None: the pipeline's own (15 and 80). Early stopping may end either sooner.
    fine_tune_epochs: int | None = Field(default=8, ge=1)
    distil_epochs: int | None = Field(default=20, ge=1)
    calib_windows: int = Field(default=256, ge=1)
    # Distil the round's edge model starting from the running one's weights (its registered edge
    # checkpoint) rather than from scratch. Off by default: on B8's drift scenario it lost more on
    # the old regime than a fresh student did, on each data seed tried, and took longer
    # (bench/results/cloud.md, B8 eighth session).
    warm_start_edge: bool = False
    # Unlabelled windows of the fleet's usual running that every round's edge student also learns
    # the teacher's outputs on (cloud/training/pool.py): without them it is matched to the round's
    # hard cases alone and drifts from its teacher elsewhere (1.6-8.4 AUC points lower on 32 unseen
    # tools over ten demo rounds: bench/learning_chain.py). None: the pool `fabpm train` wrote
    # beside serving.checkpoint, if there is one.
    distil_pool: Path | None = None
    distil_pool_size: int = Field(default=2000, ge=0)  # windows of it used; 0: none


NotifyKind = Literal["alert", "rollback", "round_failed", "round_rejected", "sensor", "escalation", "digest"]
NOTIFY_KINDS: tuple[NotifyKind, ...] = (
    "alert",
    "rollback",
    "round_failed",
    "round_rejected",
    "sensor",
    "escalation",
    "digest",
)
# round_rejected is asked for by name: the model on the edges stays, so no one has to act, and an
# operators' channel would otherwise hear of every candidate the gate turned down. So is sensor
# (a sensor that began to look stuck or Bad): for the instrument technicians' channel.
DEFAULT_NOTIFY_KINDS: tuple[NotifyKind, ...] = ("alert", "rollback", "round_failed")


class WebhookConfig(StrictModel):
    """One place alerts are POSTed to (cloud/notify.py): a Teams, Slack or MES endpoint."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    # The URL, or the environment variable holding it: a Teams or Slack webhook's URL is itself
    # the credential, and configs live in repos.
    url: str | None = Field(default=None, pattern=r"^https?://")
    url_env: str | None = None
    # The environment variable holding the HMAC key (never the key itself).
    secret_env: str | None = None
    min_probability: float = Field(default=0.0, ge=0, le=1)  # quieter targets see only high risks
    sites: list[str] = Field(default_factory=list)  # empty: every site (alerts, sensors)
    # What goes to this target: alerts, model rollbacks (automatic or by hand), learning rounds
    # that failed (an error stopped them; a candidate the gate rejected is not a failure), and
    # with round_rejected the candidates the gate did not promote, with its reasons; with sensor
    # each sensor that began to look stuck or Bad (cloud/sensor_health.py).
    kinds: list[NotifyKind] = Field(default_factory=lambda: list(DEFAULT_NOTIFY_KINDS), min_length=1)
    # With kind escalation: each alert (of min_probability and sites) nobody acknowledged within
    # this many minutes of the cloud storing it (a shift lead's channel, the on-call phone).
    escalate_after_min: float = Field(default=30.0, gt=0, le=7 * 24 * 60)
    # With kind digest: the fleet's last 24 h in one message (cloud/digest.py), once a day from
    # this hour (UTC) on.
    digest_hour_utc: int = Field(default=6, ge=0, le=23)

    @model_validator(mode="after")
    def _one_url(self) -> WebhookConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError(f"webhook {self.name}: set url or url_env (one of them)")
        return self


class NotifyConfig(StrictModel):
    """Alerts, rollbacks and failed rounds to webhooks, at least once: queued in the database,
    retried with back-off."""

    webhooks: list[WebhookConfig] = Field(default_factory=list)
    interval_s: float = Field(default=5.0, gt=0)  # how often the queue is looked at
    timeout_s: float = Field(default=5.0, gt=0)  # per POST
    max_attempts: int = Field(default=10, ge=1)  # then the notification is marked failed
    backoff_s: float = Field(default=10.0, gt=0)  # after the first failure, doubling per attempt …
    backoff_max_s: float = Field(default=900.0, gt=0)  # … up to this
    lookback_h: float = Field(default=1.0, gt=0)  # alerts and rollbacks older are not sent (a new target)
    max_pending: int = Field(default=10_000, ge=1)  # per target; overflow: the oldest are dropped
    keep_days: float = Field(default=7.0, gt=0)  # delivered/failed/dropped rows are kept this long

    @model_validator(mode="after")
    def _unique_names(self) -> NotifyConfig:
        names = [w.name for w in self.webhooks]
        if len(names) != len(set(names)):
            raise ValueError(f"webhook names must be unique: {names}")
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_max_s must be ≥ backoff_s")
        return self


class SensorsConfig(StrictModel):
    """When the cloud flags a sensor from the health its edge reports (cloud/sensor_health.py): the
    Fleet tab, the Sensor issues table, alerts' "check first" and the ``sensor`` webhooks. Longer
    than the process keeps a sensor still while the tool processes (1 h flagged CVD RF power
    sitting at zero in the simulator: bench/results/sensor_health.md)."""

    unchanged_h: float = Field(default=2.0, gt=0, le=24 * 366)  # unchanged for this much processing
    bad_h: float = Field(default=0.5, gt=0, le=24 * 366)  # no good value for this long


class CloudConfig(StrictModel):
    """Everything ``fabpm cloud run`` needs."""

    mqtt: MqttConfig = MqttConfig()
    storage: StorageConfig = StorageConfig()
    serving: ServingConfig = ServingConfig()
    api: ApiConfig = ApiConfig()
    registry: RegistryConfig = RegistryConfig()
    rollout: RolloutConfig = RolloutConfig()
    learning: LearningConfig = LearningConfig()
    notify: NotifyConfig = NotifyConfig()
    sensors: SensorsConfig = SensorsConfig()
    horizon_h: float = Field(default=72.0, gt=0)  # labels: failed within this many hours


def load(path: Path | None, env: Mapping[str, str] | None = None) -> CloudConfig:
    """The config from ``path`` plus ``FABPM_CLOUD__…`` overrides from ``env`` (default os.environ)."""
    return load_config(CloudConfig, path, os.environ if env is None else env, prefix="FABPM_CLOUD")
