"""Receipts: the cloud tells each edge which of its messages are stored, so the edge may forget them.

A broker acknowledges a message to its publisher before it has delivered it, and Mosquitto keeps
its queues in memory between snapshots: an edge that deletes a message at the broker's PUBACK loses
it when the broker crashes first (B10 measured 29 of 1,547 events). An edge with ``mqtt.receipts``
keeps each alert, event, hard case and tuning record until a receipt names it, and sends it again
when none comes; the cloud stores a message once whatever the redeliveries (``msg_id``) and sends
a receipt for it each time it sees it, so a lost receipt costs one more delivery, not the message.

The ingest thread adds each stored (or already stored) ``msg_id``; :meth:`Receipts.flush`, on the
service's scheduler twice a second, publishes one receipt per edge of up to
:data:`shared.messages.MAX_RECEIPT_IDS` ids (QoS 1, the edge's own topic). Overflow policy: at most
``max_pending`` ids wait; past that the oldest are dropped (counted): their edges send those
messages again and get their receipts then.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from shared.messages import MAX_RECEIPT_IDS, Receipt
from shared.topics import QOS, Kind, topic

_logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], None]


class Receipts:
    """Stored ``msg_id``s waiting to be confirmed to their edge; thread-safe."""

    def __init__(self, publish: Publish, max_pending: int = 100_000) -> None:
        self._publish = publish
        self.max_pending = max_pending
        self._pending: OrderedDict[tuple[str, str], list[str]] = OrderedDict()  # (site, edge) -> ids
        self._count = 0
        self._lock = threading.Lock()
        self.sent = 0  # ids confirmed
        self.dropped = 0  # ids dropped by the overflow policy

    def add(self, site: str, edge_id: str, msg_id: str) -> None:
        with self._lock:
            self._pending.setdefault((site, edge_id), []).append(msg_id)
            self._count += 1
            while self._count > self.max_pending:
                key, ids = next(iter(self._pending.items()))
                ids.pop(0)
                self._count -= 1
                self.dropped += 1
                if not ids:
                    del self._pending[key]

    def flush(self) -> int:
        """Publish what is waiting, one receipt per edge and ``MAX_RECEIPT_IDS`` ids; returns the ids
        sent. What cannot be published now (broker away) goes back to wait for the next flush."""
        with self._lock:
            batch, self._pending, self._count = self._pending, OrderedDict(), 0
        sent = 0
        for n, ((site, edge_id), ids) in enumerate(batch.items()):
            for start in range(0, len(ids), MAX_RECEIPT_IDS):
                chunk = ids[start : start + MAX_RECEIPT_IDS]
                payload = Receipt(schema=Receipt.SCHEMA, edge_id=edge_id, site=site, msg_ids=chunk).to_bytes()
                try:
                    self._publish(topic(site, edge_id, Kind.RECEIPT), payload, QOS[Kind.RECEIPT], False)
                except Exception as exc:  # BrokerError or a full paho queue: keep the rest for later
                    _logger.info("receipts for %s/%s wait: %s", site, edge_id, exc)
                    rest = [((site, edge_id), ids[start:]), *list(batch.items())[n + 1 :]]
                    for (key_site, key_edge), more in rest:
                        for msg_id in more:
                            self.add(key_site, key_edge, msg_id)
                    self.sent += sent
                    return sent
                sent += len(chunk)
        self.sent += sent
        return sent

    def __len__(self) -> int:
        return self._count
