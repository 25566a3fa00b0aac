"""Global Context block (chapters/19_gc.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# The GC block changes ResNet-18's parameters and FLOPs by under 5% (the chapter measures it): no equal-budget
# control.
register_experiment("gc", [
    BASELINE,
    Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch: the reference row"),
    Variant("gc", {"attn": "gc"}, note="GC block, attention pooling, channel_add fusion (the official default)"),
    Variant("gc_mul", {"attn": "gc", "attn_kw": {"fusion": "mul"}},
            note="GC block, attention pooling, channel_mul fusion (a sigmoid gate, as SE)"),
])


def _masked_cases(g):
    cases = []
    for _ in range(6):
        B, C, H, W = draw_int(g, 1, 3), draw_int(g, 1, 16), draw_int(g, 1, 7), draw_int(g, 1, 7)
        mask = (torch.rand(B, 1, H, W, generator=g) < 0.5).float()
        mask[:, :, -1, -1] = 1.0  # every image keeps at least one valid position
        cases.append(dict(x=3 * torch.randn(B, C, H, W, generator=g), mask=mask, w_k=torch.randn(C, generator=g)))
    return cases


# Exercise 1: attention pooling over the valid positions only ---------------------------------------------------

@exercise("gc_masked_context", _masked_cases,
          "GC's context c = sum_j a_j x_j with the softmax taken over the valid (mask = 1) positions only.")
def _gc_masked_context(x, mask, w_k):
    from ..attention.gc import GlobalContextBlock
    m = GlobalContextBlock(x.shape[1], fused=False)
    with torch.no_grad():
        m.w_k.copy_(w_k)
        logits = torch.einsum("c,bcn->bn", m.w_k, x.flatten(2))
        a = torch.softmax(torch.where(mask.flatten(1) > 0, logits, float("-inf")), dim=1)
        return torch.einsum("bn,bcn->bc", a, x.flatten(2))


@solution("gc_masked_context")
def gc_masked_context(x, mask, w_k):
    B, C, H, W = x.shape
    logits = torch.einsum("c,bcn->bn", w_k, x.reshape(B, C, H * W))
    logits = logits.masked_fill(mask.reshape(B, H * W) == 0, float("-inf"))
    a = torch.softmax(logits, dim=1)                        # (B, HW), zero on padded positions
    return torch.einsum("bn,bcn->bc", a, x.reshape(B, C, H * W))


# Exercise 2: one attention map per channel group (multi-head pooling) -------------------------------------------

def _heads_cases(g):
    cases = []
    for _ in range(6):
        heads = draw_int(g, 1, 4)
        C = heads * draw_int(g, 1, 5)
        cases.append(dict(x=torch.randn(draw_int(g, 1, 3), C, draw_int(g, 1, 6), draw_int(g, 1, 6), generator=g),
                          w=torch.randn(heads, C // heads, generator=g)))
    return cases


@exercise("gc_multihead_context", _heads_cases,
          "Attention pooling with one w_k per group of C / heads channels: context (B, C).")
def _gc_multihead_context(x, w):
    from ..attention.gc import GlobalContextBlock
    heads, Ch = w.shape
    parts = []
    for h, x_h in enumerate(x.split(Ch, dim=1)):
        m = GlobalContextBlock(Ch, fused=False)
        with torch.no_grad():
            m.w_k.copy_(w[h])
            parts.append(m.context(x_h))
    return torch.cat(parts, dim=1)


@solution("gc_multihead_context")
def gc_multihead_context(x, w):
    B, C, H, W = x.shape
    heads, Ch = w.shape
    xh = x.reshape(B, heads, Ch, H * W)
    a = torch.softmax(torch.einsum("hc,bhcn->bhn", w, xh), dim=-1)   # one map per head
    return torch.einsum("bhn,bhcn->bhc", a, xh).reshape(B, C)
