"""Sandglass block, MobileNeXt (chapters/29_sandglass.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import math

import torch.nn as nn

from ..exercises import draw_int, exercise, solution
from ..experiments import Variant, register_experiment

# The chapter's backbone is MobileNetV2, so its reference row is the plain MobileNetV2 (named "baseline": results
# tables compare every variant with the baseline of the same backbone).
MOBILENETV2 = Variant("baseline", backbone="mobilenetv2", note="the plain MobileNetV2 (inverted residuals)")
SANDGLASS = Variant("sandglass", {"block": "sandglass"}, backbone="mobilenetv2",
                    note="every inverted residual replaced by a sandglass block (t = 6, full identity)")
# The sandglass network has about a quarter of the plain network's parameters. The control is the plain network
# narrowed (width_mult) to the sandglass network's parameters rather than the sandglass network widened to the
# plain one's: widening also widens MobileNetV2's 1280-channel head, which would then hold most of the parameters
# (the chapter computes both candidates).
register_experiment("sandglass", [
    MOBILENETV2,
    SANDGLASS,
    Variant("sandglass_budget", backbone="mobilenetv2", budget_of=SANDGLASS, budget="params",
            note="control: the plain MobileNetV2 narrowed (width_mult) to the sandglass network's parameters"),
])


# Exercise 1: the parameters of the whole sandglass MobileNetV2 ---------------------------------------------------

_MULTS = [0.25, 0.35, 0.5, 0.75, 1.0, 1.3, 1.5, 2.0]


def _net_cases(g):
    cases = [dict(width_mult=1.0, t=6), dict(width_mult=0.5, t=2)]
    for _ in range(6):
        cases.append(dict(width_mult=_MULTS[draw_int(g, 0, len(_MULTS) - 1)], t=[2, 3, 4, 6, 8][draw_int(g, 0, 4)]))
    return cases


@exercise("sandglass_mobilenetv2_params", _net_cases,
          "Parameters of pl.build_model('mobilenetv2', width_mult, block='sandglass', block_kw={'t': t}), "
          "100 classes.")
def _sandglass_mobilenetv2_params(width_mult, t):
    from ..measure import count_params
    from ..models import build
    return count_params(build("mobilenetv2", width_mult=width_mult, block="sandglass", block_kw={"t": t}))


@solution("sandglass_mobilenetv2_params")
def sandglass_mobilenetv2_params(width_mult, t):
    def divisible(v, d=8):
        new = max(d, int(v + d / 2) // d * d)
        return new + d if new < 0.9 * v else new

    def hidden(c_in, c_out):
        h = int(c_in // t)
        if h < c_out / 6:
            h = divisible(math.ceil(c_out / 6), 16)
        return max(h, min(16, c_in))

    table = [(16, 1), (24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1)]
    c_in = divisible(32 * width_mult)
    total = 27 * c_in + 2 * c_in                                      # stem conv (no bias) + BN
    for c, n in table:
        c_out = divisible(c * width_mult)
        for _ in range(n):
            h = hidden(c_in, c_out)
            total += 9 * c_in + c_in * h + h * c_out + 9 * c_out    # dw, reduce, expand, dw
            total += 2 * (c_in + h + 2 * c_out)                       # four BNs
            c_in = c_out
    c_last = divisible(1280 * max(1.0, width_mult))
    return total + c_in * c_last + 2 * c_last + c_last * 100 + 100   # head conv + BN, FC


# Exercise 2: FLOPs of a sandglass block with the stride on its FIRST depthwise conv --------------------------------

def _stride_cases(g):
    cases = [dict(c_in=64, c_out=64, hidden=16, H=32, W=32, stride=2), dict(c_in=24, c_out=32, hidden=16, H=7, W=9,
                                                                            stride=2)]
    for _ in range(6):
        cases.append(dict(c_in=draw_int(g, 1, 96), c_out=draw_int(g, 1, 96), hidden=draw_int(g, 1, 32),
                          H=draw_int(g, 1, 33), W=draw_int(g, 1, 33), stride=draw_int(g, 1, 2)))
    return cases


@exercise("sandglass_flops_stride_first", _stride_cases,
          "Forward FLOPs (2 x MACs) of a sandglass block whose stride sits on the first depthwise conv.")
def _sandglass_flops_stride_first(c_in, c_out, hidden, H, W, stride):
    from ..measure import count_flops
    body = nn.Sequential(nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                         nn.Conv2d(c_in, hidden, 1, bias=False), nn.Conv2d(hidden, c_out, 1, bias=False),
                         nn.Conv2d(c_out, c_out, 3, 1, 1, groups=c_out, bias=False))
    return count_flops(body, (1, c_in, H, W))


@solution("sandglass_flops_stride_first")
def sandglass_flops_stride_first(c_in, c_out, hidden, H, W, stride):
    h, w = (H - 1) // stride + 1, (W - 1) // stride + 1      # 3x3, padding 1: every conv after the first at h x w
    return 2 * h * w * (9 * c_in + c_in * hidden + hidden * c_out + 9 * c_out)
