"""Pyramidal Convolution. Duta, Liu, Zhu, Shao: "Pyramidal Convolution: Rethinking Convolutional Neural Networks for
Visual Recognition", arXiv 2006.11538, 2020.

One layer, several kernel sizes: the output channels are split into levels, each level convolves the whole input
with its own kernel size, and the larger kernels use more groups so that the layer costs about what the k x k conv
it replaces costs. The paper's rule is "larger kernels where the feature map is large": four levels in the first
stage of PyConvResNet down to a single 3x3 in the last; ``pyramid_levels`` maps that rule onto any map size.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .._validate import check_int, check_odd, check_same_length
from ..registry import register
from ._layout import channels_last_on_cpu
from .base import ConvBase

PAPER_GROUPS = (1, 4, 8, 16)            # G_l of level l in PyConvResNet (stage 1 uses all four)
PAPER_SHARES = {1: (1,), 2: (1, 1), 3: (1, 1, 2), 4: (1, 1, 1, 1)}   # O_l / O per number of levels
LEVEL_THRESHOLDS = (8, 16, 32)          # one more level for each of these map sizes the output reaches


def pyramid_levels(resolution: Optional[int]) -> int:
    """Number of pyramid levels for a conv whose output map is ``resolution`` x ``resolution``.

    One level at 4 x 4 and below, and one more per doubling of the map: 2 at 8, 3 at 16, 4 at 32 and above. The same
    rule gives the official PyConvResNet's 4/3/2/1 levels on ImageNet's 56/28/14/7 stages and 4/3/2/1 on CIFAR's
    32/16/8/4. ``None`` (map size unknown) gives the paper's largest pyramid, 4 levels.
    """
    if resolution is None:
        return len(PAPER_GROUPS)
    resolution = check_int("resolution", resolution, min_value=1)
    return 1 + sum(resolution >= t for t in LEVEL_THRESHOLDS)


def tap_coverage(kernel_size: int, resolution: int, dilation: int = 1) -> float:
    """Fraction of a k x k kernel's taps that land inside an R x R map (not on zero padding), averaged over the
    output positions of a stride-1, same-padded convolution. 1.0 means no tap ever reads padding."""
    k = check_int("kernel_size", kernel_size, min_value=1)
    r = check_int("resolution", resolution, min_value=1)
    d = check_int("dilation", dilation, min_value=1)
    taps = np.arange(r)[:, None] + (np.arange(k) - (k - 1) // 2)[None, :] * d     # (position, tap) input index
    inside_1d = ((taps >= 0) & (taps < r)).mean()
    return float(inside_1d ** 2)   # the 2-D kernel is the product of two independent axes


def _paper_group(level: int) -> int:
    return PAPER_GROUPS[level] if level < len(PAPER_GROUPS) else 2 ** (level + 1)


def _default_splits(out_channels: int, levels: int) -> tuple[int, ...]:
    """The paper's output shares (quarters; the 3-level pyramid gives its largest kernel half), rounded so that they
    sum to ``out_channels``; leftovers go to the smallest kernels."""
    shares = PAPER_SHARES.get(levels, (1,) * levels)
    total = sum(shares)
    splits = [out_channels * s // total for s in shares]
    for i in range(out_channels - sum(splits)):
        splits[i % levels] += 1
    return tuple(splits)


@register("pyconv", "conv", paper="Pyramidal Convolution: Rethinking Convolutional Neural Networks for Visual "
                                  "Recognition", year=2020, arxiv="2006.11538")
class PyConv2d(ConvBase):
    """y = concat_l  Conv_{k_l x k_l, groups G_l}(x)  over the levels l = 0 .. L-1 (along channels).

    Shapes: x (B, C_in, H, W); level l: weight (O_l, C_in / G_l, k_l, k_l), output (B, O_l, H', W');
    y (B, O, H', W') with O = sum_l O_l. Every level reads all C_in input channels, at the same stride, with padding
    chosen so that all levels produce the same H' x W' (same padding by default).

    Parameters: sum_l C_in * O_l * k_l^2 / G_l (a plain k x k conv: C_in * O * k^2).

    Hyperparameters:
      kernels:    k_l per level. Default: ``kernel_size + 2 l`` for ``L = pyramid_levels(resolution)`` levels
                  (3, 5, 7, 9 for a 3x3 conv on a map of 32 or more).
      groups:     1 (default) -> the paper's G_l = (1, 4, 8, 16)[l], each reduced to gcd(G_l, C_in, O_l) so that it
                  divides the level's channels (at CIFAR widths a 4-channel level cannot have 16 groups); a sequence
                  -> G_l exactly as given, validated. An int > 1 is ambiguous and rejected.
      splits:     O_l per level. Default: the paper's shares (quarters; [1/4, 1/4, 1/2] for three levels).
      resolution: the output map size (H' = W'); picks the number of levels when ``kernels`` is not given.
                  ``from_site`` passes it, so ``resnet18(conv="pyconv")`` gets a pyramid per stage.

    Init: Kaiming-normal (fan-out, ReLU) per level, as the official PyConvResNet and the book's ResNet convs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups=1, bias: bool = False, kernels: Optional[Sequence[int]] = None,
                 splits: Optional[Sequence[int]] = None, resolution: Optional[int] = None):
        per_level_groups = not isinstance(groups, numbers.Integral) or isinstance(groups, bool)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         1 if per_level_groups else groups, bias)
        if not per_level_groups and self.groups != 1:
            raise ValueError(f"groups={groups}: PyConv2d takes one group count per level, e.g. groups=(1, 4, 8, 16); "
                             "an int groups > 1 is ambiguous")
        C_in, O = self.in_channels, self.out_channels
        if kernels is None:
            k = check_odd("kernel_size", self.kernel_size[0])
            if self.kernel_size[1] != k:
                raise ValueError(f"kernel_size={self.kernel_size} must be square for the automatic pyramid")
            L = min(pyramid_levels(resolution), O)
            kernels = tuple(k + 2 * l for l in range(L))
        else:
            if resolution is not None:
                raise ValueError(f"resolution={resolution} picks the pyramid; pass it or kernels={kernels}, not both")
            if isinstance(kernels, (str, bytes)) or not isinstance(kernels, Sequence) or len(kernels) == 0:
                raise ValueError(f"kernels={kernels!r} must be a non-empty sequence of odd ints")
            kernels = tuple(check_odd(f"kernels[{l}]", k_l) for l, k_l in enumerate(kernels))
            L = len(kernels)
        if splits is None:
            if O < L:
                raise ValueError(f"out_channels={O} must be >= the number of levels {L}")
            splits = _default_splits(O, L)
        else:
            if isinstance(splits, (str, bytes)) or not isinstance(splits, Sequence):
                raise ValueError(f"splits={splits!r} must be a sequence of ints (output channels per level)")
            check_same_length("splits", splits, "kernels", kernels)
            splits = tuple(check_int(f"splits[{l}]", o, min_value=1) for l, o in enumerate(splits))
            if sum(splits) != O:
                raise ValueError(f"splits={splits} must sum to out_channels={O}")
        if per_level_groups:
            if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
                raise ValueError(f"groups={groups!r} must be an int or a sequence of ints (one per level)")
            check_same_length("groups", groups, "kernels", kernels)
            G = tuple(check_int(f"groups[{l}]", g, min_value=1) for l, g in enumerate(groups))
            for l, (g, o) in enumerate(zip(G, splits)):
                if C_in % g:
                    raise ValueError(f"groups[{l}]={g} must divide in_channels={C_in}")
                if o % g:
                    raise ValueError(f"groups[{l}]={g} must divide the level's out channels splits[{l}]={o}")
        else:
            G = tuple(math.gcd(_paper_group(l), C_in, o) for l, o in enumerate(splits))
        self.kernels, self.splits, self.level_groups = kernels, splits, G
        self.resolution = resolution

        k0h, k0w = self.kernel_size
        (dh, dw), (ph, pw) = self.dilation, self.padding
        levels = []
        for l, (k_l, O_l, G_l) in enumerate(zip(kernels, splits, G)):
            pad = (ph + dh * (k_l - k0h) // 2, pw + dw * (k_l - k0w) // 2)   # every level: the same H' x W'
            if min(pad) < 0:
                raise ValueError(f"padding={self.padding} is too small for kernels[{l}]={k_l}")
            levels.append(nn.Conv2d(C_in, O_l, k_l, self.stride, pad, self.dilation, G_l, bias=self.use_bias))
        self.levels = nn.ModuleList(levels)
        self.reset_parameters()

    @classmethod
    def from_site(cls, site, **kw) -> "PyConv2d":
        """Build for a plug site: the pyramid follows the site's output map size unless ``kernels`` is given."""
        if "kernels" not in kw and "resolution" not in kw:
            kw["resolution"] = site.out_resolution
        args = dict(kernel_size=site.kernel_size, stride=site.stride, padding=site.padding, dilation=site.dilation,
                    groups=site.groups, bias=site.bias)
        return cls(site.in_channels, site.out_channels, **{**args, **kw})

    def reset_parameters(self) -> None:
        for level in self.levels:
            nn.init.kaiming_normal_(level.weight, mode="fan_out", nonlinearity="relu")
            if level.bias is not None:
                nn.init.zeros_(level.bias)

    @torch.no_grad()
    def load_conv_weights(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "PyConv2d":
        """Only a one-level pyramid with the conv's own kernel size and one group is a plain conv (copied as is)."""
        self.check_conv_weights(weight, bias)
        level = self.levels[0]
        if len(self.levels) != 1 or level.kernel_size != self.kernel_size or level.groups != 1:
            raise ValueError(f"PyConv2d with kernels={self.kernels} and level_groups={self.level_groups} cannot hold "
                             f"a plain {self.kernel_size} conv's weights; build it with "
                             f"kernels=({self.kernel_size[0]},) (one level) to keep them")
        level.weight.copy_(weight)
        if bias is not None:
            level.bias.copy_(bias)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.levels) == 1:
            return self.levels[0](x)
        x, restore = channels_last_on_cpu(x)   # grouped levels: several times faster on a CPU (see _layout)
        y = torch.cat([level(x) for level in self.levels], dim=1)
        return y.contiguous() if restore else y

    def hparams_repr(self) -> str:
        return f"kernels={self.kernels}, level_groups={self.level_groups}, splits={self.splits}"
