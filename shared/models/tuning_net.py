"""The tuning surrogate: lot yield (%) and energy (kWh) from setpoints and tool context.

A small MLP. Input and output normalisation are part of the model (buffers), so its ONNX graph
takes the raw row ``x`` (B, D) = setpoints then context, in the manifest's order, and returns
``yield`` (B,) and ``energy`` (B,) in their units: the edge needs no scaler of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

OUTPUT_NAMES = ("yield", "energy")


@dataclass
class TuningConfig:
    n_inputs: int  # D: setpoints + context
    hidden: int = 64  # MLP width
    layers: int = 2  # hidden layers
    x_mean: list[float] = field(default_factory=list)  # (D,) input normalisation (training data)
    x_std: list[float] = field(default_factory=list)
    y_mean: list[float] = field(default_factory=lambda: [0.0, 0.0])  # (2,) yield, energy
    y_std: list[float] = field(default_factory=lambda: [1.0, 1.0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuningConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TuningConfig keys: {sorted(unknown)}")
        return cls(**data)


class TuningNet(nn.Module):
    """``forward(x (B, D) raw) -> (yield (B,), energy (B,))``."""

    def __init__(self, cfg: TuningConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.n_inputs
        mean = cfg.x_mean or [0.0] * d
        std = cfg.x_std or [1.0] * d
        if len(mean) != d or len(std) != d:
            raise ValueError(f"x_mean/x_std must have {d} entries")
        self.register_buffer("x_mean", torch.tensor(mean, dtype=torch.float32))  # (D,)
        self.register_buffer("x_std", torch.tensor(std, dtype=torch.float32).clamp_min(1e-6))
        self.register_buffer("y_mean", torch.tensor(cfg.y_mean, dtype=torch.float32))  # (2,)
        self.register_buffer("y_std", torch.tensor(cfg.y_std, dtype=torch.float32))
        layers: list[nn.Module] = []
        width = d
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.SiLU()]
            width = cfg.hidden
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)

    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor

    def normalised(self, x: Tensor) -> Tensor:  # (B, D) raw → (B, 2) standardised outputs
        return self.net((x - self.x_mean) / self.x_std)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # x: (B, D)
        y = self.normalised(x) * self.y_std + self.y_mean  # (B, 2)
        return y[:, 0], y[:, 1]
