"""``fabpm demo`` end to end: the README's main command, run for a short while on a tiny fab."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx


def _console_url(out: Path, proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The console address the demo prints once everything runs (first start: after training)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"\[demo\] running\. Console: (http://127\.0\.0\.1:\d+)/", out.read_text())
        if found:
            return found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"the demo did not come up (exit {proc.poll()}):\n{out.read_text()[-2000:]}")


def _approve_a_proposal(url: str, root: Path) -> dict[str, Any]:
    """As an operator would in the console's Tuning tab: approve the newest open proposal and wait
    for the edge to report the write. The simulator's engineers change setpoints now and then; a
    proposal whose setpoint moved before the approval is refused by the step guard, as it should
    be, and the next proposal is approved instead (three tries)."""
    password = (root / "admin-password").read_text().strip()
    row: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=10.0) as client:
        r = client.post("/api/auth/token", json={"username": "admin", "password": password})
        r.raise_for_status()
        client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        deadline = time.monotonic() + 30.0
        tried: set[str] = set()
        while len(tried) < 3 and time.monotonic() < deadline:
            rows = client.get("/api/tuning", params={"status": "proposal"}).json()  # newest first
            fresh = [t for t in rows if t["proposal_id"] not in tried]
            if not fresh:
                time.sleep(0.5)
                continue
            pid = fresh[0]["proposal_id"]
            tried.add(pid)
            assert client.post(f"/api/tuning/{pid}/approve", json={"reason": "test"}).status_code == 200
            while time.monotonic() < deadline + 5.0:
                row = next(t for t in client.get("/api/tuning").json() if t["proposal_id"] == pid)
                if row["status"] in ("applied", "refused"):
                    break
                time.sleep(0.5)
            if row["status"] == "applied":
                break
        # each setpoint with its unit from the tool type's catalog, for the console's "1200 → 1175 W"
        assert row["units"] and set(row["setpoints"]) <= set(row["units"]), row
        assert tried, "no tuning proposal reached the console"
        return row


def test_demo_runs_the_whole_loop(tmp_path: Path):
    root = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fabpm.cli", "demo", "--dir", str(root), "--tools", "6", "--api-port", "0"]
    out_path, err_path = tmp_path / "demo.out", tmp_path / "demo.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen([*cmd, "--duration", "45"], stdout=out, stderr=err, text=True)
    try:
        url = _console_url(out_path, proc, 280)
        approved = _approve_a_proposal(url, root)
        assert proc.wait(timeout=120) == 0, out_path.read_text()[-2000:] + err_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    # Advise mode in the main job: a proposal approved in the console is written by the edge,
    # through its guards, and reported back.
    assert approved["status"] == "applied", approved
    # The run's summary on stopping, from the cloud's database and the ground truth.
    said = out_path.read_text()
    summary = re.search(r"\[demo\] this run: (\d+) simulated hours; .* proposals by status: ([^;]*);", said)
    assert summary and int(summary.group(1)) > 0 and "applied" in summary.group(2), said[-1500:]
    field = re.search(r"\[demo\] what followed the alerts .*: (\d+) alerts: .* warned (\d+) of (\d+)", said)
    assert field and int(field.group(2)) <= int(field.group(3)), said[-1500:]
    # The fleet's availability from the states the edge relayed: the simulator's tools run and idle.
    uptime = re.search(r"\[demo\] availability \(the Fleet tab\): equipment uptime ([\d.]+)%", said)
    assert uptime and 0 < float(uptime.group(1)) <= 100, said[-1500:]
    assert [h["action"] for h in approved["history"]][:2] == ["proposal", "approval"], approved
    edge_log = (root / "logs" / "edge.log").read_text()
    assert "OPC UA link" in edge_log and " up: " in edge_log, edge_log[-2000:]
    with sqlite3.connect(root / "cloud.db") as db:
        edges = db.execute("select count(*) from edges").fetchone()[0]
        events = db.execute("select count(*) from events").fetchone()[0]
        active = db.execute("select version from models where status = 'active'").fetchall()
        (edge_ckpt,) = db.execute("select edge_checkpoint from models where version = '1'").fetchone()
        waiting = db.execute("select tool_id from tuning where status = 'proposal'").fetchall()
    assert edges == 1, "the edge never reached the cloud"
    assert events > 0, "no equipment event travelled edge → broker → cloud"
    assert active == [("1",)], "the first edge model should be registered as active"
    assert edge_ckpt and Path(edge_ckpt).is_file(), "the edge checkpoint should be kept with the release"
    # The learning rounds' distillation pool, kept beside the full model when it was trained
    assert (root / "train" / "full.pool.npz").is_file()
    assert "no distillation pool" not in (root / "logs" / "cloud.log").read_text()
    # One open proposal per tool at most: operators decide one step at a time.
    assert max(Counter(t for (t,) in waiting).values(), default=0) <= 1, waiting
    # A second start reuses the trained and signed models instead of training again.
    again = subprocess.run(
        [*cmd, "--duration", "3"], capture_output=True, text=True, timeout=200, check=False
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training the full and the edge DGA" not in again.stdout
    assert "tuning model" not in again.stdout


def test_a_rerun_continues_the_simulated_timeline(tmp_path: Path):
    from fabpm.demo import sim_start

    db = tmp_path / "cloud.db"
    assert sim_start(db) is None  # the first run: the scenario's start
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("create table events (source_ts float)")
        assert sim_start(db) is None  # a cloud that stored nothing yet
        conn.execute("insert into events values (1768687139.28)")  # 2026-01-17 22:38 UTC
    finally:
        conn.close()
    assert sim_start(db) == "2026-01-18T00:00:00+00:00"  # the day after: no simulated day twice


def test_the_stop_summary_names_a_model_still_on_its_canary(tmp_path: Path) -> None:
    """A round's model on its canary edge is not active yet: the summary says where it runs
    beside the active one (it read "edge model running: 1" while the canary ran r1)."""
    from cloud.storage import Repo, make_engine, migrate
    from cloud.storage.models import ModelRow, RolloutRow
    from fabpm.demo import run_summary

    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    migrate(engine)
    with Repo(engine).transaction() as s:
        for version, status in (("1", "active"), ("r1-7", "canary")):
            s.add(
                ModelRow(
                    version=version, model_id="m", role="edge-risk", manifest={}, signature="",
                    artifact_path="", status=status, created_ts=float(len(version)),
                )
            )  # fmt: skip
        s.add(
            RolloutRow(
                version="r1-7", previous_version="1", stage="canary", canary_edges=["edge1"], started_ts=1.0,
                updated_ts=1.0,
            )
        )  # fmt: skip
    engine.dispose()
    (tmp_path / "ground_truth.jsonl").write_text('{"kind": "failure", "t_s": 36000}\n')
    said = run_summary(tmp_path, 0.0)
    assert "edge model active: 1 (on canary edge1: r1-7)" in said and "10 simulated hours" in said


def test_a_second_demo_on_the_same_folder_is_refused(tmp_path: Path):
    """Two demos on one folder interleaved their simulators' ground-truth logs into lines no one
    could read (the first one's summary failed on them) and share one database."""
    import pytest

    from fabpm.demo import DemoError, hold_dir

    first = hold_dir(tmp_path / "demo")
    with pytest.raises(DemoError, match=r"another fabpm demo \(pid \d+\) runs in .*demo: stop it"):
        hold_dir(tmp_path / "demo")
    with hold_dir(tmp_path / "other") as other:  # another folder is free
        assert other.name.endswith("other.lock")
    first.close()  # the first one ended
    hold_dir(tmp_path / "demo").close()
