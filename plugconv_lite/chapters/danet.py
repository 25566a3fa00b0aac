"""DANet's position and channel attention (chapters/21_danet.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

DANET = Variant("danet", {"attn": "danet"},
                note="PAM + CAM on the residual branch of the blocks whose map is 8x8 or smaller (stages 3 and 4)")
# DANet adds about 10% FLOPs (CAM and PAM) and 7% parameters at width 64 (the chapter computes both): the control
# matches the larger change, the FLOPs.
register_experiment("danet", [
    BASELINE,
    Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch: the reference attention"),
    DANET,
    Variant("danet_budget", budget_of=DANET, budget="flops",
            note="control: the plain ResNet widened to DANet's FLOPs"),
])


# Exercise 1: the parameters DANet adds to a ResNet-18, with the site rule and the width rule ---------------------

def _overhead_cases(g):
    cases = [dict(width=64, max_resolution=8), dict(width=16, max_resolution=None), dict(width=4, max_resolution=4)]
    for _ in range(6):
        cases.append(dict(width=draw_int(g, 1, 40), max_resolution=[None, 2, 4, 8, 16, 32][draw_int(g, 0, 5)]))
    return cases


@exercise("danet_overhead", _overhead_cases,
          "Parameters DANet adds to pl.resnet18(width) with attn_kw={'max_resolution': max_resolution}.")
def _danet_overhead(width, max_resolution):
    return resnet18_overhead("params", width, attn="danet", attn_kw={"max_resolution": max_resolution})


@solution("danet_overhead")
def danet_overhead(width, max_resolution):
    def qk_width(C):  # min(C, make_divisible(C / 8, 8))
        v = C / 8
        d = max(8, int(v + 4) // 8 * 8)
        if d < 0.9 * v:
            d += 8
        return min(C, d)

    total = 0
    for C, side in ((width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)):   # two blocks per stage
        if max_resolution is None or side <= max_resolution:
            d = qk_width(C)
            pam = 2 * (C * d + d) + C * C + C + 1      # query, key, value (1x1 convs with bias), gamma
            total += 2 * (pam + 1)                      # + CAM's gamma
    return total


# Exercise 2: the FLOPs DANet adds: where the (HW)^2 term bites ------------------------------------------------

def _flops_cases(g):
    cases = [dict(width=64, max_resolution=8), dict(width=16, max_resolution=None), dict(width=8, max_resolution=32)]
    for _ in range(5):
        cases.append(dict(width=draw_int(g, 1, 24), max_resolution=[None, 2, 4, 8, 16, 32][draw_int(g, 0, 5)]))
    return cases


@exercise("danet_flops", _flops_cases,
          "Forward FLOPs (one 32x32 image, 2 x MACs of convolutions and matrix products) DANet adds to "
          "pl.resnet18(width) with attn_kw={'max_resolution': max_resolution}.")
def _danet_flops(width, max_resolution):
    return resnet18_overhead("flops", width, attn="danet", attn_kw={"max_resolution": max_resolution})


@solution("danet_flops")
def danet_flops(width, max_resolution):
    def qk_width(C):  # min(C, make_divisible(C / 8, 8))
        v = C / 8
        d = max(8, int(v + 4) // 8 * 8)
        if d < 0.9 * v:
            d += 8
        return min(C, d)

    total = 0
    for C, side in ((width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)):   # two blocks per stage
        if max_resolution is None or side <= max_resolution:
            N, d = side * side, qk_width(C)
            pam = 2 * N * C * (2 * d + C) + 2 * N * N * (d + C)   # three 1x1 convs; Q^T K and V S^T
            cam = 2 * 2 * C * C * N                                # X X^T and S X
            total += 2 * (pam + cam)
    return total
