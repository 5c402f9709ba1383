"""The edge against the real fab simulator (``opcua_sim.testing.running_sim``) and a real Mosquitto:
discover its tools, predict on its windows, survive its restart, inject a fault and see the events."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_edge_support import Collector, keys, release, spec, until

from edge.config import EdgeConfig
from edge.daemon import EdgeDaemon
from edge.discover import discover

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
            # A sudden failure injected through the server's method: the alarm and the failure
            # (the tool's state going to unscheduled down) both reach the cloud, naming the mode.
            victim = next(f for f in found if f.tool_type == "plasma_etch")
            from asyncua import Client, ua

            async with Client(sim.endpoint) as client:
                ns = await client.get_namespace_index("urn:fabpm:sim")
                node = await client.nodes.root.get_child(
                    ["0:Objects", *[f"{ns}:{p}" for p in victim.path.split("/")[1:]]]
                )
                await node.call_method(
                    f"{ns}:InjectFault", ua.Variant("rf_generator_trip", ua.VariantType.String)
                )
            for _ in range(3):
                await sim.advance(STEP)
                await asyncio.sleep(0.1)

            def of_victim(kind: str) -> list:
                events = collector.of("event")
                return [e for e in events if e["tool_id"] == victim.tool_id and e["event"] == kind]

            assert await until(lambda: of_victim("failure") and of_victim("alarm"), 10), collector.of("event")
            assert of_victim("alarm")[0]["mode"] == "rf_generator_trip"
            # The failure event (from the State tag) waits a moment for the alarm, which travels on
            # another OPC UA path, and names the mode.
            assert of_victim("failure")[0]["mode"] == "rf_generator_trip"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            collector.stop()


async def test_secure_channel_with_certificates_and_user_login():
    from edge.config import OpcUaConfig, ToolConfig
    from edge.source import AsyncuaSource, tag_table

    async with running_sim(
        tools=2, seed=1, speed=0, security=True, users={"edge": "s3cret"}, allow_anonymous=False
    ) as sim:
        found = await discover_secure(sim)
        tools = [ToolConfig(id=f.tool_id, type=f.tool_type, path=f.path) for f in found]
        base = {
            "endpoint": sim.endpoint,
            "security_policy": "Basic256Sha256",
            "security_mode": "SignAndEncrypt",
            "certificate": sim.client_cert,
            "private_key": sim.client_key,
            "server_certificate": sim.server_cert,
            "publishing_interval_ms": 50,
            "sampling_interval_ms": 0,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 0.5,
        }
        good = AsyncuaSource(OpcUaConfig(**base, username="edge", password="s3cret"), tag_table(tools))
        bad = AsyncuaSource(OpcUaConfig(**base, username="edge", password="wrong"), tag_table(tools))
        got: list[tuple] = []
        tasks = [
            asyncio.create_task(good.run(got.extend, lambda e: None)),
            asyncio.create_task(bad.run(lambda b: None, lambda e: None)),
        ]
        try:
            assert await until(lambda: good.connected, 20)
            await sim.advance(STEP)
            assert await until(lambda: len(got) > 20, 10)
            await asyncio.sleep(1.0)
            assert not bad.connected and bad.sessions == 0, "a wrong password must not get in"
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def discover_secure(sim) -> list:
    """The tool folders, read through the simulator's own address space (discover needs no login)."""
    from edge.discover import FoundTool

    return [
        FoundTool(tn.tool.tool_id, tn.tool.type_name, f"Objects/Fab/{tn.tool.area}/{tn.tool.tool_id}")
        for tn in sim.server.aspace.tools
    ]


@pytest.fixture(scope="module")
def real_release(tmp_path_factory) -> tuple[Path, Path]:
    """A release from the MODELS helper's real pipeline (tiny config: seconds) on a simulator export."""
    torch = pytest.importorskip("torch")
    from cloud.training import simdata
    from cloud.training.pipeline import PipelineConfig, distil_edge, export_release, train_full
    from opcua_sim.export import export
    from opcua_sim.scenario import load_scenario, scale_tools, with_seed
    from shared.features import FeatureSpec
    from shared.models.checkpoint import load_checkpoint
    from shared.signing import generate_keypair

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("release")
    export(scale_tools(with_seed(load_scenario(None), 7), 6), 12.0, out / "set")
    generate_keypair(out / "k.pem", out / "k.pub")
    cfg = PipelineConfig.tiny()
    full = train_full(out / "set", cfg, out)
    spec = FeatureSpec.from_dict(load_checkpoint(full)[1]["feature_spec"])
    _, tools, _ = simdata.dataset_windows(out / "set", spec=spec, stride=cfg.stride)
    windows = simdata.merge(tools)
    path, _ = export_release(
        distil_edge(full, windows, cfg), windows, out / "rel", out / "k.pem", "v1", None, cfg
    )
    return path, out / "k.pub"


async def test_the_real_released_model_runs_in_the_daemon_on_the_simulator(tmp_path, mosquitto, real_release):
    from edge.inference import RiskModel

    path, pub = real_release
    async with running_sim(tools=6, seed=11, speed=0) as sim:
        found = await discover(sim.endpoint)
        cfg = EdgeConfig.model_validate(
            {
                "site": "s1",
                "edge_id": "e1",
                "state_dir": str(tmp_path / "state"),
                "opcua": {"endpoint": sim.endpoint, "publishing_interval_ms": 50, "sampling_interval_ms": 0},
                "tools": [{"id": f.tool_id, "type": f.tool_type, "path": f.path} for f in found],
                "mqtt": {"port": mosquitto.port},
                "models": {"risk": str(path), "public_key": str(pub)},
                "metrics": {"port": 0},
            }
        )
        collector = Collector(mosquitto.port)
        daemon = EdgeDaemon(cfg)
        task = asyncio.create_task(daemon.run())
        try:
            assert await until(lambda: daemon.source.connected and daemon.relay.connected, 15)
            model = daemon.models["edge-risk"]
            assert isinstance(model, RiskModel) and model.version == "v1"
            for _ in range(model.spec.window + 4):
                await sim.advance(model.spec.step_s)
                await asyncio.sleep(0.05)
            assert await until(lambda: daemon.metrics.windows._value.get() >= len(found), 10), daemon.health()
            assert await until(
                lambda: any(s.get("models", {}).get("edge-risk") == "v1" for s in collector.of("status")), 10
            )
            risks = [info.risk for info in daemon.pipeline.tools.values()]
            assert all(0.0 <= r <= 1.0 for r in risks if r == r)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            collector.stop()
