"""Failed logins slow down: per user name and client address, with a bounded memory.

After ``free`` failures in a row for one (user name, client) key, every further attempt for that
key is refused for ``base_s`` seconds, doubling with each further failure up to ``max_s``; a
successful login clears the key. Keying by user *and* client means a stranger guessing at the
admin's password from one address does not lock the admin out from another. Attempts are refused
before the password is checked, so a right guess during the wait gains nothing.

Memory: at most ``max_entries`` keys, kept in least-recently-used order; when full, the stalest
key is forgotten (overflow policy: an attacker rotating addresses forgets the oldest counters, not
the newest). The counters live in each worker's memory: with N workers behind a balancer an
attacker gets at most N × ``free`` free tries before the waits start, and a restart forgets them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Record:
    failures: int
    blocked_until: float


class LoginThrottle:
    def __init__(
        self,
        free: int = 5,
        base_s: float = 30.0,
        max_s: float = 900.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if free < 1 or base_s <= 0 or max_s < base_s or max_entries < 1:
            raise ValueError("login throttle: free ≥ 1, 0 < base_s ≤ max_s and max_entries ≥ 1")
        self.free, self.base_s, self.max_s, self.max_entries = free, base_s, max_s, max_entries
        self.clock = clock
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()
        self._lock = threading.Lock()  # the API answers from a thread pool

    def wait_s(self, username: str, client: str) -> float:
        """Seconds before this key may try again (0: now)."""
        with self._lock:
            rec = self._records.get((username, client))
            return max(0.0, rec.blocked_until - self.clock()) if rec is not None else 0.0

    def failed(self, username: str, client: str) -> None:
        key = (username, client)
        with self._lock:
            rec = self._records.pop(key, None) or _Record(0, 0.0)
            rec.failures += 1
            if rec.failures >= self.free:
                wait = min(self.max_s, self.base_s * 2.0 ** min(rec.failures - self.free, 30))
                rec.blocked_until = self.clock() + wait
            self._records[key] = rec  # most recent last
            while len(self._records) > self.max_entries:
                self._records.popitem(last=False)

    def succeeded(self, username: str, client: str) -> None:
        with self._lock:
            self._records.pop((username, client), None)
