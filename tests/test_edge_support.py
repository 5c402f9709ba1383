"""Helpers for the edge tests: a tiny contract-honouring risk model, signed releases, a small OPC UA
server with the fab layout whose values, timestamps and status codes the test sets, and configs.

The model is built with onnx.helper (no torch, so it is quick): per window it scores the mean
squared z-value of the sensors while processing, ``s``, and answers ``probs = sigmoid(a·s − b)``
for every mode, ``rul = 100 − 10·s`` hours, ``rul_std = 5 + s`` and the window's mean feature
vector as embedding.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import paho.mqtt.client as paho
from asyncua import Server, ua
from onnx import TensorProto, helper
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import EdgeConfig
from shared.equipment import ALL_MODES, MAX_SENSORS, NAMESPACE_URI, TOOL_TYPES, tool_type
from shared.features import FeatureSpec, Scaler
from shared.signing import generate_keypair, load_private_key, write_release

TOOLS = {"etch-01": "plasma_etch", "pump-01": "vacuum_pump"}
AREA = {"plasma_etch": "etch", "vacuum_pump": "subfab"}


def spec(window: int = 8, step_s: float = 60.0, reference_rows: int = 0) -> FeatureSpec:
    """Scaler from the equipment table: nominal mean, noise × 4 as the spread."""
    mean = {t: tuple(s.nominal for s in tt.sensors) for t, tt in TOOL_TYPES.items()}
    std = {t: tuple(max(s.noise * 4, 1e-3) for s in tt.sensors) for t, tt in TOOL_TYPES.items()}
    scaler = Scaler(mean=mean, std=std)
    return FeatureSpec(window=window, step_s=step_s, scaler=scaler, reference_rows=reference_rows)


def risk_onnx(fspec: FeatureSpec, a: float = 3.0, b: float = 6.0, nan: bool = False) -> bytes:
    n_f = fspec.n_features
    m = len(ALL_MODES)
    c = helper.make_tensor
    inits = [
        c("starts", TensorProto.INT64, [1], [0]),
        c("ends", TensorProto.INT64, [1], [MAX_SENSORS]),
        c("pstart", TensorProto.INT64, [1], [fspec.names.index("processing")]),
        c("pend", TensorProto.INT64, [1], [fspec.names.index("processing") + 1]),
        c("axis2", TensorProto.INT64, [1], [2]),
        c("axes12", TensorProto.INT64, [2], [1, 2]),
        c("axes1", TensorProto.INT64, [1], [1]),
        c("a", TensorProto.FLOAT, [], [a]),
        c("b", TensorProto.FLOAT, [], [b]),
        c("eps", TensorProto.FLOAT, [], [1e-3]),
        c("nsens", TensorProto.FLOAT, [], [float(MAX_SENSORS)]),
        c("ones", TensorProto.FLOAT, [1, m], [1.0] * m),
        c("hundred", TensorProto.FLOAT, [], [100.0]),
        c("ten", TensorProto.FLOAT, [], [10.0]),
        c("five", TensorProto.FLOAT, [], [5.0]),
        c("nanv", TensorProto.FLOAT, [], [float("nan") if nan else 1.0]),
    ]
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axis2"], ["z"]),
        helper.make_node("Slice", ["x", "pstart", "pend", "axis2"], ["proc"]),
        helper.make_node("Mul", ["z", "z"], ["z2"]),
        helper.make_node("Mul", ["z2", "proc"], ["z2p"]),
        helper.make_node("ReduceSum", ["z2p", "axes12"], ["num"], keepdims=0),
        helper.make_node("ReduceSum", ["proc", "axes12"], ["cnt"], keepdims=0),
        helper.make_node("Mul", ["cnt", "nsens"], ["cnt_s"]),
        helper.make_node("Add", ["cnt_s", "eps"], ["den"]),
        helper.make_node("Div", ["num", "den"], ["s"]),
        helper.make_node("Mul", ["s", "a"], ["as_"]),
        helper.make_node("Sub", ["as_", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p1"]),
        helper.make_node("Unsqueeze", ["p1", "axes1"], ["p2"]),
        helper.make_node("Mul", ["p2", "ones"], ["p3"]),
        helper.make_node("Mul", ["p3", "nanv"], ["probs"]),
        helper.make_node("Mul", ["s", "ten"], ["s10"]),
        helper.make_node("Sub", ["hundred", "s10"], ["rul"]),
        helper.make_node("Add", ["s", "five"], ["rul_std"]),
        helper.make_node("ReduceMean", ["x", "axes1"], ["embedding"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_risk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", fspec.window, n_f])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["B", m]),
            helper.make_tensor_value_info("rul", TensorProto.FLOAT, ["B"]),
            helper.make_tensor_value_info("rul_std", TensorProto.FLOAT, ["B"]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", n_f]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tuning_release(folder: Path, key: Path, version: str, optimum: float = 1250.0) -> Path:
    """A plasma-etch tuning surrogate: yield peaks at rf_power_sp = ``optimum``, energy grows with it."""
    tt = tool_type("plasma_etch")
    setpoints = list(tt.setpoint_names)
    context = ["last_lot_yield", "last_lot_energy_kwh"]
    width = len(setpoints) + len(context)
    c = helper.make_tensor
    inits = [
        c("e0", TensorProto.FLOAT, [width], [1.0] + [0.0] * (width - 1)),
        c("opt", TensorProto.FLOAT, [], [optimum]),
        c("k", TensorProto.FLOAT, [], [1e-3]),
        c("top", TensorProto.FLOAT, [], [90.0]),
        c("kwh", TensorProto.FLOAT, [], [0.01]),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "e0"], ["x0"]),
        helper.make_node("Sub", ["x0", "opt"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("Mul", ["d2", "k"], ["loss"]),
        helper.make_node("Sub", ["top", "loss"], ["yield"]),
        helper.make_node("Mul", ["x0", "kwh"], ["energy"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_tuning",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", width])],
        [
            helper.make_tensor_value_info("yield", TensorProto.FLOAT, ["B"]),
            helper.make_tensor_value_info("energy", TensorProto.FLOAT, ["B"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tuning-{version}.onnx"
    path.write_bytes(model.SerializeToString())
    fields = {
        "model_id": "tiny-tuning",
        "version": version,
        "role": "edge-tuning",
        "created_ts": time.time(),
        "input_spec": {
            "input_name": "x",
            "setpoints": setpoints,
            "context": context,
            "tool_type": "plasma_etch",
            "mean": [0.0] * width,
            "std": [1.0] * width,
        },
        "output_spec": {"names": ["yield", "energy"]},
    }
    write_release(path, fields, load_private_key(key))
    return path


def keys(folder: Path) -> tuple[Path, Path]:
    priv, pub = folder / "model.key", folder / "model.pub"
    if not priv.exists():
        generate_keypair(priv, pub)
    return priv, pub


def release(
    folder: Path,
    key: Path,
    version: str,
    fspec: FeatureSpec | None = None,
    output_extra: dict[str, Any] | None = None,
    **kw: Any,
) -> Path:
    """Write ``risk-<version>.onnx`` and its signed manifest (``output_extra`` added to its output
    spec); the ONNX path."""
    fspec = fspec or spec()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"risk-{version}.onnx"
    path.write_bytes(risk_onnx(fspec, **kw))
    fields = {
        "model_id": "tiny-risk",
        "version": version,
        "role": "edge-risk",
        "created_ts": time.time(),
        "input_spec": {**fspec.to_dict(), "input_name": "x"},
        "output_spec": {
            "modes": list(ALL_MODES),
            "horizon_h": 72.0,
            "rul_cap_h": 100.0,
            "embedding_centroids": [[0.0] * fspec.n_features],
            "novelty_scale": 10.0,
            **(output_extra or {}),
        },
        "thresholds": {
            "alert_probability": 0.6,
            "alert_persistence_steps": 2,
            "alert_clear_probability": 0.3,
            "hard_margin": 0.05,
            "hard_rul_std_h": 50.0,
            "hard_novelty": 5.0,
        },
    }
    write_release(path, fields, load_private_key(key))
    return path


class FabServer:
    """A real asyncua server with the fab layout of ``shared.equipment`` for a few tools."""

    def __init__(self, port: int, tools: dict[str, str] = TOOLS) -> None:
        self.port = port
        self.tools = tools
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/fabpm/"
        self.server: Server | None = None
        self.nodes: dict[tuple[str, str], Any] = {}

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await server.register_namespace(NAMESPACE_URI)
        fab = await server.nodes.objects.add_folder(ns, "Fab")
        for tool, ttype in self.tools.items():
            area_node = self.nodes.get(("area", AREA[ttype]))
            if area_node is None:
                area_node = await fab.add_folder(ns, AREA[ttype])
                self.nodes[("area", AREA[ttype])] = area_node
            tnode = await area_node.add_object(ns, tool)
            tt = tool_type(ttype)
            for folder, specs in (("Sensors", tt.sensors), ("Setpoints", tt.setpoints)):
                fnode = await tnode.add_object(ns, folder)
                for s in specs:
                    value = s.nominal if folder == "Sensors" else s.default  # type: ignore[union-attr]
                    var = await fnode.add_variable(
                        ns, s.name, float(value), varianttype=ua.VariantType.Double
                    )
                    await var.add_property(0, "EURange", ua.Range(Low=s.lo, High=s.hi))
                    if folder == "Setpoints":
                        await var.set_writable()
                    self.nodes[(tool, s.name)] = var
            cnode = await tnode.add_object(ns, "Counters")
            for name in ("last_lot_yield", "last_lot_energy_kwh"):
                self.nodes[(tool, name)] = await cnode.add_variable(ns, name, 0.0)
            self.nodes[(tool, "State")] = await tnode.add_variable(ns, "State", "productive")
            self.nodes[(tool, "Recipe")] = await tnode.add_variable(ns, "Recipe", "r1")
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
            self.nodes = {}

    async def set(self, tool: str, values: dict[str, Any], ts: float, bad: tuple[str, ...] = ()) -> None:
        """Write values stamped ``ts`` (epoch s); names in ``bad`` get BadSensorFailure."""
        stamp = dt.datetime.fromtimestamp(ts, dt.UTC)
        for name, value in values.items():
            node = self.nodes[(tool, name)]
            if name in bad:
                dv = ua.DataValue(
                    ua.Variant(float(value), ua.VariantType.Double),
                    StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
                    SourceTimestamp=stamp,
                    ServerTimestamp=stamp,
                )
            elif isinstance(value, str):
                dv = ua.DataValue(
                    ua.Variant(value, ua.VariantType.String), SourceTimestamp=stamp, ServerTimestamp=stamp
                )
            else:
                dv = ua.DataValue(
                    ua.Variant(float(value), ua.VariantType.Double),
                    SourceTimestamp=stamp,
                    ServerTimestamp=stamp,
                )
            await self.server.write_attribute_value(node.nodeid, dv)  # type: ignore[union-attr]

    def nominal(
        self, tool: str, drift: float = 0.0, rng: np.random.Generator | None = None
    ) -> dict[str, float]:
        """Nominal sensor values, each shifted by ``drift`` × its noise × 4 (plus noise with ``rng``)."""
        tt = tool_type(self.tools[tool])
        out = {}
        for s in tt.sensors:
            noise = float(rng.normal(0, s.noise)) if rng is not None else 0.0
            out[s.name] = s.nominal + drift * s.noise * 4 + noise
        return out


class Collector:
    """A test subscriber with a persistent session: the broker keeps its messages over outages."""

    def __init__(self, port: int, site: str = "s1", edge: str = "e1", client_id: str = "collector") -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"fabpm/v1/{site}/{edge}/#", qos=1)
        self.client.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.got.append((msg.topic.rsplit("/", 1)[1], json.loads(msg.payload)))

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for k, m in self.got if k == kind]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(port: int, topic_name: str, payload: bytes, retain: bool = False) -> None:
    """Publish one QoS 1 message as the cloud would and wait for its PUBACK."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    info = client.publish(topic_name, payload, qos=1, retain=retain)
    info.wait_for_publish(timeout=10)
    client.disconnect()
    client.loop_stop()


def edge_config(tmp: Path, endpoint: str, mqtt_port: int, **sections: Any) -> EdgeConfig:
    data: dict[str, Any] = {
        "site": "s1",
        "edge_id": "e1",
        "state_dir": str(tmp / "state"),
        "opcua": {
            "endpoint": endpoint,
            "publishing_interval_ms": 50,
            "sampling_interval_ms": 0,
            "silence_timeout_s": 5,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 1.0,
            "watchdog_interval_s": 1.0,
            "request_timeout_s": 3,
        },
        "tools": [{"id": t, "type": ty, "path": f"Objects/Fab/{AREA[ty]}/{t}"} for t, ty in TOOLS.items()],
        "mqtt": {"port": mqtt_port, "reconnect_min_s": 0.5, "reconnect_max_s": 1.0},
        "metrics": {"port": 0},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return EdgeConfig.model_validate(data)


async def until(pred: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return bool(pred())
