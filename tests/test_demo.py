"""``fabpm demo`` end to end: the README's main command, run for a short while on a tiny fab."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_whole_loop(tmp_path: Path):
    root = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fabpm.cli", "demo", "--dir", str(root), "--tools", "6", "--api-port", "0"]
    out = subprocess.run([*cmd, "--duration", "25"], capture_output=True, text=True, timeout=280, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "[demo] running. Console: http://127.0.0.1:" in out.stdout
    edge_log = (root / "logs" / "edge.log").read_text()
    assert "OPC UA link" in edge_log and " up: " in edge_log, edge_log[-2000:]
    with sqlite3.connect(root / "cloud.db") as db:
        edges = db.execute("select count(*) from edges").fetchone()[0]
        events = db.execute("select count(*) from events").fetchone()[0]
        active = db.execute("select version from models where status = 'active'").fetchall()
        (edge_ckpt,) = db.execute("select edge_checkpoint from models where version = '1'").fetchone()
    assert edges == 1, "the edge never reached the cloud"
    assert events > 0, "no equipment event travelled edge → broker → cloud"
    assert active == [("1",)], "the first edge model should be registered as active"
    assert edge_ckpt and Path(edge_ckpt).is_file(), "the edge checkpoint should be kept with the release"
    # A second start reuses the trained and signed models instead of training again.
    again = subprocess.run(
        [*cmd, "--duration", "3"], capture_output=True, text=True, timeout=200, check=False
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training the full and the edge DGA" not in again.stdout
