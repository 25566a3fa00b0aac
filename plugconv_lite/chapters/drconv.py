"""DRConv (chapters/13_drconv.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

# The paper puts DRConv in place of convolutions throughout a network (the official code: the two 1x1 convs of every
# ShuffleNetV2 unit). In every 3x3 conv of the book's ResNet-18 it costs about 8x the parameters (n = 8 basis
# kernels) and, without a custom kernel, n times the conv FLOPs: too much for a CI smoke run and for any control
# at equal parameters. So DRConv replaces the four 3x3 convs of layer3 (8 x 8 maps at 32 x 32 input), with the
# official m = 8 regions and n = 8 basis kernels. The control matches parameters (the chapter computes the ratio):
# parameters do not depend on how the region-wise conv is implemented, FLOPs do (the official CUDA op computes one
# kernel per pixel, ours all n basis convs).
DRCONV = Variant("drconv", {"conv": "drconv", "conv_where": "layer3"},
                 note="DRConv (8 regions, 8 basis kernels) in the four 3x3 convs of layer3")
register_experiment("drconv", [BASELINE, DRCONV, Variant(
    "drconv_budget", budget_of=DRCONV, budget="params",
    note="plain ResNet-18 widened to DRConv-ResNet-18's parameter count")])


# Exercise 1: the guide's gradient through the argmax (the straight-through rule) -----------------------------------

def _guide_grad_cases(g):
    cases = []
    for B, m, O, H, W in [(1, 2, 1, 1, 1), (2, 3, 4, 3, 2), (1, 8, 2, 4, 4), (3, 4, 3, 2, 5)]:
        cases.append(dict(F=torch.randn(B, m, H, W, generator=g, dtype=torch.float64),
                          Y=torch.randn(B, m, O, H, W, generator=g, dtype=torch.float64),
                          G=torch.randn(B, O, H, W, generator=g, dtype=torch.float64)))
    return cases


@exercise("drconv_guide_grad", _guide_grad_cases,
          "dL/dF (B, m, H, W) for y = sum_j M_j Y_j with M the guided mask of F, under DRConv's straight-through "
          "rule; Y (B, m, O, H, W) holds every region's output, G = dL/dy (B, O, H, W).")
def _drconv_guide_grad(F, Y, G):
    from ..conv.drconv import region_mask
    F = F.detach().clone().requires_grad_(True)
    y = (Y * region_mask(F).unsqueeze(2)).sum(dim=1)
    return torch.autograd.grad(y, F, G)[0]


@solution("drconv_guide_grad")
def drconv_guide_grad(F, Y, G):
    A = torch.softmax(F, dim=1)                           # the mask is differentiated as if it were A
    grad_A = (G.unsqueeze(1) * Y).sum(dim=2)              # dL/dA_j(p) = <G_p, Y_j,p>
    return A * (grad_A - (A * grad_A).sum(dim=1, keepdim=True))   # back through the softmax


# Exercise 2: the parameters DRConv adds to layer3 of a ResNet-18 -------------------------------------------------

def _params_cases(g):
    cases = [dict(width=64, regions=8, num_bases=8), dict(width=16, regions=4, num_bases=2)]
    for _ in range(4):
        cases.append(dict(width=draw_int(g, 2, 24), regions=draw_int(g, 1, 8), num_bases=draw_int(g, 1, 8)))
    return cases


@exercise("drconv_params", _params_cases,
          "Parameters DRConv (regions m, num_bases n) adds to pl.resnet18(width) in place of layer3's four 3x3 "
          "convs (conv_where='layer3').")
def _drconv_params(width, regions, num_bases):
    return resnet18_overhead("params", width, conv="drconv", conv_where="layer3",
                             conv_kw={"regions": regions, "num_bases": num_bases})


@solution("drconv_params")
def drconv_params(width, regions, num_bases):
    total = 0
    for C, O in [(2 * width, 4 * width)] + 3 * [(4 * width, 4 * width)]:   # layer3: one strided conv, then 3
        bases = num_bases * O * C * 9          # n basis kernels replace the conv's one kernel
        guide = regions * C * 9                # k x k guide conv C -> m, no bias
        generator = C * regions * num_bases + regions * num_bases   # Linear C -> m n
        total += bases + guide + generator - O * C * 9
    return total
