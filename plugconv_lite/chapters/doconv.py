"""DO-Conv (chapters/02_doconv.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# No equal-budget control. The folded network IS the baseline (same parameters and FLOPs, exactly), and while
# training DO-Conv adds under 5% of parameters and, per training image, a vanishing share of FLOPs: the composition
# runs once per forward pass, so the x1.18 of a single image becomes +0.035% at the full profile's batch of 512.
# Chapter 02 computes both and says why. W is initialised with the backbone's own conv rule, so with D = 0 and
# D_mul = M*N the network starts as the baseline does; only the over-parameterization differs.
register_experiment("doconv", [BASELINE, Variant(
    "doconv", {"conv": "doconv", "conv_kw": {"weight_init": "fan_out"}},
    note="DO-Conv (D_mul = M*N) in place of every 3x3 conv of the residual blocks; folded for inference")])


# Exercise 1: one SGD step on W and D, composed exactly (the chapter states only the first-order change) ---------

def _sgd_cases(g):
    cases = []
    for O, C, k, lr in [(3, 2, 3, 0.1), (4, 4, 3, 0.5), (2, 5, 3, 1.0), (6, 3, 5, 0.2), (1, 1, 3, 2.0)]:
        cases.append(dict(W=torch.randn(O, C, k * k, generator=g) / k,
                          G=torch.randn(O, C, k, k, generator=g), lr=lr))
    return cases


@exercise("doconv_sgd_step", _sgd_cases,
          "The composed kernel (O, C, k, k) of a fresh dense DO-Conv (D = 0, D_mul = k*k) holding W (O, C, k*k) "
          "after one plain SGD step of size lr on W and D, given the loss gradient G (O, C, k, k) with respect to "
          "the composed kernel.")
def _doconv_sgd_step(W, G, lr):
    from ..conv.doconv import DOConv2d
    O, C, MN = W.shape
    m = DOConv2d(C, O, int(round(MN ** 0.5)))
    with torch.no_grad():
        m.W.copy_(W)
    m.kernel().backward(G)
    with torch.no_grad():
        for p in (m.W, m.D):
            p -= lr * p.grad
        return m.kernel()


@solution("doconv_sgd_step")
def doconv_sgd_step(W, G, lr):
    O, C, MN = W.shape
    G = G.reshape(O, C, MN)
    # W' = (I + D_i) W_oi per input channel i; at D = 0 the gradients are
    grad_W = G                                          # dL/dW[o,i,s] = sum_m G[o,i,m] I[m,s]
    grad_D = torch.einsum("oim,ois->ims", G, W)         # dL/dD[i,m,s] = sum_o G[o,i,m] W[o,i,s]
    W1 = W - lr * grad_W
    D1 = -lr * grad_D
    K = W1 + torch.einsum("ims,ois->oim", D1, W1)      # (I + D1_i) W1_oi
    return K.reshape(G.shape[0], C, *(2 * [int(round(MN ** 0.5))]))


# Exercise 2: load a plain kernel into a DO-Conv whose D must stay (invert the composition) -----------------------

def _load_cases(g):
    cases = []
    for C, O, groups, k in [(4, 6, 1, 3), (8, 8, 2, 3), (4, 4, 4, 3), (6, 9, 3, 3), (4, 8, 4, 3), (2, 3, 1, 5)]:
        cases.append(dict(weight=torch.randn(O, C // groups, k, k, generator=g),
                          D=0.15 * torch.randn(C, k * k, k * k, generator=g), groups=groups))
    return cases


@exercise("doconv_load", _load_cases,
          "W (O, C/g, k*k) such that the DO-Conv with this W and the given trainable D (C, k*k, k*k; D_mul = k*k) "
          "computes the plain conv with `weight` (O, C/g, k, k) and `groups` g.")
def _doconv_load(weight, D, groups):
    from ..conv.doconv import DOConv2d
    O, Cg, k, _ = weight.shape
    m = DOConv2d(Cg * groups, O, k, groups=groups)
    M = (D + m.D_diag).view(groups, Cg, k * k, k * k)              # (g, C/g, MN, D_mul): D_i per group slot
    target = weight.reshape(groups, O // groups, Cg, k * k, 1)       # W'[o, j] per group
    return torch.linalg.solve(M[:, None], target).reshape(O, Cg, k * k)


@solution("doconv_load")
def doconv_load(weight, D, groups):
    O, Cg, k, _ = weight.shape
    MN = k * k
    W = torch.empty(O, Cg, MN, dtype=weight.dtype)
    for o in range(O):
        for j in range(Cg):
            i = (o // (O // groups)) * Cg + j                        # the input channel slot j of output o reads
            M = torch.eye(MN, dtype=D.dtype) + D[i]                  # W'[o, j] = (I + D_i) W[o, j]
            W[o, j] = torch.linalg.solve(M, weight[o, j].reshape(MN))
    return W
