"""Verdicts: a new hard case goes to the batcher; the full model's answer is stored and published
to the edge's verdict topic with the case id as correlation id.

Cases the batcher refused (queue full, overflow policy) or that were in flight when a worker died
stay without a verdict in the database; :meth:`VerdictService.sweep` (scheduled every
``serving.retry_pending_s``) re-submits them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from cloud.batcher import DynamicBatcher
from cloud.errors import BrokerError, QueueFullError
from cloud.metrics import CloudMetrics
from cloud.serving import Prediction
from cloud.storage.models import Case
from cloud.storage.repo import Repo
from shared.messages import Verdict
from shared.topics import QOS, Kind, topic

_logger = logging.getLogger(__name__)
Publish = Callable[[str, bytes, int, bool], None]


class VerdictService:
    """Connects ingest (``on_case``), the batcher, storage and the publisher."""

    def __init__(
        self,
        repo: Repo,
        batcher: DynamicBatcher[np.ndarray, Prediction],
        publish: Publish,
        model_version: str,
        metrics: CloudMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.batcher = batcher
        self.publish = publish
        self.model_version = model_version
        self.metrics = metrics
        self.clock = clock
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()

    def on_case(self, case: Case) -> None:
        """Queue a stored case for the model; a full queue leaves it for the sweep."""
        with self._lock:
            if case.case_id in self._in_flight:
                return
            self._in_flight.add(case.case_id)
        try:
            fut = self.batcher.submit(self.repo.case_window(case))
        except QueueFullError:
            with self._lock:
                self._in_flight.discard(case.case_id)
            self.metrics.queue_rejections.inc()
            return
        self.metrics.queue_depth.set(self.batcher.depth())
        key = (case.case_id, case.edge_id, case.site, case.tool_id, case.received_ts)
        fut.add_done_callback(lambda f: self._done(key, f))

    def _done(self, key: tuple[str, str, str, str, float], fut: Future[Prediction]) -> None:
        case_id, edge_id, site, tool_id, received_ts = key
        try:
            pred = fut.result()
        except Exception as exc:  # the batcher logged it; the sweep retries the case
            _logger.warning("no verdict for %s: %s", case_id, exc)
            with self._lock:
                self._in_flight.discard(case_id)
            return
        latency_ms = max(0.0, (self.clock() - received_ts) * 1000.0)
        verdict = Verdict(
            edge_id=edge_id,
            site=site,
            case_id=case_id,
            tool_id=tool_id,
            probs=pred.probs,
            rul_h=pred.rul_h,
            rul_std_h=pred.rul_std_h,
            model_version=self.model_version,
            latency_ms=latency_ms,
        )
        try:
            fresh = self.repo.save_verdict(
                case_id, verdict.model_dump(mode="json", by_alias=True), self.model_version
            )
            if fresh:
                self.publish(topic(site, edge_id, Kind.VERDICT), verdict.to_bytes(), QOS[Kind.VERDICT], False)
                self.metrics.verdicts.inc()
                self.metrics.verdict_latency.observe(latency_ms / 1000.0)
        except (BrokerError, Exception) as exc:  # storage or broker trouble: the sweep retries
            _logger.warning("verdict for %s not delivered: %s", case_id, exc)
        finally:
            with self._lock:
                self._in_flight.discard(case_id)

    def sweep(self, older_than_s: float) -> int:
        """Re-submit cases without a verdict received more than ``older_than_s`` ago."""
        n = 0
        for case in self.repo.pending_cases(self.clock() - older_than_s):
            self.on_case(case)
            n += 1
        if n:
            _logger.info("re-queued %d cases without a verdict", n)
        return n
