"""WeightNet (chapters/11_weightnet.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# WeightNet (M = G = 2) generates a kernel of the plain conv's size from O n weights, the plain conv's own count, plus
# the two small FCs (C C_gap + C_gap M O): +2.3% parameters at width 64. Generating the kernel costs M O n / G MACs
# per image and layer, once, against the conv's O n H' W' (1/16 of it on the 4x4 maps of the last stage): +2.0%
# FLOPs. Both under 5% (chapter 11 computes them): no equal-budget control. W_2 starts with the backbone's Kaiming fan-out rule, so the generated kernels start at the
# scale of the baseline's.
register_experiment("weightnet", [BASELINE, Variant(
    "weightnet", {"conv": "weightnet", "conv_kw": {"weight_init": "fan_out"}},
    note="WeightNet (M = G = 2, C_gap = max(16, C/16)) in place of every 3x3 conv of the residual blocks")])


# Exercise 1: the generator's parameters that make WeightNet start as a given plain conv --------------------------

def _start_cases(g):
    cases = []
    for O, Cg, k, M, G in [(2, 4, 3, 2, 2), (4, 2, 3, 4, 1), (3, 4, 1, 4, 2), (2, 2, 3, 3, 3), (5, 1, 3, 1, 1)]:
        cases.append(dict(weight=torch.randn(O, Cg, k, k, generator=g, dtype=torch.float64),
                          b_1=torch.randn(M * O, generator=g, dtype=torch.float64), M=M, G=G))
    for _ in range(3):
        G = [1, 2, 4][draw_int(g, 0, 2)]
        M, O, Cg = G * draw_int(g, 1, 3), draw_int(g, 1, 6), 4 * draw_int(g, 1, 3)
        cases.append(dict(weight=torch.randn(O, Cg, 3, 3, generator=g, dtype=torch.float64),
                          b_1=torch.randn(M * O, generator=g, dtype=torch.float64), M=M, G=G))
    return cases


@exercise("weightnet_start_as_conv", _start_cases,
          "W_2 (O*n, M/G), n = (C/g)*k*k, every row one value repeated M/G times, such that a WeightNet with "
          "W_1 = 0, b_1 given and this W_2 computes the plain conv `weight` (O, C/g, k, k) for every input.")
def _weightnet_start_as_conv(weight, b_1, M, G):
    from ..conv.weightnet import WeightNet2d
    O, Cg, k, _ = weight.shape
    m = WeightNet2d(Cg, O, k, M=M, G=G, dtype=weight.dtype)
    with torch.no_grad():
        m.W_2.fill_(1.0)  # then each kernel entry is the sum of the activations its group reads
        total = m.generate(torch.sigmoid(b_1)[None])[0].reshape(-1, 1)
    return (weight.reshape(-1, 1) / total).expand(-1, M // G).contiguous()


@solution("weightnet_start_as_conv")
def weightnet_start_as_conv(weight, b_1, M, G):
    O = weight.shape[0]
    n = weight[0].numel()
    a = torch.sigmoid(b_1).reshape(G * O, M // G)    # group j = G o + s reads a[j M/G : (j+1) M/G]
    w = weight.reshape(G * O, n // G)                # and writes slice s of filter o: rows j n/G ...
    rows = w / a.sum(dim=1, keepdim=True)            # kernel entry = row value * (sum of the group's activations)
    return rows.reshape(O * n, 1).expand(-1, M // G).contiguous()


# Exercise 2: how many kernels can the grouped FC generate? The dimension of their span ----------------------------

def _span_cases(g):
    cases = [dict(C=16, O=12, k=3, groups=1, M=2, G=2), dict(C=4, O=3, k=1, groups=1, M=8, G=2),
             dict(C=8, O=8, k=3, groups=8, M=4, G=1)]
    for _ in range(5):
        G = [1, 2, 3][draw_int(g, 0, 2)]
        groups = [1, 2][draw_int(g, 0, 1)]
        C = groups * G * draw_int(g, 1, 3)
        cases.append(dict(C=C, O=groups * draw_int(g, 1, 4), k=[1, 3][draw_int(g, 0, 1)], groups=groups,
                          M=G * draw_int(g, 1, 12), G=G))
    return cases


@exercise("weightnet_kernel_span", _span_cases,
          "The dimension of the linear span of all kernels W_2's grouped FC can output, for a generic W_2, of a "
          "WeightNet2d(C, O, k, groups=groups, M=M, G=G) (an int).")
def _weightnet_kernel_span(C, O, k, groups, M, G):
    from ..conv.weightnet import WeightNet2d
    m = WeightNet2d(C, O, k, groups=groups, M=M, G=G, dtype=torch.float64)
    with torch.no_grad():  # generate is linear in a: its image is spanned by the images of the unit vectors
        basis = m.generate(torch.eye(M * O, dtype=torch.float64)).reshape(M * O, -1)
    return int(torch.linalg.matrix_rank(basis))


@solution("weightnet_kernel_span")
def weightnet_kernel_span(C, O, k, groups, M, G):
    n = (C // groups) * k * k           # weights of one filter
    # G*O independent blocks; block j maps M/G activations to n/G weights: rank min(M/G, n/G) each
    return G * O * min(M // G, n // G)
