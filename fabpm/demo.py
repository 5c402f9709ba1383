"""``fabpm demo``: the whole loop on this machine, with embedded defaults.

It starts, each as its own process with its log under ``<dir>/logs/``:

1. Mosquitto on a free local port (MQTT 5; loopback only, anonymous — a local demo, see
   ``deploy/mosquitto`` for the TLS and per-edge ACL configuration of a real site);
2. the OPC UA fab simulator (``fabpm sim serve``), time sped up;
3. the cloud (``fabpm cloud run``): ingest, verdicts from the full DGA model, labels, learning,
   the REST API and the operator console;
4. one edge daemon (``fabpm edge run``) with the config that ``fabpm edge discover`` wrote, and
   setpoint tuning in ``advise`` mode: each process tool's proposal waits in the console's Tuning
   tab until an operator approves or rejects it (:func:`tuning_env` holds the demo's envelope).

On first use it trains the models it needs on a fresh simulator export with the tiny config
(about a minute on two cores; progress is shown), one tuning model per process tool type, and
signs them with a new key; later runs reuse them. Everything lives under ``--dir`` (default
``runs/demo``); ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from shared.errors import FabpmError

_logger = logging.getLogger(__name__)
FABPM = [sys.executable, "-m", "fabpm.cli"]
ADMIN = ["--username", "admin", "--role", "admin"]  # the demo's console user
MODEL_SIZE = "small"  # PipelineConfig.small: about half a minute of training, heads that mean something


class DemoError(FabpmError):
    """A demo step failed; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    """Wait until ``port`` accepts connections; fail early when the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"{name} exited with {proc.returncode} while starting; see {log}")
        with socket.socket() as s:
            s.settimeout(0.3)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DemoError(f"{name} did not listen on port {port} within {timeout_s:.0f} s; see {log}")


@dataclass
class Services:
    """The child processes, stopped in reverse order of start."""

    logs: Path
    procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)
    commands: dict[str, tuple[list[str], dict[str, str] | None]] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        _logger.info("starting %s: %s", name, " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append((name, proc, log))
        self.commands[name] = (cmd, env)
        return proc

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL, timeout_s: float = 15.0) -> None:
        """Send ``sig`` to the running ``name`` (its whole process group) and wait for it to go;
        it is forgotten, so :meth:`dead` does not report it."""
        for entry in [e for e in self.procs if e[0] == name and e[1].poll() is None]:
            _, proc, log = entry
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            log.close()
            self.procs.remove(entry)

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start ``name`` again with the command and environment it was first started with."""
        cmd, env = self.commands[name]
        return self.start(name, cmd, env)

    def dead(self) -> list[str]:
        return [f"{n} (exit {p.returncode})" for n, p, _ in self.procs if p.poll() is not None]

    def stop(self) -> None:
        for name, proc, log in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    _logger.warning("%s did not stop in 15 s; killing it", name)
                    proc.kill()
                    proc.wait(timeout=5)
            log.close()
        self.procs.clear()


