"""Focal modulation (chapters/33_focal.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# Focal modulation in place of the second 3x3 conv of every block of stages 2-4 removes about 30% of ResNet-18's
# parameters and 22% of its FLOPs at width 64 (the chapter computes both): the control is a plain ResNet-18
# narrowed to the focal network's parameters, the budget the mixer changes most.
FOCAL = Variant("focal", {"mixer": "focal", "mixer_where": "stages2-4"},
                note="focal modulation (L = 2, window 3: kernels 3, 5) in place of the second 3x3 conv of "
                     "every block of stages 2-4")
register_experiment("focal", [
    BASELINE,
    FOCAL,
    Variant("focal_budget", budget_of=FOCAL, budget="params",
            note="plain ResNet-18 narrowed to the parameters of the focal network (equal-budget control)"),
])


# Exercise 1: how many input pixels each level reads at one position of a bounded map ---------------------------

def _reach_cases(g):
    cases = [dict(focal_level=2, focal_window=3, focal_factor=2, H=8, W=8, i=0, j=3)]
    for _ in range(7):
        H, W = draw_int(g, 1, 14), draw_int(g, 1, 14)
        cases.append(dict(focal_level=draw_int(g, 1, 4), focal_window=2 * draw_int(g, 0, 3) + 1,
                          focal_factor=2 * draw_int(g, 0, 2), H=H, W=W, i=draw_int(g, 0, H - 1),
                          j=draw_int(g, 0, W - 1)))
    return cases


@exercise("focal_level_reach", _reach_cases,
          "The number of input pixels each local level's context at position (i, j) of an H x W map depends on.",
          atol=0, rtol=0)
def _focal_level_reach(focal_level, focal_window, focal_factor, H, W, i, j):
    from ..attention.focal import FocalModulation
    g = torch.Generator().manual_seed(0)
    m = FocalModulation(2, focal_level=focal_level, focal_window=focal_window, focal_factor=focal_factor,
                        dtype=torch.float64)
    with torch.no_grad():  # weights of std 1 / fan-in: activations of order 1, no GELU saturated to a zero slope
        for p in m.parameters():
            fan = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / fan ** 0.5)
    x = torch.randn(1, 2, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    _, _, levels = m.contexts(x)
    counts = []
    for z in levels[:-1]:  # measured: the input pixels with a nonzero gradient
        (grad,) = torch.autograd.grad(z[0, :, i, j].sum(), x, retain_graph=True)
        counts.append(float((grad[0].abs().sum(0) > 0).sum()))
    return torch.tensor(counts, dtype=torch.float64)


@solution("focal_level_reach")
def focal_level_reach(focal_level, focal_window, focal_factor, H, W, i, j):
    counts, r = [], 0
    for l in range(focal_level):
        k = focal_factor * l + focal_window
        r += k // 2                                                    # each level adds (k - 1) / 2 a side
        rows = min(i + r, H - 1) - max(i - r, 0) + 1                   # clipped by the zero-padded border
        cols = min(j + r, W - 1) - max(j - r, 0) + 1
        counts.append(float(rows * cols))
    return torch.tensor(counts, dtype=torch.float64)


# Exercise 2: the gradient that reaches the gates ----------------------------------------------------------------

def _gate_cases(g):
    cases = []
    for _ in range(5):
        B, L, C, H, W = draw_int(g, 1, 3), draw_int(g, 1, 4), draw_int(g, 1, 6), draw_int(g, 1, 5), draw_int(g, 1, 5)
        f64 = dict(generator=g, dtype=torch.float64)
        cases.append(dict(q=torch.randn(B, C, H, W, **f64), z=torch.randn(B, L, C, H, W, **f64),
                          z_glob=torch.randn(B, C, **f64), W_h=torch.randn(C, C, **f64),
                          G=torch.randn(B, C, H, W, **f64)))
    return cases


@exercise("focal_gate_grad", _gate_cases,
          "dL/dgates of y = q * h(sum_l g_l z_l + g_L z_glob), given dL/dy = G.", atol=1e-9, rtol=1e-7)
def _focal_gate_grad(q, z, z_glob, W_h, G):
    from ..attention.focal import FocalModulation
    B, L, C, H, W = z.shape
    m = FocalModulation(C, focal_level=L, dtype=torch.float64)
    with torch.no_grad():
        m.h.weight.copy_(W_h[:, :, None, None])
    gates = torch.randn(B, L + 1, H, W, dtype=torch.float64, requires_grad=True)  # any value: y is linear in g
    levels = [*z.unbind(1), z_glob[:, :, None, None]]
    (q * m._modulator(gates, levels)).backward(G)
    return gates.grad


@solution("focal_gate_grad")
def focal_gate_grad(q, z, z_glob, W_h, G):
    d_agg = torch.einsum("oc,bohw->bchw", W_h, G * q)                  # back through h (1x1 conv) and the product
    local = (d_agg[:, None] * z).sum(dim=2)                            # (B, L, H, W): <dL/dagg, z_l> per position
    glob = (d_agg * z_glob[:, :, None, None]).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    return torch.cat([local, glob], dim=1)
