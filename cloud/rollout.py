"""Signed rollout: canary edges first, watch what they report, then every edge; automatic rollback.

A rollout is a row of ``rollouts`` moving through stages::

    canary ──(watch_s passed, canary confirmed the version, ≥ min_observations, no regression)──▶ all
      │                                                                                          │
      └──(the canary refused the model, did not confirm in time, or regressed)──▶ rolled_back ◀──┘
                                                                       (regression within watch_s)
    all ──(watch_s passed without regression)──▶ done

What the canary "reports": its status (``models[role]`` is the new version; ``last_update`` says
accepted or refused and why) and its hard cases under the new model. The regression measure is the
edge model's disagreement with the full model on those cases (mean absolute difference of the
per-mode probabilities, the quantity distillation minimises), compared with the previous model's
on cases from before the rollout; a rise of more than ``max_error_increase`` rolls back.
Rolling back re-publishes the previous version's retained announcement (the edge keeps signed
previous versions, so it swaps back), or clears the retained message when there was none.
:meth:`RolloutManager.tick` is called by the scheduler and is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from cloud.config import RolloutConfig
from cloud.errors import RolloutError
from cloud.metrics import CloudMetrics
from cloud.registry import Registry
from cloud.storage.models import Case, Edge, ModelRow, RolloutRow
from cloud.storage.repo import Repo
from shared.equipment import type_modes
from shared.topics import Kind, topic

_logger = logging.getLogger(__name__)
Publish = Callable[[str, bytes, int, bool], None]
OPEN_STAGES = ("canary", "all")


def disagreement(
    edge_prediction: dict[str, Any], verdict: dict[str, Any], modes: list[str] | None = None
) -> float | None:
    """Mean |p_edge − p_full| over the modes both give, of ``modes`` when given (the tool type's:
    edges send only those, older edges sent every mode, and the others' near-zero agreement would
    dilute the mean); None when they share none."""
    edge_probs = edge_prediction.get("probs") or {}
    full_probs = verdict.get("probs") or {}
    common = [m for m in full_probs if m in edge_probs and (modes is None or m in modes)]
    if not common:
        return None
    return sum(abs(float(edge_probs[m]) - float(full_probs[m])) for m in common) / len(common)


class RolloutManager:
    def __init__(
        self,
        repo: Repo,
        registry: Registry,
        publish: Publish,
        cfg: RolloutConfig,
        metrics: CloudMetrics,
        public_url: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.registry = registry
        self.publish = publish
        self.cfg = cfg
        self.metrics = metrics
        self.public_url = public_url
        self.clock = clock

    # ---- queries -----------------------------------------------------------------------------
    def edges(self) -> list[Edge]:
        with self.repo.transaction() as s:
            return list(s.scalars(select(Edge).order_by(Edge.edge_id)))

    def rollouts(self) -> list[RolloutRow]:
        with self.repo.transaction() as s:
            return list(s.scalars(select(RolloutRow).order_by(RolloutRow.id.desc())))

    def get(self, rollout_id: int) -> RolloutRow:
        with self.repo.transaction() as s:
            row = s.get(RolloutRow, rollout_id)
        if row is None:
            raise RolloutError(f"no rollout {rollout_id}")
        return row

    def busy(self, rows: list[RolloutRow] | None = None) -> RolloutRow | None:
        """The rollout at its canary stage, if any (only one at a time), of ``rows`` when given."""
        return next((r for r in (self.rollouts() if rows is None else rows) if r.stage == "canary"), None)

    # ---- actions -----------------------------------------------------------------------------
    def start(self, version: str, canary_edges: list[str] | None = None) -> RolloutRow:
        """Publish ``version`` to the canary edges; RolloutError when another is at its canary.

        Idempotent: starting the version that is at its canary, or that is out to every edge,
        again returns that rollout unchanged (an admin or a script retrying a start whose answer
        was lost must not get an error for what did happen, nor send the fleet back to a canary).
        A version that was rolled back may be started again: that is a new rollout."""
        model = self.registry.require(version)
        rows = self.rollouts()
        busy = self.busy(rows)
        if busy is not None and busy.version == version:
            _logger.info(
                "rollout %d of %s is already at its canary: started again, unchanged", busy.id, version
            )
            return busy
        if busy is not None:
            raise RolloutError(f"rollout {busy.id} of {busy.version} is still at its canary")
        out = next((r for r in rows if r.stage == "all" and r.version == version), None)
        if out is not None:
            _logger.info(
                "rollout %d of %s is already out to every edge: started again, unchanged", out.id, version
            )
            return out
        for prev in rows:
            if prev.stage == "all":  # still watched after promotion; the new rollout supersedes it
                self._update(prev.id, stage="done", reason=f"superseded by {version}")
        edges = self.edges()
        if not edges:
            raise RolloutError("no edge has reported yet: nowhere to roll out")
        known = {e.edge_id for e in edges}
        wanted = canary_edges or self.cfg.canary_edges
        canary = [e for e in wanted if e in known] or [edges[0].edge_id]
        previous = self.registry.active(model.role)
        now = self.clock()
        row = RolloutRow(
            version=version,
            previous_version=previous.version if previous else None,
            stage="canary",
            canary_edges=canary,
            started_ts=now,
            updated_ts=now,
            reason="",
            observations={},
        )
        with self.repo.transaction() as s:
            s.add(row)
        self.registry.set_status(version, "canary")
        self._announce(model, [e for e in edges if e.edge_id in canary])
        _logger.info(
            "rollout %d: %s to canary %s (previous %s)", row.id, version, canary, row.previous_version
        )
        return row

    def announce(self, rollout_id: int) -> None:
        """Publish a canary rollout's model to its canary edges again (retained, so idempotent):
        for a start whose announcement did not reach the broker."""
        row = self.get(rollout_id)
        if row.stage != "canary":
            raise RolloutError(f"rollout {rollout_id} is {row.stage}, not at its canary")
        model = self.registry.require(row.version)
        self._announce(model, [e for e in self.edges() if e.edge_id in row.canary_edges])

    def _announce(self, model: ModelRow | None, edges: list[Edge]) -> None:
        for edge in edges:
            t = topic(edge.site, edge.edge_id, Kind.MODEL)
            if model is None:
                self.publish(t, b"", 1, True)  # an empty retained message clears the retained model
            else:
                ann = self.registry.announcement(model, edge.site, edge.edge_id, self.public_url)
                self.publish(t, ann.to_bytes(), 1, True)

    def rollback(self, rollout_id: int, reason: str) -> RolloutRow:
        """Return the edges that got the rollout's version to the previous one."""
        row = self.get(rollout_id)
        if row.stage not in OPEN_STAGES:
            raise RolloutError(f"rollout {rollout_id} is {row.stage}; nothing to roll back")
        edges = self.edges()
        targets = [e for e in edges if row.stage == "all" or e.edge_id in row.canary_edges]
        previous = self.registry.get(row.previous_version, missing_ok=True) if row.previous_version else None
        self._announce(previous, targets)
        self.registry.set_status(row.version, "rolled_back")
        if previous is not None:
            self.registry.set_status(previous.version, "active")
        self._update(row.id, stage="rolled_back", reason=reason)
        self.metrics.rollbacks.inc()
        _logger.warning("rollout %d of %s rolled back: %s", row.id, row.version, reason)
        return self.get(row.id)

    def promote(self, rollout_id: int) -> RolloutRow:
        row = self.get(rollout_id)
        if row.stage != "canary":
            raise RolloutError(f"rollout {rollout_id} is {row.stage}, not canary")
        model = self.registry.require(row.version)
        self._announce(model, self.edges())
        self.registry.activate(row.version)  # the model active before (previous_version) retires
        self._update(row.id, stage="all", reason="canary healthy", promoted_ts=self.clock())
        _logger.info("rollout %d: %s to every edge", row.id, row.version)
        return self.get(row.id)

    def _update(
        self, rollout_id: int, stage: str | None = None, reason: str | None = None, **obs: Any
    ) -> None:
        with self.repo.transaction() as s:
            row = s.get(RolloutRow, rollout_id)
            assert row is not None
            if stage:
                row.stage = stage
            if reason is not None:
                row.reason = reason
            if obs:
                row.observations = {**row.observations, **obs}
            row.updated_ts = self.clock()

    # ---- watching ----------------------------------------------------------------------------
    def observe(self, row: RolloutRow) -> dict[str, Any]:
        """What the edges reported since the rollout started (stored on the row for the console)."""
        model = self.registry.require(row.version)
        watched = row.canary_edges if row.stage == "canary" else [e.edge_id for e in self.edges()]
        edges = {e.edge_id: e for e in self.edges() if e.edge_id in watched}
        confirmed = [
            e
            for e, r in edges.items()
            if r.models.get(_role_key(model.role)) == row.version or r.models.get(model.role) == row.version
        ]
        refused = [
            f"{e}: {r.last_update.get('reason', '')}"
            for e, r in edges.items()
            if r.last_update.get("version") == row.version and r.last_update.get("outcome") == "refused"
        ]
        with self.repo.transaction() as s:
            new_cases = list(
                s.scalars(
                    select(Case).where(
                        Case.model_version == row.version,
                        Case.edge_id.in_(watched),
                        Case.verdict.is_not(None),
                    )
                )
            )
            old_cases = list(
                s.scalars(
                    select(Case)
                    .where(Case.model_version == (row.previous_version or ""), Case.verdict.is_not(None))
                    .order_by(Case.received_ts.desc())
                    .limit(1000)
                )
            )
        new_err = _mean(
            [disagreement(c.edge_prediction, c.verdict or {}, type_modes(c.tool_type)) for c in new_cases]
        )
        old_err = _mean(
            [disagreement(c.edge_prediction, c.verdict or {}, type_modes(c.tool_type)) for c in old_cases]
        )
        obs = {
            "confirmed": sorted(confirmed),
            "refused": refused,
            "observations": len(new_cases),
            "error_new": new_err,
            "error_previous": old_err,
        }
        self._update(row.id, None, None, **obs)
        return obs

    def tick(self) -> None:
        """Advance every open rollout by the rules in the module docstring."""
        for row in self.rollouts():
            if row.stage in OPEN_STAGES:
                try:
                    self._advance(row)
                except Exception:  # one rollout's trouble must not stop the others or the scheduler
                    _logger.exception("rollout %d: tick failed", row.id)

    def _advance(self, row: RolloutRow) -> None:
        obs = self.observe(row)
        now = self.clock()
        since = now - (row.observations.get("promoted_ts") or row.started_ts)
        if obs["refused"]:
            self.rollback(row.id, f"edge refused the model: {'; '.join(obs['refused'])}")
            return
        if (
            obs["observations"] >= max(1, self.cfg.min_observations)
            and obs["error_new"] is not None
            and obs["error_previous"] is not None
            and obs["error_new"] > obs["error_previous"] + self.cfg.max_error_increase
        ):
            self.rollback(
                row.id,
                f"regression: disagreement with the full model {obs['error_new']:.3f} "
                f"vs {obs['error_previous']:.3f} before",
            )
            return
        if row.stage == "canary":
            if len(obs["confirmed"]) < len(row.canary_edges) and since > self.cfg.confirm_timeout_s:
                self.rollback(
                    row.id, f"canary did not confirm {row.version} within {self.cfg.confirm_timeout_s} s"
                )
            elif (
                len(obs["confirmed"]) == len(row.canary_edges)
                and since >= self.cfg.watch_s
                and obs["observations"] >= self.cfg.min_observations
            ):
                self.promote(row.id)
        elif since >= self.cfg.watch_s:
            self._update(row.id, stage="done", reason="no regression after promotion")


def _role_key(role: str) -> str:
    """Edges report their models by short role names ("risk", "tuning") or by the manifest role."""
    return {"edge-risk": "risk", "edge-tuning": "tuning"}.get(role, role)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
