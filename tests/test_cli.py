"""The ``fabpm`` command itself: how it ends when its reader goes away, what a quick benchmark
run leaves out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_a_reader_that_goes_away_ends_a_command_quietly():
    """``fabpm cloud report | head``: the pipe's reader leaves; the command stops as a shell's
    commands do (status 141, SIGPIPE's), without a traceback."""
    read, write = os.pipe()
    os.close(read)  # nobody will read: the first write fails
    try:
        done = subprocess.run(
            [sys.executable, "-m", "fabpm.cli", "bench", "--list"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_quick_benchmark_run_leaves_out_the_scripts_without_a_quick_mode(caplog: pytest.LogCaptureFixture):
    """``fabpm bench --quick`` passes --quick to each script: an analysis helper without it (which
    needs a run's folder) is left out and said so, not run at full size or failed."""
    from fabpm.bench import bench_dir, has_quick
    from fabpm.bench import main as bench_main

    assert has_quick(bench_dir() / "sensor_health.py") and not has_quick(bench_dir() / "b2_diagnose.py")
    with caplog.at_level("INFO", logger="fabpm.bench"):
        assert bench_main(["b2_diagnose", "--quick"]) == 0
    assert "b2_diagnose has no quick mode: left out of a --quick run" in caplog.text
