"""The shipped deployment files work: the Mosquitto config with its TLS listener and per-edge ACLs
(certificates from deploy/mosquitto/make-test-ca.sh), and examples/cloud.toml and the Kubernetes
ConfigMap's cloud.toml load."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import free_port, wait_port
from paho.mqtt.enums import CallbackAPIVersion

from cloud.config import CloudConfig, MqttConfig, TlsConfig, load
from cloud.ingest import Ingestor
from cloud.metrics import CloudMetrics
from cloud.mqtt import MqttLink
from cloud.storage import Repo, make_engine, migrate
from shared.messages import Alert, Receipt, Verdict
from shared.topics import Kind, topic

REPO = Path(__file__).resolve().parent.parent


def test_example_config_loads_with_the_defaults():
    cfg = load(REPO / "examples" / "cloud.toml", {})
    assert cfg.model_copy(update={"storage": CloudConfig().storage}) == CloudConfig()


def test_the_kubernetes_config_map_loads(tmp_path: Path):
    """The cloud.toml inside deploy/k8s/cloud.yaml is a valid config (a wrong key there would stop
    every pod at start)."""
    import yaml

    docs = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / "cloud.yaml").read_text()))
    (config_map,) = [d for d in docs if d and d.get("kind") == "ConfigMap"]
    (tmp_path / "cloud.toml").write_text(config_map["data"]["cloud.toml"])
    cfg = load(tmp_path / "cloud.toml", {})
    assert cfg.api.trusted_proxies == ["10.0.0.0/8"] and cfg.mqtt.tls is not None


def _edge(port: int, certs: Path, name: str) -> tuple[paho.Client, list]:
    got: list = []
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    c.tls_set(
        ca_certs=str(certs / "ca.crt"),
        certfile=str(certs / f"{name}.crt"),
        keyfile=str(certs / f"{name}.key"),
        cert_reqs=ssl.CERT_REQUIRED,
    )
    c.on_message = lambda _c, _u, m: got.append(m.topic)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, got


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_tls_listener_and_per_edge_acls(tmp_path: Path):
    certs = tmp_path / "certs"
    subprocess.run(
        [str(REPO / "deploy/mosquitto/make-test-ca.sh"), str(certs), "edge-1", "edge-2", "cloud-1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/certs", str(certs)).replace("/mosquitto/data/", f"{tmp_path}/")
    conf = conf.replace("/mosquitto/config/acl", str(REPO / "deploy/mosquitto/acl"))
    conf = conf.replace("listener 8883", f"listener {port} 127.0.0.1")
    # Started as root, Mosquitto would drop to its own user, who cannot read pytest's private folders.
    (tmp_path / "m.conf").write_text(conf + "user root\n")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen(
        [exe, "-c", str(tmp_path / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    ingest = Ingestor(Repo(engine), CloudMetrics())
    link = None
    edges = []
    try:
        wait_port(port)
        tls = TlsConfig(
            ca_file=certs / "ca.crt", cert_file=certs / "cloud-1.crt", key_file=certs / "cloud-1.key"
        )
        link = MqttLink(
            MqttConfig(port=port, tls=tls, client_id="cloud-1"), ingest.handle, kinds=(Kind.ALERT,)
        )
        link.start()
        e1, got1 = _edge(port, certs, "edge-1")
        e2, got2 = _edge(port, certs, "edge-2")
        edges = [e1, e2]
        e1.subscribe(
            [(topic("fab1", e, k), 1) for e in ("edge-1", "edge-2") for k in (Kind.VERDICT, Kind.RECEIPT)]
        )
        e2.subscribe([(topic("fab1", "edge-2", k), 1) for k in (Kind.VERDICT, Kind.RECEIPT)])
        time.sleep(0.5)

        def alert(edge: str) -> bytes:
            return Alert(
                edge_id=edge,
                site="fab1",
                tool_id="t1",
                mode="wear",
                probability=0.9,
                model_version="e",
                episode_start_ts=0.0,
            ).to_bytes()

        e1.publish(topic("fab1", "edge-1", Kind.ALERT), alert("edge-1"), qos=1).wait_for_publish(5)
        e1.publish(topic("fab1", "edge-2", Kind.ALERT), alert("edge-2"), qos=1).wait_for_publish(
            5
        )  # not its own
        for edge in ("edge-1", "edge-2"):
            v = Verdict(
                edge_id=edge,
                site="fab1",
                case_id="c",
                tool_id="t1",
                probs={},
                rul_h=1.0,
                rul_std_h=1.0,
                model_version="f",
            )
            link.publish(topic("fab1", edge, Kind.VERDICT), v.to_bytes(), 1, False, wait=True)
            r = Receipt(edge_id=edge, site="fab1", msg_ids=["m1"])
            link.publish(topic("fab1", edge, Kind.RECEIPT), r.to_bytes(), 1, False, wait=True)
        deadline = time.monotonic() + 5
        while (len(ingest.handled_ids) < 1 or len(got2) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert len(ingest.handled_ids) == 1  # edge-1 could not speak for edge-2
        # nor read edge-2's verdicts or receipts; each reads its own
        assert got1 == [topic("fab1", "edge-1", Kind.VERDICT), topic("fab1", "edge-1", Kind.RECEIPT)]
        assert got2 == [topic("fab1", "edge-2", Kind.VERDICT), topic("fab1", "edge-2", Kind.RECEIPT)]
    finally:
        for e in edges:
            e.disconnect()
            e.loop_stop()
        if link is not None:
            link.stop()
        engine.dispose()
        broker.terminate()
        broker.wait(timeout=5)
        if broker.stderr:
            broker.stderr.close()
