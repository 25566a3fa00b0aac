"""ULSAM (chapters/20_ulsam.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# ULSAM adds a few parameters per channel to ResNet-18 (the chapter measures it): no equal-budget control.
register_experiment("ulsam", [
    BASELINE,
    Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch: the reference row"),
    Variant("ulsam", {"attn": "ulsam"}, note="ULSAM, g = 4 subspaces, BN + ReLU as the official code (momentum 0.1)"),
    Variant("ulsam_paper", {"attn": "ulsam", "attn_kw": {"norm_act": False}},
            note="ULSAM, g = 4, the paper's equation: no BN or ReLU before the softmax"),
])


# Exercise 1: BatchNorm's running mean under PyTorch's and TensorFlow's momentum conventions ----------------------

def _running_cases(g):
    cases = []
    for i in range(6):
        T, C = draw_int(g, 1, 12), draw_int(g, 1, 6)
        cases.append(dict(r0=torch.randn(C, generator=g), batch_means=torch.randn(T, C, generator=g) + i,
                          momentum=[0.1, 0.9, 0.01, 0.5, 0.99, 0.3][i],
                          convention=["pytorch", "tensorflow"][i % 2]))
    return cases


@exercise("ulsam_running_mean", _running_cases,
          "A BatchNorm running mean after a sequence of batch means, for PyTorch's or TensorFlow's momentum.")
def _ulsam_running_mean(r0, batch_means, momentum, convention):
    from ..attention.ulsam import ULSAM
    m = 1 - momentum if convention == "tensorflow" else momentum   # TensorFlow's momentum is the decay
    bn = ULSAM(r0.numel(), groups=1, bn_momentum=m).dw_norm[0]
    with torch.no_grad():
        bn.running_mean.copy_(r0)
        for mu in batch_means:  # a batch of two maps whose per-channel mean is mu
            bn(mu[None, :, None, None] + torch.tensor([-1.0, 1.0])[:, None, None, None])
    return bn.running_mean.clone()


@solution("ulsam_running_mean")
def ulsam_running_mean(r0, batch_means, momentum, convention):
    r = r0.clone()
    for mu in batch_means:
        if convention == "pytorch":
            r = (1 - momentum) * r + momentum * mu      # momentum: the weight of the NEW batch
        else:
            r = momentum * r + (1 - momentum) * mu      # TensorFlow: momentum is the decay of the OLD value
    return r


# Exercise 2: subspaces made of strided channels instead of consecutive ones -------------------------------------

def _strided_cases(g):
    cases = []
    for _ in range(6):
        groups = draw_int(g, 1, 4)
        B, C, H, W = draw_int(g, 1, 3), groups * draw_int(g, 1, 4), draw_int(g, 1, 6), draw_int(g, 1, 6)
        A = torch.softmax(torch.randn(B, groups, H * W, generator=g), dim=-1).reshape(B, groups, H, W)
        cases.append(dict(x=torch.randn(B, C, H, W, generator=g), A=A))
    return cases


@exercise("ulsam_strided_subspaces", _strided_cases,
          "ULSAM's refinement x * A + x when channel c belongs to subspace c mod g (A: (B, g, H, W)).")
def _ulsam_strided_subspaces(x, A):
    from ..attention.ulsam import ULSAM
    B, C, H, W = x.shape
    g = A.shape[1]
    m = ULSAM(C, groups=g)
    order = torch.arange(C).reshape(C // g, g).T.reshape(-1)   # consecutive subspaces <- strided channels
    with torch.no_grad():
        m.attention = lambda t: A                                # the module with these maps
        y = m(x[:, order])
    return y[:, torch.argsort(order)]


@solution("ulsam_strided_subspaces")
def ulsam_strided_subspaces(x, A):
    B, C, H, W = x.shape
    g = A.shape[1]
    xs = x.reshape(B, C // g, g, H, W)             # channel c = j * g + n sits at [j, n]: subspace n
    return (xs * A[:, None] + xs).reshape(B, C, H, W)
