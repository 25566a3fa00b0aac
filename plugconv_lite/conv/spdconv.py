"""SPD-Conv. Sunkara, Luo: "No More Strided Convolutions or Pooling: A New CNN Building Block for Low-Resolution
Images and Small Objects", ECML PKDD 2022, arXiv 2208.03641.

A strided conv keeps one input position in s x s and throws the rest away before it mixes channels. SPD-Conv
downsamples losslessly instead: space-to-depth moves each s x s block of pixels into s^2 times as many channels,
and a NON-strided conv then mixes them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_odd, pair
from ..registry import register
from .base import ConvBase


def space_to_depth(x: torch.Tensor, scale=2) -> torch.Tensor:
    """(B, C, H, W) -> (B, s_h s_w C, ceil(H / s_h), ceil(W / s_w)), losslessly.

    Odd sizes are zero-padded at the bottom / right to a multiple of the scale first (so block (u, v) always holds
    the pixels (s_h u + i, s_w v + j), the ones a stride-s conv centred on (s_h u, s_w v) reads). Channel order, as
    the official code's ``cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)``:
    output channel ``(j s_h + i) C + c`` holds channel c at row offset i and column offset j (column offset
    outermost, then row offset, then the input channel). ``F.pixel_unshuffle`` uses another order
    (``c s_h s_w + i s_w + j``).
    """
    sh, sw = pair("scale", scale)
    B, C, H, W = x.shape
    x = F.pad(x, (0, (-W) % sw, 0, (-H) % sh))
    Hs, Ws = x.shape[2] // sh, x.shape[3] // sw
    x = x.view(B, C, Hs, sh, Ws, sw).permute(0, 5, 3, 1, 2, 4)  # (B, j, i, C, Hs, Ws)
    return x.reshape(B, sw * sh * C, Hs, Ws)


def depth_to_space(y: torch.Tensor, scale=2, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """The inverse of ``space_to_depth``: (B, s_h s_w C, H', W') -> (B, C, s_h H', s_w W'), cropped to ``size``
    (the original H, W) if given, which undoes the padding of odd sizes."""
    sh, sw = pair("scale", scale)
    B, D, Hs, Ws = y.shape
    if D % (sh * sw):
        raise ValueError(f"channels={D} must be a multiple of scale_h * scale_w = {sh * sw}")
    C = D // (sh * sw)
    x = y.view(B, sw, sh, C, Hs, Ws).permute(0, 3, 4, 2, 5, 1).reshape(B, C, Hs * sh, Ws * sw)
    return x if size is None else x[:, :, :size[0], :size[1]]


@register("spdconv", "conv", paper="No More Strided Convolutions or Pooling: A New CNN Building Block for "
          "Low-Resolution Images and Small Objects", year=2022, arxiv="2208.03641")
class SPDConv2d(ConvBase):
    """y = W * SPD_s(x),  a k x k conv with stride 1 and padding k // 2 on the space-to-depth of x.

    Shapes: x (B, C, H, W) -> SPD_s(x) (B, s^2 C, ceil(H/s), ceil(W/s)) -> y (B, O, ceil(H/s), ceil(W/s)), the shape
    of ``nn.Conv2d(C, O, k, stride=s, padding=k // 2)``'s output for every H x W >= 1. W: (O, s^2 C, k, k), s^2 times
    the parameters and FLOPs of that strided conv.

    The contract's ``stride`` is the SPD scale s. With stride 1, space-to-depth is the identity and SPD-Conv IS the
    plain conv: select the strided convs (``conv_where="strided"``) to get the paper's module. ``padding`` must be
    the same padding k // 2 (the default), which the conv after SPD uses; ``groups`` and ``dilation`` must be 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        for axis, k in zip("hw", self.kernel_size):
            check_odd(f"kernel_size ({axis})", k)
        if self.dilation != (1, 1):
            raise ValueError(f"dilation={self.dilation} must be 1 for SPD-Conv")
        same = tuple(k // 2 for k in self.kernel_size)
        if self.padding != same:
            raise ValueError(f"padding={self.padding} must be kernel_size // 2 = {same} (or None): SPD-Conv keeps "
                             "the output shape of a same-padded strided conv")
        if self.groups != 1:
            raise ValueError(f"groups={self.groups} must be 1 for SPD-Conv (space-to-depth interleaves the channels "
                             "of all groups)")
        self.scale = self.stride
        sh, sw = self.scale
        self.conv = nn.Conv2d(sh * sw * self.in_channels, self.out_channels, self.kernel_size, 1, same,
                              bias=self.use_bias)
        self.reset_parameters()

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == (1, 1):
            return self.conv(x)
        return self.conv(space_to_depth(x, self.scale))

    def as_strided_conv(self) -> nn.Conv2d:
        """The same map as one strided conv: kernel s k, stride s, padding s (k // 2), with
        W'[o, c, s_h a + i, s_w b + j] = W[o, (j s_h + i) C + c, a, b]. Exact when H and W are multiples of s
        (otherwise SPD pads at the bottom/right only, which a symmetric ``nn.Conv2d`` padding cannot express).
        SPD-Conv is therefore a strided conv with an s x larger kernel: 2 x 2 / stride 2 ("patchify") for k = 1,
        6 x 6 / stride 2 for k = 3."""
        (sh, sw), (kh, kw) = self.scale, self.kernel_size
        O, C = self.out_channels, self.in_channels
        w = self.conv.weight.detach().view(O, sw, sh, C, kh, kw)                    # (o, j, i, c, a, b)
        w = w.permute(0, 3, 4, 2, 5, 1).reshape(O, C, kh * sh, kw * sw)             # (o, c, a i, b j)
        conv = nn.Conv2d(C, O, (kh * sh, kw * sw), self.scale, (sh * (kh // 2), sw * (kw // 2)),
                         bias=self.use_bias).to(w.device, w.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
            if self.use_bias:
                conv.bias.copy_(self.conv.bias)
        return conv

    @torch.no_grad()
    def load_conv_weights(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "SPDConv2d":
        """Compute exactly the strided conv with ``weight`` (O, C, k, k), stride s and padding k // 2, at every H x W.

        The strided conv reads x[s u - p + a] (p = k // 2); ``as_strided_conv``'s kernel of size s k reads
        x[s u - s p + t]. So the k x k kernel sits at t = a + (s - 1) p of an otherwise zero s k x s k kernel, which
        maps back onto W by the inverse of ``as_strided_conv``'s rearrangement. The zero taps also cover the
        bottom/right padding of odd sizes, so this holds for every H, W (not only multiples of s)."""
        self.check_conv_weights(weight, bias)
        (sh, sw), (kh, kw) = self.scale, self.kernel_size
        O, C = self.out_channels, self.in_channels
        big = weight.new_zeros(O, C, kh * sh, kw * sw)
        th, tw = (sh - 1) * (kh // 2), (sw - 1) * (kw // 2)
        big[:, :, th:th + kh, tw:tw + kw] = weight
        w = big.view(O, C, kh, sh, kw, sw).permute(0, 5, 3, 1, 2, 4)                 # (o, j, i, c, a, b)
        self.conv.weight.copy_(w.reshape(O, sw * sh * C, kh, kw))
        if bias is not None:
            self.conv.bias.copy_(bias)
        return self

    def hparams_repr(self) -> str:
        return f"scale={self.scale}, conv_in_channels={self.conv.in_channels}"
