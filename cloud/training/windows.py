"""Window sets: what the trainer consumes, whatever the data source (C-MAPSS or simulator).

A :class:`WindowSet` holds ``N`` windows and their labels. Unknown labels are NaN and are left out
of the loss (a censored run has no RUL target; a window whose horizon reaches past the end of the
run has no failure label). ``groups`` names the unit or tool each window comes from, so splits are
made by unit, never by window (neighbouring windows overlap and would leak).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cloud.training.errors import TrainingError


@dataclass
class WindowSet:
    x: np.ndarray  # (N, T, F) float32 features
    rul: np.ndarray  # (N,) float32 RUL target, already capped at the model's rul_cap; NaN unknown
    labels: np.ndarray  # (N, M) float32 1 = this mode fails within the horizon, 0 = not; NaN unknown
    groups: np.ndarray  # (N,) unit / tool index
    teacher_rul: np.ndarray | None = None  # (N,) soft targets for distillation
    teacher_probs: np.ndarray | None = None  # (N, M)
    weight: np.ndarray | None = None  # (N,) weight of each window's RUL error in the loss (None: 1)

    def __post_init__(self) -> None:
        n = len(self.x)
        if self.x.ndim != 3:
            raise TrainingError(f"windows must be (N, T, F), got {self.x.shape}")
        if self.labels.ndim != 2:
            raise TrainingError(f"labels must be (N, M), got {self.labels.shape}")
        for name in ("rul", "labels", "groups"):
            if len(getattr(self, name)) != n:
                raise TrainingError(f"{name} has {len(getattr(self, name))} rows, x has {n}")
        if self.weight is not None and (len(self.weight) != n or not (self.weight >= 0).all()):
            raise TrainingError(f"weight: {len(self.weight)} rows for {n} windows, or a negative/NaN weight")
        if not np.isfinite(self.x).all():
            raise TrainingError("windows contain NaN or inf (features must mark missing data, not hold it)")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def window(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[2])

    @property
    def n_modes(self) -> int:
        return int(self.labels.shape[1])

    def take(self, idx: np.ndarray) -> WindowSet:
        return WindowSet(
            x=self.x[idx],
            rul=self.rul[idx],
            labels=self.labels[idx],
            groups=self.groups[idx],
            teacher_rul=None if self.teacher_rul is None else self.teacher_rul[idx],
            teacher_probs=None if self.teacher_probs is None else self.teacher_probs[idx],
            weight=None if self.weight is None else self.weight[idx],
        )

    def with_teacher(self, rul: np.ndarray, probs: np.ndarray) -> WindowSet:
        return replace(self, teacher_rul=rul.astype(np.float32), teacher_probs=probs.astype(np.float32))

    @staticmethod
    def concat(sets: list[WindowSet]) -> WindowSet:
        if not sets:
            raise TrainingError("nothing to concatenate")
        teach = all(s.teacher_rul is not None for s in sets)
        return WindowSet(
            x=np.concatenate([s.x for s in sets]),
            rul=np.concatenate([s.rul for s in sets]),
            labels=np.concatenate([s.labels for s in sets]),
            groups=np.concatenate([s.groups for s in sets]),
            teacher_rul=np.concatenate([s.teacher_rul for s in sets]) if teach else None,  # type: ignore[misc]
            teacher_probs=np.concatenate([s.teacher_probs for s in sets]) if teach else None,  # type: ignore[misc]
            weight=(
                np.concatenate([s.weight if s.weight is not None else np.ones(len(s)) for s in sets])
                if any(s.weight is not None for s in sets)
                else None
            ),
        )


def held_out_groups(groups: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """The groups :func:`split_by_group` holds out of a set whose groups are ``groups`` (at least one,
    never all), so a benchmark can find a run's validation tools without rebuilding its windows."""
    groups = np.unique(groups)
    if len(groups) < 2:
        raise TrainingError(f"need at least 2 units/tools to split by unit, got {len(groups)}")
    rng = np.random.default_rng(seed)
    n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
    return rng.choice(groups, size=n_val, replace=False)


def split_by_group(ws: WindowSet, val_fraction: float, seed: int) -> tuple[WindowSet, WindowSet]:
    """Hold out whole units/tools (at least one) for validation; never splits a group."""
    is_val = np.isin(ws.groups, held_out_groups(ws.groups, val_fraction, seed))
    return ws.take(np.flatnonzero(~is_val)), ws.take(np.flatnonzero(is_val))
