"""ODConv (chapters/15_odconv.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

# Where the official od_resnet puts it: every conv of the residual blocks (a BasicBlock's two 3x3 convs); the stem,
# the 1x1 shortcut convs and the classifier stay plain. K = 4 is the paper's "ODConv (4x)"; the temperature falls
# 30 -> 1 over the first tenth of the training (official: 10 of 100 epochs), driven by the trainer's set_progress.
ODCONV = Variant("odconv", {"conv": "odconv", "conv_kw": {"kernel_num": 4}},
                 note="ODConv (4x, r = 1/16) in place of every 3x3 conv of the blocks; T 30 -> 1 over 10% of steps")
# ODConv (4x) holds four kernels per conv: about four times the baseline's parameters at width 64 (chapter 15
# computes the ratio), while its FLOPs grow by the attention and the per-sample kernel aggregation. The budget that
# differs is parameters: the control is the plain ResNet-18 at the width whose parameters match ODConv (4x)'s.
# ODConv (1x) changes parameters and FLOPs by under 5% (the chapter computes both); the chapter compares it with
# 4x on cost and on the computation (four identical kernels are the 1x layer), and trains the paper's headline 4x
# only, to keep the chapter inside its CI budget (each trained variant costs a smoke training).
register_experiment("odconv", [
    BASELINE, ODCONV,
    Variant("odconv_budget", budget_of=ODCONV, budget="params",
            note="control: the plain ResNet-18 at the width whose parameters match the ODConv (4x) network's")])


# Exercise 1: the parameters ODConv adds to a whole ResNet-18 ------------------------------------------------------

def _overhead_cases(g):
    cases = [dict(width=64, kernel_num=4, reduction=0.0625), dict(width=16, kernel_num=1, reduction=0.0625)]
    for _ in range(6):
        cases.append(dict(width=draw_int(g, 4, 40), kernel_num=draw_int(g, 1, 5),
                          reduction=[0.0625, 0.125, 0.25, 0.5][draw_int(g, 0, 3)]))
    return cases


@exercise("odconv_overhead", _overhead_cases,
          "Parameters that ODConv (kernel_num K, the given reduction, min_channels 16, its BatchNorm in the attention "
          "branch) adds to pl.resnet18(width) when it replaces every 3x3 conv of the residual blocks (the "
          "default conv placement; the stem and the 1x1 shortcut convs stay plain).")
def _odconv_overhead(width, kernel_num, reduction):
    return resnet18_overhead("params", width, conv="odconv",
                             conv_kw={"kernel_num": kernel_num, "reduction": reduction})


@solution("odconv_overhead")
def odconv_overhead(width, kernel_num, reduction):
    K, k2 = kernel_num, 9

    def layer(C, O):  # one ODConv replacing a 3x3 C -> O conv, minus that conv's C O k^2 weights
        A = max(int(C * reduction), 16)
        heads = C + O + k2 + (K if K > 1 else 0)          # a_c, a_f, a_s, a_w; each head has a bias
        return (K - 1) * O * C * k2 + C * A + 2 * A + A * heads + heads

    total, c_in = 0, width
    for stage, C in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            total += layer(c_in, C) + layer(C, C)         # conv1 (c_in -> C), conv2 (C -> C)
            c_in = C
    return total


# Exercise 2: the FLOPs ODConv adds to a ResNet-18, for a batch (paid per sample, unlike DO-Conv's composition) ----

def _flops_cases(g):
    cases = [dict(width=8, kernel_num=4, batch=2), dict(width=4, kernel_num=1, batch=3)]
    for _ in range(3):
        cases.append(dict(width=draw_int(g, 2, 10), kernel_num=draw_int(g, 1, 5), batch=draw_int(g, 1, 3)))
    return cases


@exercise("odconv_flops_overhead", _flops_cases,
          "FLOPs (as pl.count_flops counts them: 2 x multiply-accumulates of convs and matrix products) that "
          "ODConv (kernel_num K, reduction 1/16, min_channels 16) adds to pl.resnet18(width) on a batch of `batch` "
          "32x32 images, replacing every 3x3 conv of the residual blocks.")
def _odconv_flops_overhead(width, kernel_num, batch):
    from ..experiments import shapes_only
    from ..measure import count_flops
    from ..models import resnet18

    def flops(**kw):  # counted on the meta device: shapes only, no arithmetic
        return shapes_only(lambda: count_flops(resnet18(width=width, **kw), (batch, 3, 32, 32)))

    return flops(conv="odconv", conv_kw={"kernel_num": kernel_num}) - flops()


@solution("odconv_flops_overhead")
def odconv_flops_overhead(width, kernel_num, batch):
    K, k2 = kernel_num, 9

    def layer(C, O):  # per sample: the squeeze and heads, and the aggregation sum_k a_w,k W_k (a matmul if K > 1)
        A = max(int(C * 0.0625), 16)
        heads = C + O + k2 + (K if K > 1 else 0)
        aggregation = 2 * K * O * C * k2 if K > 1 else 0
        return 2 * C * A + 2 * A * heads + aggregation   # the convolution itself costs what the plain one does

    total, c_in = 0, width
    for C in (width, 2 * width, 4 * width, 8 * width):
        for block in range(2):
            total += layer(c_in, C) + layer(C, C)
            c_in = C
    return batch * total
