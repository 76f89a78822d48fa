"""A network with its fitted temperature: logits divided by it, so that every softmax downstream
(predict, ensembles, serving, exported models) gives the calibrated probabilities."""

from __future__ import annotations

import torch
from torch import nn


class TemperatureScaled(nn.Module):
    """``net(x) / temperature``: the same ranking of classes, calibrated probabilities."""

    def __init__(self, net: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature {temperature} must be > 0")
        self.net = net
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits if self.temperature == 1.0 else logits / self.temperature
