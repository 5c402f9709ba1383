"""Prometheus metrics of one cloud worker (its own registry, so tests can build many workers)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CloudMetrics:
    """The counters, gauges and histograms ``/metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "fabpm_cloud_messages", "MQTT messages by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.dead_letters = Counter("fabpm_cloud_dead_letters", "payloads set aside as invalid", registry=r)
        self.verdicts = Counter("fabpm_cloud_verdicts", "verdicts published", registry=r)
        self.queue_rejections = Counter(
            "fabpm_cloud_batcher_rejections", "cases refused by a full batcher queue", registry=r
        )
        self.batch_size = Histogram(
            "fabpm_cloud_batch_size",
            "cases per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.verdict_latency = Histogram(
            "fabpm_cloud_verdict_seconds",
            "hard case received → verdict published",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("fabpm_cloud_batcher_queue", "cases waiting for the model", registry=r)
        # How the alerts of the last 30 days did against the failures reported (cloud/field_report.py),
        # refreshed hourly: a plant alerts on these falling, not on one alert.
        self.field = Gauge(
            "fabpm_cloud_field",
            "the last 30 days' alerts against the failures reported: precision, warned_ge_72h (share of "
            "progressive failures), median_lead_h, alerts, failures",
            ["figure"],
            registry=r,
        )
        self.labels = Counter("fabpm_cloud_labels", "labels written by source", ["source"], registry=r)
        self.rounds = Counter(
            "fabpm_cloud_learning_rounds", "learning rounds by outcome", ["outcome"], registry=r
        )
        self.rollbacks = Counter("fabpm_cloud_rollbacks", "automatic and manual rollbacks", registry=r)
        self.sessions_adopted = Counter(
            "fabpm_cloud_sessions_adopted", "MQTT sessions of gone workers drained and ended", registry=r
        )
        self.notifications = Counter(
            "fabpm_cloud_notifications",
            "webhook notifications by target and outcome (delivered, retry, failed, dropped, shelved)",
            ["target", "outcome"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
