"""Foundations: convolution arithmetic (book/foundations_arithmetic.ipynb): the page's exercises."""

from __future__ import annotations

import torch.nn as nn

from ..exercises import draw_int, exercise, solution
from ..measure import count_params


def _stack_cases(g):
    cases = []
    for _ in range(6):
        layers, C = [], draw_int(g, 1, 4) * 4
        for _ in range(draw_int(g, 1, 4)):
            options = [d for d in (1, 2, 4, C) if C % d == 0]
            groups = options[draw_int(g, 0, len(options) - 1)]
            O = groups * draw_int(g, 1, 6) if groups != C else C
            layers.append((C, O, [1, 3, 5][draw_int(g, 0, 2)], draw_int(g, 1, 2), draw_int(g, 1, 2), groups))
            C = O
        cases.append(dict(layers=layers, h=draw_int(g, 9, 33)))
    return cases


@exercise("stack_cost", _stack_cases,
          "Return the total (params, FLOPs) of a chain of bias-free convs (C, O, k, stride, dilation, groups), each "
          "padded by dilation * (k - 1) // 2, applied in turn to a 1 x C x h x h input.")
def _stack_cost(layers, h):
    from ..measure import count_flops
    net = nn.Sequential(*(nn.Conv2d(C, O, k, s, d * (k - 1) // 2, d, groups, bias=False)
                          for C, O, k, s, d, groups in layers))
    return count_params(net), count_flops(net, (1, layers[0][0], h, h))


def _rf_cases(g):
    cases = []
    for _ in range(6):
        cases.append(dict(layers=[(draw_int(g, 1, 3) * 2 + 1, draw_int(g, 1, 2), draw_int(g, 1, 3))
                                  for _ in range(draw_int(g, 1, 5))]))
    return cases


@exercise("receptive_field", _rf_cases,
          "Return the receptive field (an int) of a stack of convs given as (kernel, stride, dilation) tuples.")
def _receptive_field(layers):
    from ..receptive import receptive_field
    return receptive_field(layers)[-1][0]


@solution("stack_cost")
def stack_cost(layers, h):
    params = flops = 0
    for C, O, k, stride, dilation, groups in layers:
        weights = O * (C // groups) * k * k  # each output channel reads C / groups channels
        padding = dilation * (k - 1) // 2
        h = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1  # this conv's output size
        params += weights
        flops += 2 * h * h * weights  # one multiply-accumulate per weight per output position
    return params, flops


@solution("receptive_field")
def receptive_field_of(layers):
    rf, jump = 1, 1  # jump: input pixels between neighbouring units of the current layer
    for kernel, stride, dilation in layers:
        rf += dilation * (kernel - 1) * jump
        jump *= stride
    return rf
