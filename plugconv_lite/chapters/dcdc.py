"""DCDC, the book's labelled reconstruction (chapters/16_dcdc.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import math

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

DCDC = Variant("dcdc", {"conv": "dcdc"},
               note="DCDC reconstruction (LSA involution + GSI over K = 4 kernels) in every 3x3 conv of the blocks")
# The GSI branch's kernel bank multiplies the blocks' conv parameters by about K = 4 (the chapter computes the ratio
# at width 64); FLOPs grow far less. The control matches parameters, the larger departure.
register_experiment("dcdc", [
    BASELINE,
    DCDC,
    Variant("dcdc_budget", budget_of=DCDC, budget="params",
            note="control: the plain ResNet widened to the DCDC network's parameters"),
])


# Exercise 1: the parameters DCDC adds to a whole ResNet-18 --------------------------------------------------------

def _overhead_cases(g):
    cases = [dict(width=64, num_kernels=4, group_channels=16), dict(width=16, num_kernels=1, group_channels=16)]
    for _ in range(5):
        cases.append(dict(width=draw_int(g, 2, 40), num_kernels=draw_int(g, 1, 5),
                          group_channels=[1, 4, 8, 16, 12][draw_int(g, 0, 4)]))
    return cases


@exercise("dcdc_overhead", _overhead_cases,
          "Parameters that conv='dcdc' with conv_kw={'num_kernels': K, 'group_channels': gc} adds to "
          "pl.resnet18(width): every 3x3 conv of the residual blocks becomes a DCDC layer (bias-free, groups 1).")
def _dcdc_overhead(width, num_kernels, group_channels):
    return resnet18_overhead("params", width, conv="dcdc",
                             conv_kw={"num_kernels": num_kernels, "group_channels": group_channels})


@solution("dcdc_overhead")
def dcdc_overhead(width, num_kernels, group_channels):
    def hidden(C):                       # make_divisible(C / 4, 8): a multiple of 8, >= 8, never 10% below C / 4
        v = C / 4
        units = max(8, int(v + 4) // 8 * 8)
        return units + 8 if units < 0.9 * v else units

    def layer(C, O):
        K, h, G = num_kernels, hidden(C), C // math.gcd(C, group_channels)
        gsi = K * O * C * 9 + C * h + h * K + K          # kernel bank, W_z1 (no bias), W_z2 + b_z2
        lsa = C * h + h + h * G * 9 + G * 9 + C * O      # W_h1 + bias, W_h2 + bias, W_v
        return gsi + lsa - O * C * 9                     # minus the plain conv it replaces

    total, C_in = 0, width
    for C in (width, 2 * width, 4 * width, 8 * width):  # four stages of two blocks, two 3x3 convs per block
        total += layer(C_in, C) + 3 * layer(C, C)
        C_in = C
    return total


# Exercise 2: the LSA branch with the same local kernel everywhere is a plain convolution --------------------------

def _as_conv_cases(g):
    cases = []
    for O, C, G, k in [(3, 4, 2, 3), (5, 6, 3, 3), (2, 8, 1, 3), (4, 4, 4, 5), (6, 9, 3, 1)]:
        cases.append(dict(Wv=torch.randn(O, C, generator=g), H=torch.randn(G, k, k, generator=g)))
    return cases


@exercise("dcdc_lsa_as_conv", _as_conv_cases,
          "The kernel (O, C, k, k) of the plain conv (stride 1, same padding) that computes the LSA branch when its "
          "generator returns the same kernels H (G, k, k) at every position: channel c uses H[c // (C / G)], and "
          "the channel mix is W_v (O, C).")
def _dcdc_lsa_as_conv(Wv, H):
    from ..conv.dcdc import DCDCConv2d
    O, C = Wv.shape
    G, k, _ = H.shape
    m = DCDCConv2d(C, O, k, group_channels=C // G).to(Wv.dtype)
    with torch.no_grad():  # a generator that ignores its input: zero weights, H as the bias
        m.gen2.weight.zero_()
        m.gen2.bias.copy_(H.reshape(-1))
        m.mix.weight.copy_(Wv.reshape(O, C, 1, 1))
        # the equivalent kernel, read off the module: its response to a unit impulse in channel c
        eye = torch.zeros(C, C, 2 * k - 1, 2 * k - 1, dtype=Wv.dtype)
        eye[torch.arange(C), torch.arange(C), k - 1, k - 1] = 1.0
        y = m.lsa(eye)                                              # (C, O, 2k-1, 2k-1): the flipped kernel
        centre = y[:, :, k // 2:k // 2 + k, k // 2:k // 2 + k].flip(-1, -2)
    return centre.permute(1, 0, 2, 3).contiguous()


@solution("dcdc_lsa_as_conv")
def dcdc_lsa_as_conv(Wv, H):
    O, C = Wv.shape
    G = H.shape[0]
    Hc = H.repeat_interleave(C // G, dim=0)             # (C, k, k): channel c's spatial kernel
    return Wv[:, :, None, None] * Hc[None]              # W[o, c] = W_v[o, c] H[g(c)]
