"""Counting the scheduler's jobs that run in a thread pool, so that a stop can wait for them.

APScheduler's asyncio scheduler runs a plain function in the event loop's thread pool, and its
shutdown cancels nothing there and waits for nothing: a job still writing when the daemon closes
its outbox would write through a closed database. Wrapped with :meth:`RunningJobs.track`, each
run is counted; :meth:`RunningJobs.wait_idle` blocks (bounded) until none runs.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any


class RunningJobs:
    def __init__(self) -> None:
        self._running = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    def track(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, counted while it runs."""

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._running += 1
                self._idle.clear()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._running -= 1
                    if self._running == 0:
                        self._idle.set()

        return run

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no tracked job runs; False if one still does after ``timeout_s``."""
        return self._idle.wait(timeout_s)
