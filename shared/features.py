"""Window features: pure functions shared by the edge, the cloud and the trainer.

A tool of any type becomes, per time step, a vector of ``F`` features (names in
:func:`feature_names`)::

    z_00 … z_{S-1}     sensor values z-scored with the tool type's scaler, padded to MAX_SENSORS (0)
    miss_00 … miss_*   1 where the reading was Bad/missing (the z value is then 0, never invented)
    type_<name>        one-hot of the tool type
    processing         1 while the tool is processing a lot (E10 productive)

No I/O, no clock: the same window gives the same features on the edge and in the cloud.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.equipment import MAX_SENSORS, TOOL_TYPES, tool_type


def feature_names(tool_types: Sequence[str] = tuple(TOOL_TYPES)) -> list[str]:
    names = [f"z_{i:02d}" for i in range(MAX_SENSORS)]
    names += [f"miss_{i:02d}" for i in range(MAX_SENSORS)]
    names += [f"type_{t}" for t in tool_types]
    names.append("processing")
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

    def __post_init__(self) -> None:
        if not self.names:
            object.__setattr__(self, "names", tuple(feature_names(self.tool_types)))

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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            window=int(data["window"]),
            step_s=float(data["step_s"]),
            scaler=Scaler.from_dict(data["scaler"]),
            tool_types=tuple(data["tool_types"]),
            names=tuple(data["feature_names"]),
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
    values: np.ndarray, processing: np.ndarray, tool_type_name: str, spec: FeatureSpec
) -> np.ndarray:
    """(T, S) raw values with NaN for Bad, (T,) processing flags → (T, F) float32 features."""
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
    out[:, -1] = processing.astype(np.float32)
    return out
