"""Squeeze-and-Excitation (SE): what this chapter adds to the library (chapters/01_se.ipynb): its experiment variants
and its exercises."""

from __future__ import annotations

import torch

from ..exercises import draw_int, exercise
from ..experiments import BASELINE, Variant, register_experiment
from ..measure import count_params

register_experiment("se", [BASELINE, Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch")])


def _se_param_cases(g):
    return [dict(C=c, reduction=r) for c, r in [(64, 16), (256, 16), (48, 4), (512, 8), (96, 3), (16, 16)]]


@exercise("se_params", _se_param_cases,
          "Return the number of parameters of an SE module with C channels and C_r = C / reduction hidden units "
          "(the paper's sizing; every case divides exactly), biases included.")
def _se_params(C, reduction):
    from ..attention.se import SEModule
    return count_params(SEModule(C, reduction, divisor=1))


def _se_forward_cases(g):
    cases = []
    for _ in range(5):
        c = draw_int(g, 4, 32)
        hdim = draw_int(g, 1, 8)
        b, h, w = draw_int(g, 1, 3), draw_int(g, 1, 9), draw_int(g, 1, 9)
        cases.append(dict(x=torch.randn(b, c, h, w, generator=g), W1=torch.randn(hdim, c, generator=g),
                          b1=torch.randn(hdim, generator=g), W2=torch.randn(c, hdim, generator=g),
                          b2=torch.randn(c, generator=g)))
    return cases


@exercise("se_forward", _se_forward_cases,
          "Implement y = x * sigmoid(W2 relu(W1 GAP(x) + b1) + b2) for x of shape (B, C, H, W).")
def _se_forward(x, W1, b1, W2, b2):
    from ..attention.se import SEModule
    m = SEModule(x.shape[1], hidden=W1.shape[0])
    with torch.no_grad():
        m.fc1.weight.copy_(W1), m.fc1.bias.copy_(b1), m.fc2.weight.copy_(W2), m.fc2.bias.copy_(b2)
        return m(x)
