"""SPD-Conv: what this chapter adds to the library (chapters/09_spdconv.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# space-to-depth + a stride-1 conv in place of every strided conv (the paper's rule), i.e. the three downsampling
# 3x3 convs AND their strided 1x1 shortcuts
SPDCONV = Variant("spdconv", {"conv": "spdconv", "conv_where": "strided"},
                  note="SPD-Conv for every strided conv: the downsampling 3x3 convs and their 1x1 shortcuts")
# SPD-Conv multiplies the replaced convs' weights by s^2 = 4: about x1.46 parameters and x1.34 FLOPs for the whole
# width-64 network. The control is the plain network widened to the same PARAMETER count (the larger of the two
# increases, so the control has at least SPD's capacity; its FLOPs then exceed SPD's): a gain of SPD over it is
# not explained by size. The official code's choice (shortcuts kept strided) is not a registered variant: it
# changes only the three 1x1 shortcuts, and the chapter's exercise 3 runs it.
register_experiment("spdconv", [BASELINE, SPDCONV, Variant(
    "spdconv_budget", budget_of=SPDCONV, budget="params",
    note="control: the plain ResNet-18 widened to SPD-ResNet-18's parameter count")])


# Exercise 1: what SPD-Conv adds to a whole ResNet-18 -----------------------------------------------------------

def _overhead_cases(g):
    subsets = [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    cases = [dict(width=64, stages=(2, 3, 4), shortcuts=True), dict(width=16, stages=(), shortcuts=False)]
    for _ in range(6):
        cases.append(dict(width=draw_int(g, 1, 48), stages=subsets[draw_int(g, 0, len(subsets) - 1)],
                          shortcuts=bool(draw_int(g, 0, 1))))
    return cases


@exercise("spd_overhead", _overhead_cases,
          "(parameters, FLOPs) that SPD-Conv adds to pl.resnet18(width) when the strided convs entering the given "
          "stages (2, 3, 4) are replaced, with or without their strided 1x1 shortcuts.")
def _spd_overhead(width, stages, shortcuts):
    import torch.nn as nn

    from ..conv.spdconv import SPDConv2d
    from ..measure import count_flops, count_params
    from ..models import resnet18

    params = flops = 0  # the replaced sites of the network, measured one layer at a time (a whole forward is slow)
    for s in resnet18(width=width).sites:
        if s.stride > 1 and s.stage + 1 in stages and (shortcuts or s.role != "shortcut"):
            spd = SPDConv2d(s.in_channels, s.out_channels, s.kernel_size, stride=s.stride)
            plain = nn.Conv2d(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.kernel_size // 2, bias=False)
            size = (1, s.in_channels, s.resolution, s.resolution)
            params += count_params(spd) - count_params(plain)
            flops += count_flops(spd, size) - count_flops(plain, size)
    return params, flops


@solution("spd_overhead")
def spd_overhead(width, stages, shortcuts):
    params = flops = 0
    for stage in stages:
        C = width * 2 ** (stage - 2)        # channels entering the stage
        O = 2 * C                           # the stage's width
        out = 32 // 2 ** (stage - 1)        # output size of the downsampling conv: 16, 8, 4
        for k in ((3, 1) if shortcuts else (3,)):
            extra = (2 * 2 - 1) * C * O * k * k      # s^2 - 1 more copies of the strided conv's weights
            params += extra
            flops += 2 * extra * out * out
    return params, flops


# Exercise 2: port a checkpoint from the official channel order to F.pixel_unshuffle's -------------------------

def _unshuffle_cases(g):
    cases = []
    for _ in range(6):
        s, C, O, k = draw_int(g, 2, 3), draw_int(g, 1, 5), draw_int(g, 1, 4), [1, 3][draw_int(g, 0, 1)]
        cases.append(dict(weight=torch.randn(O, s * s * C, k, k, generator=g), s=s))
    return cases


@exercise("spd_unshuffle_weight", _unshuffle_cases,
          "Given an SPD-Conv weight (O, s^2 C, k, k) for the official channel order, return the weight for which "
          "conv(F.pixel_unshuffle(x, s), W') equals conv(space_to_depth(x, s), W).")
def _spd_unshuffle_weight(weight, s):
    import torch.nn.functional as F

    from ..conv.spdconv import space_to_depth
    C = weight.shape[1] // (s * s)
    ids = torch.arange(C * s * s, dtype=torch.float64).view(1, C, s, s)    # one pixel block, every value unique
    official, unshuffled = space_to_depth(ids, s).flatten(), F.pixel_unshuffle(ids, s).flatten()
    where = {v: m for m, v in enumerate(unshuffled.tolist())}
    out = torch.empty_like(weight)
    for m, v in enumerate(official.tolist()):
        out[:, where[v]] = weight[:, m]
    return out


@solution("spd_unshuffle_weight")
def unshuffle_weight(weight, s):
    O, D, kh, kw = weight.shape
    C = D // (s * s)
    w = weight.reshape(O, s, s, C, kh, kw)                      # official: (o, j, i, c) with channel (j s + i) C + c
    return w.permute(0, 3, 2, 1, 4, 5).reshape(O, D, kh, kw)    # pixel_unshuffle: (o, c, i, j), c s^2 + i s + j
