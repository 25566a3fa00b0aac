"""CBAM (chapters/17_cbam.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# CBAM changes ResNet-18's parameters and FLOPs by under 5% (the chapter measures it): no equal-budget control.
register_experiment("cbam", [
    BASELINE,
    Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch: the reference row"),
    Variant("cbam", {"attn": "cbam"}, note="CBAM, channel then spatial gate (the paper's order)"),
    Variant("cbam_parallel", {"attn": "cbam", "attn_kw": {"order": "parallel"}},
            note="CBAM, both gates computed from the block's output and applied together"),
])


def _gate_cases(g):
    cases = []
    for i in range(6):
        B, C, hidden, H, W = draw_int(g, 1, 3), draw_int(g, 2, 24), draw_int(g, 1, 8), draw_int(g, 1, 7), \
            draw_int(g, 1, 7)
        scale = [1.0, 30.0, 120.0][i % 3]  # large activations: exp overflows in float32 unless stabilised
        cases.append(dict(x=scale * torch.randn(B, C, H, W, generator=g), W0=torch.randn(hidden, C, generator=g),
                          b0=torch.randn(hidden, generator=g), W1=torch.randn(C, hidden, generator=g) / 10,
                          b1=torch.randn(C, generator=g)))
    return cases


# Exercise 1: a third descriptor, log-sum-exp pooling, through the same shared MLP ------------------------------

@exercise("cbam_lse_gate", _gate_cases,
          "CBAM's channel gate with average, max and log-sum-exp descriptors through one shared MLP.")
def _cbam_lse_gate(x, W0, b0, W1, b1):
    from ..attention.cbam import CBAM
    m = CBAM(x.shape[1], hidden=W0.shape[0])
    with torch.no_grad():
        m.fc0.weight.copy_(W0), m.fc0.bias.copy_(b0), m.fc1.weight.copy_(W1), m.fc1.bias.copy_(b1)
        flat = x.flatten(2)
        z = torch.stack((flat.mean(-1), flat.amax(-1), torch.logsumexp(flat, dim=-1)))  # (3, B, C)
        return m.gate(m.fc1(m.act(m.fc0(z))).sum(0))


@solution("cbam_lse_gate")
def cbam_lse_gate(x, W0, b0, W1, b1):
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    top = flat.max(dim=-1).values                                     # (B, C): also the max descriptor
    lse = top + torch.log(torch.exp(flat - top[..., None]).sum(-1))   # stable log-sum-exp

    def mlp(z):
        return torch.relu(z @ W0.T + b0) @ W1.T + b1

    return torch.sigmoid(mlp(flat.mean(-1)) + mlp(top) + mlp(lse))


# Exercise 2: spatial descriptors per channel group -----------------------------------------------------------

def _group_cases(g):
    cases = []
    for _ in range(6):
        G = draw_int(g, 1, 4)
        C = G * draw_int(g, 1, 5)
        cases.append(dict(x=torch.randn(draw_int(g, 1, 3), C, draw_int(g, 1, 6), draw_int(g, 1, 6), generator=g),
                          groups=G))
    return cases


@exercise("cbam_group_descriptors", _group_cases,
          "The spatial gate's [mean; max] descriptors per channel group, interleaved: (B, 2G, H, W).")
def _cbam_group_descriptors(x, groups):
    from ..attention.cbam import CBAM
    m = CBAM(x.shape[1] // groups)
    return torch.cat([m.spatial_descriptors(x_g) for x_g in x.chunk(groups, dim=1)], dim=1)


@solution("cbam_group_descriptors")
def cbam_group_descriptors(x, groups):
    B, C, H, W = x.shape
    xg = x.reshape(B, groups, C // groups, H, W)
    return torch.stack((xg.mean(2), xg.amax(2)), dim=2).reshape(B, 2 * groups, H, W)
