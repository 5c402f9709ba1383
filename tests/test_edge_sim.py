"""The edge against the real fab simulator (``opcua_sim.testing.running_sim``) and a real Mosquitto:
discover its tools, predict on its windows, survive its restart, inject a fault and see the events."""

from __future__ import annotations

import asyncio

import pytest

from edge.config import EdgeConfig
from edge.daemon import EdgeDaemon
from edge.discover import discover
from test_edge_support import Collector, keys, release, spec, until

running_sim = pytest.importorskip("opcua_sim.testing").running_sim
STEP = 600.0


async def test_edge_on_the_simulator_predicts_and_survives_its_restart(tmp_path, mosquitto):
    priv, pub = keys(tmp_path / "keys")
    model = release(tmp_path / "rel", priv, "1", spec(window=6, step_s=STEP))
    async with running_sim(tools=5, seed=3, speed=0) as sim:
        found = await discover(sim.endpoint)
        assert len(found) == 5
        cfg = EdgeConfig.model_validate(
            {
                "site": "s1",
                "edge_id": "e1",
                "state_dir": str(tmp_path / "state"),
                "opcua": {
                    "endpoint": sim.endpoint,
                    "publishing_interval_ms": 50,
                    "sampling_interval_ms": 0,
                    "watchdog_interval_s": 0.5,
                    "request_timeout_s": 2,
                    "backoff_initial_s": 0.2,
                    "backoff_max_s": 0.5,
                },
                "tools": [{"id": f.tool_id, "type": f.tool_type, "path": f.path} for f in found],
                "mqtt": {"port": mosquitto.port, "reconnect_min_s": 0.5, "reconnect_max_s": 1.0},
                "models": {"risk": str(model), "public_key": str(pub)},
                "metrics": {"port": 0},
            }
        )
        collector = Collector(mosquitto.port)
        daemon = EdgeDaemon(cfg)
        task = asyncio.create_task(daemon.run())
        try:
            assert await until(lambda: daemon.source.connected and daemon.relay.connected, 15)
            for _ in range(10):
                await sim.advance(STEP)
                await asyncio.sleep(0.1)
            assert await until(lambda: daemon.metrics.windows._value.get() > 0, 10), daemon.health()
            values_before = daemon.pipeline.values
            await sim.restart()
            assert await until(lambda: daemon.source.sessions >= 2 and daemon.source.connected, 20)
            for _ in range(3):
                await sim.advance(STEP)
                await asyncio.sleep(0.1)
            assert await until(lambda: daemon.pipeline.values > values_before + 50, 10), "data flows again"
            windows_before = daemon.metrics.windows._value.get()
            for _ in range(3):
                await sim.advance(STEP)
                await asyncio.sleep(0.1)
            assert await until(lambda: daemon.metrics.windows._value.get() > windows_before, 10)
            assert daemon.health()["healthy"]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            collector.stop()
