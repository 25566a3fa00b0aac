"""Res2Net: what this chapter adds to the library (chapters/07_res2net.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

import torch

from ..exercises import draw_int, exercise
from ..experiments import BASELINE, Variant, register_experiment
from ..measure import count_params

register_experiment("res2net", [
    BASELINE,
    Variant("res2net", {"block": "res2net", "block_kw": {"scale": 4, "base_width": 40}},
            note="Res2Net blocks, scale 4, base_width 40 (about the baseline's parameters)"),
    Variant("bottleneck", {"block": "res2net", "block_kw": {"scale": 1, "base_width": 76}},
            note="control: the same bottleneck without the hierarchy (scale 1), base_width 76 for about the same "
                 "parameters")])


def _res2net_rf_cases(g):
    return [dict(scale=s, stype=t) for s, t in [(1, "normal"), (2, "normal"), (4, "normal"), (6, "normal"),
                                                (8, "normal"), (4, "stage"), (3, "stage"), (1, "stage")]]


@exercise("res2net_split_rf", _res2net_rf_cases,
          "Return a tuple with the theoretical receptive field (pixels of the block's input) of each split output "
          "y_1, ..., y_s of one Res2Net block (identity split last, as in the official code).")
def _res2net_split_rf(scale, stype):
    from ..blocks.res2net import Res2NetBlock
    return tuple(Res2NetBlock.split_receptive_fields(scale, stype))


def _res2net_param_cases(g):
    cases = []
    for _ in range(8):
        c_out = 8 * draw_int(g, 1, 8)
        stride = draw_int(g, 1, 2)
        c_in = c_out if (stride == 1 and draw_int(g, 0, 1)) else 4 * draw_int(g, 1, 8)
        cases.append(dict(C_in=c_in, C_out=c_out, stride=stride, scale=draw_int(g, 1, 6), width=draw_int(g, 1, 12)))
    return cases


@exercise("res2net_params", _res2net_param_cases,
          "Return the number of parameters of Res2NetBlock(C_in, C_out, stride, scale=scale, width=width): 1x1 "
          "conv, s - 1 split 3x3 convs (one if s = 1), 1x1 conv, a BN after each conv, and the projection shortcut "
          "(1x1 conv + BN) where stride > 1 or C_in != C_out.")
def _res2net_params(C_in, C_out, stride, scale, width):
    from ..blocks.res2net import Res2NetBlock
    return count_params(Res2NetBlock(C_in, C_out, stride, scale=scale, width=width))
