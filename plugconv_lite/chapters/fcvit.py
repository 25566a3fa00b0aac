"""FCViT's query-irrelevant global context and convolution token mixer (chapters/35_fcvit.ipynb): the chapter's
experiment and its exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

# The mixer in place of the second 3x3 conv of every block of stages 2-4 (stage 1's 32 x 32 map is left to the conv,
# as for the part's other mixers). FCViTMixer.from_site clips the released 11 x 11 kernels to 2 * resolution - 1,
# which changes no output (the clipped taps only ever see zero padding): 11 x 11 on the 16 x 16 and 8 x 8 maps, 7 x 7
# on the 4 x 4 one.
FCVIT = Variant("fcvit", {"mixer": "fcvit", "mixer_where": "stages2-4"},
                note="FCViT token mixer (2 rounds of GC + DW-11 + FC, heads 8) in place of conv2 in stages 2-4")
# At width 64 the mixer network has about 55% of the baseline's parameters and 66% of its FLOPs (the chapter computes
# both). The control matches FLOPs, the cost the chapter is about: a narrower plain ResNet with the mixer network's
# FLOPs (it keeps more parameters than the mixer network, so a win for FCViT is not bought with parameters).
register_experiment("fcvit", [
    BASELINE, FCVIT,
    Variant("fcvit_budget", budget_of=FCVIT, budget="flops",
            note="control: the plain ResNet narrowed to the FCViT network's FLOPs"),
])


# Exercise 1: the parameters the mixer network has beyond (here: short of) the plain ResNet-18 -------------------

def _param_cases(g):
    cases = [dict(width=64, kernel_size=11, clip_to_map=True), dict(width=8, kernel_size=11, clip_to_map=False),
             dict(width=16, kernel_size=9, clip_to_map=True)]
    for _ in range(6):
        cases.append(dict(width=4 * draw_int(g, 1, 12), kernel_size=2 * draw_int(g, 0, 8) + 1,
                          clip_to_map=bool(draw_int(g, 0, 1))))
    return cases


@exercise("fcvit_param_change", _param_cases,
          "Parameters of pl.resnet18(width, mixer='fcvit', mixer_where='stages2-4', mixer_kw={kernel_sizes: "
          "[k, k], clip_to_map}) minus those of pl.resnet18(width) (negative: the mixer removes parameters).")
def _fcvit_param_change(width, kernel_size, clip_to_map):
    return resnet18_overhead("params", width, mixer="fcvit", mixer_where="stages2-4",
                             mixer_kw={"kernel_sizes": [kernel_size, kernel_size], "clip_to_map": clip_to_map})


@solution("fcvit_param_change")
def fcvit_param_change(width, kernel_size, clip_to_map):
    total = 0
    for C, side in ((2 * width, 16), (4 * width, 8), (8 * width, 4)):   # stages 2-4, two blocks each
        k = min(kernel_size, 2 * side - 1) if clip_to_map else kernel_size
        hidden_gc, hidden_fc = C // 8, max(C // 8, 16)
        gc = C * 2 * hidden_gc + 2 * hidden_gc + hidden_gc * C + C + 2 * 8      # fc1 (maxout), fc2, gamma/beta
        dw = k * k * C + C
        fc = C * hidden_fc + hidden_fc + hidden_fc * C + C
        mixer = 2 * C + 2 * (gc + dw + fc) + C                                   # GroupNorm, two rounds, layer scale
        total += 2 * (mixer - 9 * C * C)                                         # minus the 3x3 conv it replaces
    return total


# Exercise 2: the global context of an image padded to a batch (only the valid positions count) -------------------

def _masked_cases(g):
    cases = []
    for _ in range(5):
        B, heads, d, hidden = draw_int(g, 1, 3), draw_int(g, 1, 4), draw_int(g, 1, 5), draw_int(g, 1, 6)
        H, W, C = draw_int(g, 2, 6), draw_int(g, 2, 6), heads * d
        mask = (torch.rand(B, 1, H, W, generator=g) < 0.6).to(torch.float64)
        mask[:, :, 0, :2] = 1.0    # every image keeps at least two valid positions (the unbiased std needs two)
        cases.append(dict(x=torch.randn(B, C, H, W, generator=g, dtype=torch.float64), mask=mask, heads=heads,
                          W1=torch.randn(2 * hidden, C, generator=g, dtype=torch.float64),
                          b1=torch.randn(2 * hidden, generator=g, dtype=torch.float64),
                          W2=torch.randn(C, hidden, generator=g, dtype=torch.float64),
                          b2=torch.randn(C, generator=g, dtype=torch.float64),
                          gamma=torch.rand(heads, generator=g, dtype=torch.float64) + 0.5,
                          beta=torch.randn(heads, generator=g, dtype=torch.float64)))
    return cases


@exercise("fcvit_gc_masked", _masked_cases,
          "FCViT's GlobalContext (compete, eps 1e-5) over the valid (mask = 1) positions only; 0 at padded ones.")
def _fcvit_gc_masked(x, mask, heads, W1, b1, W2, b2, gamma, beta):
    import torch.nn as nn

    from ..attention.fcvit import GlobalContext
    B, C = x.shape[:2]
    m = GlobalContext(C, heads=heads, reduction=1, dtype=x.dtype)
    m.fc1, m.fc2 = nn.Linear(C, W1.shape[0], dtype=x.dtype), nn.Linear(W2.shape[1], C, dtype=x.dtype)
    out = torch.zeros_like(x)
    with torch.no_grad():
        for p, v in ((m.fc1.weight, W1), (m.fc1.bias, b1), (m.fc2.weight, W2), (m.fc2.bias, b2),
                     (m.rescale_weight, gamma), (m.rescale_bias, beta)):
            p.copy_(v)
        for b in range(B):     # the valid positions of one image as a 1 x n map: the module sees nothing else
            valid = mask[b, 0].flatten() > 0
            tokens = x[b].flatten(1)[:, valid]
            y = m(tokens[None, :, None, :])[0, :, 0]
            out[b].view(C, -1)[:, valid] = y
    return out


@solution("fcvit_gc_masked")
def fcvit_gc_masked(x, mask, heads, W1, b1, W2, b2, gamma, beta):
    B, C, H, W = x.shape
    d = C // heads
    m = mask.reshape(B, 1, 1, H * W)
    n = m.sum(dim=-1, keepdim=True)                                     # (B, 1, 1, 1) valid positions
    t = x.reshape(B, heads, d, H * W)
    g = (t * m).sum(-1) / n[..., 0]                                     # (B, heads, d): mean of valid tokens
    s = (t * g[..., None]).sum(2) / d ** 0.5                            # (B, heads, N)
    m2 = m[:, :, 0]                                                     # (B, 1, N)
    count = heads * n[:, :, 0]                                          # (B, 1, 1) entries in the statistics
    mean = (s * m2).sum(dim=(1, 2), keepdim=True) / count
    var = (((s - mean) * m2) ** 2).sum(dim=(1, 2), keepdim=True) / (count - 1)   # unbiased
    s = (s - mean) / (var.sqrt() + 1e-5) * gamma[:, None] + beta[:, None]
    z = g.reshape(B, C) @ W1.T + b1
    h = z.shape[1] // 2
    v = torch.maximum(z[:, :h], z[:, h:]) @ W2.T + b2                  # (B, C): the maxout context
    out = s[:, :, None, :] * v.reshape(B, heads, d, 1) * m2[:, :, None]
    return out.reshape(B, C, H, W)
