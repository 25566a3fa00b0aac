"""Context Guided block. Wu, Tang, Zhang, Zhang: "CGNet: A Light-weight Context Guided Network for Semantic
Segmentation", IEEE TIP 30, 2021, arXiv 1811.08201 (official code: github.com/wutianyiRosun/CGNet, model/CGNet.py).

Each pixel is described by what it is (a 3x3 local feature f_loc), by what surrounds it (a 3x3 dilated surrounding
context f_sur, receptive field d(k - 1) + 1), by both side by side (the joint feature f_joi), and finally by the
whole image (f_glo: a channel gate from the globally pooled joint feature that re-weights it).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .._validate import check_float, check_int
from ..attention.se import SEModule
from ..registry import register


@register("cg", "block", paper="CGNet: A Light-weight Context Guided Network for Semantic Segmentation", year=2021,
          arxiv="1811.08201")
class ContextGuidedBlock(nn.Module):
    """The CG block (stride 1) and the CG down-sampling block (stride > 1), as the official code computes them:

        t     = PReLU(BN(conv_in(x)))                       conv_in: 1x1, C_in -> n   (down: 3x3/stride, C_in -> n)
        f_loc = DW3x3(t),  f_sur = DW3x3_dilation d(t)      depthwise ("channel-wise"), n -> n each, no bias
        f_joi = PReLU(BN([f_loc | f_sur]))                  2n channels   (down: then reduce 1x1, 2n -> C_out)
        f_glo = f_joi * sigmoid(W2 ReLU(W1 GAP(f_joi) + b1) + b2)          SE-style gate, one value per channel
        y     = x + f_glo  if residual  else  f_glo

    Shapes: x (B, C_in, H, W); y (B, C_out, H/s, W/s). n = C_out / 2 in the CG block (so f_joi has C_out channels)
    and n = C_out in the down block (f_joi has 2 C_out channels, reduced back to C_out), as in the official classes.
    BN eps is 1e-3 and every PReLU has one slope per channel, as in the official code.

    ResNet-18 plug point (``block=``): a stride-1 block with C_in = C_out is the official CG block with its global
    residual (``add=True``); a strided block is the official down block (3x3 strided conv, no residual at all); a
    stride-1 block with C_in != C_out is the official CG block with ``add=False`` (1x1 C_in -> C_out/2, no residual,
    since x and y cannot be added). ``residual=None`` picks exactly that; ``residual=False`` drops the residual of a
    same-shape block. Unlike the book's BasicBlock there is no ReLU after the addition (the official block has none).

    ``dilation=2, reduction=16`` are the official class defaults; CGNet uses d = 2, r = 8 in its 64-channel stage and
    d = 4, r = 16 in its 128-channel stage (pass them per stage through ``block_kw``). The gate's hidden width is
    ``make_divisible(C_out / reduction, divisor)`` (``hidden`` overrides it), as the library's SE: the default
    ``divisor=8`` gives 64 channels at r = 16 an 8-unit bottleneck where the official ``C // r`` gives 4;
    ``divisor=1`` gives the official width wherever C_out / r is an integer.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 2,
                 reduction: float = 16, divisor: int = 8, hidden: Optional[int] = None,
                 residual: Optional[bool] = None, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.in_channels = check_int("in_channels", in_channels, min_value=1)
        self.out_channels = check_int("out_channels", out_channels, min_value=1)
        self.stride = check_int("stride", stride, min_value=1)
        self.dilation = check_int("dilation", dilation, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=1)
        self.down = stride > 1
        if not self.down and out_channels % 2:
            raise ValueError(f"out_channels={out_channels} must be even at stride=1: f_loc and f_sur take "
                             "out_channels / 2 channels each")
        can_add = not self.down and in_channels == out_channels
        if residual is None:
            residual = can_add
        if not isinstance(residual, bool):
            raise ValueError(f"residual={residual!r} must be True, False or None (None: where the official code has it)")
        if residual and not can_add:
            raise ValueError(f"residual=True needs stride=1 and in_channels == out_channels (the official global "
                             f"residual), got stride={stride}, in_channels={in_channels}, out_channels={out_channels}")
        self.residual = residual
        n = out_channels if self.down else out_channels // 2
        self.n = n

        k_in = 3 if self.down else 1
        self.conv_in = nn.Conv2d(in_channels, n, k_in, stride, k_in // 2, bias=False, **fk)
        self.bn_in = nn.BatchNorm2d(n, eps=1e-3, **fk)
        self.act_in = nn.PReLU(n, **fk)
        self.f_loc = nn.Conv2d(n, n, 3, 1, 1, groups=n, bias=False, **fk)
        # padding = dilation keeps the size: the dilated 3x3 kernel spans 2d + 1 pixels
        self.f_sur = nn.Conv2d(n, n, 3, 1, dilation, dilation, groups=n, bias=False, **fk)
        self.bn = nn.BatchNorm2d(2 * n, eps=1e-3, **fk)
        self.act = nn.PReLU(2 * n, **fk)
        self.reduce = nn.Conv2d(2 * n, out_channels, 1, bias=False, **fk) if self.down else nn.Identity()
        # f_glo is exactly the library's SE gate (two biased FCs, ReLU, sigmoid) on the joint feature
        self.f_glo = SEModule(out_channels, self.reduction, divisor, hidden).to(**fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-in) convs, as the official network; BN at (1, 0), PReLU slopes 0.25, FCs as nn.Linear."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, (nn.BatchNorm2d, nn.Linear)):
                m.reset_parameters()
            elif isinstance(m, nn.PReLU):
                nn.init.constant_(m.weight, 0.25)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_loc, f_sur), each (B, n, H/s, W/s), before the joint BN."""
        t = self.act_in(self.bn_in(self.conv_in(x)))
        return self.f_loc(t), self.f_sur(t)

    def joint(self, x: torch.Tensor) -> torch.Tensor:
        """f_joi, (B, C_out, H/s, W/s): the input of the global refinement."""
        return self.reduce(self.act(self.bn(torch.cat(self.branches(x), dim=1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.f_glo(self.joint(x))
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, dilation={self.dilation}, "
                f"reduction={self.reduction}, hidden={self.f_glo.hidden}, down={self.down}, residual={self.residual}")
