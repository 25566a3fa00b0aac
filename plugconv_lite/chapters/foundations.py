"""Foundations: convolution arithmetic: what this chapter adds to the library (book/foundations_arithmetic.ipynb):
its exercises."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..exercises import draw_int, exercise, solution
from ..measure import count_params

def _conv_cost_cases(g):
    cases = []
    for _ in range(8):
        groups = [1, 2, 4][draw_int(g, 0, 2)]
        cases.append(dict(c_in=groups * draw_int(g, 1, 16), c_out=groups * draw_int(g, 1, 16), k=[1, 3, 5][draw_int(g, 0, 2)],
                          groups=groups, h=draw_int(g, 4, 20), stride=draw_int(g, 1, 2)))
    return cases


@exercise("conv_cost", _conv_cost_cases,
          "Return (params, FLOPs) of a bias-free k x k conv with `groups` on an h x h input (padding k // 2, the "
          "given stride); FLOPs = 2 x multiply-accumulates.")
def _conv_cost(c_in, c_out, k, groups, h, stride):
    from ..measure import count_flops
    conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
    return count_params(conv), count_flops(conv, (1, c_in, h, h))


def _rf_cases(g):
    cases = []
    for _ in range(6):
        cases.append(dict(layers=[(draw_int(g, 1, 3) * 2 + 1, draw_int(g, 1, 2), draw_int(g, 1, 3)) for _ in range(draw_int(g, 1, 5))]))
    return cases


@exercise("receptive_field", _rf_cases,
          "Return the receptive field (an int) of a stack of convs given as (kernel, stride, dilation) tuples.")
def _receptive_field(layers):
    from ..receptive import receptive_field
    return receptive_field(layers)[-1][0]


@solution("conv_cost")
def conv_cost(c_in, c_out, k, groups, h, stride):
    # each output channel reads c_in / groups input channels through a k x k kernel
    params = c_out * (c_in // groups) * k * k
    padding = k // 2
    h_out = (h + 2 * padding - k) // stride + 1
    # one multiply-accumulate (2 FLOPs) per weight per output position
    return params, 2 * h_out * h_out * params


@solution("receptive_field")
def receptive_field_of(layers):
    rf, jump = 1, 1  # jump: input pixels between neighbouring units of the current layer
    for kernel, stride, dilation in layers:
        rf += dilation * (kernel - 1) * jump
        jump *= stride
    return rf
