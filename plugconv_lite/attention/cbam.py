"""Convolutional Block Attention Module. Woo, Park, Lee, Kweon: "CBAM: Convolutional Block Attention Module",
ECCV 2018, arXiv 1807.06521 (official code: github.com/Jongchan/attention-module).

SE's channel gate, fed by the average AND the maximum of each channel, followed by a spatial gate: a 7 x 7 conv over
the per-pixel mean and maximum across channels. The first says *what* to emphasise, the second *where*.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import (bottleneck_width, check_choice, check_float, check_int, check_layer,
                         check_norm_layer_2d, check_odd)
from ..registry import register

ORDERS = ("channel-spatial", "spatial-channel", "parallel")


@register("cbam", "attention", paper="CBAM: Convolutional Block Attention Module", year=2018, arxiv="1807.06521")
class CBAM(nn.Module):
    """y = M_s(x') * x',  x' = M_c(x) * x  (``order="channel-spatial"``, the paper's default):

        M_c(x) = sigmoid(MLP(AvgPool(x)) + MLP(MaxPool(x)))          (B, C, 1, 1)
        MLP(z) = W_1 relu(W_0 z + b_0) + b_1                        one MLP shared by both descriptors
        M_s(x) = sigmoid(BN(f([Avg_c(x); Max_c(x)])))               (B, 1, H, W)

    Shapes: W_0 (C_r, C), W_1 (C, C_r), f a k x k conv from 2 maps to 1 (k = ``spatial_kernel``, 7 in the paper);
    ``Avg_c`` / ``Max_c`` reduce over channels, ``AvgPool`` / ``MaxPool`` over all H x W positions. The MLP's
    output bias b_1 enters twice (once per descriptor), as in both the paper's equation and the official code.

    ``order="spatial-channel"`` applies M_s first; ``order="parallel"`` computes both gates from x and applies
    both: y = x * M_c(x) * M_s(x). ``norm_layer`` is the official code's BatchNorm after f (momentum 0.01, i.e.
    running statistics that move 1% per step); ``norm_layer=None`` is the paper's equation, sigmoid(f(...)) with
    a bias in f. ``C_r = make_divisible(C / reduction, divisor)`` (``_validate.bottleneck_width``): the official
    ``C // 16`` is 0 under 16 channels, the library's default gives at least min(C, 8) units.
    """

    def __init__(self, channels: int, reduction: float = 16, divisor: int = 8, hidden: Optional[int] = None,
                 spatial_kernel: int = 7, order: str = "channel-spatial",
                 norm_layer: Optional[Callable[[int], nn.Module]] = partial(nn.BatchNorm2d, momentum=0.01),
                 act_layer: Callable[[], nn.Module] = nn.ReLU, gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = check_int("channels", channels, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=1)
        self.divisor = check_int("divisor", divisor, min_value=1)
        self.hidden = bottleneck_width(channels, self.reduction, self.divisor, hidden)
        self.spatial_kernel = check_odd("spatial_kernel", spatial_kernel)
        check_choice("order", order, ORDERS)
        self.order = order
        check_layer("act_layer", act_layer, "nn.ReLU")
        check_layer("gate_layer", gate_layer, "nn.Sigmoid")
        # channel gate: the shared MLP
        self.fc0 = nn.Linear(channels, self.hidden, **factory)  # W_0, b_0
        self.act = act_layer()
        self.fc1 = nn.Linear(self.hidden, channels, **factory)  # W_1, b_1
        # spatial gate: f, then the official code's BN (no bias in f then: the BN's shift replaces it)
        k = self.spatial_kernel
        self.conv = nn.Conv2d(2, 1, k, padding=k // 2, bias=norm_layer is None, **factory)
        self.norm = nn.Identity() if norm_layer is None else check_norm_layer_2d("norm_layer", norm_layer, 1).to(
            **factory)
        self.gate = gate_layer()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the official ResNet initialises its CBAMs: MLP weights PyTorch's default and biases 0; f
        Kaiming-normal (fan-out); the spatial BN's scale and shift 0, so M_s starts as the constant sigmoid(0) = 1/2
        and becomes position-dependent only as training moves the BN's scale."""
        self.fc0.reset_parameters(), self.fc1.reset_parameters()
        nn.init.zeros_(self.fc0.bias), nn.init.zeros_(self.fc1.bias)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        if isinstance(self.norm, nn.modules.batchnorm._BatchNorm) and self.norm.affine:
            self.norm.reset_running_stats()
            nn.init.zeros_(self.norm.weight), nn.init.zeros_(self.norm.bias)

    def channel_descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """[AvgPool(x); MaxPool(x)], shape (2, B, C)."""
        # max pooling with indices (not amax): its gradient goes to one pixel, as in the official code, and is
        # the cheaper backward
        return torch.stack((x.mean(dim=(2, 3)), F.adaptive_max_pool2d(x, 1).flatten(1)))

    def channel_gate(self, z: torch.Tensor) -> torch.Tensor:
        """sigmoid(MLP(z[0]) + MLP(z[1])) from the two descriptors z (2, B, C); shape (B, C, 1, 1)."""
        logits = self.fc1(self.act(self.fc0(z))).sum(dim=0)           # one MLP pass for both descriptors
        return self.gate(logits)[:, :, None, None]

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_c(x), shape (B, C, 1, 1)."""
        return self.channel_gate(self.channel_descriptors(x))

    def spatial_descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """[Avg_c(x); Max_c(x)], shape (B, 2, H, W): each pixel's mean and maximum over the channels."""
        s = torch.cat((x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True).values), dim=1)
        # channels-last: oneDNN's 2 -> 1 channel k x k convolution is about 3x faster on it on a CPU
        return s.contiguous(memory_format=torch.channels_last)

    def spatial_gate(self, s: torch.Tensor) -> torch.Tensor:
        """sigmoid(BN(f(s))) from the spatial descriptors s (B, 2, H, W); shape (B, 1, H, W)."""
        return self.gate(self.norm(self.conv(s)))

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_s(x), shape (B, 1, H, W)."""
        return self.spatial_gate(self.spatial_descriptors(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "parallel":
            return x * self.channel_attention(x) * self.spatial_attention(x)
        if self.order == "channel-spatial":
            x = x * self.channel_attention(x)
            return x * self.spatial_attention(x)
        x = x * self.spatial_attention(x)
        return x * self.channel_attention(x)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, reduction={self.reduction:g}, hidden={self.hidden}, "
                f"spatial_kernel={self.spatial_kernel}, order={self.order!r}")
