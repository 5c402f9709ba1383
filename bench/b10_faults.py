"""B10: loss under faults, on the whole loop (simulator, Mosquitto, cloud, edge as separate processes).

The loop of ``fabpm demo`` runs (its models and configs; learning rounds off, so the CPU goes to the
message path) while the faults DESIGN.md names hit it one after the other, each after a stretch of
normal running (``--phase-s``):

1. the broker is killed (SIGKILL, as a crash or power loss would) and restarted ``--down-s`` later;
2. the OPC UA server (the simulator) is stopped and restarted ``--down-s`` later;
3. the edge is killed (SIGKILL) while it writes (it writes all the time: values, windows, outbox)
   and restarted;
4. the cloud worker is killed (SIGKILL) while it ingests, and restarted;
5. with ``--workers 2`` or more, more cloud workers share the subscription, and the second one is
   stopped for good (SIGTERM and not restarted: a scale-down) (``--faults …,cloud2``);
6. with ``--workers 3``, the third one is killed for good (SIGKILL, never restarted: a lost node or
   a replaced pod) (``--faults …,cloud3``). Its session stays at the broker and keeps getting its
   share until a live worker adopts it (cloud/sessions.py); the run waits for that before counting.

Then the simulator stops (no new messages), the edge drains its outbox, and the run is reconciled
per message kind: what the edge wrote to its outbox (the outbox's ledger, kept in the same SQLite
transactions as the queue, so it survives ``kill -9``) against what the cloud stored from that edge
(``seen_messages``, one row per ``msg_id``: a redelivered message is stored once). ``lost`` =
written − dropped by the overflow policy − still queued − stored. Telemetry is QoS 0 (at most once
by design); every other kind is QoS 1 through the disk outbox and must not be lost. Also measured:
how long the edge took to reconnect after each fault (its ``/health``, polled every 0.5 s).

    .venv/bin/python bench/b10_faults.py [--out artifacts/b10] [--phase-s 40] [--down-s 10] [--no-faults]
        [--workers 3 --faults mosquitto,sim,edge,cloud,cloud2,cloud3] [--edge-receipts off] [--env K=V]

``--no-faults`` runs the same schedule without the faults: the control for the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _results import add_row  # bench/ is the script's folder

from fabpm.demo import FABPM, Loop, Services, free_port, start_loop, wait_port

REPO = Path(__file__).resolve().parent.parent
QOS0 = {"telemetry"}
ALL_FAULTS = "mosquitto,sim,edge,cloud"
# What a run leaves beside the cached models: removed before each run, so each one starts clean.
RUN_STATE = ("cloud.db", "cloud.db-wal", "cloud.db-shm", "edge-state", "broker", "registry", "learning",
             "ground_truth.jsonl", "logs", "sim-certs")  # fmt: skip


class Health:
    """Polls the edge's /health every 0.5 s: (seconds since start, reachable, opcua, mqtt)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/health"
        self.samples: list[tuple[float, bool, bool, bool]] = []
        self.last: dict[str, Any] = {}
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                try:
                    with urllib.request.urlopen(self.url, timeout=1.0) as r:
                        h = json.loads(r.read())
                except urllib.error.HTTPError as exc:  # 503 while a link is down: the body still tells
                    h = json.loads(exc.read())
                self.last = h
                self.samples.append((time.monotonic() - self.t0, True, bool(h["opcua"]), bool(h["mqtt"])))
            except (OSError, ValueError, KeyError):
                self.samples.append((time.monotonic() - self.t0, False, False, False))
            self._stop.wait(0.5)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def back_after(self, t: float, timeout_s: float = 120.0) -> float | None:
        """Seconds from ``t`` until the edge is reachable with both links up again."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ok = [s for s in self.samples if s[0] > t and s[1] and s[2] and s[3]]
            if ok:
                return ok[0][0] - t
            time.sleep(0.2)
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)


def edge_ledger(state: Path) -> dict[str, dict[str, int]]:
    """The outbox's ledger, read from its file (the edge has stopped)."""
    with sqlite3.connect(f"file:{state / 'outbox.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT kind, written, acked, dropped, refused FROM ledger").fetchall()
        queued = dict(db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())
    return {
        k: {"written": w, "acked": a, "dropped": d, "refused": r, "queued": int(queued.get(k, 0))}
        for k, w, a, d, r in rows
    }


