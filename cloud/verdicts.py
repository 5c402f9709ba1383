"""Verdicts: a new hard case goes to the batcher; the full model's answers for a batch are stored
in one transaction and published to each edge's verdict topic, the case id as correlation id.

Cases the batcher refused (queue full: the overflow policy) or that were in flight when a worker
died stay without a verdict in the database; :meth:`VerdictService.sweep` (scheduled every
``serving.retry_pending_s``) re-submits them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from cloud.batcher import DynamicBatcher
from cloud.config import ServingConfig
from cloud.errors import CloudError, QueueFullError
from cloud.metrics import CloudMetrics
from cloud.serving import Prediction
from cloud.storage.models import Case
from cloud.storage.repo import Repo
from shared.messages import Verdict
from shared.topics import QOS, Kind, topic

_logger = logging.getLogger(__name__)
Publish = Callable[[str, bytes, int, bool], None]
Predict = Callable[[Sequence[np.ndarray]], list[Prediction]]


@dataclass(frozen=True, slots=True)
class Job:
    case_id: str
    edge_id: str
    site: str
    tool_id: str
    received_ts: float
    window: np.ndarray  # (T, F)


class VerdictService:
    """Connects ingest (``on_case``), the batcher (one worker per model replica), storage and MQTT."""

    def __init__(
        self,
        repo: Repo,
        replicas: Sequence[Predict],
        publish: Publish,
        model_version: str,
        metrics: CloudMetrics,
        cfg: ServingConfig,
        clock: Callable[[], float] = time.time,
        refuses: Callable[[np.ndarray], str | None] = lambda _w: None,
    ) -> None:
        self.repo = repo
        self.refuses = refuses
        self.publish = publish
        self.model_version = model_version
        self.metrics = metrics
        self.clock = clock
        self._predicts: list[Predict] = list(replicas)
        self.batcher: DynamicBatcher[Job, bool] = DynamicBatcher(
            [self._batch_fn(i) for i in range(len(replicas))],
            cfg.max_batch,
            cfg.max_wait_ms / 1000.0,
            cfg.queue_size,
            on_batch=metrics.batch_size.observe,
        )
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    def on_case(self, case: Case) -> None:
        """Queue a stored case for the model; a full queue leaves it for the sweep."""
        with self._lock:
            if case.case_id in self._in_flight:
                return
            self._in_flight.add(case.case_id)
        window = self.repo.case_window(case)
        reason = self.refuses(window)
        if reason is not None:
            # Stored as the case's answer so the sweep does not offer it again; nothing is published.
            self.repo.save_verdicts({case.case_id: {"error": reason}}, self.model_version)
            self._release(case.case_id)
            _logger.warning("case %s cannot be answered: %s", case.case_id, reason)
            return
        job = Job(case.case_id, case.edge_id, case.site, case.tool_id, case.received_ts, window)
        try:
            fut = self.batcher.submit(job)
        except QueueFullError:
            self._release(case.case_id)
            self.metrics.queue_rejections.inc()
            return
        self.metrics.queue_depth.set(self.batcher.depth())
        case_id = case.case_id

        def release(_fut: Future[bool]) -> None:
            self._release(case_id)

        fut.add_done_callback(release)

    def _release(self, case_id: str) -> None:
        with self._lock:
            self._in_flight.discard(case_id)

    def swap(self, replicas: Sequence[Predict], model_version: str) -> None:
        """Serve a new full model from the next batch on (same number of replicas)."""
        if len(replicas) != len(self._predicts):
            raise CloudError(f"{len(replicas)} replicas to swap in for {len(self._predicts)}")
        self._predicts = list(replicas)  # one assignment: a running batch finishes on the old model
        self.model_version = model_version
        _logger.info("verdicts now from full model %s", model_version)

    def _batch_fn(self, index: int) -> Callable[[list[Job]], list[bool]]:
        def run(jobs: list[Job]) -> list[bool]:
            predict, version = self._predicts[index], self.model_version
            preds = predict([j.window for j in jobs])
            now = self.clock()
            verdicts = {
                j.case_id: Verdict(
                    schema=Verdict.SCHEMA,
                    edge_id=j.edge_id,
                    site=j.site,
                    case_id=j.case_id,
                    tool_id=j.tool_id,
                    probs=p.probs,
                    rul_h=p.rul_h,
                    rul_std_h=p.rul_std_h,
                    model_version=version,
                    latency_ms=max(0.0, (now - j.received_ts) * 1000.0),
                )
                for j, p in zip(jobs, preds, strict=True)
            }
            fresh = self.repo.save_verdicts(
                {cid: v.model_dump(mode="json", by_alias=True) for cid, v in verdicts.items()},
                self.model_version,
            )
            for cid in fresh:
                v = verdicts[cid]
                try:
                    self.publish(
                        topic(v.site, v.edge_id, Kind.VERDICT), v.to_bytes(), QOS[Kind.VERDICT], False
                    )
                except CloudError as exc:  # stored; paho re-sends queued messages after a reconnect
                    _logger.warning("verdict for %s not published: %s", cid, exc)
                    continue
                self.metrics.verdicts.inc()
                self.metrics.verdict_latency.observe((v.latency_ms or 0.0) / 1000.0)
            return [j.case_id in fresh for j in jobs]

        return run

    def sweep(self, older_than_s: float) -> int:
        """Re-submit cases without a verdict received more than ``older_than_s`` ago."""
        n = 0
        for case in self.repo.pending_cases(self.clock() - older_than_s):
            self.on_case(case)
            n += 1
        if n:
            _logger.info("re-queued %d cases without a verdict", n)
        return n
