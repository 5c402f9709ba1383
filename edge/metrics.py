"""Prometheus metrics and the ``/health`` endpoint, served by a small asyncio HTTP server.

Each daemon has its own :class:`~prometheus_client.CollectorRegistry` (several daemons in one test
process must not collide). ``GET /metrics`` is the Prometheus text format; ``GET /health`` is JSON
from the daemon's ``health()`` with status 200 when healthy and 503 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_logger = logging.getLogger(__name__)
MAX_REQUEST = 8192


class EdgeMetrics:
    """The edge's metrics, one registry per daemon."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.values = Counter("fabpm_edge_values", "tag values received", registry=r)
        self.bad_values = Counter("fabpm_edge_bad_values", "tag values with a Bad status", registry=r)
        self.windows = Counter("fabpm_edge_windows", "windows run through the model", registry=r)
        self.alerts = Counter("fabpm_edge_alerts", "alerts raised", registry=r)
        self.hard_cases = Counter("fabpm_edge_hard_cases", "hard cases", ["outcome"], registry=r)
        self.verdicts = Counter("fabpm_edge_verdicts", "verdicts received", ["matched"], registry=r)
        self.events = Counter("fabpm_edge_events", "equipment events forwarded", ["event"], registry=r)
        self.alarms_held = Counter(
            "fabpm_edge_alarms_held_back", "alarms held back in a flood (sent as summaries)", registry=r
        )
        self.dead_letters = Counter("fabpm_edge_dead_letters", "incoming payloads set aside", registry=r)
        self.updates = Counter("fabpm_edge_model_updates", "model updates", ["outcome"], registry=r)
        self.writes = Counter("fabpm_edge_setpoint_writes", "setpoint writes", ["outcome"], registry=r)
        self.latency = Histogram(
            "fabpm_edge_decision_seconds",
            "window closed → decision made",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=r,
        )
        self.outbox_messages = Gauge(
            "fabpm_edge_outbox_messages", "messages waiting in the outbox", registry=r
        )
        self.outbox_bytes = Gauge("fabpm_edge_outbox_bytes", "bytes waiting in the outbox", registry=r)
        self.outbox_dropped = Gauge(
            "fabpm_edge_outbox_dropped", "messages dropped by the quota policy", registry=r
        )
        self.opcua_up = Gauge("fabpm_edge_opcua_up", "1 while the OPC UA link is up", registry=r)
        self.mqtt_up = Gauge("fabpm_edge_mqtt_up", "1 while the MQTT link is up", registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)


async def serve(host: str, port: int, metrics: EdgeMetrics, health: Callable[[], dict[str, Any]]) -> None:
    """Serve ``/metrics`` and ``/health`` until cancelled."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            parts = head[:MAX_REQUEST].split(b" ", 2)
            path = parts[1].decode("latin-1") if len(parts) > 1 else "/"
            if path.startswith("/metrics"):
                status, ctype, body = 200, "text/plain; version=0.0.4", metrics.text()
            elif path.startswith("/health"):
                doc = health()
                status = 200 if doc.get("healthy") else 503
                ctype, body = "application/json", json.dumps(doc, default=str).encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST)
    _logger.info("metrics and health on http://%s:%d/", host, port)
    async with server:
        await server.serve_forever()
