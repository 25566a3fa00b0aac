"""C2sp, even-sized kernels with symmetric padding (chapters/08_c2sp.ipynb): the chapter's experiment and its
exercises."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# 2x2 kernels cost 4/9 of 3x3 ones (x0.46 parameters and FLOPs for the whole ResNet-18), so the comparison is made
# twice: as a drop-in, and at 1.5x width, where parameters AND FLOPs match the baseline's (1.5^2 * 4/9 = 1 for the
# block convs; the whole network lands within 5% on both, asserted in chapter 08 and tests/conv/test_c2sp.py).
# The equal-budget network is C2sp widened rather than a plain ResNet narrowed (``Variant(budget_of=...)``): the
# question is whether C2sp can replace 3x3 convs at the same cost, and C2sp needs widths that are multiples of 4,
# which width_mult=1.5 keeps (24 and 96) and a free width search would not.
register_experiment("c2sp", [BASELINE, Variant(
    "c2sp", {"conv": "c2sp", "conv_kw": {"weight_init": "fan_out"}},
    note="C2sp (2x2 kernels, symmetric padding) in place of every 3x3 conv of the residual blocks"), Variant(
    "c2sp_wide", {"conv": "c2sp", "conv_kw": {"weight_init": "fan_out"}, "width_mult": 1.5},
    note="C2sp at 1.5x width: the baseline's parameters and FLOPs (within 5%)")])


# Exercise 1: the parameters of a C2sp ResNet-18 (where the 1.5x rule is not exact) ----------------------------

def _params_cases(g):
    cases = [dict(width=4, num_classes=10), dict(width=8, num_classes=100)]
    for _ in range(5):
        cases.append(dict(width=4 * draw_int(g, 1, 30), num_classes=draw_int(g, 2, 1000)))
    return cases


@exercise("c2sp_resnet18_params", _params_cases,
          "Parameters of pl.resnet18(num_classes, width, conv='c2sp'), counted from the architecture.")
def _c2sp_resnet18_params(width, num_classes):
    from ..measure import count_params
    from ..models import resnet18
    return count_params(resnet18(num_classes=num_classes, width=width, conv="c2sp"))


@solution("c2sp_resnet18_params")
def c2sp_resnet18_params(width, num_classes):
    bn = 2                                              # BN: a scale and a shift per channel
    total = 3 * width * 9 + bn * width                  # stem: 3x3 conv (no bias) + BN, not swapped
    c_in = width
    for stage, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            total += 4 * c_in * c_out + bn * c_out      # conv1: 2x2 kernels (C2sp), BN
            total += 4 * c_out * c_out + bn * c_out     # conv2
            if c_in != c_out or (stage > 0 and block == 0):
                total += c_in * c_out + bn * c_out      # projection shortcut: 1x1 conv + BN
            c_in = c_out
    return total + c_in * num_classes + num_classes     # linear classifier with bias


# Exercise 2: the official code's symmetric padding, for any channel count ------------------------------------

def _official_pad_cases(g):
    cases = []
    for C in (4, 5, 6, 7, 8, 11, 2, 1):
        cases.append(dict(x=torch.randn(draw_int(g, 1, 2), C, draw_int(g, 1, 5), draw_int(g, 1, 5), generator=g)))
    return cases


def _official_split(C):
    """The reference code's four group sizes: near-equal, the remainder going to the first groups."""
    return [C // 4 + 1] * (C % 4) + [C // 4] * (4 - C % 4)


@exercise("c2sp_official_pad", _official_pad_cases,
          "The reference code's symmetric padding of x (B, C, H, W) for any C: four near-equal channel groups "
          "(remainder to the first groups), group p padded by the p-th (top, bottom, left, right) pattern; "
          "returns (B, C, H + 1, W + 1).")
def _c2sp_official_pad(x):
    from ..conv.c2sp import PATTERNS, C2spConv2d
    if x.shape[1] % 4 == 0:  # the library's own padding, where it accepts the channel count
        return C2spConv2d(x.shape[1], 4).symmetric_pad(x)
    parts = x.split(_official_split(x.shape[1]), dim=1)
    return torch.cat([F.pad(q, (l, r, t, b)) for q, (t, b, l, r) in zip(parts, PATTERNS)], dim=1)


@solution("c2sp_official_pad")
def c2sp_official_pad(x):
    patterns = [(0, 1, 0, 1), (1, 0, 1, 0), (0, 1, 1, 0), (1, 0, 0, 1)]  # (top, bottom, left, right)
    groups = torch.tensor_split(x, 4, dim=1)          # sizes ceil(C/4) first, as the reference's split
    padded = [F.pad(q, (left, right, top, bottom)) for q, (top, bottom, left, right) in zip(groups, patterns)]
    return torch.cat(padded, dim=1)
