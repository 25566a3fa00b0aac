"""DCANet, deep connected attention (chapters/25_dcanet.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# Connected vs unconnected at the same attention (SE: the cheapest connection, vectors only, and the paper's first
# case). The connection changes parameters and FLOPs by under 5% against the unconnected SE network (the chapter
# computes it): no equal-budget control.
register_experiment("dcanet", [
    BASELINE,
    Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch: the unconnected network"),
    Variant("dca_se", {"attn": "se", "attn_connect": True},
            note="DCA-SE: each block's SE fuses the previous block's recalibrated descriptor (official fusion)"),
])


# Exercise 1: the parameters the GC connection adds to a whole ResNet-18 -----------------------------------------

def _gc_cases(g):
    cases = [dict(width=64, reduction=16, divisor=8), dict(width=16, reduction=16, divisor=1)]
    for _ in range(6):
        cases.append(dict(width=draw_int(g, 3, 48), reduction=[1, 2, 4, 8, 16, 32][draw_int(g, 0, 5)],
                          divisor=[1, 2, 4, 8][draw_int(g, 0, 3)]))
    return cases


@exercise("dca_gc_overhead", _gc_cases,
          "Parameters attn_connect=True adds to pl.resnet18(width, attn='gc') with the given reduction and divisor.")
def _dca_gc_overhead(width, reduction, divisor):
    from ..measure import count_params
    from ..models import resnet18

    kw = dict(width=width, attn="gc", attn_kw={"reduction": reduction, "divisor": divisor})
    return count_params(resnet18(attn_connect=True, **kw)) - count_params(resnet18(**kw))


@solution("dca_gc_overhead")
def dca_gc_overhead(width, reduction, divisor):
    def hidden(C):
        v = C / reduction
        units = max(divisor, int(v + divisor / 2) // divisor * divisor)
        if units < 0.9 * v:
            units += divisor
        return min(C, units)

    widths = [width, 2 * width, 4 * width, 8 * width]
    total = 7                                    # beta in every block but the network's first
    for C_prev, C in zip(widths, widths[1:]):    # size matching in the first block of stages 2-4
        Cr = hidden(C)
        total += (C_prev * Cr + Cr) + 2 * Cr + (Cr * C + C)
    return total


# Exercise 2: CBAM's connected spatial descriptors -----------------------------------------------------------------

def _spatial_cases(g):
    cases = []
    for _ in range(6):
        B, C, C_prev, H, W, k = (draw_int(g, 1, 3), draw_int(g, 1, 12), draw_int(g, 1, 12), draw_int(g, 1, 5),
                                 draw_int(g, 1, 5), draw_int(g, 1, 3))
        cases.append(dict(x=torch.randn(B, C, H, W, generator=g),
                          y_prev=torch.randn(B, C_prev, k * H, k * W, generator=g),
                          p1=float(torch.randn(1, generator=g)), p2=float(torch.randn(1, generator=g))))
    return cases


@exercise("dca_spatial_descriptors", _spatial_cases,
          "DCA-CBAM's fused spatial descriptors (fusion_norm=False), shape (B, 2, H, W).")
def _dca_spatial_descriptors(x, y_prev, p1, p2):
    from ..attention.dca import ConnectedCBAM
    m = ConnectedCBAM(x.shape[1], prev_channels=y_prev.shape[1], fusion_norm=False)
    with torch.no_grad():
        m.p.copy_(torch.tensor([p1, p2]))
        prev = F.adaptive_avg_pool2d(y_prev, x.shape[-2:])
        return (m.p[0] * m.spatial_descriptors(x) + m.p[1] * m.spatial_descriptors(prev)).contiguous()


@solution("dca_spatial_descriptors")
def dca_spatial_descriptors(x, y_prev, p1, p2):
    k = y_prev.shape[-1] // x.shape[-1]
    prev = F.avg_pool2d(y_prev, kernel_size=k)                  # to the current resolution

    def describe(t):                                            # [mean over channels; max over channels]
        return torch.cat((t.mean(dim=1, keepdim=True), t.amax(dim=1, keepdim=True)), dim=1)

    return p1 * describe(x) + p2 * describe(prev)
