"""Selective depth attention (chapters/26_sda.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# SDA in every stage of ResNet-18 adds under 2% parameters and under 0.1% counted FLOPs at width 64 (chapter 26
# computes both): no equal-budget control.
register_experiment("sda", [BASELINE, Variant("sda", {"stage_attn": "sda"},
                                              note="SDA (r = 16, L = 64) over the two blocks of every stage")])


# Exercise 1: the gradient that reaches the depth logits ------------------------------------------------------

def _grad_cases(g):
    cases = []
    for _ in range(5):
        B, n, C, H, W = draw_int(g, 1, 3), draw_int(g, 2, 4), draw_int(g, 1, 6), draw_int(g, 1, 5), draw_int(g, 1, 5)
        cases.append(dict(Z=torch.randn(B, n, C, H, W, generator=g, dtype=torch.float64),
                          logits=2 * torch.randn(B, n, C, generator=g, dtype=torch.float64),
                          G=torch.randn(B, C, H, W, generator=g, dtype=torch.float64)))
    return cases


@exercise("sda_logit_grad", _grad_cases,
          "dL/dlogits of SDA's output O = relu(sum_i softmax_i(logits) Z_i), given dL/dO = G.", atol=1e-9, rtol=1e-7)
def _sda_logit_grad(Z, logits, G):
    from ..attention.sda import SelectiveDepthAttention
    B, n, C = logits.shape
    grads = []
    for k in range(B):  # one module per sample: zero projection weights, the sample's logits as the biases
        m = SelectiveDepthAttention(C, n, min_hidden=1).double().eval()
        with torch.no_grad():
            m.fcs.weight.zero_()
            m.fcs.bias.copy_(logits[k].reshape(n * C))
        out = m(list(Z[k:k + 1].unbind(1)))
        (out * G[k:k + 1]).sum().backward()
        grads.append(m.fcs.bias.grad.reshape(n, C))
    return torch.stack(grads)


@solution("sda_logit_grad")
def sda_logit_grad(Z, logits, G):
    a = torch.softmax(logits, dim=1)                                   # (B, n, C)
    S = (a[..., None, None] * Z).sum(dim=1)                            # (B, C, H, W), before the ReLU
    gS = G * (S > 0)                                                    # through the ReLU
    g = (gS[:, None] * Z).sum(dim=(3, 4))                               # dL/da: (B, n, C)
    return a * (g - (a * g).sum(dim=1, keepdim=True))                   # the softmax's Jacobian over depth


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
