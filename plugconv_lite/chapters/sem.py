"""SEM, the switchable excitation module (chapters/23_sem.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import math

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

# SEM changes parameters and FLOPs by under 5% at width 64 (the chapter computes both): no equal-budget control.
register_experiment("sem", [
    BASELINE,
    Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch: the reference attention"),
    Variant("sem", {"attn": "sem"}, note="SEM (SE + ECA + IE operators, switched per sample) on every residual "
                                         "branch"),
])


# Exercise 1: the parameters SEM adds to a ResNet-18 ------------------------------------------------------------

def _overhead_cases(g):
    cases = [dict(width=64, reduction=16, divisor=8), dict(width=16, reduction=16, divisor=1)]
    for _ in range(6):
        cases.append(dict(width=draw_int(g, 2, 48), reduction=[2, 4, 8, 16, 32][draw_int(g, 0, 4)],
                          divisor=[1, 4, 8][draw_int(g, 0, 2)]))
    return cases


@exercise("sem_overhead", _overhead_cases,
          "Parameters SEM adds to pl.resnet18(width) with attn_kw={'reduction': reduction, 'divisor': divisor}.")
def _sem_overhead(width, reduction, divisor):
    return resnet18_overhead("params", width, attn="sem", attn_kw={"reduction": reduction, "divisor": divisor})


@solution("sem_overhead")
def sem_overhead(width, reduction, divisor):
    def hidden(C):
        v = C / reduction
        units = max(divisor, int(v + divisor / 2) // divisor * divisor)
        if units < 0.9 * v:
            units += divisor
        return min(C, units)

    def eca_k(C):
        t = int(abs((math.log2(C) + 1) / 2))
        return t if t % 2 else t + 1

    total = 0
    for C in (width, 2 * width, 4 * width, 8 * width):           # two blocks per stage
        Cr = hidden(C)
        switch = 3 * C + 3
        se = 2 * C * Cr + Cr + C
        total += 2 * (switch + se + eca_k(C) + 2 * C)           # + ECA's k weights + IE's gamma and beta
    return total


# Exercise 2: a switch that really switches an operator off -----------------------------------------------------

def _switch_cases(g):
    cases = []
    for _ in range(5):
        B, C, H, W = draw_int(g, 1, 3), draw_int(g, 2, 20), draw_int(g, 1, 6), draw_int(g, 1, 6)
        hidden, k = draw_int(g, 1, 4), [1, 3, 5][draw_int(g, 0, 2)]
        cases.append(dict(u=torch.randn(B, C, H, W, generator=g), Ws=torch.randn(3, C, generator=g),
                          bs=torch.randn(3, generator=g), W1=torch.randn(hidden, C, generator=g),
                          b1=torch.randn(hidden, generator=g), W2=torch.randn(C, hidden, generator=g),
                          b2=torch.randn(C, generator=g), w_eca=torch.randn(k, generator=g),
                          gamma=torch.randn(C, generator=g), beta=torch.randn(C, generator=g)))
    return cases


@exercise("sem_switch_off", _switch_cases,
          "SEM whose switch weight w_i blends operator i's gate with 1: A = prod_i (1 - w_i + w_i sigmoid(e_i)).")
def _sem_switch_off(u, Ws, bs, W1, b1, W2, b2, w_eca, gamma, beta):
    from ..attention.sem import SEMModule
    m = SEMModule(u.shape[1], hidden=W1.shape[0], kernel_size=w_eca.numel())
    with torch.no_grad():
        for p, v in ((m.switch.weight, Ws), (m.switch.bias, bs), (m.fc1.weight, W1), (m.fc1.bias, b1),
                     (m.fc2.weight, W2), (m.fc2.bias, b2), (m.conv.weight, w_eca.reshape(1, 1, -1)),
                     (m.ie_gamma, gamma), (m.ie_beta, beta)):
            p.copy_(v)
        z = u.mean(dim=(2, 3))
        w = m.switch_weights(z).T[:, :, None]                        # (3, B, 1)
        A = (1 - w + w * torch.sigmoid(m.operator_logits(z))).prod(dim=0)
        return u * A[:, :, None, None]


@solution("sem_switch_off")
def sem_switch_off(u, Ws, bs, W1, b1, W2, b2, w_eca, gamma, beta):
    z = u.mean(dim=(2, 3))                                          # (B, C)
    w = torch.sigmoid(z @ Ws.T + bs)                                # (B, 3)
    e1 = torch.relu(z @ W1.T + b1) @ W2.T + b2
    k = w_eca.numel()
    e2 = torch.nn.functional.conv1d(z[:, None, :], w_eca.reshape(1, 1, k), padding=k // 2)[:, 0]
    e3 = z * gamma + beta
    A = torch.ones_like(z)
    for i, e in enumerate((e1, e2, e3)):
        wi = w[:, i:i + 1]
        A = A * (1 - wi + wi * torch.sigmoid(e))                    # w_i = 0: factor 1, operator off
    return u * A[:, :, None, None]
