"""DGC, dynamic group convolution (chapters/12_dgc.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

# DGC in place of both 3x3 convs of every residual block (the official dyresnet18 also replaces the 1x1 shortcut
# projections and keeps its 7x7 stem plain; here the projections stay plain, see the chapter's departures). The
# saliency generators add 5.3% parameters at width 64 (chapter 12 computes it), over the 5% rule: an equal-budget
# control matched on parameters. FLOPs are not the budget: the network as built (and as trained, densely masked)
# costs the baseline's FLOPs + 0.1%; only the pruned inference form is cheaper, and the chapter measures that.
_DGC = Variant("dgc", {"conv": "dgc"},
               note="DGC (4 heads, gate factor 0.25, group lasso 1e-5, progressive pruning) in every 3x3 conv of "
                    "the residual blocks")
register_experiment("dgc", [BASELINE, _DGC, Variant(
    "dgc_budget", budget_of=_DGC, budget="params",
    note="the plain backbone widened to DGC's parameter count (equal-budget control)")])


# Exercise 1: the parameters DGC adds to a whole ResNet-18 ---------------------------------------------------------

def _overhead_cases(g):
    cases = [dict(width=64, heads=4, squeeze_rate=16), dict(width=16, heads=4, squeeze_rate=16)]
    for _ in range(5):
        cases.append(dict(width=4 * draw_int(g, 2, 24), heads=[1, 2, 4][draw_int(g, 0, 2)],
                          squeeze_rate=[4, 8, 16, 32][draw_int(g, 0, 3)]))
    return cases


@exercise("dgc_overhead", _overhead_cases,
          "Parameters DGC (the given heads and squeeze_rate, divisor 8) adds to pl.resnet18(width, conv='dgc').")
def _dgc_overhead(width, heads, squeeze_rate):
    return resnet18_overhead("params", width, conv="dgc", conv_kw={"heads": heads, "squeeze_rate": squeeze_rate})


@solution("dgc_overhead")
def dgc_overhead(width, heads, squeeze_rate):
    def squeezed(C):
        r = squeeze_rate / 2 if C < 80 else squeeze_rate
        v = C / r
        units = max(8, int(v + 4) // 8 * 8)               # nearest multiple of 8, at least 8
        if units < 0.9 * v:
            units += 8
        return min(C, units)

    total = 0
    convs = []                                            # (C_in) of every 3x3 conv in the blocks
    for stage, C in enumerate((width, 2 * width, 4 * width, 8 * width)):
        C_prev = width if stage == 0 else C // 2
        convs += [C_prev, C, C, C]                        # block 1: C_prev -> C, C -> C; block 2: C -> C twice
    for C in convs:
        Cr = squeezed(C)
        total += heads * (C * Cr + Cr * C + C) + 2 * C    # W1, W2, b2 per head; the input BN's weight and bias
    return total


# Exercise 2: what the pruned inference form of one layer costs at training progress p --------------------------

def _flops_cases(g):
    cases = [dict(C=64, O=64, k=3, H=32, stride=1, heads=4, gate_factor=0.25, p=1.0),
             dict(C=64, O=64, k=3, H=32, stride=1, heads=4, gate_factor=0.25, p=0.05)]
    for _ in range(6):
        cases.append(dict(C=4 * draw_int(g, 2, 16), O=4 * draw_int(g, 1, 16), k=[1, 3, 5][draw_int(g, 0, 2)],
                          H=draw_int(g, 3, 17), stride=draw_int(g, 1, 2), heads=[1, 2, 4][draw_int(g, 0, 2)],
                          gate_factor=[0.25, 0.5, 0.45][draw_int(g, 0, 2)], p=draw_int(g, 0, 100) / 100))
    return cases


@exercise("dgc_pruned_flops", _flops_cases,
          "FLOPs of one DGC layer in eval mode at batch 1 on an H x H input, after set_progress(p).")
def _dgc_pruned_flops(C, O, k, H, stride, heads, gate_factor, p):
    import torch

    from ..conv.dgc import DGConv2d
    from ..measure import count_flops
    m = DGConv2d(C, O, k, stride, heads=heads, gate_factor=gate_factor)
    m.set_progress(p)
    with torch.device("meta"):
        return count_flops(m.eval(), (1, C, H, H))


@solution("dgc_pruned_flops")
def dgc_pruned_flops(C, O, k, H, stride, heads, gate_factor, p):
    if p <= 1 / 12:
        n = 0
    elif p >= 3 / 4:
        n = round(C * (1 - gate_factor))
    else:
        n = round(C * (1 - gate_factor) * 1.5 * (p - 1 / 12))
    r = 8 if C < 80 else 16                                # squeeze_rate 16, halved below 80 channels
    v = C / r
    Cr = max(8, int(v + 4) // 8 * 8)
    if Cr < 0.9 * v:
        Cr += 8
    Cr = min(C, Cr)
    Hp = (H + 2 * (k // 2) - k) // stride + 1              # "same" padding k // 2
    conv = 2 * Hp * Hp * O * (C - n) * k * k               # each output reads the C - n channels its head kept
    saliency = heads * 2 * (C * Cr + Cr * C)               # two matrix products per head
    return conv + saliency
