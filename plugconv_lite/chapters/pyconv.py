"""PyConv: what this chapter adds to the library (chapters/03_pyconv.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

import torch

from ..exercises import draw_int, exercise
from ..experiments import BASELINE, Variant, register_experiment
from ..measure import count_params

register_experiment("pyconv", [BASELINE, Variant(
    "pyconv", {"conv": "pyconv"},
    note="PyConv on every 3x3 conv of the blocks, pyramid per stage: kernels 3-9 / 3-7 / 3-5 / 3 at 32 / 16 / 8 / 4 px")])


def _pyconv_param_cases(g):
    cases = []
    for _ in range(8):
        L = draw_int(g, 1, 4)
        C_in = [16, 32, 48, 64][draw_int(g, 0, 3)]
        groups = [[1, 2, 4, 8, 16][draw_int(g, 0, 4)] for _ in range(L)]
        splits = [G * draw_int(g, 1, 4) for G in groups]
        cases.append(dict(C_in=C_in, kernels=[3 + 2 * l for l in range(L)], groups=groups, splits=splits))
    return cases


@exercise("pyconv_params", _pyconv_param_cases,
          "Return the number of parameters (an int) of a bias-free PyConv with C_in input channels and levels given "
          "by kernels[l], groups[l] and splits[l] (output channels of level l).")
def _pyconv_params(C_in, kernels, groups, splits):
    from ..conv.pyconv import PyConv2d
    return count_params(PyConv2d(C_in, sum(splits), kernels=kernels, groups=groups, splits=splits))


def _coverage_cases(g):
    return [dict(kernel_size=[1, 3, 5, 7, 9][draw_int(g, 0, 4)], resolution=draw_int(g, 1, 32), dilation=draw_int(g, 1, 2))
            for _ in range(10)]


@exercise("tap_coverage", _coverage_cases,
          "Return (a float) the fraction of a k x k kernel's taps (dilation d) that land on an R x R map rather than "
          "on its zero padding, averaged over all output positions of a stride-1, same-padded convolution.")
def _tap_coverage(kernel_size, resolution, dilation):
    from ..conv.pyconv import tap_coverage
    return tap_coverage(kernel_size, resolution, dilation)
