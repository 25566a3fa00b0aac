"""DCD, dynamic convolution decomposition (chapters/14_dcd.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

# The official ResNet-18 (models/imagenet/resnet_dcd.py) makes both 3x3 convs of every BasicBlock DCD layers and
# keeps the stem and the 1x1 shortcut plain: the `conv=` plug point does the same. Its dynamic classifier (DYCls) is
# left out (the chapter says why). DCD adds about a quarter to the parameters of the width-64 ResNet-18 and under 5%
# to its FLOPs (chapter 14 computes both), so the control is a plain ResNet-18 widened to the same parameter count.
DCD = Variant("dcd", {"conv": "dcd"},
              note="DCD (official ResNet-18 layer: 2x2 pooled descriptor, L = floor(sqrt(4C))) in every 3x3 conv of "
                   "the residual blocks; plain classifier")
register_experiment("dcd", [BASELINE, DCD, Variant(
    "dcd_budget", budget_of=DCD, budget="params",
    note="plain ResNet-18 widened to DCD's parameter count (DCD adds > 5% parameters)")])


# Exercise 1: the parameters DCD adds to a whole ResNet-18 ----------------------------------------------------------

def _overhead_cases(g):
    cases = [dict(width=64), dict(width=16), dict(width=3)]
    cases += [dict(width=draw_int(g, 4, 48)) for _ in range(5)]
    return cases


@exercise("dcd_overhead", _overhead_cases,
          "Parameters that conv='dcd' (default hyperparameters) adds to pl.resnet18(width), BatchNorm affines "
          "included.")
def _dcd_overhead(width):
    return resnet18_overhead("params", width, conv="dcd")


@solution("dcd_overhead")
def dcd_overhead(width):
    import math

    def added(C, O):                                 # a 3x3 C -> O conv becomes a DCD layer (W0 replaces the kernel)
        D = 4 * C                                    # 2 x 2 pooled descriptor
        L = math.isqrt(D)
        S = max(max(D, L * L) // 16, 4)
        return C * L + L * O + D * S + S * S + S * L * L + S * O + 2 * (2 * L)

    total = 0
    for stage in range(4):
        C = width * 2 ** stage
        first_in = width * 2 ** max(stage - 1, 0)   # the first block of stages 2-4 takes the previous width
        total += added(first_in, C) + added(C, C)   # block 1: conv1, conv2
        total += 2 * added(C, C)                     # block 2
    return total


# Exercise 2: DY-CNN written as a decomposition (the paper's view: attention over channel groups in a K*C space) ---

def _dyconv_cases(g):
    cases = []
    for B, K, O, C in [(2, 4, 6, 5), (3, 2, 4, 4), (1, 3, 2, 7), (2, 1, 3, 3), (4, 5, 8, 2)]:
        pi = torch.softmax(torch.randn(B, K, generator=g), dim=1)
        cases.append(dict(W=torch.randn(K, O, C, generator=g), pi=pi))
    return cases


@exercise("dyconv_decomposition", _dyconv_cases,
          "(W0, P, Phi): W0 = mean_k W_k (O, C); P = [W_1 - W0, ..., W_K - W0] (O, K*C); Phi (B, K*C, K*C) "
          "block-diagonal with pi_bk I_C, so that W0 + P Phi_b Q^T = sum_k pi_bk W_k for Q^T = [I_C; ...; I_C].")
def _dyconv_decomposition(W, pi):
    from ..conv.dcd import DCDConv2d
    K, O, C = W.shape
    W0 = W.mean(dim=0)
    P = (W - W0).permute(1, 0, 2).reshape(O, K * C)
    Phi = torch.diag_embed(pi.repeat_interleave(C, dim=1))
    # the library's dense kernel of a paper-form DCD holding these tensors is DY-CNN's aggregated kernel
    m = DCDConv2d(C, O, 1, latent=K * C, norm=False, identity=False, dtype=W.dtype)
    with torch.no_grad():
        m.W0.copy_(W0[:, :, None, None]), m.P.copy_(P[:, :, None, None])
        m.Q.copy_(torch.eye(C, dtype=W.dtype).repeat(K, 1)[:, :, None, None])
    m.attention = lambda _: (torch.ones(pi.shape[0], O, dtype=W.dtype), Phi)
    with torch.no_grad():
        Wx = m.dense_kernel(torch.zeros(pi.shape[0], C, 1, 1, dtype=W.dtype))[0][..., 0, 0]
    torch.testing.assert_close(Wx, torch.einsum("bk,koc->boc", pi, W))
    return W0, P, Phi


@solution("dyconv_decomposition")
def dyconv_decomposition(W, pi):
    K, O, C = W.shape
    B = pi.shape[0]
    W0 = W.sum(dim=0) / K
    P = torch.cat([W[k] - W0 for k in range(K)], dim=1)      # block k: columns k*C ... (k+1)*C - 1
    Phi = torch.zeros(B, K * C, K * C)
    for b in range(B):
        for k in range(K):
            Phi[b, k * C:(k + 1) * C, k * C:(k + 1) * C] = pi[b, k] * torch.eye(C)
    return W0, P, Phi
