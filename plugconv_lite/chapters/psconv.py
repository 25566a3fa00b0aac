"""PSConv: what this chapter adds to the library (chapters/04_psconv.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# PSConv has exactly the parameters and FLOPs of the conv it replaces (chapter 04 asserts it against measure), so
# the network's budget is the baseline's: no equal-budget control.
register_experiment("psconv", [BASELINE, Variant(
    "psconv", {"conv": "psconv", "conv_kw": {"parts": 4, "d": 2}},
    note="PSConv (P=4 parts, d=2: dilations 1, 2, 4) on every 3x3 conv of the blocks")])


# Exercise 1: PSConv's forward pass from its dense weight ---------------------------------------------------------

def _forward_cases(g):
    cases = []
    for P, d, k in [(4, 2, 3), (2, 1, 3), (2, 2, 1), (6, 1, 3), (4, 3, 5), (8, 2, 3)]:
        C, O = P * draw_int(g, 1, 3), P * draw_int(g, 1, 3)
        x = torch.randn(draw_int(g, 1, 2), C, draw_int(g, 3, 9), draw_int(g, 3, 9), generator=g)
        cases.append(dict(x=x, weight=torch.randn(O, C, k, k, generator=g), P=P, d=d))
    return cases


@exercise("psconv_forward", _forward_cases,
          "PSConv's forward pass (stride 1, same padding, no bias) from its dense weight (O, C, k, k): output part j "
          "reads input part j with dilation d, part (j + P/2) mod P with dilation 2d, the others with dilation 1.")
def _psconv_forward(x, weight, P, d):
    from ..conv.psconv import PSConv2d
    m = PSConv2d(weight.shape[1], weight.shape[0], weight.shape[-1], parts=P, d=d).load_dense_weight(weight)
    with torch.no_grad():
        return m(x)


@solution("psconv_forward")
def psconv_forward(x, weight, P, d):
    import torch.nn.functional as F

    O, C, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    Co, Ci = O // P, C // P
    y = 0
    for rate in sorted({1, d, 2 * d}):
        mask = torch.zeros(O, C, 1, 1)
        for j in range(P):                  # output part
            for i in range(P):              # input part
                r = d if i == j else (2 * d if i == (j + P // 2) % P else 1)
                if r == rate:
                    mask[j * Co:(j + 1) * Co, i * Ci:(i + 1) * Ci] = 1
        y = y + F.conv2d(x, weight * mask, padding=rate * (k - 1) // 2, dilation=rate)
    return y


# Exercise 2: how many weights of one output channel read each input pixel -------------------------------------------

def _tap_count_cases(g):
    cases = [dict(P=P, d=d, k=k) for P, d, k in [(4, 2, 3), (4, 1, 3), (2, 1, 3), (2, 2, 3), (6, 2, 3)]]
    for _ in range(4):
        cases.append(dict(P=2 * draw_int(g, 1, 4), d=draw_int(g, 1, 3), k=[1, 3, 5][draw_int(g, 0, 2)]))
    return cases


@exercise("psconv_tap_counts", _tap_count_cases,
          "For one output channel of PSConv with C = P input channels (one per part), an (S, S) tensor, "
          "S = 2d(k-1) + 1, counting the weights that read the input pixel at each offset from the output pixel.")
def _psconv_tap_counts(P, d, k):
    from ..conv.psconv import PSConv2d
    S = 2 * d * (k - 1) + 1
    m = PSConv2d(P, P, k, parts=P, d=d).load_dense_weight(torch.ones(P, P, k, k))
    x = torch.zeros(1, P, S, S, requires_grad=True)
    m(x)[0, 0, S // 2, S // 2].backward()    # all weights are 1: the gradient counts the weights per input pixel
    return x.grad[0].sum(0).round()      # float: an answer with any dtype is compared without truncation


@solution("psconv_tap_counts")
def psconv_tap_counts(P, d, k):
    S = 2 * d * (k - 1) + 1
    counts = torch.zeros(S, S, dtype=torch.long)
    j = 0                                   # every output part sees the same mix of rates
    for i in range(P):
        rate = d if i == j else (2 * d if i == (j + P // 2) % P else 1)
        for u in range(k):
            for v in range(k):
                counts[S // 2 + rate * (u - k // 2), S // 2 + rate * (v - k // 2)] += 1
    return counts
