"""SPD-Conv: what this chapter adds to the library (chapters/09_spdconv.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

import torch

from ..exercises import draw_int, exercise
from ..experiments import BASELINE, Variant, register_experiment
from ..measure import count_params

# space-to-depth + a stride-1 conv in place of every strided conv (the paper's rule), i.e. the three downsampling
# 3x3 convs AND their strided 1x1 shortcuts
register_experiment("spdconv", [BASELINE, Variant(
    "spdconv", {"conv": "spdconv", "conv_where": "strided"},
    note="SPD-Conv for every strided conv: the downsampling 3x3 convs and their 1x1 shortcuts")])


def _space_to_depth_cases(g):
    return [dict(x=torch.randn(draw_int(g, 1, 2), draw_int(g, 1, 4), draw_int(g, 1, 9), draw_int(g, 1, 9), generator=g))
            for _ in range(6)]


@exercise("space_to_depth", _space_to_depth_cases,
          "Space-to-depth with scale 2 in the official channel order: (B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2)), "
          "blocks (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col); odd H or W are "
          "first zero-padded at the bottom / right.")
def _space_to_depth(x):
    from ..conv.spdconv import space_to_depth
    return space_to_depth(x, 2)


def _spd_cost_cases(g):
    return [dict(C=draw_int(g, 1, 64), O=draw_int(g, 1, 64), k=[1, 3, 5][draw_int(g, 0, 2)], H=draw_int(g, 1, 33),
                 s=draw_int(g, 2, 3)) for _ in range(8)]


@exercise("spdconv_cost", _spd_cost_cases,
          "Return (params, FLOPs) of an SPD-Conv replacing a bias-free k x k conv with stride s from C to O channels "
          "on an H x H input (FLOPs = 2 x multiply-accumulates).")
def _spdconv_cost(C, O, k, H, s):
    from ..conv.spdconv import SPDConv2d
    from ..measure import count_flops
    m = SPDConv2d(C, O, k, stride=s)
    return count_params(m), count_flops(m, (1, C, H, H))
