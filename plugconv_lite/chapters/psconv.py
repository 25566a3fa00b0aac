"""PSConv: what this chapter adds to the library (chapters/04_psconv.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

import torch

from ..exercises import draw_int, exercise
from ..experiments import BASELINE, Variant, register_experiment

register_experiment("psconv", [BASELINE, Variant(
    "psconv", {"conv": "psconv", "conv_kw": {"parts": 4, "d": 2}},
    note="PSConv (P=4 parts, d=2: dilations 1, 2, 4) on every 3x3 conv of the blocks")])


def _psconv_map_cases(g):
    return [dict(P=P, d=d) for P, d in [(2, 1), (2, 2), (4, 2), (4, 1), (6, 3), (8, 2)]]


@exercise("psconv_dilation_map", _psconv_map_cases,
          "Return a (P, P) tensor whose entry [j, i] is the dilation rate PSConv uses between input part i and "
          "output part j (parts P, base dilation d).")
def _psconv_dilation_map(P, d):
    from ..conv.psconv import dilation_map
    return dilation_map(P, d).float()


def _psconv_forward_cases(g):
    cases = []
    for _ in range(5):
        P, d, k = [2, 4][draw_int(g, 0, 1)], draw_int(g, 1, 2), [1, 3, 3, 5][draw_int(g, 0, 3)]
        C, O = P * draw_int(g, 1, 3), P * draw_int(g, 1, 3)
        cases.append(dict(x=torch.randn(draw_int(g, 1, 2), C, draw_int(g, 3, 9), draw_int(g, 3, 9), generator=g),
                          W=torch.randn(O, C, k, k, generator=g), P=P, d=d))
    return cases


@exercise("psconv_forward", _psconv_forward_cases,
          "Implement PSConv's forward pass (stride 1, same padding, no bias) from its dense weight W (O, C, k, k): "
          "output part j reads input part j with dilation d, part (j + P/2) mod P with dilation 2d, the others "
          "with dilation 1.")
def _psconv_forward(x, W, P, d):
    from ..conv.psconv import PSConv2d
    m = PSConv2d(W.shape[1], W.shape[0], W.shape[-1], parts=P, d=d).load_dense_weight(W)
    with torch.no_grad():
        return m(x)
