"""A2N's attention-in-attention block on a residual branch (chapters/24_a2n.ipynb): experiment and exercises."""
from __future__ import annotations

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

A2N = Variant("a2n", {"attn": "a2n"},
              note="A2N block (inner width C/4, BN after conv_last) on every residual branch")
# A2N adds about 17% parameters and FLOPs at width 64 (the chapter computes both): the control matches parameters.
register_experiment("a2n", [
    BASELINE,
    Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch: the reference attention"),
    A2N,
    Variant("a2n_budget", budget_of=A2N, budget="params", note="control: the plain ResNet widened to A2N's "
                                                                "parameters"),
])


def _cases(g):
    cases = [dict(width=64, non_attention_kernel=3, divisor=8), dict(width=16, non_attention_kernel=1, divisor=8)]
    for _ in range(6):
        cases.append(dict(width=draw_int(g, 1, 40), non_attention_kernel=[1, 3][draw_int(g, 0, 1)],
                          divisor=[1, 2, 4, 8][draw_int(g, 0, 3)]))
    return cases


# Exercise 1: the parameters A2N adds ---------------------------------------------------------------------------

@exercise("a2n_overhead", _cases,
          "Parameters A2N adds to pl.resnet18(width) with attn_kw={'non_attention_kernel': ..., 'divisor': ...}.")
def _a2n_overhead(width, non_attention_kernel, divisor):
    kw = {"non_attention_kernel": non_attention_kernel, "divisor": divisor}
    return resnet18_overhead("params", width, attn="a2n", attn_kw=kw)


@solution("a2n_overhead")
def a2n_overhead(width, non_attention_kernel, divisor):
    def widths(C):  # inner width m = C/4 and ADM width m/4, each rounded to a multiple of the divisor
        def make_divisible(v):
            d = max(divisor, int(v + divisor / 2) // divisor * divisor)
            return d + divisor if d < 0.9 * v else d

        m = min(C, make_divisible(C / 4))
        return m, min(m, make_divisible(m / 4))

    kn = non_attention_kernel
    total = 0
    for C in (width, 2 * width, 4 * width, 8 * width):     # two blocks per stage
        m, r = widths(C)
        convs = C * m + 3 * 9 * m * m + (m * m + m) + kn * kn * m * m + m * C   # first, k1 k3 k4, k2, non, last
        adm = m * r + r * 2
        total += 2 * (convs + adm + 2 * C)                  # + the BN's weight and bias
    return total


# Exercise 2: the FLOPs A2N adds --------------------------------------------------------------------------------

@exercise("a2n_flops", _cases,
          "Forward FLOPs (one 32x32 image, 2 x MACs of convolutions and matrix products) A2N adds to "
          "pl.resnet18(width) with attn_kw={'non_attention_kernel': ..., 'divisor': ...}.")
def _a2n_flops(width, non_attention_kernel, divisor):
    kw = {"non_attention_kernel": non_attention_kernel, "divisor": divisor}
    return resnet18_overhead("flops", width, attn="a2n", attn_kw=kw)


@solution("a2n_flops")
def a2n_flops(width, non_attention_kernel, divisor):
    def widths(C):  # inner width m = C/4 and ADM width m/4, each rounded to a multiple of the divisor
        def make_divisible(v):
            d = max(divisor, int(v + divisor / 2) // divisor * divisor)
            return d + divisor if d < 0.9 * v else d

        m = min(C, make_divisible(C / 4))
        return m, min(m, make_divisible(m / 4))

    kn = non_attention_kernel
    total = 0
    for C, side in ((width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)):
        m, r = widths(C)
        N = side * side
        convs = 2 * N * (C * m + 3 * 9 * m * m + m * m + kn * kn * m * m + m * C)
        adm = 2 * (m * r + r * 2)                           # two bias-free linear layers on the pooled vector
        total += 2 * (convs + adm)
    return total
