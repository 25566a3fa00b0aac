"""DCD, dynamic convolution decomposition (chapters/14_dcd.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


# Exercise 2: the paper's sparse dynamic residual (block-diagonal Phi) -----------------------------------------------

def _sparse_cases(g):
    cases = []
    for B, C, O, L, G, H, stride in [(2, 6, 8, 4, 2, 5, 1), (1, 8, 4, 6, 3, 6, 2), (3, 4, 4, 4, 1, 4, 1),
                                     (2, 10, 6, 8, 4, 7, 2), (1, 3, 5, 2, 2, 3, 1)]:
        cases.append(dict(x=torch.randn(B, C, H, H, generator=g), W0=torch.randn(O, C, 3, 3, generator=g) / 3,
                          Qt=torch.randn(L, C, generator=g), P=torch.randn(O, L, generator=g),
                          Lam=2 * torch.rand(B, O, generator=g),
                          Phi_blocks=torch.randn(B, G, L // G, L // G, generator=g), stride=stride))
    return cases


@exercise("dcd_sparse_residual", _sparse_cases,
          "y = conv2d(x, W(x)) per sample with W(x) = Lambda W0 + P blockdiag(Phi) Q^T, the residual at the 3x3 "
          "kernel's centre, padding 1, the given stride.")
def _dcd_sparse_residual(x, W0, Qt, P, Lam, Phi_blocks, stride):
    from ..conv.dcd import DCDConv2d
    O, C = W0.shape[:2]
    L = Qt.shape[0]
    m = DCDConv2d(C, O, 3, stride, latent=L, norm=False, identity=False)
    with torch.no_grad():
        m.W0.copy_(W0), m.Q.copy_(Qt[:, :, None, None]), m.P.copy_(P[:, :, None, None])
    Phi = torch.stack([torch.block_diag(*blocks) for blocks in Phi_blocks])
    m.attention = lambda _: (Lam, Phi)
    with torch.no_grad():
        return m(x)


@solution("dcd_sparse_residual")
def dcd_sparse_residual(x, W0, Qt, P, Lam, Phi_blocks, stride):
    B, G, n, _ = Phi_blocks.shape
    L = G * n
    outs = []
    for b in range(B):
        Phi = torch.zeros(L, L)
        for j in range(G):                                      # the G blocks on the diagonal
            Phi[j * n:(j + 1) * n, j * n:(j + 1) * n] = Phi_blocks[b, j]
        W = Lam[b][:, None, None, None] * W0                    # Lambda W0
        W = W.clone()
        W[:, :, 1, 1] += P @ Phi @ Qt                            # + P Phi Q^T at the centre tap
        outs.append(F.conv2d(x[b:b + 1], W, None, stride, 1))
    return torch.cat(outs)
