"""Feature Pyramid Transformer head (chapters/27_fpt.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# The head adds more than 5% of ResNet-18's FLOPs (and parameters): the chapter computes both and trains a plain
# ResNet-18 widened to the FPT network's FLOPs as the equal-budget control.
FPT = Variant("fpt", {"head": "fpt"},
              note="FPT head on stages 2-4 (d = 64, two softmaxes): pooled levels, concatenated, one linear layer")
register_experiment("fpt", [
    BASELINE,
    FPT,
    Variant("fpt_budget", budget_of=FPT, budget="flops",
            note="plain ResNet-18 widened to the FLOPs of the FPT network (equal-budget control)"),
])


# Exercise 1: which fine positions does the rendering transformer's strided conv read? ------------------------------

def _read_cases(g):
    return [dict(H=draw_int(g, 1, 20), W=draw_int(g, 1, 20), gap=draw_int(g, 1, 3)) for _ in range(8)]


@exercise("fpt_rt_positions_read", _read_cases,
          "How many of the H x W fine positions reach RT's strided 3x3 conv (stride 2**gap, padding 1).",
          atol=1e-3, rtol=0)
def _fpt_rt_positions_read(H, W, gap):
    from ..heads.fpt import RenderingTransformer
    rt = RenderingTransformer(1, gap=gap)
    x = torch.zeros(1, 1, H, W, requires_grad=True)
    with torch.no_grad():
        rt.W_s.weight.fill_(1.0)
    rt.W_s(x).sum().backward()
    return torch.tensor(float((x.grad != 0).sum()), dtype=torch.float64)


@solution("fpt_rt_positions_read")
def fpt_rt_positions_read(H, W, gap):
    s = 2 ** gap

    def covered(n):  # output i reads input rows s*i - 1, s*i, s*i + 1 (padding 1); outputs: ceil(n / s)
        rows = set()
        for i in range((n - 1) // s + 1):
            rows.update(r for r in (s * i - 1, s * i, s * i + 1) if 0 <= r < n)
        return len(rows)

    return torch.tensor(float(covered(H) * covered(W)), dtype=torch.float64)


# Exercise 2: the head's parameter count ------------------------------------------------------------------------------

def _params_cases(g):
    cases = []
    for _ in range(6):
        widths = [8 * draw_int(g, 1, 4) * 2 ** i for i in range(4)]
        L = draw_int(g, 1, 4)
        first = draw_int(g, 1, 5 - L)
        n_mix = [1, 2, 4][draw_int(g, 0, 2)]
        cases.append(dict(channels=widths, num_classes=draw_int(g, 2, 20), d=n_mix * draw_int(g, 1, 6),
                          levels=list(range(first, first + L)), n_mix=n_mix))
    return cases


@exercise("fpt_head_params", _params_cases,
          "Number of parameters of FPTHead(channels, num_classes, d, levels, n_mix) (GT inner width d // 2).",
          atol=1e-3, rtol=0)  # an exact count: a relative tolerance would accept a wrong one
def _fpt_head_params(channels, num_classes, d, levels, n_mix):
    from ..heads.fpt import FPTHead
    from ..measure import count_params
    return torch.tensor(float(count_params(FPTHead(channels, num_classes, d=d, levels=levels, n_mix=n_mix))),
                        dtype=torch.float64)


@solution("fpt_head_params")
def fpt_head_params(channels, num_classes, d, levels, n_mix):
    L = len(levels)
    c_i = max(d // 2, 1)
    lateral = sum(channels[l - 1] * d + d for l in levels)
    st = 3 * d * d + d + 2 * d + (n_mix * d if n_mix > 1 else 0)   # W_qk (bias), W_v, W_o, BN, w_mix
    gt = 3 * (d * c_i + c_i) + (c_i * d + d) + 2 * d                    # theta, phi, g, W_z, BN
    rt = d * d + 9 * d * d + 9 * d * d + 3 * 2 * d                       # W_w, W_q, W_s, three BNs
    pairs = L * (L - 1) // 2                                            # one GT and one RT per pair of levels
    fuse = L * (9 * (L + 1) * d * d + 2 * d)
    fc = L * d * num_classes + num_classes
    return torch.tensor(float(lateral + L * st + pairs * (gt + rt) + fuse + fc), dtype=torch.float64)
