"""DPNet's lightweight self-correlation module (chapters/36_lscm.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# LSCM after bn2 of every block (SE's position: it is an attention unit, not a token mixer) adds about 3% parameters
# and under 2% FLOPs to the width-64 ResNet-18 (chapter 36 computes both): no equal-budget control.
register_experiment("lscm", [BASELINE, Variant("lscm", {"attn": "lscm"},
                                               note="LSCM (pyramid2, channel_down 8, P = 4) on every residual branch")])


# Exercise 1: the FLOPs LSCM adds to a whole ResNet-18 --------------------------------------------------------

def _flops_cases(g):
    cases = [dict(width=64, channel_down=8, pool_size=4, variant="pyramid2"),
             dict(width=12, channel_down=5, pool_size=5, variant="avgpool")]
    for _ in range(3):
        width = draw_int(g, 2, 12)
        cases.append(dict(width=width, channel_down=draw_int(g, 1, width), pool_size=draw_int(g, 1, 6),
                          variant=("pyramid2", "avgpool")[draw_int(g, 0, 1)]))
    return cases


@exercise("lscm_resnet_flops", _flops_cases,
          "FLOPs (pl.measure's count, one 32x32 image) that LSCM adds to pl.resnet18(width) on every block.")
def _lscm_resnet_flops(width, channel_down, pool_size, variant):
    # The FLOPs of each LSCM of the network at the map it receives, in one FlopCounterMode (pl.measure's counter),
    # on the meta device (shapes only). Counting the whole network twice, as resnet18_overhead does, takes seconds;
    # tests/attention/test_lscm.py checks that the two agree.
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import resnet18

    net = resnet18(width=width, attn="lscm",
                   attn_kw={"channel_down": channel_down, "pool_size": pool_size, "variant": variant}).eval().to("meta")
    inputs = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0])))
             for m in net.modules() if type(m).__name__ == "LSCM"]
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32, device="meta"))
        for h in hooks:
            h.remove()
        with FlopCounterMode(display=False) as counter:
            for m, x in inputs:
                m(x)
    return int(counter.get_total_flops())


@solution("lscm_resnet_flops")
def lscm_resnet_flops(width, channel_down, pool_size, variant):
    Q = pool_size * pool_size
    total = 0
    for stage, side in enumerate((32, 16, 8, 4)):      # two blocks per stage, LSCM on each block's output map
        C = width * 2 ** stage
        c, N = C // channel_down, side * side
        if variant == "pyramid2":                       # projection on the P x P pooled map, value at full size
            f = C * (2 * c + 1) * Q + c * Q + c * C + C * c * N + Q * c * N + Q * N
        else:                                           # projection at full size, only the query pooled
            f = C * (3 * c + 1) * N + c * N + c * C + Q * c * N + Q * N
        total += 2 * 2 * f                              # FLOPs = 2 x MAC, two blocks
    return total


# Exercise 2: the P^2 correlation maps amount to one query --------------------------------------------------------

def _query_cases(g):
    cases = []
    for _ in range(5):
        c, r, P = draw_int(g, 1, 6), draw_int(g, 1, 4), draw_int(g, 1, 4)
        B, C = draw_int(g, 1, 3), c * r
        H, W = P * draw_int(g, 1, 3), P * draw_int(g, 1, 3)
        cases.append(dict(x=torch.randn(B, C, H, W, generator=g, dtype=torch.float64),
                          W_q=torch.randn(c, C, generator=g, dtype=torch.float64),
                          b_q=torch.randn(c, generator=g, dtype=torch.float64),
                          w=torch.randn(P * P, generator=g, dtype=torch.float64), P=P))
    return cases


@exercise("lscm_effective_query", _query_cases,
          "The one query u (B, c) whose correlation with the values gives the spatial weight's logits.",
          atol=1e-9, rtol=1e-7)
def _lscm_effective_query(x, W_q, b_q, w, P):
    from ..attention.lscm import LSCM
    c, C = W_q.shape
    m = LSCM(C, channel_down=C // c, pool_size=P, dtype=torch.float64)
    with torch.no_grad():
        m.proj.weight[c + 1:] = W_q[:, :, None, None]
        m.proj.bias[c + 1:] = b_q
        _, _, _, q_s = m._parts(x)                                      # (B, c, P^2): the pooled queries
    return (q_s * w).sum(-1)


@solution("lscm_effective_query")
def lscm_effective_query(x, W_q, b_q, w, P):
    B, C, H, W = x.shape
    pooled = x.reshape(B, C, P, H // P, P, W // P).mean(dim=(3, 5))      # (B, C, P, P): window averages
    region = (pooled.reshape(B, C, P * P) * w).sum(-1)                  # (B, C): the w-weighted sum of windows
    return region @ W_q.T + w.sum() * b_q                               # u = sum_k w_k (W_q pooled_k + b_q)
