"""SEM: a switch that weighs three excitation operators per input. Zhong, Wen, Qin: "Switchable Self-attention
Module", arXiv 2209.05680 (2022); the official repository calls it "SEM: Switchable Excitation Module for
Self-attention Mechanism" (github.com/Qrange-group/SEM, ``models/sem.py``).

From the pooled descriptor of the feature map, a small linear layer computes one switch weight per operator and per
sample; each operator's logits are scaled by its weight before their sigmoid, and the three gates multiply. The
operators are SE's bottleneck MLP, ECA's 1-D convolution across channels, and a per-channel affine map ("IE").
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .._validate import bottleneck_width, check_float, check_int, check_odd
from ..registry import register


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive kernel size psi(C): t = int(|(log2 C + b) / gamma|), made odd by adding 1 (3 for 16-64
    channels, 5 for 128-512), as the official SEM code computes it."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@register("sem", "attention", paper="Switchable Self-attention Module", year=2022, arxiv="2209.05680",
          url="https://github.com/Qrange-group/SEM")
class SEMModule(nn.Module):
    """y = u * A,  A = sigmoid(w_1 e_1) * sigmoid(w_2 e_2) * sigmoid(w_3 e_3).

    Shapes: u (B, C, H, W); z = GAP(u) (B, C); switch weights w = sigmoid(W_s z + b_s) (B, 3), one per operator and
    per sample; operator logits (B, C):
        e_1 = W_2 relu(W_1 z + b_1) + b_2          (SE: C -> C_r -> C)
        e_2 = conv1d_k(z)                          (ECA: k weights across neighbouring channels, no bias)
        e_3 = gamma * z + beta                     (IE: per channel, gamma = 0 and beta = -1 at initialisation)
    A (B, C, 1, 1) broadcast over H x W.

    A switch weight only scales its operator's logits: w_i = 0 gives sigmoid(0) = 1/2, a constant halving, not
    "operator off". At initialisation A is about 1/2 * 1/2 * sigmoid(-1/2) ~ 0.095 (see the chapter).

    Width rules: C_r = min(C, make_divisible(C / reduction, divisor)) as SE (the official code has round(C / 16)
    with Python's round-half-even: 1 unit at 16 channels, 0 at 8; ``hidden=round(C / 16)`` reproduces it);
    k = ``eca_kernel_size(C)`` unless ``kernel_size`` is given (odd).
    """

    def __init__(self, channels: int, reduction: float = 16, divisor: int = 8, hidden: Optional[int] = None,
                 kernel_size: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.channels = C = check_int("channels", channels, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=1)
        self.divisor = check_int("divisor", divisor, min_value=1)
        self.hidden = bottleneck_width(C, self.reduction, self.divisor, hidden)
        self.kernel_size = k = check_odd("kernel_size", eca_kernel_size(C) if kernel_size is None else kernel_size)
        self.switch = nn.Linear(C, 3, **factory)                       # W_s, b_s
        self.fc1 = nn.Linear(C, self.hidden, **factory)                # W_1, b_1
        self.fc2 = nn.Linear(self.hidden, C, **factory)                # W_2, b_2
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False, **factory)
        self.ie_gamma = nn.Parameter(torch.empty(C, **factory))
        self.ie_beta = nn.Parameter(torch.empty(C, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's defaults for the linear layers and the 1-D conv (as the official code); IE at (0, -1)."""
        for m in (self.switch, self.fc1, self.fc2, self.conv):
            m.reset_parameters()
        nn.init.zeros_(self.ie_gamma)
        nn.init.constant_(self.ie_beta, -1.0)

    def switch_weights(self, z: torch.Tensor) -> torch.Tensor:
        """w, shape (B, 3): the weights of SE, ECA and IE for each sample."""
        return torch.sigmoid(self.switch(z))

    def operator_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(e_1, e_2, e_3) stacked, shape (3, B, C)."""
        e1 = self.fc2(torch.relu(self.fc1(z)))
        e2 = self.conv(z[:, None, :])[:, 0]   # channels as a 1-D sequence
        e3 = z * self.ie_gamma + self.ie_beta
        return torch.stack((e1, e2, e3))

    def excitation(self, u: torch.Tensor) -> torch.Tensor:
        """A, shape (B, C, 1, 1)."""
        z = u.mean(dim=(2, 3))
        w = self.switch_weights(z)                                   # (B, 3)
        gates = torch.sigmoid(w.T[:, :, None] * self.operator_logits(z))   # (3, B, C)
        return gates.prod(dim=0)[:, :, None, None]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.excitation(u)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, kernel_size={self.kernel_size}"
