"""Context Guided block (chapters/32_cg.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# ResNet-18 with a CG block in place of every BasicBlock keeps about a quarter of the parameters and a fifth of the
# FLOPs (the chapter computes both), so the plain ResNet narrowed to the CG network's parameter count is the control.
CG = Variant("cg", {"block": "cg"},
             note="CG block in place of every BasicBlock (official defaults: dilation 2, reduction 16); the first "
                  "block of stages 2-4 is the CG down-sampling block")
register_experiment("cg", [
    BASELINE,
    CG,
    Variant("cg_budget", budget_of=CG, budget="params",
            note="control: the plain ResNet-18 narrowed to the CG network's parameter count"),
])


# Exercise 1: the stride-1 CG block written out with tensor operations ------------------------------------------

def _forward_cases(g):
    cases = []
    for _ in range(6):
        C = 2 * draw_int(g, 1, 6)
        n, h = C // 2, draw_int(g, 1, 4)
        cases.append(dict(
            x=torch.randn(draw_int(g, 1, 3), C, draw_int(g, 3, 9), draw_int(g, 3, 9), generator=g),
            w_in=0.5 * torch.randn(n, C, 1, 1, generator=g),
            a_in=torch.randn(n, generator=g),
            w_loc=0.5 * torch.randn(n, 1, 3, 3, generator=g),
            w_sur=0.5 * torch.randn(n, 1, 3, 3, generator=g),
            a_joi=torch.randn(C, generator=g),
            w1=torch.randn(h, C, generator=g), b1=torch.randn(h, generator=g),
            w2=torch.randn(C, h, generator=g), b2=torch.randn(C, generator=g),
            dilation=draw_int(g, 1, 4)))
    return cases


@exercise("cg_block_forward", _forward_cases,
          "The stride-1 CG block (residual, no BN) from its weights: PReLU(1x1), depthwise 3x3 and dilated 3x3, "
          "concat + PReLU, SE-style gate from the pooled joint feature, plus x.")
def _cg_block_forward(x, w_in, a_in, w_loc, w_sur, a_joi, w1, b1, w2, b2, dilation):
    from ..blocks.cg import ContextGuidedBlock
    C = x.shape[1]
    m = ContextGuidedBlock(C, C, dilation=dilation, hidden=w1.shape[0])
    m.bn_in, m.bn = nn.Identity(), nn.Identity()
    with torch.no_grad():
        for p, v in [(m.conv_in.weight, w_in), (m.act_in.weight, a_in), (m.f_loc.weight, w_loc),
                     (m.f_sur.weight, w_sur), (m.act.weight, a_joi), (m.f_glo.fc1.weight, w1),
                     (m.f_glo.fc1.bias, b1), (m.f_glo.fc2.weight, w2), (m.f_glo.fc2.bias, b2)]:
            p.copy_(v)
        return m(x)


@solution("cg_block_forward")
def cg_block_forward(x, w_in, a_in, w_loc, w_sur, a_joi, w1, b1, w2, b2, dilation):
    def prelu(t, a):
        return torch.where(t >= 0, t, a[None, :, None, None] * t)

    n = w_in.shape[0]
    t = prelu(torch.nn.functional.conv2d(x, w_in), a_in)
    loc = torch.nn.functional.conv2d(t, w_loc, padding=1, groups=n)
    sur = torch.nn.functional.conv2d(t, w_sur, padding=dilation, dilation=dilation, groups=n)
    j = prelu(torch.cat([loc, sur], dim=1), a_joi)
    z = j.mean(dim=(2, 3))                                   # (B, C)
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)  # one factor per sample and channel
    return x + j * s[:, :, None, None]


# Exercise 2: which input pixels a stack of CG blocks can read (the gate left out) ------------------------------

def _footprint_cases(g):
    cases = [dict(dilations=[2]), dict(dilations=[1, 1])]
    for _ in range(6):
        cases.append(dict(dilations=[draw_int(g, 1, 5) for _ in range(draw_int(g, 1, 3))]))
    return cases


@exercise("cg_stack_footprint", _footprint_cases,
          "0/1 float map (2S+1, 2S+1), S = sum of dilations: the offsets from the centre that a stack of stride-1 "
          "CG blocks (f_loc and f_sur, residual; gate left out) can read.")
def _cg_stack_footprint(dilations):
    from ..receptive import sampling_offsets
    S = sum(dilations)
    reach = {(0, 0)}
    for d in dilations:
        taps = {(int(a), int(b)) for k in (1, d) for a, b in sampling_offsets(3, k)}
        reach = {(r + a, c + b) for r, c in reach for a, b in taps}
    out = torch.zeros(2 * S + 1, 2 * S + 1)
    for r, c in reach:
        out[S + r, S + c] = 1.0
    return out


@solution("cg_stack_footprint")
def cg_stack_footprint(dilations):
    S = sum(dilations)
    reach = torch.zeros(2 * S + 1, 2 * S + 1)
    reach[S, S] = 1.0
    for d in dilations:
        new = torch.zeros_like(reach)
        for step in {1, d}:
            for dy in (-step, 0, step):
                for dx in (-step, 0, step):
                    new = torch.maximum(new, torch.roll(reach, (dy, dx), dims=(0, 1)))
        reach = new
    return reach
