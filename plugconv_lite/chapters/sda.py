"""Selective depth attention (chapters/26_sda.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# SDA in every stage of ResNet-18 adds under 2% parameters and under 0.1% counted FLOPs at width 64 (chapter 26
# computes both): no equal-budget control.
register_experiment("sda", [BASELINE, Variant("sda", {"stage_attn": "sda"},
                                              note="SDA (r = 16, L = 64) over the two blocks of every stage")])


# Exercise 1: the parameters of SDA in a network of any stage widths and depths ----------------------------------

def _params_cases(g):
    cases = [dict(widths=[64, 128, 256, 512], depths=[2, 2, 2, 2], reduction=16.0, min_hidden=64),
             dict(widths=[16, 32, 64], depths=[3, 3, 3], reduction=4.0, min_hidden=1)]
    for _ in range(6):
        k = draw_int(g, 1, 4)
        cases.append(dict(widths=[draw_int(g, 1, 300) for _ in range(k)], depths=[draw_int(g, 1, 6) for _ in range(k)],
                          reduction=[1.0, 2.5, 3.0, 4.0, 7.5, 16.0, 32.0][draw_int(g, 0, 6)],
                          min_hidden=[1, 4, 16, 64][draw_int(g, 0, 3)]))
    return cases


@exercise("sda_params", _params_cases,
          "Parameters of the SDA modules of a network with the given stage widths and depths.")
def _sda_params(widths, depths, reduction, min_hidden):
    from ..attention.sda import SelectiveDepthAttention
    from ..measure import count_params
    return sum(count_params(SelectiveDepthAttention(c, n, reduction=reduction, min_hidden=min_hidden))
               for c, n in zip(widths, depths))


@solution("sda_params")
def sda_params(widths, depths, reduction, min_hidden):
    total = 0
    for C, n in zip(widths, depths):
        d = max(int(C / reduction), min_hidden)   # the official rule: int() truncates
        total += C * d + 2 * d + n * (d * C + C)  # W_d (no bias), BN scale and shift, n projections with bias
    return total


# Exercise 2: the stage output in training mode (batch statistics in the attention branch) ----------------------

def _train_cases(g):
    cases = []
    for _ in range(5):
        B, n, C, d, H, W = (draw_int(g, 2, 5), draw_int(g, 1, 4), draw_int(g, 1, 12), draw_int(g, 1, 8),
                            draw_int(g, 1, 6), draw_int(g, 1, 6))
        cases.append(dict(Z=torch.randn(B, n, C, H, W, generator=g), W_d=torch.randn(d, C, generator=g),
                          gamma=torch.rand(d, generator=g) + 0.5, beta=torch.randn(d, generator=g),
                          W=torch.randn(n, C, d, generator=g), b=torch.randn(n, C, generator=g)))
    return cases


@exercise("sda_train_output", _train_cases,
          "SDA's stage output in training mode, from the stacked block outputs Z and the branch's weights.")
def _sda_train_output(Z, W_d, gamma, beta, W, b):
    from ..attention.sda import SelectiveDepthAttention
    B, n, C, H, Wd = Z.shape
    d = W_d.shape[0]
    m = SelectiveDepthAttention(C, n, reduction=C + 1, min_hidden=d).train()  # int(C / (C + 1)) = 0: d = min_hidden
    with torch.no_grad():
        m.fc.weight.copy_(W_d[:, :, None, None])
        m.bn.weight.copy_(gamma), m.bn.bias.copy_(beta)
        m.fcs.weight.copy_(W.reshape(n * C, d)[:, :, None, None])
        m.fcs.bias.copy_(b.reshape(n * C))
        return m(list(Z.unbind(1)))


@solution("sda_train_output")
def sda_train_output(Z, W_d, gamma, beta, W, b):
    u = Z.sum(dim=1).mean(dim=(2, 3))                                  # (B, C): GAP of the sum over depth
    t = u @ W_d.T                                                       # (B, d)
    mean, var = t.mean(dim=0), t.var(dim=0, unbiased=False)             # BN over the batch (H = W = 1)
    v = torch.relu((t - mean) / torch.sqrt(var + 1e-5) * gamma + beta)
    logits = torch.einsum("bd,ncd->bnc", v, W) + b                      # (B, n, C)
    a = torch.softmax(logits, dim=1)[..., None, None]                   # over depth
    return torch.relu((a * Z).sum(dim=1))
