"""IC-Conv and EDO: what this chapter adds to the library (chapters/05_icconv.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

import torch

from .. import edo as _edo
from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment, register_prepare

# the dilation patterns come from EDO, a search run once per profile before the variant trains. IC-Conv has the
# plain conv's parameters and FLOPs for every pattern (the chapter asserts it), so no equal-budget control.
register_prepare("edo", _edo.prepare)
register_experiment("icconv", [BASELINE, Variant(
    "icconv", {"conv": "icconv"}, prepare="edo",
    prepare_kw={"D_max": 2, "supernet_budget": 1 / 3, "search_images": 1024},
    note="IC-Conv in every 3x3 conv of the blocks; per-channel dilations (1..2 in H and W) searched by EDO")])


def _random_pattern(g, channels, D_max):
    return [(draw_int(g, 1, D_max), draw_int(g, 1, D_max)) for _ in range(channels)]


# Exercise 1: IC-Conv as one dense K x K convolution (the supernet's shape) -------------------------------------

def _as_dense_cases(g):
    cases = []
    for i in range(6):
        C, O, D_max, k = draw_int(g, 1, 4), draw_int(g, 1, 6), draw_int(g, 1, 4), 5 if i == 5 else 3
        cases.append(dict(weight=torch.randn(O, C, k, k, generator=g), pattern=_random_pattern(g, O, D_max),
                          D_max=D_max))
    return cases


@exercise("icconv_as_dense", _as_dense_cases,
          "The dense K x K kernel (K = (k - 1) D_max + 1) that computes the IC-Conv with this k x k weight and "
          "per-channel pattern as one convolution (padding (K - 1) / 2): each channel's taps at its dilation, "
          "zeros elsewhere.")
def _icconv_as_dense(weight, pattern, D_max):
    from ..edo import SupernetConv2d
    O, C, k, _ = weight.shape
    dense = SupernetConv2d(C, O, k, D_max=D_max)
    with torch.no_grad():
        dense.weight.zero_()
        for o, d in enumerate(pattern):
            rows, cols = dense.taps(tuple(d))
            dense.weight[o, :, rows, cols] = weight[o]
    return dense.weight.detach().clone()


@solution("icconv_as_dense")
def icconv_as_dense(weight, pattern, D_max):
    O, C, k, _ = weight.shape
    K = (k - 1) * D_max + 1
    c, r = (K - 1) // 2, (k - 1) // 2              # centre of the dense kernel, half-width of the small one
    dense = weight.new_zeros(O, C, K, K)
    for o, (dh, dw) in enumerate(pattern):
        for a in range(k):
            for b in range(k):
                dense[o, :, c + dh * (a - r), c + dw * (b - r)] = weight[o, :, a, b]
    return dense


# Exercise 2: the theoretical receptive field of each output channel of a stack of IC-Conv layers ---------------

def _stack_rf_cases(g):
    cases = [dict(patterns=[[(1, 1), (2, 1)]], strides=[1]),
             dict(patterns=[[(1, 2)], [(1, 1), (3, 3)]], strides=[2, 1])]
    for _ in range(5):
        n = draw_int(g, 1, 3)
        D_max = draw_int(g, 1, 3)
        cases.append(dict(patterns=[_random_pattern(g, draw_int(g, 1, 4), D_max) for _ in range(n)],
                          strides=[draw_int(g, 1, 2) for _ in range(n)]))
    return cases


@exercise("icconv_stack_rf", _stack_rf_cases,
          "For a stack of 3 x 3 IC-Conv layers (patterns[l]: one (d_h, d_w) per output channel of layer l; "
          "strides[l]), the theoretical receptive field (height, width) of each output channel of the last layer.")
def _icconv_stack_rf(patterns, strides):
    import torch.nn as nn

    from ..conv.icconv import ICConv2d
    layers, c_in = [], 1
    for pattern, s in zip(patterns, strides):
        D_max = max(max(d) for d in pattern)
        conv = ICConv2d(c_in, len(pattern), 3, stride=s, pattern=[list(d) for d in pattern], D_max=D_max)
        nn.init.ones_(conv.weight)              # positive weights: no two paths cancel
        layers.append(conv.double())
        c_in = len(pattern)
    net = nn.Sequential(*layers)
    bound, jump = 1, 1              # an upper bound on the receptive field: every channel at the layer's largest d
    for pattern, s in zip(patterns, strides):
        bound += 2 * max(max(d) for d in pattern) * jump
        jump *= s
    size = 2 * bound + 2 * jump + 1  # the centre unit's field lies inside, whatever the alignment
    out = []
    for o in range(len(patterns[-1])):
        x = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
        y = net(x)
        y[0, o, y.shape[2] // 2, y.shape[3] // 2].backward()
        rows, cols = x.grad[0].abs().sum(0).nonzero(as_tuple=True)
        out.append((int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1))
    return out


@solution("icconv_stack_rf")
def icconv_stack_rf(patterns, strides):
    grow_h = grow_w = 0          # what the layers below the last add (the widest channel of each counts)
    jump = 1                     # input pixels between neighbouring units of the current layer's input
    for pattern, s in zip(patterns[:-1], strides[:-1]):
        grow_h += 2 * max(dh for dh, _ in pattern) * jump
        grow_w += 2 * max(dw for _, dw in pattern) * jump
        jump *= s
    return [(1 + grow_h + 2 * dh * jump, 1 + grow_w + 2 * dw * jump) for dh, dw in patterns[-1]]
