"""Squeeze-and-Excitation (chapters/01_se.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

# SE changes parameters and FLOPs by under 5% (chapter 01 measures it): no equal-budget control.
register_experiment("se", [BASELINE, Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch")])


# Exercise 1: the parameters SE adds to a whole ResNet-18 (the library's width rule, not the paper's C / r) -------

def _overhead_cases(g):
    cases = [dict(width=64, reduction=16, divisor=8), dict(width=16, reduction=16, divisor=1)]
    for _ in range(6):
        cases.append(dict(width=draw_int(g, 3, 48), reduction=[1, 2, 3, 4, 8, 16, 32][draw_int(g, 0, 6)],
                          divisor=[1, 2, 4, 8][draw_int(g, 0, 3)]))
    return cases


@exercise("se_overhead", _overhead_cases,
          "Parameters SE adds to pl.resnet18(width) with the given reduction and divisor.")
def _se_overhead(width, reduction, divisor):
    return resnet18_overhead("params", width, attn="se", attn_kw={"reduction": reduction, "divisor": divisor})


@solution("se_overhead")
def se_overhead(width, reduction, divisor):
    def hidden(C):
        v = C / reduction
        units = max(divisor, int(v + divisor / 2) // divisor * divisor)
        if units < 0.9 * v:
            units += divisor
        return min(C, units)

    total = 0
    for C in (width, 2 * width, 4 * width, 8 * width):  # four stages of two blocks
        Cr = hidden(C)
        total += 2 * (2 * C * Cr + Cr + C)
    return total


# Exercise 2: SE whose squeeze ignores padded pixels -----------------------------------------------------------

def _masked_cases(g):
    cases = []
    for _ in range(5):
        B, C, hidden, H, W = draw_int(g, 1, 3), draw_int(g, 2, 24), draw_int(g, 1, 8), draw_int(g, 1, 9), \
            draw_int(g, 1, 9)
        mask = (torch.rand(B, 1, H, W, generator=g) < 0.6).float()
        mask[:, :, 0, 0] = 1.0  # every image keeps at least one valid pixel
        cases.append(dict(x=torch.randn(B, C, H, W, generator=g), mask=mask,
                          W1=torch.randn(hidden, C, generator=g), b1=torch.randn(hidden, generator=g),
                          W2=torch.randn(C, hidden, generator=g), b2=torch.randn(C, generator=g)))
    return cases


@exercise("se_masked", _masked_cases, "SE whose squeeze averages each channel over the valid (mask = 1) pixels.")
def _se_masked(x, mask, W1, b1, W2, b2):
    from ..attention.se import SEModule
    m = SEModule(x.shape[1], hidden=W1.shape[0])
    with torch.no_grad():
        m.fc1.weight.copy_(W1), m.fc1.bias.copy_(b1), m.fc2.weight.copy_(W2), m.fc2.bias.copy_(b2)
        z = (x * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))
        return x * m.gate(m.fc2(m.act(m.fc1(z))))[:, :, None, None]


@solution("se_masked")
def se_masked(x, mask, W1, b1, W2, b2):
    z = (x * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))           # (B, C): mean over valid pixels
    s = torch.sigmoid(torch.relu(z @ W1.T + b1) @ W2.T + b2)        # (B, C)
    return x * s[:, :, None, None]
