"""The labelled run-to-failure data set that ``fabpm sim export`` writes and ``fabpm train`` reads.

Layout of a data set folder::

    dataset.json            DatasetInfo: format, seed, days, sample period, horizon, tools
    tools/<tool_id>.npz     ToolSeries arrays, one file per tool
    ground_truth.jsonl      every onset, failure, maintenance and setpoint change (simulated time)

Time is simulated seconds since the run's start (``t_s``). Bad sensor readings are NaN in
``values`` (the edge sees them as Bad status codes). Labels come from the ground truth, not from
the sensors: ``rul_h`` is the time to the next failure of the tool (NaN where the run ends before
any failure: right-censored, with ``censor_h`` the time left in the run), ``fail_mode`` the index
into ``shared.equipment.ALL_MODES`` of that failure (-1 for none), ``sudden`` whether it had no
precursors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import DatasetError

FORMAT = "fabpm-dataset/1"
ARRAYS = ("t_s", "values", "setpoints", "state", "recipe", "rul_h", "censor_h", "fail_mode", "sudden")


@dataclass(frozen=True)
class ToolInfo:
    tool_id: str
    tool_type: str
    area: str
    sensors: list[str]
    setpoints: list[str]
    file: str


@dataclass(frozen=True)
class DatasetInfo:
    seed: int
    days: float
    sample_period_s: float
    horizon_h: float
    tools: list[ToolInfo]
    scenario: str = "default"
    modes: list[str] = field(default_factory=list)
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolSeries:
    """One tool's run. Shapes: T steps, S sensors, P setpoints."""

    t_s: np.ndarray  # (T,) float64
    values: np.ndarray  # (T, S) float32, NaN = Bad/missing
    setpoints: np.ndarray  # (T, P) float32
    state: np.ndarray  # (T,) int8, shared.equipment.E10_CODES
    recipe: np.ndarray  # (T,) int8, index into the tool type's recipes (-1 idle)
    rul_h: np.ndarray  # (T,) float32, NaN when censored
    censor_h: np.ndarray  # (T,) float32, hours to the end of the run
    fail_mode: np.ndarray  # (T,) int16
    sudden: np.ndarray  # (T,) bool

    def __post_init__(self) -> None:
        n = len(self.t_s)
        for name in ARRAYS:
            arr = getattr(self, name)
            if len(arr) != n:
                raise DatasetError(f"{name} has {len(arr)} steps, t_s has {n}")


def write_info(folder: Path, info: DatasetInfo) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(asdict(info), indent=1))


def write_series(folder: Path, tool: ToolInfo, series: ToolSeries) -> None:
    path = folder / tool.file
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{name: getattr(series, name) for name in ARRAYS})


def read_info(folder: Path) -> DatasetInfo:
    """Read ``dataset.json``; DatasetError naming what is wrong."""
    path = folder / "dataset.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DatasetError(f"{folder}: no dataset.json (write one with `fabpm sim export`)") from exc
    except ValueError as exc:
        raise DatasetError(f"{path}: not JSON: {exc}") from exc
    if raw.get("format") != FORMAT:
        raise DatasetError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
    try:
        tools = [ToolInfo(**t) for t in raw.pop("tools")]
        return DatasetInfo(tools=tools, **raw)
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: malformed: {exc}") from exc


def read_series(folder: Path, tool: ToolInfo) -> ToolSeries:
    path = folder / tool.file
    try:
        with np.load(path) as z:
            return ToolSeries(**{name: z[name] for name in ARRAYS})
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read tool series: {exc}") from exc
