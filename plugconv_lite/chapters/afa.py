"""AFA: attentive feature aggregation as a classifier head (chapters/28_afa.ipynb): the experiment and its
exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# The AFA head (layer3 + layer4, C = 256, SA bottleneck C/4) changes ResNet-18's parameters and FLOPs by under 5%
# (the chapter measures it): no equal-budget control.
register_experiment("afa", [
    BASELINE,
    Variant("afa", {"head": "afa"},
            note="AFA head: layer4 fused into layer3 (C = 256, SA bottleneck C/4), then pool + linear"),
])


# Exercise 1: the official multi-level rule (final_feature_fusion) ----------------------------------------------

def _levels_cases(g):
    cases = []
    for _ in range(6):
        L, B, C, H, W = draw_int(g, 1, 4), draw_int(g, 1, 3), draw_int(g, 1, 6), draw_int(g, 1, 5), draw_int(g, 1, 5)
        cases.append(dict(feats=torch.randn(L, B, C, H, W, generator=g),
                          s=torch.rand(L, B, 1, H, W, generator=g),
                          c=torch.rand(L, B, C, 1, 1, generator=g)))
    return cases


@exercise("afa_level_fusion", _levels_cases,
          "sum_j w^s_j w^c_j feats_j, w_j = a_j prod_{i>j} (1 - a_i), for the spatial and channel attentions.")
def _afa_level_fusion(feats, s, c):
    from ..heads.afa import front_to_back_weights
    ws, wc = front_to_back_weights(list(s)), front_to_back_weights(list(c))
    return sum(a * b * f for a, b, f in zip(ws, wc, feats))


@solution("afa_level_fusion")
def afa_level_fusion(feats, s, c):
    out = torch.zeros_like(feats[0])
    T_s, T_c = torch.ones_like(s[0]), torch.ones_like(c[0])  # what the levels after j leave over
    for j in reversed(range(feats.shape[0])):              # back to front
        out = out + s[j] * T_s * c[j] * T_c * feats[j]
        T_s, T_c = T_s * (1 - s[j]), T_c * (1 - c[j])
    return out


# Exercise 2: the bilinear kernel of the transposed-convolution upsampler ----------------------------------------

def _kernel_cases(g):
    return [dict(u=u) for u in (2, 3, 4, 5, 6, 8)]


@exercise("afa_bilinear_kernel", _kernel_cases,
          "The (2u, 2u) kernel with which a stride-u transposed conv (padding u // 2) upsamples bilinearly.")
def _afa_bilinear_kernel(u):
    from ..heads.afa import bilinear_upsample_kernel
    return bilinear_upsample_kernel(u).float()


@solution("afa_bilinear_kernel")
def afa_bilinear_kernel(u):
    centre = (2 * u - 1 - u % 2) / (2 * u)
    t = 1 - (torch.arange(2 * u) / u - centre).abs()     # a triangle, peak between the two middle taps
    return torch.outer(t, t)
