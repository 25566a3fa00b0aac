"""Res2Net. Gao, Cheng, Zhao, Zhang, Yang, Torr: "Res2Net: A New Multi-Scale Backbone Architecture", IEEE TPAMI 43(2),
2021, arXiv 1904.01169 (official code: github.com/Res2Net/Res2Net-PretrainedModels).

The 3x3 conv of a bottleneck is replaced by a hierarchy over s channel splits: each split's 3x3 conv also receives
the previous split's output, so split i sees through i stacked 3x3 convs, and one block holds receptive fields of
3, 5, 7, ... pixels side by side ("multi-scale at a granular level").
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .._validate import check_choice, check_int
from ..conv._init import init_convs_fan_out
from ..receptive import receptive_field
from ..registry import register

STYPES = ("normal", "stage")


@register("res2net", "block", paper="Res2Net: A New Multi-Scale Backbone Architecture", year=2021,
          arxiv="1904.01169")
class Res2NetBlock(nn.Module):
    """out = ReLU(BN(conv3([y_1 | ... | y_s])) + shortcut(x)), with [x_1 | ... | x_s] = ReLU(BN(conv1(x))):

        normal:  y_1 = K_1(x_1),   y_i = K_i(x_i + y_{i-1})  (i = 2 .. s-1),   y_s = x_s
        stage:   y_i = K_i(x_i)                              (i = 1 .. s-1),   y_s = AvgPool_3x3(x_s)  (stride)

    Shapes: x (B, C_in, H, W); conv1 1x1: C_in -> s*w; each x_i and y_i has w channels; K_i = ReLU(BN(conv3x3))
    w -> w with the block's stride in 'stage' blocks; conv3 1x1: s*w -> C_out. With s = 1 the block is a plain
    bottleneck (one 3x3 conv over all w channels, no identity split).

    The split width follows the official rule w = floor(planes * base_width / 64) with planes = C_out / expansion
    (``width`` overrides it). ``expansion=4, base_width=26`` is the paper's Res2Net-50 bottleneck (26w x 4s); the
    defaults ``expansion=1, base_width=40`` give a block with about the parameters of the book's ResNet-18 basic
    block at every width (the chapter computes the ratio). The split order follows the official code (the identity
    split last); the paper writes the mirrored order, which is the same block up to a permutation of the splits.

    ``stype=None`` chooses 'stage' where the block changes shape (stride > 1 or C_in != C_out, i.e. where the
    official network puts its first-of-stage blocks) and 'normal' elsewhere; a 'normal' block cannot have a
    stride, because y_{i-1} (strided) and x_i (not) could not be added.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, scale: int = 4, base_width: int = 40,
                 expansion: int = 1, width: Optional[int] = None, stype: Optional[str] = None):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, min_value=1)
        self.out_channels = check_int("out_channels", out_channels, min_value=1)
        self.stride = check_int("stride", stride, min_value=1)
        self.scale = s = check_int("scale", scale, min_value=1)
        self.base_width = check_int("base_width", base_width, min_value=1)
        self.expansion = check_int("expansion", expansion, min_value=1)
        if out_channels % expansion:
            raise ValueError(f"expansion={expansion} must divide out_channels={out_channels} "
                             "(planes = out_channels / expansion)")
        self.planes = out_channels // expansion
        if width is None:
            width = math.floor(self.planes * base_width / 64)
            if width < 1:
                raise ValueError(f"width=floor(planes * base_width / 64)=floor({self.planes} * {base_width} / 64)=0 "
                                 "must be >= 1: raise base_width, lower expansion or pass width")
        self.width = w = check_int("width", width, min_value=1)
        if stype is None:
            stype = "stage" if (stride != 1 or in_channels != out_channels) else "normal"
        check_choice("stype", stype, STYPES)
        if stype == "normal" and stride != 1:
            raise ValueError(f"stype='normal' needs stride=1, got stride={stride}: the hierarchical addition "
                             "x_i + y_(i-1) would add a strided split to an unstrided one (use stype='stage')")
        self.stype = stype

        self.conv1 = nn.Conv2d(in_channels, w * s, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w * s)
        n = max(1, s - 1)  # s - 1 convolved splits; s = 1 convolves the only one
        self.convs = nn.ModuleList(nn.Conv2d(w, w, 3, stride, 1, bias=False) for _ in range(n))
        self.bns = nn.ModuleList(nn.BatchNorm2d(w) for _ in range(n))
        self.pool = nn.AvgPool2d(3, stride, 1) if (stype == "stage" and s > 1) else nn.Identity()
        self.conv3 = nn.Conv2d(w * s, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-out) convs and BN at (1, 0), as the official network and the book's backbone."""
        init_convs_fan_out(self)

    def splits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[y_1, ..., y_s], the split outputs (each (B, w, H', W')) for the block input x."""
        xs = self.relu(self.bn1(self.conv1(x))).split(self.width, dim=1)
        ys: list[torch.Tensor] = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = xs[i] if (i == 0 or self.stype == "stage") else xs[i] + ys[-1]
            ys.append(self.relu(bn(conv(sp))))
        if self.scale > 1:
            ys.append(self.pool(xs[-1]))
        return ys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv3(torch.cat(self.splits(x), dim=1)))
        return self.relu(out + self.shortcut(x))

    @staticmethod
    def split_receptive_fields(scale: int, stype: str = "normal") -> list[int]:
        """Theoretical receptive field (input pixels) of each split output y_1..y_s of one block (conv1, conv3 are
        1x1): y_i of a normal block passes through i 3x3 convs; in a stage block every split through one 3x3 conv
        (or the 3x3 average pool)."""
        scale = check_int("scale", scale, min_value=1)
        check_choice("stype", stype, STYPES)
        n = max(1, scale - 1)
        depths = [1] * n if stype == "stage" else list(range(1, n + 1))
        rf = [receptive_field([(3, 1)] * d)[-1][0] for d in depths]
        if scale > 1:
            rf.append(3 if stype == "stage" else 1)
        return rf

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, scale={self.scale}, "
                f"width={self.width}, stype={self.stype!r}")
