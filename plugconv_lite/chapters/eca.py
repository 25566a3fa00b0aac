"""ECA (chapters/18_eca.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import math

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

# ECA adds a few dozen parameters to ResNet-18 (the chapter measures it): no equal-budget control.
register_experiment("eca", [
    BASELINE,
    Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch: the reference row"),
    Variant("eca", {"attn": "eca"}, note="ECA with the paper's adaptive k = psi(C)"),
    Variant("eca_k3577", {"attn": "eca", "attn_kw": {"stage_kernel_sizes": [3, 5, 7, 7]}},
            note="ECA with the released ECA-ResNet-18's fixed per-stage k (README model eca_resnet18_k3577)"),
])


# Exercise 1: the parameters ECA adds to a ResNet-18 under both kernel rules ------------------------------------

def _count_cases(g):
    cases = [dict(width=64, gamma=2.0, b=1.0, stage_kernel_sizes=None),
             dict(width=64, gamma=2.0, b=1.0, stage_kernel_sizes=[3, 5, 7, 7])]
    for _ in range(6):
        fixed = draw_int(g, 0, 1) == 1
        cases.append(dict(width=draw_int(g, 2, 200), gamma=[1.0, 1.5, 2.0, 3.0][draw_int(g, 0, 3)],
                          b=[-1.0, 0.0, 1.0, 2.0][draw_int(g, 0, 3)],
                          stage_kernel_sizes=[2 * draw_int(g, 0, 4) + 1 for _ in range(4)] if fixed else None))
    return cases


@exercise("eca_overhead", _count_cases,
          "Parameters ECA adds to pl.resnet18(width): the paper's psi(C) (gamma, b), or fixed per-stage k.")
def _eca_overhead(width, gamma, b, stage_kernel_sizes):
    kw = {"gamma": gamma, "b": b} if stage_kernel_sizes is None else {"stage_kernel_sizes": stage_kernel_sizes}
    return resnet18_overhead("params", width, attn="eca", attn_kw=kw)


@solution("eca_overhead")
def eca_overhead(width, gamma, b, stage_kernel_sizes):
    total = 0
    for stage, C in enumerate((width, 2 * width, 4 * width, 8 * width)):
        if stage_kernel_sizes is None:
            t = int(abs((math.log2(C) + b) / gamma))
            k = t if t % 2 else t + 1
        else:
            k = stage_kernel_sizes[stage]
        total += 2 * k  # two blocks per stage, k weights each
    return total


# Exercise 2: the banded matrix that ECA's 1-D convolution multiplies z by ---------------------------------------

def _band_cases(g):
    cases = []
    for _ in range(6):
        k = 2 * draw_int(g, 0, 4) + 1
        cases.append(dict(w=torch.randn(k, generator=g), C=draw_int(g, 1, 12)))
    return cases


@exercise("eca_band_matrix", _band_cases,
          "The C x C matrix A with sigmoid(A z) equal to ECA's gate for the kernel w (zero padding).")
def _eca_band_matrix(w, C):
    from ..attention.eca import ECAModule
    m = ECAModule(C, kernel_size=len(w))
    with torch.no_grad():
        m.conv.weight.copy_(w.reshape(1, 1, -1))
        return m.conv(torch.eye(C)[:, None, :])[:, 0, :].T   # column j: the conv of the unit vector e_j


@solution("eca_band_matrix")
def eca_band_matrix(w, C):
    k = len(w)
    A = torch.zeros(C, C)
    for c in range(C):
        for i in range(k):
            j = c + i - (k - 1) // 2
            if 0 <= j < C:
                A[c, j] = w[i]
    return A
