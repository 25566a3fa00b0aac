"""CondConv and DY-CNN (chapters/10_condconv.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

# Both modules in place of every 3x3 conv of the residual blocks (the stem and the 1x1 shortcuts stay plain: the
# DY-CNN paper keeps its first conv static), K = 4 experts each, weights with the backbone's own Kaiming fan-out
# rule (the modules' default). K = 4 multiplies the swapped convs' parameters by four; the two modules differ only
# in their routing layers (a few thousand parameters in all), so ONE control, matched on DY-CNN's parameters,
# serves both. The widened control also costs more FLOPs than either dynamic network (which buy their parameters
# at a few percent of FLOPs); the chapter computes both ratios and says which budget is matched.
CONDCONV = Variant("condconv", {"conv": "condconv", "conv_kw": {"num_experts": 4}},
                   note="CondConv (K = 4, sigmoid routing per layer) in every 3x3 conv of the residual blocks")
DYCONV = Variant("dyconv", {"conv": "dyconv", "conv_kw": {"num_experts": 4}},
                 note="DY-CNN (K = 4, softmax attention, T annealed 30 -> 1 over the first 10% of the steps) in "
                      "every 3x3 conv of the residual blocks")
register_experiment("condconv", [
    BASELINE, CONDCONV, DYCONV,
    Variant("dyconv_budget", budget_of=DYCONV, budget="params",
            note="control: the plain ResNet widened to DY-CNN's parameters (CondConv's are within 0.1%)"),
])


# Exercise 1: the per-sample convolution, without a loop over the samples ---------------------------------------

def _conv_cases(g):
    cases = []
    for B, C, O, K, k, stride, H, W in [(3, 4, 6, 4, 3, 1, 7, 6), (1, 3, 5, 2, 3, 2, 8, 8), (5, 2, 3, 3, 1, 1, 4, 5),
                                        (4, 6, 4, 8, 5, 2, 9, 7), (2, 8, 8, 1, 3, 1, 5, 5)]:
        cases.append(dict(x=torch.randn(B, C, H, W, generator=g), weight=torch.randn(K, O, C, k, k, generator=g),
                          bias=torch.randn(K, O, generator=g), r=torch.rand(B, K, generator=g), stride=stride))
    return cases


@exercise("expert_mixture_conv", _conv_cases,
          "y (B, O, H', W'): sample b convolved with sum_k r[b, k] weight[k] plus bias sum_k r[b, k] bias[k], "
          "padding k // 2, the given stride; x (B, C, H, W), weight (K, O, C, k, k), bias (K, O), r (B, K).")
def _expert_mixture_conv(x, weight, bias, r, stride):
    from ..conv._dynamic import per_sample_conv
    K = weight.shape[0]
    W = (r @ weight.reshape(K, -1)).reshape(r.shape[0], *weight.shape[1:])
    k = weight.shape[-1]
    return per_sample_conv(x, W, r @ bias, stride, k // 2)


@solution("expert_mixture_conv")
def expert_mixture_conv(x, weight, bias, r, stride):
    B, C, H, W = x.shape
    K, O, _, k, _ = weight.shape
    kernels = torch.einsum("bk,koihw->boihw", r, weight)         # (B, O, C, k, k): one kernel per sample
    biases = r @ bias                                            # (B, O)
    # the batch folded into the groups: one image with B*C channels, group b = sample b's channels and kernel
    y = torch.nn.functional.conv2d(x.reshape(1, B * C, H, W), kernels.reshape(B * O, C, k, k),
                                   biases.reshape(B * O), stride, k // 2, 1, B)
    return y.reshape(B, O, *y.shape[-2:])


# Exercise 2: the parameters DY-CNN adds to ResNet-18 -----------------------------------------------------------

def _overhead_cases(g):
    cases = [dict(width=64, num_experts=4, reduction=4), dict(width=16, num_experts=4, reduction=4)]
    for _ in range(5):
        cases.append(dict(width=draw_int(g, 2, 40), num_experts=draw_int(g, 1, 8),
                          reduction=[1, 2, 4, 8][draw_int(g, 0, 3)]))
    return cases


@exercise("dyconv_overhead", _overhead_cases,
          "Parameters pl.resnet18(width, conv='dyconv', conv_kw={'num_experts': K, 'reduction': r}) has beyond "
          "pl.resnet18(width).")
def _dyconv_overhead(width, num_experts, reduction):
    return resnet18_overhead("params", width, conv="dyconv",
                             conv_kw={"num_experts": num_experts, "reduction": reduction})


@solution("dyconv_overhead")
def dyconv_overhead(width, num_experts, reduction):
    def hidden(C):  # make_divisible(C / reduction, 8): nearest multiple of 8, at least 8, never 10% below
        h = max(8, int(C / reduction + 4) // 8 * 8)
        return h + 8 if h < 0.9 * C / reduction else h

    extra = 0
    c_in = width
    for stage, c_out in enumerate([width, 2 * width, 4 * width, 8 * width]):
        for block in range(2):  # two basic blocks per stage, each with two 3x3 convs
            for C, O in [(c_in, c_out), (c_out, c_out)]:
                conv = O * C * 9
                extra += (num_experts - 1) * conv + C * hidden(C) + hidden(C) * num_experts + num_experts
            c_in = c_out
    return extra
