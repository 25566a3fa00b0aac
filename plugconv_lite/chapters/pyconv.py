"""PyConv: what this chapter adds to the library (chapters/03_pyconv.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

PYCONV = Variant(
    "pyconv", {"conv": "pyconv"},
    note="PyConv on every 3x3 conv of the blocks, pyramid per stage: kernels 3-9 / 3-7 / 3-5 / 3 at 32 / 16 / 8 / 4 px")

# At width 64 PyConv keeps the parameters within 5% of the baseline's but does about 0.84x its FLOPs (chapter 03
# computes both), so the control matches FLOPs: a plain ResNet-18 narrowed to PyConv-ResNet-18's FLOPs asks whether
# PyConv uses its arithmetic better than plain 3x3 convs do.
register_experiment("pyconv", [BASELINE, PYCONV, Variant(
    "pyconv_budget", budget_of=PYCONV, budget="flops",
    note="control: the plain backbone at the width whose FLOPs match the PyConv network's")])


# Exercise 1: the parameters of the PyConv the library builds by default for a layer ---------------------------------

def _default_param_cases(g):
    cases = [dict(C_in=64, O=64, R=32), dict(C_in=16, O=16, R=32), dict(C_in=32, O=64, R=16), dict(C_in=128, O=3, R=9)]
    for _ in range(8):
        cases.append(dict(C_in=[3, 8, 12, 16, 24, 32, 48, 64, 96][draw_int(g, 0, 8)], O=draw_int(g, 1, 70),
                          R=draw_int(g, 1, 40)))
    return cases


@exercise("pyconv_default_params", _default_param_cases,
          "Return the number of parameters (an int) of PyConv2d(C_in, O, resolution=R) with its default pyramid: "
          "levels from the map size, the paper's output shares and group counts (reduced by gcd), 3x3 base kernel.")
def _pyconv_default_params(C_in, O, R):
    from ..conv.pyconv import PyConv2d
    from ..measure import count_params
    return count_params(PyConv2d(C_in, O, resolution=R))


@solution("pyconv_default_params")
def pyconv_default_params(C_in, O, R):
    import math

    L = min(1 + (R >= 8) + (R >= 16) + (R >= 32), O)
    shares = {1: [1], 2: [1, 1], 3: [1, 1, 2], 4: [1, 1, 1, 1]}[L]
    splits = [O * s // sum(shares) for s in shares]
    for i in range(O - sum(splits)):        # leftover channels: one each to levels 0, 1, ...
        splits[i % L] += 1
    total = 0
    for l, O_l in enumerate(splits):
        k, g = 3 + 2 * l, math.gcd((1, 4, 8, 16)[l], C_in, O_l)
        total += C_in * O_l * k * k // g
    return total


# Exercise 2: the share of a kernel's taps that land on the map ---------------------------------------------------

def _coverage_cases(g):
    cases = [dict(kernel_size=9, resolution=8, dilation=1), dict(kernel_size=3, resolution=1, dilation=2)]
    for _ in range(10):
        cases.append(dict(kernel_size=[1, 3, 5, 7, 9][draw_int(g, 0, 4)], resolution=draw_int(g, 1, 32),
                          dilation=draw_int(g, 1, 3)))
    return cases


@exercise("tap_coverage", _coverage_cases,
          "Return (a float) the fraction of a k x k kernel's taps (dilation d) that land on an R x R map rather than "
          "on its zero padding, averaged over all output positions of a stride-1, same-padded convolution.")
def _tap_coverage(kernel_size, resolution, dilation):
    from ..conv.pyconv import tap_coverage
    return tap_coverage(kernel_size, resolution, dilation)


@solution("tap_coverage")
def coverage(kernel_size, resolution, dilation):
    half = (kernel_size - 1) // 2
    inside = 0
    for p in range(resolution):                 # output position along one axis
        for t in range(kernel_size):            # tap along that axis
            inside += 0 <= p + (t - half) * dilation < resolution
    share = inside / (resolution * kernel_size)
    return share ** 2                           # rows and columns are independent
