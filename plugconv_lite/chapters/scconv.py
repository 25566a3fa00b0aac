"""SCConv: what this chapter adds to the library (chapters/06_scconv.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

import torch

from ..exercises import draw_int, exercise
from ..experiments import BASELINE, Variant, register_experiment
from ..measure import count_params

register_experiment("scconv", [BASELINE, Variant("scconv", {"conv": "scconv", "conv_kw": {"pooling_r": 4}},
                                                note="SCConv (pooling_r 4) in place of every 3x3 conv of the blocks")])


def _scconv_param_cases(g):
    cases = []
    for _ in range(8):
        groups = [1, 1, 2][draw_int(g, 0, 2)]
        cases.append(dict(C_in=2 * groups * draw_int(g, 1, 12) + (0 if groups > 1 else draw_int(g, 0, 1)),
                          C_out=2 * groups * draw_int(g, 1, 12) + (0 if groups > 1 else draw_int(g, 0, 1)),
                          k=[1, 3, 5][draw_int(g, 0, 2)], groups=groups))
    return cases


@exercise("scconv_params", _scconv_param_cases,
          "Return the number of parameters of SCConv2d(C_in, C_out, k, groups=groups) (no bias; BN after K_2 and "
          "K_3): the self-calibrated half has C_1 = C_in // 2 input and O_1 = C_out // 2 output channels, the plain "
          "half the rest.")
def _scconv_params(C_in, C_out, k, groups):
    from ..conv.scconv import SCConv2d
    return count_params(SCConv2d(C_in, C_out, k, groups=groups))


def _scconv_forward_cases(g):
    cases = []
    for _ in range(6):
        c, o, k = draw_int(g, 2, 9), draw_int(g, 2, 9), [1, 3][draw_int(g, 0, 1)]
        c1, o1 = c // 2, o // 2
        cases.append(dict(x=torch.randn(2, c, draw_int(g, 1, 9), draw_int(g, 1, 9), generator=g),
                          W1=torch.randn(o - o1, c - c1, k, k, generator=g), W2=torch.randn(c1, c1, k, k, generator=g),
                          W3=torch.randn(c1, c1, k, k, generator=g), W4=torch.randn(o1, c1, k, k, generator=g),
                          r=draw_int(g, 1, 4)))
    return cases


@exercise("scconv_forward", _scconv_forward_cases,
          "Implement the SCConv forward pass at stride 1 without norms (K_i are the convolutions with weights W_i, "
          "'same' padding k // 2): X_1 = x[:, :C // 2], X_2 = the rest; T_1 = the mean of every r x r window of "
          "X_1 (windows clipped at the border); X_1' = K_2(T_1) repeated r x r times and cropped to H x W; "
          "Y_1 = K_4(K_3(X_1) * sigmoid(X_1 + X_1')); Y_2 = K_1(X_2); return cat(Y_1, Y_2).",
          atol=1e-4)
def _scconv_forward(x, W1, W2, W3, W4, r):
    from ..conv.scconv import SCConv2d
    m = SCConv2d(x.shape[1], W4.shape[0] + W1.shape[0], W1.shape[-1], pooling_r=r, norm_layer=None)
    with torch.no_grad():
        for conv, W in ((m.K1, W1), (m.K2[0], W2), (m.K3[0], W3), (m.K4, W4)):
            conv.weight.copy_(W)
        return m(x)
