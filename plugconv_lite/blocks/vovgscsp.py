"""VoV-GSCSP and the GS bottleneck. Li et al.: "Slim-neck by GSConv: A lightweight-design for real-time detector
architectures", arXiv 2206.02424 (2022); official code: github.com/AlanLi1997/slim-neck-by-gsconv
(``models_inPaper.py``, the version this file follows; the repository holds others that disagree).

A CSP block (one branch transformed, one branch a cheap 1x1 projection, the two concatenated and fused by a 1x1
conv) whose transformed branch is a GS bottleneck: two GSConvs with a 1x1 conv shortcut, about half the cost of a
dense bottleneck.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from .._validate import check_float, check_int
from ..conv._init import init_convs_fan_out
from ..conv.gsconv import ConvNormAct, GSConv2d, check_optional_layers
from ..registry import register


class GSBottleneck(nn.Module):
    """out = GS_2(GS_1(x)) + shortcut(x):  GS_1 = GSConv(C -> O/2, 1x1),  GS_2 = GSConv(O/2 -> O, 3x3, no activation),
    shortcut = BN(conv1x1(x)) (no activation), as the official ``GSBottleneck``. O must be a multiple of 4 (GS_1's
    output O/2 must be even)."""

    def __init__(self, in_channels: int, out_channels: int, dw_kernel_size: int = 5,
                 norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
                 act_layer: Optional[Callable[..., nn.Module]] = nn.Mish, device=None, dtype=None):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, min_value=1)
        self.out_channels = check_int("out_channels", out_channels, min_value=4)
        if out_channels % 4:
            raise ValueError(f"out_channels={out_channels} must be a multiple of 4: the GS bottleneck's first GSConv "
                             "outputs out_channels / 2 channels, half dense and half depthwise")
        dd = dict(device=device, dtype=dtype)
        gs = dict(dw_kernel_size=dw_kernel_size, norm_layer=norm_layer, **dd)
        self.gs1 = GSConv2d(in_channels, out_channels // 2, 1, act_layer=act_layer, **gs)
        self.gs2 = GSConv2d(out_channels // 2, out_channels, 3, act_layer=None, **gs)
        self.shortcut = ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=None, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gs2(self.gs1(x)) + self.shortcut(x)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


@register("vovgscsp", "block", paper="Slim-neck by GSConv: A lightweight-design for real-time detector "
          "architectures", year=2022, arxiv="2206.02424")
class VoVGSCSP(nn.Module):
    """out = cv3(cat(cv2(x'), GSB(cv1(x')))),  x' = down(x) if stride > 1 else x.

    Shapes: x (B, C_in, H, W); cv1, cv2 = act(BN(conv1x1)): C_in -> c_ with c_ = int(C_out * expansion) (0.5 in
    the paper); GSB = ``depth`` GS bottlenecks c_ -> c_ in sequence; cv3 = act(BN(conv1x1)): 2 c_ -> C_out. The
    concatenation order (projection first) is the official one. c_ must be a multiple of 4.

    At a ResNet plug point: C_in != C_out is the CSP block's own business (cv1/cv2 read C_in, cv3 writes C_out).
    The official block has no stride (the slim neck downsamples with a separate GSConv k=3, s=2 before each
    VoV-GSCSP); so with stride > 1, ``down`` = GSConv(C_in -> C_in, 3x3, stride) does the same inside the block
    (C_in must then be even). There is no identity shortcut around the block, as in the official code (the GS
    bottleneck has its own 1x1-conv shortcut).

    Departures from ``models_inPaper.py``: its unused ``res`` conv is left out (it has no gradient), and its
    ignored ``n`` is ``depth`` here (default 1, which is what the official block computes; the repository's YOLOv5
    variant stacks n bottlenecks).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: float = 0.5, depth: int = 1,
                 dw_kernel_size: int = 5, norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
                 act_layer: Optional[Callable[..., nn.Module]] = nn.Mish, device=None, dtype=None):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, min_value=1)
        self.out_channels = check_int("out_channels", out_channels, min_value=1)
        self.stride = check_int("stride", stride, min_value=1)
        self.expansion = check_float("expansion", expansion, min_value=0, min_inclusive=False)
        self.depth = check_int("depth", depth, min_value=1)
        self.hidden = c_ = int(out_channels * expansion)
        if c_ < 4 or c_ % 4:
            raise ValueError(f"expansion={expansion} gives hidden=int(out_channels * expansion)=int({out_channels} * "
                             f"{expansion})={c_}, which must be a positive multiple of 4 (the GS bottleneck's first "
                             "GSConv halves it, and halves it again)")
        if stride > 1 and in_channels % 2:
            raise ValueError(f"in_channels={in_channels} must be even when stride={stride} > 1: the downsampling "
                             "GSConv keeps in_channels channels, half dense and half depthwise")
        check_optional_layers(norm_layer, act_layer, c_)
        dd = dict(device=device, dtype=dtype)
        layers = dict(norm_layer=norm_layer, act_layer=act_layer, **dd)
        self.down = (GSConv2d(in_channels, in_channels, 3, stride, dw_kernel_size=dw_kernel_size, **layers)
                     if stride > 1 else nn.Identity())
        self.cv1 = ConvNormAct(in_channels, c_, 1, **layers)
        self.cv2 = ConvNormAct(in_channels, c_, 1, **layers)
        self.gsb = nn.Sequential(*(GSBottleneck(c_, c_, dw_kernel_size, **layers) for _ in range(depth)))
        self.cv3 = ConvNormAct(2 * c_, out_channels, 1, **layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-out) convs and norms at their defaults, as the library's other blocks."""
        init_convs_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return self.cv3(torch.cat((self.cv2(x), self.gsb(self.cv1(x))), dim=1))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, hidden={self.hidden}, "
                f"depth={self.depth}")