def run_step(what: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """Run one preparation command. Its stderr (logs, progress bars) goes to the terminal, so long
    steps show progress; its stdout (the JSON result) is returned and appended to ``log``."""
    print(f"[demo] {what} …", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, check=False)
    with log.open("ab") as fh:
        fh.write(proc.stdout)
    if proc.returncode != 0:
        raise DemoError(f"{what} failed (exit {proc.returncode}); its messages are above")
    return proc.stdout.decode()


def last_json(text: str) -> dict[str, object]:
    """The JSON object a training command prints last."""
    start = text.rfind("\n{")
    start = 0 if start < 0 else start + 1
    try:
        value = json.loads(text[start:])
    except json.JSONDecodeError as exc:
        raise DemoError(f"expected a JSON result, got: {text[-300:]!r}") from exc
    if not isinstance(value, dict):
        raise DemoError("expected a JSON object as the result")
    return value


def prepare_models(root: Path, tools: int, seed: int) -> tuple[Path, Path, Path, Path]:
    """Keys, a training export, the full and edge checkpoints and the signed edge release (cached):
    (full, edge, release, public key)."""
    keys, data, train, release = root / "keys", root / "data", root / "train", root / "release"
    logs = root / "logs" / "prepare.log"
    done = root / "models.json"
    if done.exists():
        info = json.loads(done.read_text())
        # A cache from before the edge checkpoint was kept has no "edge", one from before the
        # small size was trained with the tiny one (heads near 0.5: alerts on every tool): rebuilt.
        paths = [Path(info[k]) for k in ("full", "edge", "edge_release") if k in info]
        current = len(paths) == 3 and info.get("size") == MODEL_SIZE
        if current and all(p.exists() for p in [*paths, keys / "signing.pub"]):
            from cloud.training.pool import pool_path

            # a cache from before the pool (cloud/training/pool.py), its export still there
            if not pool_path(paths[0]).exists() and (data / "dataset.json").exists():
                pool = [*FABPM, "train", "pool", "--checkpoint", str(paths[0]), "--dataset", str(data)]
                run_step("keeping training windows for the learning rounds' distillation", pool, logs)
            return paths[0], paths[1], paths[2], keys / "signing.pub"
    if not (keys / "signing.key").exists():
        run_step("making the Ed25519 signing keys", [*FABPM, "cloud", "keys", "--out", str(keys)], logs)
    run_step(
        f"exporting 60 simulated days of {tools} tools for training (seed {seed})",
        [
            *FABPM,
            "sim",
            "export",
            "--days",
            "60",
            "--tools",
            str(tools),
            "--seed",
            str(seed),
            "--out",
            str(data),
        ],
        logs,
    )
    result = last_json(
        run_step(
            "training the full and the edge DGA (small config, about a minute)",
            [
                *FABPM,
                "train",
                "sim",
                "--size",
                MODEL_SIZE,
                "--edge",
                "--dataset",
                str(data),
                "--out",
                str(train),
            ],
            logs,
        )
    )
    full, edge = Path(str(result["checkpoint"])), Path(str(result["edge_checkpoint"]))
    rel = last_json(
        run_step(
            "exporting the edge model to ONNX, quantizing and signing it",
            [
                *FABPM,
                "train",
                "release",
                "--checkpoint",
                str(edge),
                "--dataset",
                str(data),
                "--key",
                str(keys / "signing.key"),
                "--version",
                "1",
                "--out",
                str(release),
            ],
            logs,
        )
    )
    artifact = Path(str(rel["artifact"]))
    done.write_text(
        json.dumps({"full": str(full), "edge": str(edge), "edge_release": str(artifact), "size": MODEL_SIZE})
    )
    return full, edge, artifact, keys / "signing.pub"


def prepare_tuning(root: Path) -> dict[str, Path]:
    """One signed tuning release per process tool type of the training export (cached in
    ``models.json``), by tool type: what the edge's advise mode proposes with."""
    from shared.equipment import TOOL_TYPES  # light: no torch

    done, keys, data = root / "models.json", root / "keys", root / "data"
    info = json.loads(done.read_text())
    cached = {t: Path(p) for t, p in info.get("tuning", {}).items()}
    if cached and all(p.exists() for p in cached.values()):
        return cached
    types = sorted(
        {t["tool_type"] for t in json.loads((data / "dataset.json").read_text())["tools"]}
        - {name for name, tt in TOOL_TYPES.items() if tt.subfab}  # pumps and abatement run no lots
    )
    releases = {}
    for ttype in types:
        out = last_json(
            run_step(
                f"training the {ttype} tuning model (yield and energy surrogate) and signing it",
                [
                    *FABPM,
                    "train",
                    "tuning",
                    "--dataset",
                    str(data),
                    "--tool-type",
                    ttype,
                    "--key",
                    str(keys / "signing.key"),
                    "--version",
                    "1",
                    "--out",
                    str(root / "release"),
                ],
                root / "logs" / "prepare.log",
            )
        )
        releases[ttype] = Path(str(out["artifact"]))
    done.write_text(json.dumps({**info, "tuning": {t: str(p) for t, p in releases.items()}}))
    return releases


def tuning_env(releases: dict[str, Path]) -> dict[str, str]:
    """The edge's tuning settings for the demo, as environment overrides: ``advise`` mode; the
    envelope is each setpoint's range less 5% at each end, with steps of at most 4% of it (as B9
    runs). The time limits are wall-clock seconds while the simulator runs an hour a second, so
    they are shortened here: a proposal expires after 10 minutes and one tag may be written every
    10 s, 60 times an hour; a real site keeps the defaults of examples/edge.toml."""
    from shared.tuning import range_envelope, step_limits

    envelope: dict[str, dict[str, str]] = {}
    step: dict[str, dict[str, str]] = {}
    for ttype in releases:
        box = range_envelope(ttype)
        envelope[ttype] = {n: f"[{lo:.6g}, {hi:.6g}]" for n, (lo, hi) in box.items()}
        step[ttype] = {n: f"{v:.6g}" for n, v in step_limits(box).items()}
    return {
        "FABPM_EDGE__MODELS__TUNING": json.dumps([str(p) for p in releases.values()]),
        "FABPM_EDGE__TUNING__MODE": "advise",
        "FABPM_EDGE__TUNING__ENVELOPE": _inline_table(envelope),
        "FABPM_EDGE__TUNING__MAX_STEP": _inline_table(step),
        "FABPM_EDGE__TUNING__APPROVAL_TIMEOUT_S": "600.0",
        "FABPM_EDGE__TUNING__MIN_INTERVAL_S": "10.0",
        "FABPM_EDGE__TUNING__MAX_WRITES_PER_HOUR": "60",
    }


def _inline_table(table: dict[str, dict[str, str]]) -> str:
    """A TOML inline table of inline tables (values already TOML), as config overrides take it."""
    parts = []
    for name, row in table.items():
        inner = ", ".join(f"{k} = {v}" for k, v in row.items())
        parts.append(f"{name} = {{{inner}}}")
    return "{" + ", ".join(parts) + "}"


def active_edge_model(db_path: Path) -> str | None:
    """The edge-risk version the cloud's database has active (None: a first start)."""
    if not db_path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            return _active_version(db)
    except sqlite3.Error:  # no models table yet
        return None


def _active_version(db: sqlite3.Connection) -> str | None:
    row = db.execute(
        "select version from models where role = 'edge-risk' and status = 'active' "
        "order by created_ts desc limit 1"
    ).fetchone()
    return str(row[0]) if row else None


def sim_start(db: Path) -> str | None:
    """The simulated start of this run: the day after the equipment's newest record in the demo's
    database, so that a rerun continues the simulated timeline. Replaying days already there would
    put this run's hard cases beside the earlier run's failures, which would label them. None on
    the first run (the scenario's start)."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            (newest,) = conn.execute("select max(source_ts) from events").fetchone()
    except sqlite3.Error:  # no events table yet: nothing to continue
        return None
    if newest is None:
        return None
    day = 86400
    return datetime.fromtimestamp((int(newest) // day + 1) * day, UTC).isoformat()


def run_summary(root: Path, since_wall: float) -> str:
    """What this run did, from the cloud's database and the simulator's ground truth (both
    written by this run's processes; the database also holds earlier runs', left out by time)."""
    try:
        events = [json.loads(line) for line in (root / "ground_truth.jsonl").read_text().splitlines() if line]
        with contextlib.closing(sqlite3.connect(root / "cloud.db")) as db:
            alerts = db.execute("select count(*) from alerts where ts >= ?", (since_wall,)).fetchone()[0]
            tuning = dict(
                db.execute(
                    # what this run decided, and every proposal still open (an earlier run's too)
                    "select status, count(*) from tuning where updated_ts >= ? or status = 'proposal' "
                    "group by status",
                    (since_wall,),
                ).fetchall()
            )
            rounds = dict(
                db.execute(
                    "select status, count(*) from learning_rounds where created_ts >= ? group by status",
                    (since_wall,),
                ).fetchall()
            )
            active = _active_version(db)
            # A round's model on its canary edge is not active yet: said apart, not as "none new".
            row = db.execute(
                "select version, canary_edges from rollouts where stage = 'canary' order by id desc limit 1"
            ).fetchone()
            canary = f" (on canary {', '.join(json.loads(row[1]))}: {row[0]})" if row else ""
    except (OSError, ValueError, sqlite3.Error) as exc:  # a summary is not worth failing the stop
        return f"[demo] no summary: {exc}"
    hours = max((e.get("t_s", 0.0) for e in events), default=0.0) / 3600.0
    failures = [e for e in events if e.get("kind") == "failure"]
    sudden = sum(bool(e.get("sudden")) for e in failures)
    named = {"proposal": "open", "approval": "approved, not yet written"}
    kv = ", ".join(f"{n} {named.get(k, k)}" for k, n in sorted(tuning.items())) or "none"
    rv = ", ".join(f"{n} {k}" for k, n in sorted(rounds.items())) or "none yet"
    return (
        f"[demo] this run: {hours:.0f} simulated hours; failures in the ground truth: {len(failures)} "
        f"({sudden} sudden); alerts: {alerts}; tuning proposals by status: {kv}; learning rounds: {rv}; "
        f"edge model active: {active or 'none'}"
        + canary
        + f"\n{field_summary(root / 'cloud.db', hours / 24.0)}"
    )


def field_summary(db_path: Path, days: float) -> str:
    """The alerts judged by the failure and maintenance events that followed them, as the
    console's Alerts tab shows (cloud/field_report.py), over the last ``days`` of the equipment's
    clock: what a plant sees without a ground truth."""
    from sqlalchemy.exc import SQLAlchemyError

    from cloud.field_report import LEAD_H, MATCH_H, describe, field_report
    from cloud.storage import Repo, make_engine

    if days <= 0 or not db_path.exists():
        return "[demo] no alerts to judge yet"
    engine = make_engine(f"sqlite:///{db_path}")
    try:
        r = field_report(Repo(engine), time.time(), days, LEAD_H, MATCH_H)
    except SQLAlchemyError as exc:  # a summary is not worth failing the stop
        return f"[demo] no field report: {exc}"
    finally:
        engine.dispose()
    from cloud.e10_report import describe_fleet, e10_report

    engine = make_engine(f"sqlite:///{db_path}")
    try:  # the state changes are all kept in a demo's time (storage.state_events_days: 90)
        e10 = describe_fleet(e10_report(Repo(engine), time.time(), min(days, 90.0), 90.0))
    except SQLAlchemyError as exc:
        e10 = f"not computed: {exc}"
    finally:
        engine.dispose()
    return (
        f"[demo] what followed the alerts (the Alerts tab, last {days:.1f} simulated days): "
        + "; ".join(describe(r))
        + f"\n[demo] availability (the Fleet tab): {e10}"
    )


def write_broker_conf(folder: Path, port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "mosquitto.conf"
    # Mosquitto's default max_queued_messages (1000) dropped up to 24% of a QoS 1 burst to a slow
    # subscriber (FACTS.md): raise it so nothing the edge relays is lost in the demo either; and
    # snapshot sessions and queues every 10 s rather than every 30 min (B10 kills the broker).
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\nautosave_interval 10\n"
        f"persistence_location {folder}/\nmax_queued_messages 1000000\nlog_type error\nlog_type warning\n"
    )
    if os.geteuid() == 0:
        # Started as root, Mosquitto drops to its own user, which could not write a root-owned
        # folder: persistence failed ("Permission denied" in its log) and a broker restart came
        # back without the cloud's session.
        with contextlib.suppress(KeyError, OSError):
            owner = pwd.getpwnam("mosquitto")
            os.chown(folder, owner.pw_uid, owner.pw_gid)
    return conf


def write_cloud_conf(root: Path, broker: int, api: int, full: Path) -> Path:
    conf = root / "cloud.toml"
    conf.write_text(
        f'[mqtt]\nport = {broker}\n\n[storage]\nurl = "sqlite:///{root / "cloud.db"}"\n\n'
        f'[serving]\ncheckpoint = "{full}"\n\n[api]\nport = {api}\n\n'
        f'[registry]\ndir = "{root / "registry"}"\nprivate_key = "{root / "keys" / "signing.key"}"\n'
        f'public_key = "{root / "keys" / "signing.pub"}"\n\n'
        f'[learning]\nsize = "{MODEL_SIZE}"\nwork_dir = "{root / "learning"}"\nmin_new_labels = 50\n'
        # The simulator runs an hour a second: a horizon passes in about a minute.
        "label_survivors_s = 60\n"
        # A fresh demo's first rounds have a few dozen labelled cases and no replay: a student
        # distilled from scratch on them cannot learn (the canary watch rolled the first one
        # back), so the round's edge model continues the running one's weights.
        "warm_start_edge = true\n"
        "[rollout]\nwatch_s = 120\n"
    )
    return conf


@dataclass
class Loop:
    """The running loop: its processes (by name: mosquitto, sim, cloud, edge) and where they listen."""

    root: Path
    services: Services
    broker_port: int
    opc_port: int
    api_port: int
    metrics_port: int
    endpoint: str
    secret: Path
    tuned_types: int  # process tool types the edge proposes setpoint changes for

    def wait_for(self, name: str, timeout_s: float = 120.0) -> None:
        """After a (re)start of ``name``: wait until it listens (the edge: its health port)."""
        port = {
            "mosquitto": self.broker_port,
            "sim": self.opc_port,
            "cloud": self.api_port,
            "edge": self.metrics_port,
        }[name]
        proc = next(p for n, p, _ in reversed(self.services.procs) if n == name)
        wait_port(port, timeout_s, proc, name, self.services.logs / f"{name}.log")


def start_loop(
    root: Path,
    services: Services,
    *,
    tools: int,
    speed: float,
    seed: int,
    api_port: int,
    extra_env: dict[str, str] | None = None,
) -> Loop:
    """Prepare (models, keys, configs; cached under ``root``) and start Mosquitto, the simulator,
    the cloud and one edge, each as its own process under ``services``. ``extra_env`` is added to
    every child's environment (``FABPM_EDGE__…``/``FABPM_CLOUD__…`` overrides)."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        raise DemoError("mosquitto is not installed: run scripts/bootstrap.sh (or apt-get install mosquitto)")
    full, edge, release, pubkey = prepare_models(root, tools, seed + 1000)
    tuning = prepare_tuning(root)
    broker_port, opc_port, metrics_port = free_port(), free_port(), free_port()
    api_port = api_port or free_port()
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", api_port)) == 0:
            api_port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{opc_port}/fabpm/"
    logs = services.logs
    env = {**os.environ, **(extra_env or {})}
    broker_conf = write_broker_conf(root / "broker", broker_port)
    proc = services.start("mosquitto", [mosquitto, "-c", str(broker_conf)])
    wait_port(broker_port, 10, proc, "mosquitto", logs / "mosquitto.log")
    proc = services.start(
        "sim",
        [
            *FABPM,
            "sim",
            "serve",
            "--endpoint",
            endpoint,
            "--tools",
            str(tools),
            "--seed",
            str(seed),
            "--speed",
            str(speed),
            "--security",
            "none",
            "--truth",
            str(root / "ground_truth.jsonl"),
            "--cert-dir",
            str(root / "sim-certs"),
            *(["--start", start] if (start := sim_start(root / "cloud.db")) else []),
        ],
        env=env,
    )
    wait_port(opc_port, 120, proc, "the simulator", logs / "sim.log")
    cloud_conf = write_cloud_conf(root, broker_port, api_port, full)
    password = secrets.token_urlsafe(12)
    run_step(
        "creating the console user admin",
        [*FABPM, "cloud", "user", "add", "--config", str(cloud_conf), *ADMIN],
        logs / "prepare.log",
        env={**env, "FABPM_CLOUD_PASSWORD": password},
    )
    promoted = active_edge_model(root / "cloud.db")
    if promoted is None:
        run_step(
            "registering the first edge model as the one the edges run",
            [
                *FABPM,
                "cloud",
                "model",
                "register",
                "--config",
                str(cloud_conf),
                "--artifact",
                str(release),
                "--checkpoint",
                str(full),
                "--edge-checkpoint",
                str(edge),
                "--active",
            ],
            logs / "prepare.log",
            env=env,
        )
    else:  # registering the first model --active again would undo what learning promoted
        print(f"[demo] the edges run edge model {promoted}, as an earlier run left it", flush=True)
    secret = root / "admin-password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    proc = services.start("cloud", [*FABPM, "cloud", "run", "--config", str(cloud_conf)], env=env)
    wait_port(api_port, 120, proc, "the cloud", logs / "cloud.log")
    edge_conf = root / "edge.toml"
    run_step(
        "discovering the simulator's tools for the edge config",
        [*FABPM, "edge", "discover", "--endpoint", endpoint, "--out", str(edge_conf)],
        logs / "prepare.log",
        env=env,
    )
    edge_env = {
        "FABPM_EDGE__SITE": "demo",
        "FABPM_EDGE__EDGE_ID": "edge1",
        "FABPM_EDGE__STATE_DIR": str(root / "edge-state"),
        "FABPM_EDGE__MQTT__PORT": str(broker_port),
        "FABPM_EDGE__MODELS__RISK": str(release),
        "FABPM_EDGE__MODELS__PUBLIC_KEY": str(pubkey),
        "FABPM_EDGE__METRICS__PORT": str(metrics_port),
        # The hard-case budget is per wall-clock hour. At an hour a second, the default 60
        # lets one case through every 60 simulated hours, and the labels a learning round
        # waits for would take most of an hour to come: one a second here.
        "FABPM_EDGE__DECISIONS__HARDCASE_PER_HOUR": "3600",
        # Telemetry every minute would bring the console's risk chart and sensor figures 60
        # simulated hours at a time at an hour a second: about every 5 simulated hours here.
        "FABPM_EDGE__SCHEDULE__TELEMETRY_S": f"{min(60.0, max(1.0, 5 * 3600 / speed)):g}",
        **tuning_env(tuning),
    }
    edge_env = {**os.environ, **edge_env, **(extra_env or {})}  # the caller's overrides win
    services.start("edge", [*FABPM, "edge", "run", "--config", str(edge_conf)], env=edge_env)
    return Loop(root, services, broker_port, opc_port, api_port, metrics_port, endpoint, secret, len(tuning))


def hold_dir(root: Path) -> IO[str]:
    """Take ``<dir>.lock`` beside the demo's folder, or stop with who holds it: two demos on one
    folder write one database, one ground-truth log (interleaved into lines no one can read) and
    one broker's store, and ``--fresh`` would delete the folder under the other."""
    root.parent.mkdir(parents=True, exist_ok=True)
    path = root.with_name(root.name + ".lock")
    f = path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        said = f"another fabpm demo ({holder}) runs in {root}: stop it, or give this one --dir"
        raise DemoError(said) from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fabpm demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("runs/demo"), help="where everything is kept")
    parser.add_argument("--tools", type=int, default=16, help="tools in the simulated fab")
    parser.add_argument("--speed", type=float, default=3600.0, help="simulated seconds per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--api-port", type=int, default=8080, help="console and API port (0: any free)")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)"
    )
    parser.add_argument("--fresh", action="store_true", help="delete --dir first")
    ns = parser.parse_args(argv)
    root = ns.dir.resolve()
    lock = hold_dir(root)  # noqa: F841 (held until the process ends)
    if ns.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    services = Services(root / "logs")
    stop_now = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stop_now
        stop_now = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        loop = start_loop(root, services, tools=ns.tools, speed=ns.speed, seed=ns.seed, api_port=ns.api_port)
        print(
            f"\n[demo] running. Console: http://127.0.0.1:{loop.api_port}/  (user admin, password in "
            f"{loop.secret})\n"
            f"[demo] API docs: http://127.0.0.1:{loop.api_port}/docs   edge health: "
            f"http://127.0.0.1:{loop.metrics_port}/health\n"
            f"[demo] OPC UA: {loop.endpoint}   MQTT: 127.0.0.1:{loop.broker_port}   logs: {services.logs}/\n"
            f"[demo] tuning: advise mode for {loop.tuned_types} tool type(s); proposals wait in the "
            "console's Tuning tab for an operator's approval\n"
            f"[demo] ground truth: {root / 'ground_truth.jsonl'}   Ctrl-C stops everything.\n",
            flush=True,
        )
        started, started_wall = time.monotonic(), time.time()
        while not stop_now:
            dead = services.dead()
            if dead:
                raise DemoError(f"stopped because {', '.join(dead)} exited; see {services.logs}/")
            if ns.duration and time.monotonic() - started >= ns.duration:
                break
            time.sleep(0.5)
        print("[demo] stopping …", flush=True)
        services.stop()
        print(run_summary(root, started_wall), flush=True)
        return 0
    finally:
        with contextlib.suppress(Exception):
            services.stop()
