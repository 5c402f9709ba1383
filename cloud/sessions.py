"""Cloud workers' MQTT sessions: leaving the share group cleanly, and adopting a gone worker's.

Mosquitto (2.0.11, measured) hands a shared subscription's messages round-robin to every session
in the group, including a persistent session whose client has gone: it queues them there until
the session expires (``mqtt.session_expiry_s``, an hour by default) and then drops them. With one
worker of two gone for good, half of what the edges send waits an hour and is then lost (an edge
sends it again only with receipts, and then to the same round-robin). Workers go for good on a
scale-down, when a Kubernetes Deployment replaces a pod (a new pod name, so a new client id), or
when an operator renames one.

Two rules leave nothing stranded:

* A worker that stops while another worker is live **leaves**: it marks its row leaving,
  unsubscribes, handles and acknowledges what is still in flight to it, ends its session (session
  expiry 0 on DISCONNECT) and only then drops its row, so from then on the broker routes everything
  to the others (killed mid-way, its row goes stale and the next rule applies). The last worker
  keeps its session, so that what edges send while no worker runs waits in it.
* Each worker renews its row in ``worker_sessions`` every ``mqtt.heartbeat_s``. A row not renewed
  for ``mqtt.orphan_after_s`` names a session whose worker is gone (killed, or the last one stopped
  and its successor has another id). A live worker claims the row (one conditional UPDATE, so one
  claimant), connects under that client id, stores what the session holds through its own ingest
  (de-duplicated as any redelivery), and ends the session (:func:`cloud.mqtt.drain_session`).

A claim moves the row's heartbeat ``hold_s`` ahead and marks it leaving (no stopping worker counts
it as a live peer): if the adopting worker dies too, the row goes stale again and another adopts
it. If the owner comes back during the drain, it takes its session back (MQTT's session takeover)
and renews its row, and the adopter stops without ending it; so does an adopter that stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from cloud.storage import Repo
from cloud.storage.models import WorkerSession

_logger = logging.getLogger(__name__)


class Roster:
    """This worker's row in ``worker_sessions`` and the rows of the rest of its share group."""

    def __init__(self, repo: Repo, client_id: str, share_group: str, clock: Callable[[], float]) -> None:
        self.repo = repo
        self.client_id = client_id
        self.share_group = share_group
        self.clock = clock

    def beat(self, leaving: bool = False) -> None:
        """Renew this worker's row (create it on first use)."""
        now = self.clock()
        try:
            with self.repo.transaction() as s:
                row = s.get(WorkerSession, self.client_id)
                if row is None:
                    me = WorkerSession(client_id=self.client_id, share_group=self.share_group)
                    me.heartbeat_ts, me.leaving = now, leaving
                    s.add(me)
                else:
                    row.heartbeat_ts = now  # back after a claim: the adopter's forget() then spares it
                    row.share_group, row.leaving = self.share_group, leaving
        except IntegrityError:  # created by a concurrent beat under the same id; renewed next time
            _logger.debug("worker_sessions row %s created concurrently", self.client_id)

    def leave(self, fresh_s: float) -> bool:
        """Mark this worker's row as leaving. True when another worker of the group, not leaving,
        renewed its row within ``fresh_s``: this one may end its session (then :meth:`left`).
        False when it is the last one: its row is live again, and its session keeps what the edges
        send until a worker returns.

        Mark first, count after: of workers stopping together, the last to mark sees all the others
        leaving and keeps its session, whatever the interleaving. A worker that dies while it
        leaves keeps its row, which goes stale, so its session is adopted.
        """
        self.beat(leaving=True)
        with self.repo.transaction() as s:
            others = s.scalar(
                select(func.count())
                .select_from(WorkerSession)
                .where(
                    WorkerSession.share_group == self.share_group,
                    WorkerSession.client_id != self.client_id,
                    WorkerSession.leaving.is_(False),
                    WorkerSession.heartbeat_ts >= self.clock() - fresh_s,
                )
            )
        if others:
            return True
        self.beat()
        return False

    def left(self) -> None:
        """This worker's session has ended: its row goes."""
        with self.repo.transaction() as s:
            s.execute(delete(WorkerSession).where(WorkerSession.client_id == self.client_id))

    def orphans(self, stale_s: float) -> list[tuple[str, float]]:
        """(client id, heartbeat) of the group's rows not renewed for ``stale_s``, oldest first."""
        with self.repo.transaction() as s:
            rows = s.execute(
                select(WorkerSession.client_id, WorkerSession.heartbeat_ts)
                .where(
                    WorkerSession.share_group == self.share_group,
                    WorkerSession.client_id != self.client_id,
                    WorkerSession.heartbeat_ts < self.clock() - stale_s,
                )
                .order_by(WorkerSession.heartbeat_ts)
            ).all()
        return [(str(c), float(h)) for c, h in rows]

    def claim(self, client_id: str, seen_ts: float, hold_s: float) -> float | None:
        """Claim an orphan seen with heartbeat ``seen_ts``: its heartbeat moves to now + ``hold_s``
        (returned), and it is marked leaving, so that no stopping worker counts it as a live peer.
        None when another worker claimed it first or its owner renewed it."""
        until = self.clock() + hold_s
        with self.repo.transaction() as s:
            result = s.execute(
                update(WorkerSession)
                .where(WorkerSession.client_id == client_id, WorkerSession.heartbeat_ts == seen_ts)
                .values(heartbeat_ts=until, leaving=True)
                .execution_options(synchronize_session=False)
            )
        return until if result.rowcount == 1 else None  # type: ignore[attr-defined]

    def forget(self, client_id: str, claimed_ts: float) -> None:
        """Drop a drained orphan's row, unless its owner renewed it meanwhile."""
        with self.repo.transaction() as s:
            s.execute(
                delete(WorkerSession).where(
                    WorkerSession.client_id == client_id, WorkerSession.heartbeat_ts == claimed_ts
                )
            )
