"""SCConv (chapters/06_scconv.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

SCCONV = Variant("scconv", {"conv": "scconv", "conv_kw": {"pooling_r": 4}},
                 note="SCConv (pooling_r 4) in place of every 3x3 conv of the blocks")
# At width 64 SCConv keeps the parameters within 4% of the baseline's but runs 20% fewer FLOPs (K_2 on the pooled
# map; K_2, K_3 on half the channels), so the budget that differs is FLOPs: the control is the plain ResNet-18 at the
# width whose FLOPs match the SCConv network's (the chapter computes both ratios).
register_experiment("scconv", [
    BASELINE, SCCONV,
    Variant("scconv_budget", budget_of=SCCONV, budget="flops",
            note="control: the plain ResNet-18 at the width whose FLOPs match the SCConv network's")])


# Exercise 1: which input pixels can move one output pixel of the self-calibrated half -----------------------------

def _support_cases(g):
    cases = [dict(H=8, W=8, k=3, r=4, i=3, j=4), dict(H=7, W=5, k=3, r=3, i=6, j=0)]
    for _ in range(6):
        H, W = draw_int(g, 1, 13), draw_int(g, 1, 13)
        cases.append(dict(H=H, W=W, k=[1, 3, 5][draw_int(g, 0, 2)], r=draw_int(g, 1, 5),
                          i=draw_int(g, 0, H - 1), j=draw_int(g, 0, W - 1)))
    return cases


@exercise("scconv_support", _support_cases,
          "The box (top, bottom, left, right) of the pixels of X_1 that can move Y_1 at output pixel (i, j) of a "
          "stride-1 SCConv2d with a k x k kernel and pooling_r = r on an H x W map.")
def _scconv_support(H, W, k, r, i, j):
    from ..conv.scconv import SCConv2d
    m = SCConv2d(4, 4, k, pooling_r=r, norm_layer=None).double().eval()
    x = torch.randn(1, 4, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    m(x)[0, :m.O_1, i, j].sum().backward()
    moved = x.grad[0, :m.C_1].abs().sum(0) > 0
    rows, cols = moved.any(1).nonzero().flatten(), moved.any(0).nonzero().flatten()
    return (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max()))


@solution("scconv_support")
def scconv_support(H, W, k, r, i, j):
    h = k // 2

    def span(n, c):  # the rows (or columns) of the input that output row c depends on
        lo, hi = max(0, c - h), min(n - 1, c + h)           # K_4's window: where the gate is read
        cells = -(-n // r)                                   # ceil(n / r) pooled cells
        c_lo, c_hi = max(0, lo // r - h), min(cells - 1, hi // r + h)  # K_2's window on them
        ctx_lo, ctx_hi = c_lo * r, min(n - 1, c_hi * r + r - 1)  # the pixels those cells average
        return min(max(0, c - 2 * h), ctx_lo), max(min(n - 1, c + 2 * h), ctx_hi)  # K_3 behind K_4

    top, bottom = span(H, i)
    left, right = span(W, j)
    return (top, bottom, left, right)


# Exercise 2: the FLOPs of a whole SC-ResNet-18, for any width and pooling ratio -----------------------------------

def _flops_cases(g):
    cases = [dict(width=16, r=4), dict(width=5, r=3)]
    for _ in range(4):
        cases.append(dict(width=draw_int(g, 2, 16), r=draw_int(g, 1, 8)))
    return cases


@exercise("scconv_resnet18_flops", _flops_cases,
          "FLOPs of pl.resnet18(width=width, conv='scconv', conv_kw={'pooling_r': r}) for one 32 x 32 image.")
def _scconv_resnet18_flops(width, r):
    from ..measure import count_flops
    from ..models import resnet18
    with torch.device("meta"):  # counting needs shapes only: no weights to initialise, nothing computed
        return count_flops(resnet18(width=width, conv="scconv", conv_kw={"pooling_r": r}))


@solution("scconv_resnet18_flops")
def scconv_resnet18_flops(width, r):
    def scconv(C, O, H, stride):  # SCConv2d(C, O, 3, stride) on an H x H map
        C_1, O_1 = C // 2, O // 2
        C_2, O_2 = C - C_1, O - O_1
        H_out, H_pool = (H - 1) // stride + 1, -(-H // r)
        return 18 * ((C_2 * O_2 + C_1 * O_1) * H_out ** 2 + C_1 ** 2 * (H ** 2 + H_pool ** 2))

    flops = 18 * 3 * width * 32 ** 2  # the stem's plain 3x3 conv
    C, H = width, 32
    for stage in range(4):
        O = width * 2 ** stage
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            H_out = (H - 1) // stride + 1
            flops += scconv(C, O, H, stride) + scconv(O, O, H_out, 1)
            if stride != 1 or C != O:
                flops += 2 * C * O * H_out ** 2  # the 1x1 projection shortcut
            C, H = O, H_out
    return flops + 2 * C * 100  # the classifier
