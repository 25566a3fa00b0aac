"""CAT, a labelled reconstruction (chapters/22_cat.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# CAT (as reconstructed) changes parameters and FLOPs by under 5% at width 64 (the chapter computes both): no
# equal-budget control.
register_experiment("cat", [
    BASELINE,
    Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch: the reference attention"),
    Variant("cat", {"attn": "cat"}, note="CAT (reconstruction) on every residual branch"),
])


# Exercise 1: entropy pooling with the other normalisation ------------------------------------------------------

def _gep_abs_cases(g):
    cases = []
    for i in range(6):
        B, C, H, W = draw_int(g, 1, 3), draw_int(g, 1, 6), draw_int(g, 1, 7), draw_int(g, 1, 7)
        x = torch.randn(B, C, H, W, generator=g) * 10 ** draw_int(g, -2, 2)
        if i % 2 == 0:
            x[:, 0] = 0.0                      # an all-zero channel: the case that breaks a careless version
        cases.append(dict(x=x, eps=[1e-6, 1e-3, 0.1][draw_int(g, 0, 2)]))
    return cases


@exercise("gep_abs", _gep_abs_cases,
          "Global entropy pooling with p = (|x| + eps) / sum(|x| + eps) over each channel's positions: returns the "
          "(B, C) entropies in nats.")
def _gep_abs(x, eps):
    from ..attention.cat import global_entropy_pool
    # softmax(log a) = a / sum(a): the library's softmax-based GEP of log(|x| + eps) is this entropy
    return global_entropy_pool(torch.log(x.abs() + eps).flatten(2), dim=-1)


@solution("gep_abs")
def gep_abs(x, eps):
    a = x.abs().flatten(2) + eps                  # (B, C, N), every entry > 0
    p = a / a.sum(dim=-1, keepdim=True)
    return -(p * torch.log(p)).sum(dim=-1)        # p > 0, so log p is finite


# Exercise 2: the gradient of entropy pooling, by hand ---------------------------------------------------------

def _gep_grad_cases(g):
    cases = []
    for _ in range(6):
        B, C, H, W = draw_int(g, 1, 3), draw_int(g, 1, 5), draw_int(g, 1, 6), draw_int(g, 1, 6)
        cases.append(dict(x=torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * draw_int(g, 1, 4)))
    return cases


@exercise("gep_grad", _gep_grad_cases,
          "The gradient of sum_{b,c} GEP(x)_{b,c} with respect to x (GEP over each channel's H W positions, "
          "temperature 1), shape (B, C, H, W).", atol=1e-8, rtol=1e-6)
def _gep_grad(x):
    from ..attention.cat import global_entropy_pool
    x = x.clone().requires_grad_(True)
    global_entropy_pool(x.flatten(2), dim=-1).sum().backward()
    return x.grad


@solution("gep_grad")
def gep_grad(x):
    B, C, H, W = x.shape
    logp = torch.log_softmax(x.reshape(B, C, H * W), dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(dim=-1, keepdim=True)           # (B, C, 1)
    return (-p * (logp + entropy)).reshape(B, C, H, W)          # dH/dx_n = -p_n (log p_n + H)
