"""The edge daemon end to end: a real asyncua server (the fab layout), a real Mosquitto, the tiny model.

Values are stamped one grid step apart (60 s of source time) and pushed as fast as the link
carries them, so a test covers hours of source time in seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_edge_support import (
    Collector,
    FabServer,
    edge_config,
    keys,
    publish,
    release,
    spec,
    tuning_release,
    until,
)

from edge.config import EdgeConfig
from edge.daemon import EdgeDaemon
from edge.inference import load_verified
from edge.source import SourceEvent
from edge.updates import announcement_for
from edge.windows import features
from shared.equipment import tool_type
from shared.messages import Tuning, Verdict
from shared.signing import generate_keypair, load_private_key, write_release
from shared.topics import Kind, topic

T0 = float(int(time.time()) + 3600)  # after the server's initial timestamps
RNG = np.random.default_rng(0)
STEP = 60.0


@pytest.fixture
async def fab():
    from conftest import free_port

    server = FabServer(free_port())
    await server.start()
    yield server
    await server.stop()


async def _start(cfg) -> tuple[EdgeDaemon, asyncio.Task]:
    daemon = EdgeDaemon(cfg)
    task = asyncio.create_task(daemon.run())
    assert await until(lambda: daemon.source.connected and daemon.relay.connected, 15)
    return daemon, task


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    # Bounded: a daemon that does not stop on cancel is a failure with a message, not a hang.
    done, _ = await asyncio.wait({task}, timeout=30)
    assert done, "the daemon did not stop within 30 s of being cancelled"
    with pytest.raises(asyncio.CancelledError):
        task.result()


async def _push(
    fab: FabServer,
    daemon: EdgeDaemon,
    k: int,
    drift: float = 0.0,
    state: str = "productive",
    bad: tuple[str, ...] = (),
) -> None:
    """One grid step for every tool; waits until the daemon has seen it."""
    ts = T0 + k * STEP
    before = daemon.pipeline.values
    for tool in fab.tools:
        # Noise makes every value a change (the server reports changes only).
        values = fab.nominal(tool, drift if tool == "etch-01" else 0.0, RNG)
        await fab.set(tool, {**values, "State": state if tool == "etch-01" else "productive"}, ts, bad=bad)
    await until(lambda: daemon.pipeline.values >= before + 20, 5, step=0.01)


def _cfg(tmp_path: Path, fab: FabServer, port: int, **kw):
    priv, pub = keys(tmp_path / "keys")
    model = release(tmp_path / "rel", priv, "1")
    return edge_config(
        tmp_path, fab.endpoint, port, models={"risk": str(model), "public_key": str(pub)}, **kw
    )


async def test_alert_raised_before_the_failure_and_events_forwarded(tmp_path, fab, mosquitto):
    collector = Collector(mosquitto.port)
    daemon, task = await _start(_cfg(tmp_path, fab, mosquitto.port))
    try:
        for k in range(12):
            await _push(fab, daemon, k)
        assert await until(lambda: daemon.metrics.windows._value.get() > 0, 5)
        assert not collector.of("alert")
        for k in range(12, 24):  # the etch tool degrades: every sensor drifts away from nominal
            await _push(fab, daemon, k, drift=min(3.0, (k - 11) * 0.5))
        await _push(fab, daemon, 24, drift=3.0, state="unscheduled_down")
        await _push(fab, daemon, 25, drift=3.0, state="unscheduled_down")
        assert await until(
            lambda: collector.of("alert") and any(e["event"] == "failure" for e in collector.of("event")), 10
        )
        daemon.telemetry_once()
        risk_then = daemon.pipeline.tools["etch-01"].risk
        assert await until(lambda: any(t["tool_id"] == "etch-01" for t in collector.of("telemetry")), 5)
        # Still down (nothing to predict, so no new alert), its chamber pressure Bad for four steps:
        # the next telemetry covers the five rows closed since the last one and says how long the
        # sensor has had no good value.
        down = {"drift": 3.0, "state": "unscheduled_down"}
        for k in range(26, 30):
            await _push(fab, daemon, k, bad=("chamber_pressure",), **down)
        await _push(fab, daemon, 30, **down)
        daemon.telemetry_once()
        assert await until(
            lambda: len([t for t in collector.of("telemetry") if t["tool_id"] == "etch-01"]) > 1, 5
        )
    finally:
        await _stop(task)
        collector.stop()
    # Telemetry carries the risk per mode of the tool's type (the cloud's risk history), the alert
    # rule's risk being the highest of them.
    tel, later = [t for t in collector.of("telemetry") if t["tool_id"] == "etch-01"][:2]
    assert len(tel["risk"]) > 1 and set(tel["risk"]) <= set(tool_type("plasma_etch").mode_names)
    assert max(tel["risk"].values()) == pytest.approx(risk_then)
    assert tel["tool_type"] == "plasma_etch"  # the cloud knows the type before any hard case
    # ... and the risk at each window run since the edge started, on the grid (the cloud's chart);
    # the tool then down, nothing ran before the next message.
    trace = tel["risk_trace"]
    assert trace and [p["ts"] for p in trace] == sorted({p["ts"] for p in trace})
    assert all(p["ts"] % STEP == 0 and p["ts"] <= tel["source_ts"] for p in trace)  # the grid's times
    assert trace[-1]["risk"] == tel["risk"] and later["risk_trace"] == []
    assert collector.of("alert")[0]["source_ts"] in {p["ts"] for p in trace}  # the alert's window
    # Each sensor's health now beside its figures for the period (what the Fleet tab flags).
    assert set(tel["summary"]) == set(tool_type("plasma_etch").sensor_names)
    assert all({"unchanged_s", "bad_s"} <= set(v) for v in tel["summary"].values())
    assert later["summary"]["chamber_pressure"]["bad_s"] == 4 * STEP
    assert later["summary"]["dc_bias"]["bad_s"] == 0.0
    assert later["summary"]["dc_bias"]["min"] < later["summary"]["dc_bias"]["max"]  # several rows, not one
    alerts = collector.of("alert")
    assert len(alerts) == 1, "one alert per episode"
    alert = alerts[0]
    assert alert["tool_id"] == "etch-01" and alert["model_version"] == "1"
    # Telemetry's source time is its newest row's, on the equipment's clock as the alert's is.
    newest = daemon.pipeline.newest_ts("etch-01")
    assert newest is not None and alert["source_ts"] <= tel["source_ts"] <= newest
    assert alert["mode"] in ("rf_match_drift", "chamber_deposition", "esc_degradation", "rf_generator_trip")
    failure = [e for e in collector.of("event") if e["event"] == "failure"]
    assert len(failure) == 1 and failure[0]["tool_id"] == "etch-01"
    assert alert["episode_start_ts"] < failure[0]["source_ts"]
    assert alert["episode_start_ts"] >= T0 + 12 * STEP, "no alert while the tool was healthy"
    # Stamped on the equipment's clock too (the window that raised it), as the failure is.
    assert alert["episode_start_ts"] <= alert["source_ts"] < failure[0]["source_ts"]
    latencies = list(daemon.pipeline.latencies)
    assert latencies and float(np.median(latencies)) < 0.5
    # This model compares no tool with its own reference: nothing to put a sensor back to.
    assert alert["evidence"] == [] and alert["reference_known"] is None and alert["likely_mode"] is None


async def test_an_alert_names_the_sensor_that_moved_from_the_tools_reference(tmp_path, fab, mosquitto):
    """After a maintenance the edge knows etch-01's own readings; then one sensor moves away from
    them and the alert it raises names that sensor alone, with how far it reads from its reference
    (``shared.evidence``). The pump, never seen coming back up, has no reference: its alert says so
    and names what moved since the edge began watching it."""
    priv, pub = keys(tmp_path / "keys")
    model = release(tmp_path / "rel", priv, "1", spec(reference_rows=2))
    models = {"risk": str(model), "public_key": str(pub)}
    collector = Collector(mosquitto.port)
    daemon, task = await _start(edge_config(tmp_path, fab.endpoint, mosquitto.port, models=models))
    moved = tool_type("plasma_etch").sensors[3]
    pumped = tool_type("vacuum_pump").sensors[0]
    try:
        for k in range(12):  # maintained at steps 4-5: the reference forms from steps 6-7
            await _push(fab, daemon, k, state="scheduled_down" if k in (4, 5) else "productive")
        assert daemon.pipeline.windows["etch-01"].reference.known_start and not collector.of("alert")
        for k in range(12, 24):  # one sensor leaves its reference, 8 of the model's stds at the end
            before = daemon.pipeline.values
            for tool in fab.tools:
                values = fab.nominal(tool, 0.0, RNG)
                sensor = moved if tool == "etch-01" else pumped
                values[sensor.name] += min(8.0, k - 11) * sensor.noise * 4
                await fab.set(tool, {**values, "State": "productive"}, T0 + k * STEP)
            await until(lambda b=before: daemon.pipeline.values >= b + 20, 5, step=0.01)
        assert await until(lambda: len(collector.of("alert")) == 2, 10)
    finally:
        await _stop(task)
        collector.stop()
    alerts = {a["tool_id"]: a for a in collector.of("alert")}
    pump = alerts["pump-01"]  # against the first rows the edge saw of it
    assert pump["reference_known"] is False and [e["sensor"] for e in pump["evidence"]] == [pumped.name]
    assert 3.0 < pump["evidence"][0]["deviation"] <= 8.0
    alert = alerts["etch-01"]
    assert alert["reference_known"] is True
    assert alert["likely_mode"] == "rf_match_drift", "the only mode whose precursors include match_c1"
    assert moved.name == "match_c1"
    assert [e["sensor"] for e in alert["evidence"]] == [moved.name], alert["evidence"]
    named = alert["evidence"][0]
    assert 0.5 < named["contribution"] <= alert["probability"]
    # Its mean over the window that raised the alert, as the sensor ramped up to 8 stds from its reference.
    assert 3.0 < named["deviation"] <= 8.0


async def test_a_stop_waits_for_a_scheduled_job_in_flight(tmp_path, fab, mosquitto):
    cfg = _cfg(tmp_path, fab, mosquitto.port, schedule={"housekeeping_s": 0.2})
    daemon = EdgeDaemon(cfg)
    started, done = threading.Event(), threading.Event()

    def slow_housekeeping() -> None:  # mid-write when the stop comes
        started.set()
        time.sleep(0.5)
        daemon.outbox.stats()  # reads the outbox: a closed one raises
        done.set()

    daemon.housekeeping_once = slow_housekeeping  # type: ignore[method-assign]
    task = asyncio.create_task(daemon.run())
    try:
        assert await until(started.is_set, 15)
    finally:
        await _stop(task)
    assert done.is_set(), "the outbox closed under a running job"


async def test_hard_case_travels_and_its_verdict_returns(tmp_path, fab, mosquitto):
    collector = Collector(mosquitto.port)
    # Every window is "novel" for this test; the budget lets 3 through at once.
    cfg = _cfg(
        tmp_path,
        fab,
        mosquitto.port,
        decisions={"thresholds": {"hard_novelty": 0.01}, "hardcase_burst": 3, "hardcase_per_hour": 1},
    )
    daemon, task = await _start(cfg)
    try:
        for k in range(14):
            await _push(fab, daemon, k)
        assert await until(lambda: len(collector.of("hardcase")) >= 3, 10)
        await asyncio.sleep(0.3)
        cases = collector.of("hardcase")
        assert len(cases) == 3, "the upload budget bounds the hard cases"
        assert daemon.decider.counts["hard_over_budget"] > 0
        case = cases[0]
        assert "novelty" in case["reasons"] and case["shape"] == [8, len(case["feature_names"])]
        # The case says what its tool can fail by: its type's modes, not every type's.
        assert set(case["edge_prediction"]["probs"]) == set(tool_type(case["tool_type"]).mode_names)
        verdict = Verdict(
            edge_id="e1",
            site="s1",
            case_id=case["case_id"],
            tool_id=case["tool_id"],
            probs={"rf_match_drift": 0.1},
            rul_h=50.0,
            rul_std_h=3.0,
            model_version="full-1",
        )
        publish(mosquitto.port, topic("s1", "e1", Kind.VERDICT), verdict.to_bytes())
        stranger = Verdict(
            edge_id="e1",
            site="s1",
            case_id="nope",
            tool_id="etch-01",
            probs={},
            rul_h=1.0,
            rul_std_h=1.0,
            model_version="full-1",
        )
        publish(mosquitto.port, topic("s1", "e1", Kind.VERDICT), stranger.to_bytes())
        publish(mosquitto.port, topic("s1", "e1", Kind.VERDICT), b'{"schema": "verdict/1", "case_id": 3}')
        assert await until(lambda: daemon.verdicts["matched"] == 1 and daemon.verdicts["unmatched"] == 1, 10)
        assert await until(lambda: daemon.dead_letters == 1, 5)
        assert daemon.outbox.take_case(case["case_id"]) is None, "a matched case is no longer waiting"
        assert daemon.outbox.waiting_cases() == 2
    finally:
        await _stop(task)
        collector.stop()


async def test_bad_values_are_missing_never_invented(tmp_path, fab, mosquitto):
    daemon, task = await _start(_cfg(tmp_path, fab, mosquitto.port))
    try:
        for k in range(10):
            await _push(fab, daemon, k, bad=("chamber_pressure",) if k >= 5 else ())
        win = daemon.pipeline.windows["etch-01"].take()
    finally:
        await _stop(task)
    col = win.values[:, 0]  # chamber_pressure
    assert np.isfinite(col[:3]).all() and np.isnan(col[-3:]).all()
    assert daemon.pipeline.bad > 0


def _tampered(path: Path, tmp: Path) -> Path:
    out = tmp / "tampered.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    (tmp / "tampered.manifest.json").write_text((path.parent / (path.stem + ".manifest.json")).read_text())
    return out


async def test_bad_updates_refused_while_the_old_model_runs_and_a_good_one_swaps(tmp_path, fab, mosquitto):
    # Waits are generous (each returns as soon as the condition holds): the test failed once at
    # 5-10 s on a machine whose two cores ran two trainings and a demo beside it.
    collector = Collector(mosquitto.port)
    cfg = _cfg(tmp_path, fab, mosquitto.port)
    priv, _ = keys(tmp_path / "keys")
    daemon, task = await _start(cfg)
    model_topic = topic("s1", "e1", Kind.MODEL)
    try:
        for k in range(10):
            await _push(fab, daemon, k)
        good2 = release(tmp_path / "rel2", priv, "2")
        # 1. tampered bytes (digest), 2. truncated, 3. signed by another key, 4. NaN outputs.
        tampered = announcement_for(good2)
        raw = bytearray(base64.b64decode(tampered.artifact_b64 or ""))
        raw[100] ^= 0xFF
        tampered = tampered.model_copy(update={"artifact_b64": base64.b64encode(bytes(raw)).decode()})
        truncated = announcement_for(good2)
        truncated = truncated.model_copy(
            update={"artifact_b64": base64.b64encode(good2.read_bytes()[:-50]).decode()}
        )
        generate_keypair(tmp_path / "evil.key", tmp_path / "evil.pub")
        evil = release(tmp_path / "evil", tmp_path / "evil.key", "3")
        nan_model = release(tmp_path / "nan", priv, "4", nan=True)
        expected = {"2": "sha256", "3": "signature", "4": "NaN"}
        for ann in (tampered, truncated, announcement_for(evil), announcement_for(nan_model)):
            before = dict(daemon.updater.last) if daemon.updater else {}
            publish(mosquitto.port, model_topic, ann.to_bytes(), retain=True)
            assert await until(lambda b=before: daemon.updater.last != b, 30)
            last = daemon.updater.last
            assert last["outcome"] == "refused"
            if last["version"] in expected and ann is not truncated:
                assert expected[last["version"]] in last["reason"], last
            k += 1
            await _push(fab, daemon, k)
            assert daemon.models["edge-risk"].version == "1"
        assert len(daemon.updater.refused) == 4
        # The same bad announcement again (retained messages come back on reconnect) is not re-judged.
        publish(mosquitto.port, model_topic, tampered.to_bytes(), retain=True)
        await asyncio.sleep(0.5)
        assert len(daemon.updater.refused) == 4
        windows_before = daemon.metrics.windows._value.get()
        await _push(fab, daemon, k + 1)
        await _push(fab, daemon, k + 2)
        assert await until(lambda: daemon.metrics.windows._value.get() > windows_before, 20), (
            "inference went on"
        )
        # A good update by file:// URL swaps in, keeps the old one, and says so on the status topic.
        publish(mosquitto.port, model_topic, announcement_for(good2, inline=False).to_bytes(), retain=True)
        assert await until(lambda: daemon.models["edge-risk"].version == "2", 30)
        pointer = daemon.store.pointer("edge-risk")
        assert pointer["version"] == "2" and pointer["previous"] == "1"
        assert await until(
            lambda: any(s.get("models", {}).get("edge-risk") == "2" for s in collector.of("status")), 30
        )
        status = [s for s in collector.of("status") if s.get("models", {}).get("edge-risk") == "2"][-1]
        assert status["last_update"]["outcome"] == "accepted"
        # Rollback: the cloud re-announces version 1 without an artifact; the edge has it on disk.
        back = announcement_for(cfg.models.risk).model_copy(update={"artifact_b64": None})
        publish(mosquitto.port, model_topic, back.to_bytes(), retain=True)
        assert await until(lambda: daemon.models["edge-risk"].version == "1", 30)
        assert daemon.store.pointer("edge-risk") == {
            **daemon.store.pointer("edge-risk"),
            "version": "1",
            "previous": "2",
        }
        publish(mosquitto.port, model_topic, announcement_for(good2).to_bytes(), retain=True)
        assert await until(lambda: daemon.models["edge-risk"].version == "2", 30)
    finally:
        await _stop(task)
        collector.stop()
    # After a restart the edge runs the accepted model, not the configured file.
    daemon2 = EdgeDaemon(cfg)
    daemon2.load_models()
    assert daemon2.models["edge-risk"].version == "2"
    daemon2.outbox.close()


async def test_setpoint_writes_are_guarded_read_back_and_recorded(tmp_path, fab, mosquitto):
    tuning = {
        "mode": "auto",
        "envelope": {"plasma_etch": {"rf_power_sp": [1100.0, 1300.0]}},
        "max_step": {"plasma_etch": {"rf_power_sp": 60.0}},
        "min_interval_s": 0.0,
        "max_writes_per_hour": 2,
    }
    daemon, task = await _start(_cfg(tmp_path, fab, mosquitto.port, tuning=tuning))
    collector = Collector(mosquitto.port)
    try:
        await _push(fab, daemon, 0)
        current = {"rf_power_sp": 1200.0}
        ok = await daemon.tuner.apply("etch-01", "plasma_etch", {"rf_power_sp": 1250.0}, current)
        assert ok == {"rf_power_sp": 1250.0}
        outside = await daemon.tuner.apply(
            "etch-01", "plasma_etch", {"rf_power_sp": 1350.0}, {"rf_power_sp": 1300.0}
        )
        beyond_eu = await daemon.tuner.apply(
            "etch-01", "plasma_etch", {"rf_power_sp": 2500.0}, {"rf_power_sp": 1250.0}
        )
        no_env = await daemon.tuner.apply(
            "etch-01", "plasma_etch", {"pressure_sp": 41.0}, {"pressure_sp": 40.0}
        )
        too_big = await daemon.tuner.apply(
            "etch-01", "plasma_etch", {"rf_power_sp": 1150.0}, {"rf_power_sp": 1250.0}
        )
        assert outside == beyond_eu == no_env == too_big == {}
        ok2 = await daemon.tuner.apply(
            "etch-01", "plasma_etch", {"rf_power_sp": 1200.0}, {"rf_power_sp": 1250.0}
        )
        rate = await daemon.tuner.apply(
            "etch-01", "plasma_etch", {"rf_power_sp": 1210.0}, {"rf_power_sp": 1200.0}
        )
        assert ok2 and rate == {}
        assert await until(lambda: len(collector.of("tuning")) >= 7, 10)
    finally:
        await _stop(task)
        collector.stop()
    value = await fab.nodes[("etch-01", "rf_power_sp")].read_value() if fab.nodes else None
    assert value == 1200.0, "only the guarded writes reached the server"
    records = collector.of("tuning")
    reasons = [r["reason"] for r in records if r["action"] == "refused"]
    assert any("envelope" in r for r in reasons) and any("EURange" in r for r in reasons)
    assert any("no envelope" in r for r in reasons) and any("step" in r for r in reasons)
    assert any("writes in the last hour" in r for r in reasons)
    assert [r["setpoints"]["rf_power_sp"] for r in records if r["action"] == "applied"] == [1250.0, 1200.0]
    log = [json.loads(x) for x in (tmp_path / "state" / "tuning.jsonl").read_text().splitlines()]
    assert len(log) == len(records)


async def test_advise_mode_applies_only_after_approval(tmp_path, fab, mosquitto):
    tuning = {
        "mode": "advise",
        "envelope": {"plasma_etch": {"rf_power_sp": [1100.0, 1300.0]}},
        "min_interval_s": 0.0,
    }
    daemon, task = await _start(_cfg(tmp_path, fab, mosquitto.port, tuning=tuning))
    try:
        await _push(fab, daemon, 0)
        from edge.tuning import Pending

        daemon.tuner.pending["p1"] = Pending("etch-01", {"rf_power_sp": 1230.0}, expires=1e18)
        daemon.tuner.pending["p2"] = Pending("etch-01", {"rf_power_sp": 1270.0}, expires=1e18)
        t = topic("s1", "e1", Kind.TUNING)
        reject = Tuning(
            edge_id="cloud",
            site="s1",
            tool_id="etch-01",
            action="rejection",
            proposal_id="p2",
            setpoints={},
            actor="operator",
        )
        publish(mosquitto.port, t, reject.to_bytes())
        approve = Tuning(
            edge_id="cloud",
            site="s1",
            tool_id="etch-01",
            action="approval",
            proposal_id="p1",
            setpoints={},
            actor="operator",
        )
        publish(mosquitto.port, t, approve.to_bytes())
        assert await until(lambda: daemon.tuner.applied == 1 and not daemon.tuner.pending, 10)
        assert await fab.nodes[("etch-01", "rf_power_sp")].read_value() == 1230.0
    finally:
        await _stop(task)


def test_release_helper_signs(tmp_path):
    priv, pub = keys(tmp_path)
    path = release(tmp_path, priv, "9")
    from shared.signing import load_public_key, verify_release

    assert verify_release(path, load_public_key(pub)).version == "9"
    assert write_release and load_private_key


async def test_metrics_and_health_endpoints():
    from conftest import free_port

    from edge.metrics import EdgeMetrics, serve

    metrics = EdgeMetrics()
    metrics.values.inc(5)
    state = {"healthy": True, "opcua": True}
    port = free_port()
    task = asyncio.create_task(serve("127.0.0.1", port, metrics, lambda: dict(state)))

    async def get(path: str) -> tuple[int, bytes]:
        for _ in range(50):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    try:
        code, body = await get("/metrics")
        assert code == 200 and b"fabpm_edge_values_total 5.0" in body
        code, body = await get("/health")
        assert code == 200 and json.loads(body)["opcua"] is True
        state["healthy"] = False
        assert (await get("/health"))[0] == 503
        assert (await get("/nope"))[0] == 404
    finally:
        task.cancel()


async def test_auto_tuning_after_each_lot_stays_inside_the_envelope(tmp_path, fab, mosquitto):
    priv, _ = keys(tmp_path / "keys")
    surrogate = tuning_release(tmp_path / "tun", priv, "t1", optimum=1290.0)
    tuning = {
        "mode": "auto",
        "envelope": {"plasma_etch": {"rf_power_sp": [1100.0, 1260.0]}},
        "max_step": {"plasma_etch": {"rf_power_sp": 25.0}},
        "min_interval_s": 0.0,
        "max_writes_per_hour": 100,
        "weights": {"yield": 1.0, "energy": 0.0},
        "optimiser": "surrogate",  # the one-step search: each lot steps towards the surrogate's optimum
    }
    # Only lot counters change in this test: a short silence watchdog would reconnect mid-test
    # (and refuse the take-back write while the link is down) on a busy machine.
    quiet = {"silence_timeout_s": 120, "watchdog_interval_s": 10.0}
    cfg = _cfg(tmp_path, fab, mosquitto.port, tuning=tuning, opcua=quiet)
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"tuning": [surrogate]})})
    daemon, task = await _start(cfg)
    try:
        assert daemon.models["edge-tuning/plasma_etch"].version == "t1"
        rf = fab.nodes[("etch-01", "rf_power_sp")]
        written = [await rf.read_value()]
        lot = 0

        async def finish_lot(lot_yield: float) -> None:
            nonlocal lot
            lot += 1
            before = (daemon.tuner.applied, daemon.tuner.outcome.reverted, len(daemon.tuner.outcome.trials))
            await fab.set(
                "etch-01", {"last_lot_yield": lot_yield, "last_lot_energy_kwh": 20.0 + lot}, T0 + lot
            )
            await until(
                lambda: (
                    (daemon.tuner.applied, daemon.tuner.outcome.reverted, len(daemon.tuner.outcome.trials))
                    != before
                ),
                2,
            )
            written.append(await rf.read_value())

        for k in range(8):  # every lot a little better: each change is kept
            await finish_lot(80.0 + k)
        assert written[-1] == 1260.0, written
        steps = np.diff(written)
        assert (steps >= 0).all() and (steps <= 25.0).all(), written
        # Now the lots after a change get much worse: the change is taken back.
        # (As if the last change had come from 1235.)
        daemon.tuner.outcome.frozen.clear()
        daemon.tuner.outcome.trials.clear()
        daemon.tuner.outcome.applied("etch-01", {"rf_power_sp": 1235.0})
        # The first take-back is refused (as when the OPC UA link is down): it must be retried
        # after the next lot rather than forgotten.
        real_apply, refused = daemon.tuner.apply, []

        async def refuse_first_revert(*args, **kw):
            if kw.get("actor") == "edge-revert" and not refused:
                refused.append(args)
                return False
            return await real_apply(*args, **kw)

        daemon.tuner.apply = refuse_first_revert
        await finish_lot(70.0)
        await finish_lot(70.0)
        assert daemon.tuner.outcome.reverted == 1
        assert refused and await rf.read_value() == 1260.0
        await finish_lot(70.0)
        setpoints = daemon.control.pipeline.tools["etch-01"].setpoints
        assert await until(lambda: setpoints.get("rf_power_sp") == 1235.0, 5), setpoints
        assert await rf.read_value() == 1235.0
    finally:
        await _stop(task)
    assert daemon.tuner.refused == 0


async def test_eco_rule_idles_the_pump_while_its_host_is_not_processing(tmp_path, fab, mosquitto):
    tuning = {
        "mode": "auto",
        "envelope": {"vacuum_pump": {"idle_mode": [0.0, 1.0]}},
        "min_interval_s": 0.0,
        "max_writes_per_hour": 100,
    }
    # Gaps between pushes can pass the 5 s silence watchdog on a busy machine; a reconnect then
    # refuses the eco write. This test is about the rule, not the watchdog.
    quiet = {"silence_timeout_s": 120, "watchdog_interval_s": 10.0}
    cfg = _cfg(tmp_path, fab, mosquitto.port, tuning=tuning, opcua=quiet)
    tools = [t.model_copy(update={"host": "etch-01"}) if t.id == "pump-01" else t for t in cfg.tools]
    daemon, task = await _start(EdgeConfig.model_validate({**cfg.model_dump(), "tools": tools}))
    idle = fab.nodes[("pump-01", "idle_mode")]
    try:
        await _push(fab, daemon, 0)
        await _push(fab, daemon, 1, state="standby")
        assert await until(lambda: daemon.tuner.applied == 1, 5)
        assert await idle.read_value() == 1.0
        await _push(fab, daemon, 2, state="productive")
        assert await until(lambda: daemon.tuner.applied == 2, 5)
        assert await idle.read_value() == 0.0
    finally:
        await _stop(task)


async def test_the_tools_references_survive_a_restart_of_the_edge(tmp_path, fab, mosquitto):
    """A reference forms only when a tool comes back up, every few weeks: a restart keeps it."""
    priv, pub = keys(tmp_path / "keys")
    model = release(tmp_path / "rel", priv, "1", spec(reference_rows=2))
    models = {"risk": str(model), "public_key": str(pub)}
    cfg = edge_config(tmp_path, fab.endpoint, mosquitto.port, models=models)
    daemon, task = await _start(cfg)
    try:
        for k in range(12):  # etch-01 is maintained at steps 4-5, then runs again; the pump never stops
            await _push(fab, daemon, k, state="scheduled_down" if k in (4, 5) else "productive")
        etch = daemon.pipeline.windows["etch-01"].reference
        assert etch is not None and etch.known_start and etch.seen[1] == 2
        assert not daemon.pipeline.windows["pump-01"].reference.known_start
        before = etch.to_dict()
        # the pump has no reference, only the edge's first readings of it (an alert's fallback)
        watched = daemon.pipeline.windows["pump-01"].watching.to_dict()
        assert watched["seen"][1] == 2
    finally:
        await _stop(task)
    saved = json.loads((tmp_path / "state" / "references.json").read_text())
    assert saved["tools"]["etch-01"] == before
    assert saved["watching"]["pump-01"] == watched
    daemon, task = await _start(cfg)
    try:
        assert daemon.pipeline.windows["etch-01"].reference.to_dict()["sums"] == before["sums"]
        assert daemon.pipeline.windows["pump-01"].watching.to_dict()["sums"] == watched["sums"]
        for k in range(12, 22):
            await _push(fab, daemon, k)
        win = daemon.pipeline.windows["etch-01"].take()
        x = features(win, daemon.models["edge-risk"].spec)
    finally:
        await _stop(task)
    names = list(daemon.models["edge-risk"].spec.names)
    assert np.all(x[:, names.index("ref_known")] == 1.0), "the restored reference is used at once"
    assert np.all(x[:, names.index("since_up")] > 0.0)


async def test_each_tools_state_is_sent_when_the_edge_starts_and_a_restart_repeats_its_id(
    tmp_path, fab, mosquitto
):
    """The first State value the edge reads of each tool is sent (``previous`` ""), so the cloud's
    SEMI E10 figures start when the edge starts watching, not at the tool's first change. Read
    again after a restart, the same change (same SourceTimestamp) has the same id and is not
    written again. A real change after the restart is a change from the state read, and a failure
    still waiting for its alarm when the edge stops is written at the stop."""
    collector = Collector(mosquitto.port)
    cfg = _cfg(tmp_path, fab, mosquitto.port)
    try:
        daemon, task = await _start(cfg)
        try:
            # nothing pushed: the values the server holds come with the subscription
            assert await until(lambda: len(collector.of("event")) >= len(fab.tools), 10)
        finally:
            await _stop(task)
        first = {e["tool_id"]: e for e in collector.of("event")}
        assert set(first) == set(fab.tools)
        assert all(e["event"] == "state" and e["state"] == "productive" for e in first.values())
        assert all(e["detail"]["previous"] == "" and e["source_ts"] < T0 for e in first.values())
        daemon, task = await _start(cfg)
        try:
            # the same State values, unchanged on the server, come again with the subscription
            assert await until(lambda: daemon.pipeline.windows["etch-01"].state == "productive", 10)
            await _push(fab, daemon, 1, state="scheduled_down")
            assert await until(lambda: any(e["event"] == "maintenance" for e in collector.of("event")), 10)
            # A failure waits for its alarm (to name the mode); stopping meanwhile sends it at once.
            daemon.pipeline.failure_grace_s = 600.0
            await _push(fab, daemon, 2, state="unscheduled_down")
        finally:
            await _stop(task)
    finally:
        collector.stop()
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        queued = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox WHERE kind = 'event'")]
        (written,) = db.execute("SELECT written FROM ledger WHERE kind = 'event'").fetchone()
    assert written == len(fab.tools) + 2, "the states read again after the restart are not written again"
    failure = [e for e in collector.of("event") + queued if e["event"] == "failure"]
    assert failure and {e["source_ts"] for e in failure} == {T0 + 2 * STEP}
    events = collector.of("event")
    ids = {(e["tool_id"], e["state"], e["source_ts"]): e["msg_id"] for e in events}
    assert len({e["msg_id"] for e in events}) == len(ids), "a change read twice keeps one id"
    assert {t: ids[(t, "productive", e["source_ts"])] for t, e in first.items()} == {
        t: e["msg_id"] for t, e in first.items()
    }
    (maint,) = [e for e in events if e["event"] == "maintenance"]
    assert maint["tool_id"] == "etch-01" and maint["detail"]["previous"] == "productive"
    assert maint["source_ts"] == T0 + STEP and maint["msg_id"] != first["etch-01"]["msg_id"]


async def test_an_alarm_flood_is_held_back_and_sent_as_one_summary(tmp_path, fab, mosquitto):
    """Past its tool's budget ([alarms]) an alarm is not sent on its own but counted, and the
    flood goes as one summary at the latest when the edge stops; a held-back alarm still names
    the mode of the failure that follows it."""
    collector = Collector(mosquitto.port)
    cfg = _cfg(tmp_path, fab, mosquitto.port, alarms={"per_tool_per_hour": 1.0, "burst": 2})
    daemon, task = await _start(cfg)
    try:
        await _push(fab, daemon, 0)
        ts = T0 + STEP
        for i in range(9):  # a chattering alarm, then one naming the failing mode
            daemon.pipeline.on_event(SourceEvent("etch-01", "RF reflected power high", 600, ts + i, {}))
        daemon.pipeline.on_event(SourceEvent("etch-01", "etch-01 fault: rf_match_drift", 900, ts + 9, {}))
        assert await until(lambda: len([e for e in collector.of("event") if e["event"] == "alarm"]) >= 2, 10)
        await _push(fab, daemon, 2, state="unscheduled_down")
        assert await until(lambda: any(e["event"] == "failure" for e in collector.of("event")), 10)
        assert daemon.metrics.alarms_held._value.get() == 8
    finally:
        await _stop(task)
        collector.stop()
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        queued = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox WHERE kind = 'event'")]
    events = {e["msg_id"]: e for e in collector.of("event") + queued}.values()
    alarms = [e for e in events if e["event"] == "alarm"]
    assert len(alarms) == 3, "two within the burst, then one summary"
    (summary,) = [a for a in alarms if "held_back" in a["detail"]]
    assert summary["detail"]["held_back"] == 8 and summary["source_ts"] == ts + 9
    assert summary["detail"]["messages"] == {"RF reflected power high": 7, "etch-01 fault: rf_match_drift": 1}
    (failure,) = [e for e in events if e["event"] == "failure"]
    assert failure["mode"] == "rf_match_drift", "named by the alarm held back"


async def test_a_model_on_another_grid_keeps_the_state_a_change_comes_from(tmp_path, fab, mosquitto):
    """A model with another window rebuilds the tools' windows; the state a change comes from is
    the tool's, so the next change still says what came before it."""
    collector = Collector(mosquitto.port)
    cfg = _cfg(tmp_path, fab, mosquitto.port)
    daemon, task = await _start(cfg)
    try:
        await _push(fab, daemon, 0)
        wider = release(tmp_path / "rel12", keys(tmp_path / "keys")[0], "2", spec(window=12))
        daemon._swap("edge-risk", load_verified(wider, daemon.key, 1))
        assert daemon.pipeline.windows["etch-01"].state == "", "new windows"
        await _push(fab, daemon, 1, state="scheduled_down")
        assert await until(lambda: any(e["event"] == "maintenance" for e in collector.of("event")), 10)
    finally:
        await _stop(task)
        collector.stop()
    (pm,) = [e for e in collector.of("event") if e["event"] == "maintenance"]
    assert pm["detail"]["previous"] == "productive"


async def test_an_edge_without_a_model_still_sends_state_changes_and_failures(tmp_path, fab, mosquitto):
    """A new edge waits for its first release, maybe for days: the tools' state changes, the
    labels and SEMI E10 figures come from, must not wait with it."""
    collector = Collector(mosquitto.port)
    _, pub = keys(tmp_path / "keys")
    cfg = edge_config(tmp_path, fab.endpoint, mosquitto.port, models={"public_key": str(pub)})
    daemon, task = await _start(cfg)
    try:
        assert daemon.pipeline.model is None
        assert await until(lambda: len(collector.of("event")) >= len(fab.tools), 10)
        daemon.pipeline.failure_grace_s = 0.0
        await _push(fab, daemon, 1, state="unscheduled_down")
        assert await until(lambda: any(e["event"] == "failure" for e in collector.of("event")), 10)
    finally:
        await _stop(task)
        collector.stop()
    (failure,) = [e for e in collector.of("event") if e["event"] == "failure"]
    assert failure["tool_id"] == "etch-01" and failure["detail"]["previous"] == "productive"
    assert not collector.of("alert"), "no model, no risk: nothing to alert on"
