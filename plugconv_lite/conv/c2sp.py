"""Even-sized kernels with symmetric padding (C2sp). Wu, Wang, Tang, Chen, Shi: "Convolution with even-sized
Kernels and Symmetric Padding", NeurIPS 2019, arXiv 1903.08385.

A 2x2 kernel costs 4/9 of a 3x3 one but has no centre: with one-sided ("SAME") padding every layer shifts the
feature map by half a pixel in the same direction. C2sp pads each quarter of the channels on a different pair of
sides, so the four half-pixel shifts cancel across the channels.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register
from ._init import check_weight_init, init_bias, init_weight
from ._pool import avg_pool_ceil
from .base import ConvBase, same_padding

# (top, bottom, left, right) padding of the four channel groups, for a 2x2 kernel (one pixel on two sides)
PATTERNS = ((0, 1, 0, 1), (1, 0, 1, 0), (0, 1, 1, 0), (1, 0, 0, 1))


@register("c2sp", "conv", paper="Convolution with even-sized Kernels and Symmetric Padding", year=2019,
          arxiv="1903.08385")
class C2spConv2d(ConvBase):
    """y = conv2d(sympad(pool_s(x)), w),  w of shape (O, C/g, k-1, k-1)  (2x2 for the k = 3 it replaces).

    sympad: the C/g input channels of each conv group are split into four equal quarters; quarter p is zero-padded
    by PATTERNS[p] = (top, bottom, left, right), the four ways of padding one pixel on two sides. A 2x2 "valid"
    conv then keeps H x W, and the quarters are sampled at offsets {0,1}^2, {-1,0}^2, {0,1}x{-1,0}, {-1,0}x{0,1}
    around the output pixel: their centres (+-1/2, +-1/2) sum to zero. For k = 5 (a 4x4 kernel) every pad grows
    by one pixel on each side (1 or 2 instead of 0 or 1); the same holds for any odd k.

    pool_s: stride s > 1 is not a strided even conv; as in the reference network, the input is first average-pooled
    with an s x s window and stride s (``ceil_mode``: a partial window at an odd border averages the pixels it
    covers, as TensorFlow's "SAME" pooling does), then the stride-1 C2sp conv runs. Output size ceil(H / s) =
    that of ``nn.Conv2d(C, O, k, s, padding=k // 2)`` for every H >= 1.

    Constructed with the k of the k x k conv it replaces (odd, >= 3), "same" padding and dilation 1. C/g must be a
    multiple of 4 so that the shifts cancel exactly (the reference only warns and splits unevenly).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, weight_init: str = "default"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        for k in self.kernel_size:
            if k < 3 or k % 2 == 0:
                raise ValueError(f"kernel_size={kernel_size} must be odd and >= 3: it is the k x k conv that C2sp "
                                 "replaces by a (k-1) x (k-1) kernel")
        if self.dilation != (1, 1):
            raise ValueError(f"dilation={dilation} must be 1: C2sp has no dilated form")
        if self.padding != same_padding(self.kernel_size, self.dilation):
            raise ValueError(f"padding={padding} must be None or {same_padding(self.kernel_size, self.dilation)} "
                             "('same'): C2sp keeps the geometry of the padded k x k conv it replaces")
        if (self.in_channels // self.groups) % 4:
            raise ValueError(f"in_channels={self.in_channels} / groups={self.groups} = "
                             f"{self.in_channels // self.groups} must be a multiple of 4: one quarter per padding "
                             "pattern, so that the half-pixel shifts cancel")
        self.weight_init = check_weight_init(weight_init)
        (kh, kw) = self.kernel_size
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels // self.groups, kh - 1, kw - 1))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if self.use_bias else None
        # F.pad order (left, right, top, bottom); k - 3 extra pixels split evenly for k > 3
        ph, pw = (kh - 3) // 2, (kw - 3) // 2
        self.pads = tuple((pw + l, pw + r, ph + t, ph + b) for t, b, l, r in PATTERNS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weight(self.weight, self.weight_init)
        if self.bias is not None:
            init_bias(self.bias, self.weight)

    def symmetric_pad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H + k - 2, W + k - 2), each channel quarter of each conv group padded its own way."""
        q = x.unflatten(1, (self.groups, 4, -1))  # (B, g, quarter, C/(4g), H, W)
        return torch.stack([F.pad(q[:, :, p], pad) for p, pad in enumerate(self.pads)], dim=2).flatten(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != (1, 1):
            x = avg_pool_ceil(x, self.stride)  # = F.avg_pool2d(x, s, s, ceil_mode=True); see _pool.py for why
        return F.conv2d(self.symmetric_pad(x), self.weight, self.bias, 1, 0, 1, self.groups)

    def load_conv_weights(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "C2spConv2d":
        raise ValueError("C2spConv2d cannot take a plain conv's weights: its (k-1) x (k-1) kernels cannot hold a "
                         "k x k kernel, and with stride > 1 it averages before it convolves")

    def equivalent_kernel(self) -> torch.Tensor:
        """The k x k kernel K with conv2d(x, K, padding=k // 2, groups=g) == the stride-1 C2sp conv: each input
        channel's (k-1) x (k-1) kernel placed in the corner of K that its padding pattern selects. Costs 9/4 of the
        FLOPs (k = 3), so it is for analysis and verification, not a fold."""
        w = self.weight.unflatten(1, (4, -1))  # (O, quarter, C/(4g), k-1, k-1)
        # a quarter padded on top (t = 1) reads one row higher: its kernel sits in K's upper rows
        parts = [F.pad(w[:, p], (1 - l, l, 1 - t, t)) for p, (t, b, l, r) in enumerate(PATTERNS)]
        return torch.stack(parts, dim=1).flatten(1, 2)

    def hparams_repr(self) -> str:
        s = f"even_kernel={tuple(self.weight.shape[-2:])}"
        return s if self.weight_init == "default" else f"{s}, weight_init={self.weight_init!r}"
