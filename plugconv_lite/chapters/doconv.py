"""DO-Conv: what this chapter adds to the library (chapters/02_doconv.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

import torch

from ..exercises import draw_int, exercise
from ..experiments import BASELINE, Variant, register_experiment
from ..measure import count_params

# W initialised with the backbone's own conv rule, so with D = 0 and D_mul = M*N the network starts as the baseline
# does; only the over-parameterization differs.
register_experiment("doconv", [BASELINE, Variant(
    "doconv", {"conv": "doconv", "conv_kw": {"weight_init": "fan_out"}},
    note="DO-Conv (D_mul = M*N) in place of every 3x3 conv of the residual blocks; folded for inference")])


def _doconv_fold_cases(g):
    cases = []
    for C, O, groups, k, D_mul in [(4, 6, 1, 3, 9), (6, 4, 1, 3, 13), (8, 8, 2, 3, 9), (4, 4, 4, 3, 18),
                                   (6, 9, 3, 3, 10), (4, 8, 4, 3, 9), (2, 3, 1, 5, 25)]:
        cases.append(dict(W=torch.randn(O, C // groups, D_mul, generator=g),
                          D=0.5 * torch.randn(C, k * k, D_mul, generator=g), groups=groups, kernel_size=k))
    return cases


@exercise("doconv_fold", _doconv_fold_cases,
          "Fold DO-Conv: given W (O, C/g, D_mul), the trainable D (C, M*N, D_mul), groups g and the kernel size k "
          "(M = N = k), return the conventional kernel (O, C/g, k, k), with D_i applied to input channel i. Remember "
          "the frozen identity D_diag.")
def _doconv_fold(W, D, groups, kernel_size):
    from ..conv.doconv import DOConv2d
    m = DOConv2d(D.shape[0], W.shape[0], kernel_size, groups=groups, D_mul=W.shape[2])
    with torch.no_grad():
        m.W.copy_(W), m.D.copy_(D)
        return m.kernel()


def _doconv_params_cases(g):
    return [dict(C_in=ci, C_out=co, k=k, D_mul=dm, groups=gr)
            for ci, co, k, dm, gr in [(64, 64, 3, None, 1), (64, 128, 3, 18, 1), (32, 32, 3, 12, 32),
                                      (16, 48, 5, None, 4), (64, 64, 1, None, 1), (128, 256, 3, 27, 2)]]


@exercise("doconv_params", _doconv_params_cases,
          "Return (parameters while training, parameters after folding) of a bias-free DO-Conv layer; D_mul=None "
          "means M*N.")
def _doconv_params(C_in, C_out, k, D_mul, groups):
    from ..conv.doconv import DOConv2d
    m = DOConv2d(C_in, C_out, k, groups=groups, D_mul=D_mul)
    return count_params(m), count_params(m.fold())