def cloud_counts(db_path: Path, edge_id: str) -> tuple[dict[str, int], int]:
    """Messages the cloud stored from ``edge_id`` by kind, and its dead letters."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        stored = dict(
            db.execute(
                "SELECT kind, COUNT(*) FROM seen_messages WHERE edge_id = ? GROUP BY kind", (edge_id,)
            ).fetchall()
        )
        dead = int(db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
    return stored, dead


def wait_stable(read: Any, quiet_s: float, timeout_s: float) -> Any:
    """Call ``read()`` until its value has not changed for ``quiet_s`` (or ``timeout_s`` passed)."""
    deadline = time.monotonic() + timeout_s
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        value = read()
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def start_workers(loop: Loop, workers: int, env: dict[str, str]) -> None:
    """Cloud workers 2 … ``workers`` beside the loop's: same config and database, their own MQTT
    client id and API port, no learning (one learner is enough)."""
    for k in range(2, workers + 1):
        port = free_port()
        proc = loop.services.start(
            f"cloud{k}",
            [*FABPM, "cloud", "run", "--config", str(loop.root / "cloud.toml")],
            env={
                **os.environ,
                **env,
                "FABPM_CLOUD__MQTT__CLIENT_ID": f"fabpm-cloud-b10-{k}",
                "FABPM_CLOUD__API__PORT": str(port),
                "FABPM_CLOUD__LEARNING__ENABLED": "false",
            },
        )
        wait_port(port, 120, proc, f"cloud{k}", loop.services.logs / f"cloud{k}.log")


ADOPTED = re.compile(r"adopted the MQTT session of worker (\S+) \(silent for (\d+) s\): (\d+) message")


def adoptions(logs: Path) -> list[dict[str, Any]]:
    """The sessions the workers adopted, from their logs: whose, after how long, how many messages."""
    found = []
    for log in sorted(logs.glob("cloud*.log")):
        for m in ADOPTED.finditer(log.read_text(errors="replace")):
            found.append({"by": log.stem, "of": m[1], "silent_s": int(m[2]), "messages": int(m[3])})
    return found


def run_faults(
    loop: Loop,
    health: Health,
    phase_s: float,
    down_s: float,
    faults: set[str],
    workers: int = 1,
    cloud_down_s: float = 2.0,
) -> list[dict[str, Any]]:
    """The schedule (the steps whose process is in ``faults`` happen); what happened at each.
    A step without a down time takes its process away for good."""
    steps: list[tuple[str, str, signal.Signals, float | None]] = [
        ("broker killed (SIGKILL)", "mosquitto", signal.SIGKILL, down_s),
        ("OPC UA server stopped (SIGTERM)", "sim", signal.SIGTERM, down_s),
        ("edge killed (SIGKILL) while writing", "edge", signal.SIGKILL, 2.0),
        ("cloud killed (SIGKILL) while ingesting", "cloud", signal.SIGKILL, cloud_down_s),
    ]
    if workers >= 2:
        steps.append(("cloud worker 2 stopped for good (SIGTERM)", "cloud2", signal.SIGTERM, None))
    if workers >= 3:
        steps.append(("cloud worker 3 killed for good (SIGKILL)", "cloud3", signal.SIGKILL, None))
    record = []
    for what, name, sig, down in steps:
        time.sleep(phase_s)
        if name not in faults:
            record.append({"fault": f"(none: control for '{what}')", "at_s": round(health.now(), 1)})
            continue
        at = health.now()
        if down is None:
            print(f"[b10] {at:6.1f} s: {what}", flush=True)
            loop.services.kill(name, sig)
            record.append({"fault": what, "at_s": round(at, 1), "gone": True})
            continue
        print(f"[b10] {at:6.1f} s: {what}, back in {down:g} s", flush=True)
        loop.services.kill(name, sig)
        time.sleep(down)
        loop.services.restart(name)
        loop.wait_for(name)
        restarted = health.now()
        back = health.back_after(restarted)
        record.append(
            {
                "fault": what,
                "at_s": round(at, 1),
                "down_s": down,
                "edge_links_up_s_after_restart": None if back is None else round(back, 1),
            }
        )
        print(
            f"[b10] {health.now():6.1f} s: {name} restarted; edge links up {back and round(back, 1)} s later",
            flush=True,
        )
    time.sleep(phase_s)
    return record


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "b10")
    ap.add_argument("--tools", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--speed", type=float, default=3600.0, help="simulated seconds per second")
    ap.add_argument(
        "--phase-s", type=float, default=40.0, help="normal running before each fault and after the last"
    )
    ap.add_argument(
        "--down-s", type=float, default=10.0, help="how long the broker and the OPC UA server stay down"
    )
    ap.add_argument("--drain-s", type=float, default=120.0, help="the most the edge gets to empty its outbox")
    ap.add_argument("--no-faults", action="store_true", help="the control: the same schedule, no faults")
    ap.add_argument("--quick", action="store_true", help="short phases (15 s; 5 s down): a check")
    ap.add_argument(
        "--faults",
        default="mosquitto,sim,edge,cloud",
        help="which processes the faults hit (comma-separated; cloud2, cloud3 with --workers)",
    )
    ap.add_argument("--workers", type=int, default=1, choices=(1, 2, 3), help="cloud workers sharing load")
    ap.add_argument(
        "--edge-receipts",
        choices=("on", "off"),
        default="on",
        help="off: the edge forgets a message at the broker's PUBACK (shows what the broker alone loses)",
    )
    ap.add_argument(
        "--cloud-down-s", type=float, default=2.0, help="how long the killed cloud worker stays down"
    )
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for every process (repeatable)")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.env)
    if args.edge_receipts == "off":
        extra["FABPM_EDGE__MQTT__RECEIPTS"] = "false"
    if args.quick:
        args.phase_s, args.down_s = 15.0, 5.0
    root = args.out.resolve() / "loop"
    root.mkdir(parents=True, exist_ok=True)
    for name in RUN_STATE:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    services = Services(root / "logs")
    started = time.time()
    try:
        loop = start_loop(
            root,
            services,
            tools=args.tools,
            speed=args.speed,
            seed=args.seed,
            api_port=0,
            # No learning rounds: B10 is about the message path, and a round's training would
            # take the CPU from it on a 2-core machine.
            extra_env={"FABPM_CLOUD__LEARNING__MIN_NEW_LABELS": "1000000000", **extra},
        )
        start_workers(loop, args.workers, extra)
        loop.wait_for("edge")
        health = Health(loop.metrics_port)
        chosen = set() if args.no_faults else set(args.faults.split(","))
        record = run_faults(loop, health, args.phase_s, args.down_s, chosen, args.workers, args.cloud_down_s)
        print(f"[b10] {health.now():6.1f} s: stopping the simulator; the edge drains its outbox", flush=True)
        loop.services.kill("sim", signal.SIGTERM)
        critical = ("alert", "event", "hardcase", "tuning", "status")

        def queued() -> int:
            ledger = health.last.get("outbox", {}).get("ledger", {})
            return sum(int(v.get("queued", 0)) for k, v in ledger.items() if k in critical)

        t_drain = time.monotonic()
        while queued() and time.monotonic() - t_drain < args.drain_s:
            time.sleep(1.0)
        drained_s = time.monotonic() - t_drain
        loop.services.kill("edge", signal.SIGTERM)
        health.stop()
        if any(r.get("gone") and "SIGKILL" in r["fault"] for r in record):
            # A killed worker's session is adopted once its row is mqtt.orphan_after_s old (60 s).
            deadline = time.monotonic() + 180
            while not adoptions(services.logs) and time.monotonic() < deadline:
                time.sleep(1.0)
        wait_stable(lambda: cloud_counts(root / "cloud.db", "edge1"), quiet_s=5.0, timeout_s=60.0)
        services.stop()
    finally:
        services.stop()
    ledger = edge_ledger(root / "edge-state")
    stored, dead = cloud_counts(root / "cloud.db", "edge1")
    kinds = {}
    for kind in sorted(ledger):  # status goes out directly (retained, and as the last will), not queued
        led = ledger[kind]
        expected = led["written"] - led["dropped"] - led["queued"]
        got = int(stored.get(kind, 0))
        kinds[kind] = {**led, "stored_in_cloud": got, "lost": expected - got, "qos0": kind in QOS0}
    lost_critical = sum(max(0, v["lost"]) for k, v in kinds.items() if k not in QOS0)
    # Every PUBACK is counted, so a row acknowledged more than once was sent again (receipts).
    resent = sum(max(0, v["acked"] - (v["written"] - v["dropped"] - v["queued"])) for v in kinds.values())
    result = {
        "faults": not args.no_faults,
        "schedule": record,
        "drain_s": round(drained_s, 1),
        "kinds": kinds,
        "dead_letters": dead,
        "stored_not_through_the_outbox": {k: v for k, v in stored.items() if k not in ledger},
        "lost_qos1": lost_critical,
        "sent_again": resent,
        "workers": args.workers,
        "edge_receipts": args.edge_receipts,
        "env": extra,
        "adopted_sessions": adoptions(root / "logs"),
        "wall_s": round(time.time() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "b10_control.json" if args.no_faults else "b10.json"
    (args.out / name).write_text(json.dumps(result, indent=1))
    print(f"\n{'kind':10s} {'written':>8s} {'dropped':>8s} {'queued':>7s} {'stored':>7s} {'lost':>6s}")
    for kind, v in kinds.items():
        note = "  (QoS 0: at most once)" if v["qos0"] else ""
        print(
            f"{kind:10s} {v['written']:8d} {v['dropped']:8d} {v['queued']:7d} {v['stored_in_cloud']:7d} "
            f"{v['lost']:6d}{note}"
        )
    print(
        f"QoS 1 messages lost: {lost_critical}; dead letters: {dead}; outbox drained in {drained_s:.0f} s; "
        f"sent again (no receipt in time): {resent}"
    )
    summary = "; ".join(
        f"{k} {v['stored_in_cloud']}/{v['written'] - v['dropped'] - v['queued']}" for k, v in kinds.items()
    )
    faults = (
        "; ".join(
            f"{r['fault']}: edge links up {r['edge_links_up_s_after_restart']} s after the restart"
            if "down_s" in r
            else r["fault"]
            for r in record
            if "down_s" in r or r.get("gone")
        )
        or "no faults (control)"
    )
    adopted = "; ".join(
        f"{a['by']} adopted {a['of']}'s session after {a['silent_s']} s: {a['messages']} messages"
        for a in result["adopted_sessions"]
    )
    if adopted:
        faults += f"; {adopted}"
    opts = "".join(
        [
            f" --workers {args.workers}" if args.workers > 1 else "",
            " --edge-receipts off" if args.edge_receipts == "off" else "",
            f" --cloud-down-s {args.cloud_down_s:g}" if args.cloud_down_s != 2.0 else "",
            "".join(f" --env {kv}" for kv in args.env),
        ]
    )
    add_row(
        REPO / "bench" / "results" / "faults.md",
        f"| B10 | `.venv/bin/python bench/b10_faults.py{' --no-faults' if args.no_faults else ''}"
        f"{'' if args.faults == ALL_FAULTS or args.no_faults else ' --faults ' + args.faults}{opts} "
        f"--phase-s {args.phase_s:g} --down-s {args.down_s:g}` | stored/expected by kind: {summary}; "
        f"**QoS 1 lost: {lost_critical}**; sent again {resent}; dead letters {dead}; {faults} "
        f"| {result['date']} |",
    )
    return 0 if lost_critical == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
