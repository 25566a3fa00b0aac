"""Next-ViT's NCB and NTB (chapters/38_nextvit.ipynb): the chapter's experiment and its exercises."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..exercises import draw_int, exercise, solution
from ..experiments import BASELINE, Variant, register_experiment

# Next-ViT's stacking rule on ResNet-18's stages 3-4 (8 x 8 and 4 x 4 maps): an NCB, then an NTB, in each. At width 64
# the network keeps about half the parameters and three quarters of the FLOPs (the chapter computes both); the
# larger change is in parameters, so the control is the plain ResNet-18 narrowed to the same parameter count.
NEXTVIT = Variant("nextvit", {"block": "ncb", "block_kw": {"first_stage": 3, "ntb_every": 2}},
                  note="stages 3-4: NCB then NTB (E-MHSA on 3/4 of the channels, sr chosen from the map: 1 on 8x8 "
                       "and 4x4); stages 1-2 keep their BasicBlocks")
register_experiment("nextvit", [
    BASELINE,
    NEXTVIT,
    Variant("nextvit_budget", budget_of=NEXTVIT, budget="params",
            note="control: the plain ResNet-18 narrowed to the Next-ViT network's parameter count"),
])


# Exercise 1: fold E-MHSA's two norms into its key projection (the official merge_bn, for sr > 1) ----------------

def _fold_cases(g):
    cases = []
    for _ in range(6):
        C = draw_int(g, 1, 12)

        def vec(lo=-1.0, hi=1.0):
            return lo + (hi - lo) * torch.rand(C, generator=g, dtype=torch.float64)

        cases.append(dict(W=torch.randn(C, C, generator=g, dtype=torch.float64), b=vec(),
                          gamma1=vec(0.5, 2), beta1=vec(), mean1=vec(), var1=vec(0.2, 3),
                          gamma2=vec(0.5, 2), beta2=vec(), mean2=vec(), var2=vec(0.2, 3)))
    return cases


@exercise("nextvit_fold_key_norms", _fold_cases,
          "E-MHSA's keys k = W BN2(pool(BN1(x))) + b written as one affine map of pool(x): (W', b').", atol=1e-9,
          rtol=1e-7)
def _fold_key_norms(W, b, gamma1, beta1, mean1, var1, gamma2, beta2, mean2, var2):
    from ..blocks.nextvit import EMHSA
    C = W.shape[0]
    norm1 = nn.BatchNorm2d(C, eps=1e-5).double().eval()
    e = EMHSA(C, head_dim=C, sr_ratio=2).double().eval()
    with torch.no_grad():
        for bn, (w_, b_, m_, v_) in ((norm1, (gamma1, beta1, mean1, var1)), (e.norm, (gamma2, beta2, mean2, var2))):
            bn.weight.copy_(w_), bn.bias.copy_(b_), bn.running_mean.copy_(m_), bn.running_var.copy_(v_)
        e.k.weight.copy_(W)
        # runs of sr^2 = 4 equal tokens: run r < C holds the unit vector e_r, the last run zeros, so that the pooled
        # tokens are exactly the basis and the origin; the keys are then the columns of the map plus its offset
        runs = torch.cat([torch.eye(C, dtype=W.dtype), torch.zeros(1, C, dtype=W.dtype)])
        x = runs.repeat_interleave(4, dim=0).T.reshape(1, C, 1, 4 * (C + 1))
        keys = e.k(e.keys_from(norm1(x).flatten(2).transpose(1, 2)))[0]           # (C + 1, C)
        offset = keys[C]
        return (keys[:C] - offset).T, offset + b


@solution("nextvit_fold_key_norms")
def fold_key_norms(W, b, gamma1, beta1, mean1, var1, gamma2, beta2, mean2, var2):
    eps = 1e-5
    a1 = gamma1 / torch.sqrt(var1 + eps)          # BN1 in eval mode: a1 * x + c1, per channel
    c1 = beta1 - a1 * mean1
    a2 = gamma2 / torch.sqrt(var2 + eps)
    c2 = beta2 - a2 * mean2
    # the pool averages tokens channel by channel, so it commutes with BN1's per-channel affine map
    return W * (a1 * a2)[None, :], b + W @ (a2 * c1 + c2)


# Exercise 2: the parameters of an NTB ---------------------------------------------------------------------------

def _ntb_cases(g):
    cases = [dict(in_channels=256, out_channels=256, stride=1, sr_ratio=1, mix_ratio=0.75, head_dim=32, mlp_ratio=2),
             dict(in_channels=128, out_channels=64, stride=2, sr_ratio=2, mix_ratio=0.75, head_dim=32, mlp_ratio=2),
             dict(in_channels=128, out_channels=128, stride=1, sr_ratio=1, mix_ratio=0.5, head_dim=32, mlp_ratio=3)]
    for _ in range(7):
        C = 32 * draw_int(g, 2, 10)
        cases.append(dict(in_channels=[C, 32 * draw_int(g, 1, 12), draw_int(g, 3, 200)][draw_int(g, 0, 2)],
                          out_channels=C, stride=draw_int(g, 1, 2), sr_ratio=draw_int(g, 1, 3),
                          mix_ratio=[0.25, 0.5, 0.6, 0.75, 0.8, 1.0][draw_int(g, 0, 5)],
                          head_dim=[8, 16, 32][draw_int(g, 0, 2)], mlp_ratio=[1.5, 2, 3, 4][draw_int(g, 0, 3)]))
    return cases


@exercise("nextvit_ntb_params", _ntb_cases, "Trainable parameters of NTB(in_channels, out_channels, ...).")
def _ntb_params(in_channels, out_channels, stride, sr_ratio, mix_ratio, head_dim, mlp_ratio):
    from ..blocks.nextvit import NTB
    from ..measure import count_params
    return count_params(NTB(in_channels, out_channels, stride=stride, sr_ratio=sr_ratio, mix_ratio=mix_ratio,
                            head_dim=head_dim, mlp_ratio=mlp_ratio))


@solution("nextvit_ntb_params")
def ntb_params(in_channels, out_channels, stride, sr_ratio, mix_ratio, head_dim, mlp_ratio):
    def make_divisible(v, d=32):
        new = max(d, int(v + d / 2) // d * d)
        return new + d if new < 0.9 * v else new

    def embed(c_in, c_out, s):                     # 1x1 conv (no bias) + BN, or nothing
        return c_in * c_out + 2 * c_out if (s == 2 or c_in != c_out) else 0

    C = out_channels
    C1 = make_divisible(mix_ratio * C)
    C2 = C - C1
    total = embed(in_channels, C1, stride) + 2 * C1                          # patch embedding, norm1
    total += 4 * C1 * C1 + 3 * C1 + (2 * C1 if sr_ratio > 1 else 0)         # q, k, v, proj; the keys' BN1d
    if C2:
        total += embed(C1, C2, 1) + 9 * C2 * head_dim + 2 * C2 + C2 * C2    # projection, MHCA
    h = make_divisible(mlp_ratio * C)
    return total + 2 * C + 2 * C * h + h + C                                # norm2, MLP
