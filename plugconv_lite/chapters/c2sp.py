"""C2sp (even-sized kernels, symmetric padding): what this chapter adds to the library (chapters/08_c2sp.ipynb): its
experiment variants and its exercises."""

from __future__ import annotations

import torch

from ..exercises import draw_int, exercise
from ..experiments import BASELINE, Variant, register_experiment

# 2x2 kernels cost 4/9 of 3x3 ones, so the comparison is made twice: as a drop-in (fewer parameters) and at 1.5x
# width, where the parameter count matches the baseline's (1.5^2 * 4/9 = 1 for the block convs; the whole network
# lands within a few percent at widths 16 and 64, see tests/conv/test_c2sp.py).
register_experiment("c2sp", [BASELINE, Variant(
    "c2sp", {"conv": "c2sp", "conv_kw": {"weight_init": "fan_out"}},
    note="C2sp (2x2 kernels, symmetric padding) in place of every 3x3 conv of the residual blocks"), Variant(
    "c2sp_wide", {"conv": "c2sp", "conv_kw": {"weight_init": "fan_out"}, "width_mult": 1.5},
    note="C2sp at 1.5x width: about the baseline's parameter count")])


def _c2sp_cases(g):
    cases = []
    for C, O, h, w in [(4, 2, 3, 3), (8, 4, 5, 6), (12, 3, 1, 4), (16, 8, 7, 7)]:
        cases.append(dict(x=torch.randn(2, C, h, w, generator=g), weight=torch.randn(O, C, 2, 2, generator=g)))
    return cases


@exercise("c2sp_forward", _c2sp_cases,
          "Stride-1 C2sp: split the C channels of x (B, C, H, W) into four equal quarters, pad quarter p by the "
          "p-th (top, bottom, left, right) pattern (0,1,0,1), (1,0,1,0), (0,1,1,0), (1,0,0,1), concatenate, and "
          "apply the 2x2 `weight` (O, C, 2, 2) without padding. The output is (B, O, H, W).")
def _c2sp_forward(x, weight):
    from ..conv.c2sp import C2spConv2d
    m = C2spConv2d(x.shape[1], weight.shape[0])
    with torch.no_grad():
        m.weight.copy_(weight)
        return m(x)


@exercise("c2sp_kernel3x3", lambda g: [dict(weight=c["weight"]) for c in _c2sp_cases(g)],
          "Return the 3x3 kernel (O, C, 3, 3) whose padding-1 convolution equals stride-1 C2sp with the 2x2 "
          "`weight` (O, C, 2, 2): place each input channel's 2x2 kernel in the corner its padding pattern selects.")
def _c2sp_kernel3x3(weight):
    from ..conv.c2sp import C2spConv2d
    m = C2spConv2d(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        m.weight.copy_(weight)
        return m.equivalent_kernel()
