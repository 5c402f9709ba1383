"""Failed logins slow down: per user name and client address, counted in the database.

After ``free`` failures in a row for one (user name, client) key, every further attempt for that
key is refused for ``base_s`` seconds, doubling with each further failure up to ``max_s``; a
successful login clears the key. Keying by user *and* client means a stranger guessing at the
admin's password from one address does not lock the admin out from another. Attempts are refused
before the password is checked, so a right guess during the wait gains nothing.

The counters are rows of ``login_failures``: every worker behind a balancer counts the same
failures (N workers no longer give N × ``free`` free tries) and a restart forgets none. Bounded:
the hourly prune forgets a key ``forget_s`` after its latest failure (a day by default, never
less than ``max_s``, so no key still waiting is forgotten), and each failure has cost its
sender a password hash (scrypt), which bounds how fast rows can be added.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.exc import IntegrityError

from cloud.storage import Repo
from cloud.storage.models import LoginFailure

CLIENT_MAX = 64  # an IPv6 address with a zone fits; a longer key is cut (it is only a counter's key)
USER_MAX = 128  # the API's limit on a user name
DAY_S = 86_400.0


class LoginThrottle:
    def __init__(
        self,
        repo: Repo,
        free: int = 5,
        base_s: float = 30.0,
        max_s: float = 900.0,
        forget_s: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        forget_s = max(DAY_S, max_s) if forget_s is None else forget_s
        if free < 1 or base_s <= 0 or max_s < base_s or forget_s < max_s:
            raise ValueError("login throttle: free ≥ 1 and 0 < base_s ≤ max_s ≤ forget_s")
        self.repo = repo
        self.clock = clock or repo.clock  # wall clock: the workers compare each other's times
        self.free, self.base_s, self.max_s, self.forget_s = free, base_s, max_s, forget_s

    @staticmethod
    def _key(username: str, client: str) -> tuple[str, str]:
        return username[:USER_MAX], client[:CLIENT_MAX]

    def wait_s(self, username: str, client: str) -> float:
        """Seconds before this key may try again (0: now)."""
        with self.repo.transaction() as s:
            row = s.get(LoginFailure, self._key(username, client))
            return max(0.0, row.blocked_until - self.clock()) if row is not None else 0.0

    def failed(self, username: str, client: str) -> None:
        key = self._key(username, client)
        for attempt in range(2):  # two workers inserting the same new key: the loser updates
            try:
                with self.repo.transaction() as s:
                    now = self.clock()
                    row = s.get(LoginFailure, key, with_for_update=True)
                    if row is None:
                        row = LoginFailure(username=key[0], client=key[1], failures=0, blocked_until=0.0)
                        s.add(row)
                    row.failures += 1
                    row.last_ts = now
                    if row.failures >= self.free:
                        row.blocked_until = now + min(
                            self.max_s, self.base_s * 2.0 ** min(row.failures - self.free, 30)
                        )
                return
            except IntegrityError:
                if attempt == 1:
                    raise

    def succeeded(self, username: str, client: str) -> None:
        with self.repo.transaction() as s:
            row = s.get(LoginFailure, self._key(username, client))
            if row is not None:
                s.delete(row)
