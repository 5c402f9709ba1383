"""Window features: pure functions shared by the edge, the cloud and the trainer.

A tool of any type becomes, per time step, a vector of ``F`` features (names in
:func:`feature_names`)::

    z_00 … z_{S-1}     sensor values z-scored with the tool type's scaler, padded to MAX_SENSORS (0)
    miss_00 … miss_*   1 where the reading was Bad/missing (the z value is then 0, never invented)
    type_<name>        one-hot of the tool type
    processing         1 while the tool runs wafers (E10 productive, or engineering: qualification)

With ``FeatureSpec.reference_rows > 0`` (``shared.reference``: the tool's own readings just after
it last came back up) three groups follow::

    dz_00 … dz_*       (reading − the tool's reference for the row's state) / the type's std;
                       0 where either is unknown
    ref_known          1 where the row's reference is known
    since_up           days since the tool last came back up / 30, clipped to 3; 0 if unknown

No I/O, no clock: the same window gives the same features on the edge and in the cloud.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.equipment import MAX_SENSORS, TOOL_TYPES, tool_type

SINCE_UP_SCALE_H = 30 * 24.0  # since_up is in units of 30 days
SINCE_UP_MAX = 3.0


def feature_names(tool_types: Sequence[str] = tuple(TOOL_TYPES), reference: bool = False) -> list[str]:
    names = [f"z_{i:02d}" for i in range(MAX_SENSORS)]
    names += [f"miss_{i:02d}" for i in range(MAX_SENSORS)]
    names += [f"type_{t}" for t in tool_types]
    names.append("processing")
    if reference:
        names += [f"dz_{i:02d}" for i in range(MAX_SENSORS)]
        names += ["ref_known", "since_up"]
    return names


@dataclass(frozen=True)
class Scaler:
    """Per tool type, per sensor mean and standard deviation (fitted on training data only)."""

    mean: Mapping[str, tuple[float, ...]]
    std: Mapping[str, tuple[float, ...]]

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        return {t: {"mean": list(self.mean[t]), "std": list(self.std[t])} for t in self.mean}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Sequence[float]]]) -> Scaler:
        return cls(
            mean={t: tuple(float(x) for x in d["mean"]) for t, d in data.items()},
            std={t: tuple(float(x) for x in d["std"]) for t, d in data.items()},
        )


@dataclass(frozen=True)
class FeatureSpec:
    """How raw windows become model input. Travels in checkpoints and in the model manifest."""

    window: int  # steps per window
    step_s: float  # simulated seconds per step
    scaler: Scaler
    tool_types: tuple[str, ...] = tuple(TOOL_TYPES)
    names: tuple[str, ...] = field(default_factory=tuple)
    reference_rows: int = 0  # > 0: the dz_* features against each tool's own reference

    def __post_init__(self) -> None:
        if self.reference_rows < 0:
            raise ValueError(f"reference_rows must be >= 0, got {self.reference_rows}")
        if not self.names:
            names = feature_names(self.tool_types, self.reference_rows > 0)
            object.__setattr__(self, "names", tuple(names))

    @property
    def n_features(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, object]:
        return {
            "window": self.window,
            "step_s": self.step_s,
            "scaler": self.scaler.to_dict(),
            "tool_types": list(self.tool_types),
            "feature_names": list(self.names),
            "reference_rows": self.reference_rows,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            window=int(data["window"]),
            step_s=float(data["step_s"]),
            scaler=Scaler.from_dict(data["scaler"]),
            tool_types=tuple(data["tool_types"]),
            names=tuple(data["feature_names"]),
            reference_rows=int(data.get("reference_rows", 0)),  # absent before the reference existed
        )


def fit_scaler(samples: Mapping[str, np.ndarray]) -> Scaler:
    """Fit per-type scalers from ``{tool_type: (N, S) raw values}`` (NaN ignored)."""
    mean: dict[str, tuple[float, ...]] = {}
    std: dict[str, tuple[float, ...]] = {}
    for name, values in samples.items():
        m = np.nanmean(values, axis=0)
        s = np.nanstd(values, axis=0)
        m = np.where(np.isfinite(m), m, 0.0)
        s = np.where(np.isfinite(s) & (s > 1e-9), s, 1.0)
        mean[name] = tuple(float(x) for x in m)
        std[name] = tuple(float(x) for x in s)
    return Scaler(mean=mean, std=std)


def build_features(
    values: np.ndarray,
    processing: np.ndarray,
    tool_type_name: str,
    spec: FeatureSpec,
    ref: np.ndarray | None = None,
    since_up_h: np.ndarray | None = None,
) -> np.ndarray:
    """(T, S) raw values with NaN for Bad, (T,) processing flags → (T, F) float32 features.

    A spec with ``reference_rows`` also needs each row's reference ``ref`` (T, S), raw units,
    NaN where unknown, and ``since_up_h`` (T,), NaN where unknown (``shared.reference``).
    """
    ttype = tool_type(tool_type_name)
    n_sensors = len(ttype.sensors)
    if values.ndim != 2 or values.shape[1] != n_sensors:
        raise ValueError(f"{tool_type_name} has {n_sensors} sensors, window has shape {values.shape}")
    steps = values.shape[0]
    out = np.zeros((steps, spec.n_features), dtype=np.float32)
    mean = np.asarray(spec.scaler.mean[tool_type_name], dtype=np.float32)
    std = np.asarray(spec.scaler.std[tool_type_name], dtype=np.float32)
    missing = ~np.isfinite(values)
    z = (np.where(missing, mean, values) - mean) / std
    out[:, :n_sensors] = np.clip(z, -20.0, 20.0)
    out[:, MAX_SENSORS : MAX_SENSORS + n_sensors] = missing
    out[:, 2 * MAX_SENSORS + spec.tool_types.index(tool_type_name)] = 1.0
    proc_col = 2 * MAX_SENSORS + len(spec.tool_types)
    out[:, proc_col] = processing.astype(np.float32)
    if spec.reference_rows > 0:
        if ref is None or since_up_h is None:
            raise ValueError("this spec compares each tool with its own reference: pass ref and since_up_h")
        if ref.shape != values.shape or since_up_h.shape != (steps,):
            raise ValueError(f"reference {ref.shape} / {since_up_h.shape} does not fit window {values.shape}")
        known = np.isfinite(ref)
        diff = np.where(missing, 0.0, values) - np.where(known, ref, 0.0)
        dz = np.where(known & ~missing, diff / std, 0.0)
        base = proc_col + 1
        out[:, base : base + n_sensors] = np.clip(dz, -20.0, 20.0)
        out[:, base + MAX_SENSORS] = known.any(axis=1)
        since = np.where(np.isfinite(since_up_h), since_up_h / SINCE_UP_SCALE_H, 0.0)
        out[:, base + MAX_SENSORS + 1] = np.clip(since, 0.0, SINCE_UP_MAX)
    return out
