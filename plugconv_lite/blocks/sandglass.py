"""Sandglass block (MobileNeXt). Zhou, Hou, Chen, Feng, Yan: "Rethinking Bottleneck Structure for Efficient Mobile
Network Design", ECCV 2020, arXiv 2007.02269 (official code: github.com/zhoudaquan/rethinking_bottleneck_design,
mobilenext/codebase/models/mnext.py, ``SGBlock``).

MobileNetV2's inverted residual is thin -> wide -> thin with the shortcut between the thin ends. The sandglass flips
it: the shortcut joins the WIDE representations, the 1x1 convs reduce and then expand in the middle, and a depthwise
3x3 sits at each wide end, so that the spatial convolutions see the high-dimensional features.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .._validate import check_float, check_int, make_divisible
from ..conv._init import init_convs_fan_out
from ..registry import register


def sandglass_hidden(in_channels: int, out_channels: int, t: float, divisor: int = 16) -> int:
    """The reduced width: the official ``SGBlock`` rule, ``in_channels // t`` raised where it falls below
    ``out_channels / 6`` to ``make_divisible(ceil(out_channels / 6), divisor)``; then (the book's addition) at least
    ``min(divisor, in_channels)`` units.

    The official rule was written for ImageNet widths (>= 96 channels), where it always gives >= 16 units and the
    addition changes nothing. At CIFAR widths it can give 4 units (24 channels, t = 6: 24 // 6 = 4 = 24 / 6, so the
    floor does not apply) and is not monotonic in t (16 channels: 4 units at t = 4, 16 at t = 6); the addition keeps
    every CIFAR layer at >= 16 units (or no reduction at all below 16 channels). ``hidden_channels`` overrides it.
    """
    hidden = int(in_channels // t)
    if hidden < out_channels / 6.0:
        hidden = make_divisible(math.ceil(out_channels / 6.0), divisor)
    return max(hidden, min(divisor, in_channels))


@register("sandglass", "block", paper="Rethinking Bottleneck Structure for Efficient Mobile Network Design",
          year=2020, arxiv="2007.02269")
class SandglassBlock(nn.Module):
    """out = F(x) + [x_(:alpha C) | 0]  (shortcut only when stride = 1 and C_in = C_out), with

        F = BN(DW_s(ReLU6(BN(PW_up(BN(PW_down(ReLU6(BN(DW_1(x)))))))))

    Shapes: x (B, C_in, H, W); DW_1 depthwise 3x3 over C_in (BN, ReLU6); PW_down 1x1 C_in -> hidden (BN, *linear*:
    no activation, the bottleneck in the middle); PW_up 1x1 hidden -> C_out (BN, ReLU6); DW_s depthwise 3x3 over
    C_out with the block's stride (BN, linear). This is the layout of the paper's Table 1 with the stride on the last
    depthwise conv, as the official ``SGBlock`` places it.

    ``t`` is a REDUCTION ratio (hidden ~ C_in / t, MobileNeXt uses 6, and 2 for its first block); the hidden width
    follows the official rule with a floor of ``min(divisor, C_in)`` units (``sandglass_hidden``; the floor only acts
    below ImageNet widths) unless ``hidden_channels`` is given.

    ``identity_multiplier`` (the paper's alpha in [0, 1]) adds the shortcut to the first floor(alpha * C) channels
    only; the paper's default and the released code use 1 (the full identity), the paper reports 1/2 as free of
    accuracy loss. 0 removes the shortcut.

    Departure from the released code: ``SGBlock`` drops the leading depthwise conv in blocks with C_in != C_out
    (and also the trailing one at stride 1) unless t = 2 or the stage has one block; this block always keeps both
    depthwise convs, as the paper draws it. The official MobileNeXt has no shortcut in those blocks either way.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, t: float = 6,
                 identity_multiplier: float = 1.0, hidden_channels: Optional[int] = None, divisor: int = 16,
                 device=None, dtype=None):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, min_value=1)
        self.out_channels = check_int("out_channels", out_channels, min_value=1)
        self.stride = check_int("stride", stride, min_value=1, max_value=2)
        self.t = check_float("t", t, min_value=1)
        self.identity_multiplier = check_float("identity_multiplier", identity_multiplier, min_value=0,
                                               max_value=1)
        self.divisor = check_int("divisor", divisor, min_value=1)
        if hidden_channels is None:
            hidden_channels = sandglass_hidden(in_channels, out_channels, self.t, self.divisor)
        self.hidden_channels = hidden = check_int("hidden_channels", hidden_channels, min_value=1)
        self.use_shortcut = stride == 1 and in_channels == out_channels
        # floor(alpha * C); the tolerance keeps alpha = 1/3 on 9 channels at 3 (0.333.. * 9 = 2.999..)
        self.identity_channels = math.floor(self.identity_multiplier * out_channels + 1e-6) if self.use_shortcut \
            else 0
        fk = {"device": device, "dtype": dtype}
        self.dw1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1, groups=in_channels, bias=False, **fk)
        self.bn1 = nn.BatchNorm2d(in_channels, **fk)
        self.reduce = nn.Conv2d(in_channels, hidden, 1, bias=False, **fk)
        self.bn2 = nn.BatchNorm2d(hidden, **fk)
        self.expand = nn.Conv2d(hidden, out_channels, 1, bias=False, **fk)
        self.bn3 = nn.BatchNorm2d(out_channels, **fk)
        self.dw2 = nn.Conv2d(out_channels, out_channels, 3, stride, 1, groups=out_channels, bias=False, **fk)
        self.bn4 = nn.BatchNorm2d(out_channels, **fk)
        self.act = nn.ReLU6(inplace=True)  # after a BN, whose backward needs its input, not its output
        self.reset_parameters()

    @classmethod
    def from_site(cls, site, expand_ratio: Optional[int] = None, **kw) -> "SandglassBlock":
        """For a backbone's block plug point. MobileNetV2 passes its inverted residual's ``expand_ratio`` (an
        EXPANSION); it is not the sandglass's reduction ratio and is dropped: ``t`` comes from ``block_kw`` or the
        default 6 (at the CIFAR MobileNetV2 widths the hidden-width floor gives the same widths as MobileNeXt's
        t = 2 for the first block)."""
        return cls(site.in_channels, site.out_channels, stride=site.stride, **kw)

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-out) convs, i.e. the official Normal(0, sqrt(2 / (k*k*C_out))), and BN at (1, 0)."""
        init_convs_fan_out(self)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """F(x), the block without its shortcut."""
        z = self.bn2(self.reduce(self.act(self.bn1(self.dw1(x)))))  # linear bottleneck: no activation here
        return self.bn4(self.dw2(self.act(self.bn3(self.expand(z)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        k = self.identity_channels
        if k == self.out_channels:
            return out + x
        if k > 0:  # partial identity: no in-place slice write, so autograd, compile and export see a pure graph
            return torch.cat([out[:, :k] + x[:, :k], out[:, k:]], dim=1)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, t={self.t:g}, "
                f"hidden={self.hidden_channels}, identity_multiplier={self.identity_multiplier:g} "
                f"(shortcut on {self.identity_channels} channels)")
