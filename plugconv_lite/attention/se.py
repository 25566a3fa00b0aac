"""Squeeze-and-Excitation. Hu, Shen, Albanie, Sun, Wu: "Squeeze-and-Excitation Networks", CVPR 2018 / TPAMI 2020,
arXiv 1709.01507.

Re-weights channels by a gate computed from their global averages: the first "plug-in point booster".
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .._validate import bottleneck_width, check_float, check_int, check_layer
from ..registry import register


@register("se", "attention", paper="Squeeze-and-Excitation Networks", year=2018, arxiv="1709.01507")
class SEModule(nn.Module):
    """y = x * s,  s = sigmoid(W2 relu(W1 z + b1) + b2),  z = GAP(x).

    Shapes: x (B, C, H, W); z (B, C); W1 (C_r, C); W2 (C, C_r); s (B, C, 1, 1).
    ``C_r = make_divisible(C / reduction, divisor)``, or ``hidden`` if given. The paper uses C_r = C / reduction
    exactly (``divisor=1``); the default ``divisor=8`` keeps CIFAR's 16- and 64-channel layers from getting a 1- or
    4-unit bottleneck.
    """

    def __init__(self, channels: int, reduction: float = 16, divisor: int = 8, hidden: int | None = None,
                 act_layer=nn.ReLU, gate_layer=nn.Sigmoid):
        super().__init__()
        self.channels = check_int("channels", channels, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=1)
        self.divisor = check_int("divisor", divisor, min_value=1)
        self.hidden = bottleneck_width(channels, self.reduction, self.divisor, hidden)
        check_layer("act_layer", act_layer, "nn.ReLU")
        check_layer("gate_layer", gate_layer, "nn.Sigmoid")
        self.fc1 = nn.Linear(channels, self.hidden)  # W1, b1
        self.act = act_layer()
        self.fc2 = nn.Linear(self.hidden, channels)  # W2, b2
        self.gate = gate_layer()

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        """s = sigmoid(W2 relu(W1 z + b1) + b2) from a channel descriptor z (B, C); shape (B, C)."""
        return self.gate(self.fc2(self.act(self.fc1(z))))

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """The channel gate s, shape (B, C, 1, 1)."""
        return self.excite(x.mean(dim=(2, 3)))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excitation(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, hidden={self.hidden}"
