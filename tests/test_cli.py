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


def test_a_stop_signal_delivered_to_another_thread_still_stops_the_cloud_worker():
    """Linux may deliver a process's SIGTERM to any of its threads (a learning round's training
    thread, say). The main thread, waiting for the stop, must still see it within a second, not
    when something else wakes it (the demo once killed a cloud worker that had not stopped in 15 s)."""
    import signal
    import threading
    import time

    from cloud.service import wait_for

    stop = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *_: stop.set())

    def busy() -> None:  # a worker thread that the signal lands on, once the main thread waits
        time.sleep(0.3)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

    watchdog = threading.Timer(10.0, stop.set)  # ends the wait, late, where the signal is missed
    try:
        watchdog.start()
        began = time.monotonic()
        threading.Thread(target=busy).start()
        wait_for(stop)
        assert time.monotonic() - began < 2.0
    finally:
        watchdog.cancel()
        signal.signal(signal.SIGUSR1, previous)
