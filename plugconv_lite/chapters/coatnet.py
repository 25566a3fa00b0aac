"""CoAtNet: relative attention and C-C-T-T stacking (chapters/39_coatnet.ipynb): the chapter's experiment and its
exercises."""
from __future__ import annotations

import torch

from ..exercises import draw_int, exercise, resnet18_overhead, solution
from ..experiments import BASELINE, Variant, register_experiment

# CoAtNet's transformer blocks in stages 3-4 of ResNet-18 (``from_site`` declines stages 1-2: C-C-T-T) remove about a
# quarter of the parameters and an eighth of the FLOPs at width 64 (the chapter computes both). The parameter change is
# the larger, so the control is the plain ResNet-18 narrowed to the C-C-T-T network's parameter count.
COATNET = Variant("coatnet", {"block": "coatnet"},
                  note="CoAtNet transformer blocks (relative attention, pre-norm, head_dim 32, FFN ratio 4) in stages "
                       "3-4, BasicBlocks in stages 1-2 (C-C-T-T)")
register_experiment("coatnet", [
    BASELINE,
    COATNET,
    Variant("coatnet_budget", budget_of=COATNET, budget="params",
            note="control: the plain ResNet-18 narrowed to the C-C-T-T network's parameter count"),
])


# Exercise 1: what C-C-T-T changes in a whole ResNet-18's parameter count ---------------------------------------

def _params_cases(g):
    cases = [dict(width=64, head_dim=32, mlp_ratio=4.0), dict(width=8, head_dim=32, mlp_ratio=4.0)]
    for _ in range(5):
        cases.append(dict(width=8 * draw_int(g, 1, 6), head_dim=[4, 8, 16, 32][draw_int(g, 0, 3)],
                          mlp_ratio=[0.5, 1.0, 2.0, 3.0, 4.0][draw_int(g, 0, 4)]))
    return cases


@exercise("coatnet_params_change", _params_cases,
          "Parameters of pl.resnet18(width, block='coatnet', block_kw={head_dim, mlp_ratio}) minus those of "
          "pl.resnet18(width) (negative when C-C-T-T is smaller).")
def _coatnet_params_change(width, head_dim, mlp_ratio):
    return resnet18_overhead("params", width, block="coatnet",
                             block_kw={"head_dim": head_dim, "mlp_ratio": mlp_ratio})


@solution("coatnet_params_change")
def coatnet_params_change(width, head_dim, mlp_ratio):
    def basic(cin, c):                         # 3x3 convs without bias, BNs, and the 1x1 + BN shortcut
        p = 9 * cin * c + 9 * c * c + 4 * c
        return p + (cin * c + 2 * c if cin != c else 0)

    def transformer(cin, c, window):
        heads = c // min(head_dim, c)
        hidden = max(1, round(c * mlp_ratio))
        p = 2 * cin + cin * 3 * c + 3 * c + c * c + c + heads * (2 * window - 1) ** 2
        p += (cin * c + c if cin != c else 0) + 2 * c
        return p + c * hidden + hidden + hidden * c + c

    change = 0
    for stage, window in ((3, 8), (4, 4)):     # 32x32 input: stage 3 works on 8x8 maps, stage 4 on 4x4
        c = width * 2 ** (stage - 1)
        cin = c // 2
        change += transformer(cin, c, window) + transformer(c, c, window)
        change -= basic(cin, c) + basic(c, c)
    return change


# Exercise 2: the gradient that reaches the bias table -------------------------------------------------------------

def _grad_cases(g):
    cases = []
    for _ in range(5):
        H, W = draw_int(g, 1, 4), draw_int(g, 1, 4)
        window = max(H, W) + draw_int(g, 0, 2)
        heads = draw_int(g, 1, 3)
        cases.append(dict(table=torch.randn(heads, (2 * window - 1) ** 2, generator=g, dtype=torch.float64),
                          G=torch.randn(heads, H * W, H * W, generator=g, dtype=torch.float64),
                          H=H, W=W, window=window))
    return cases


@exercise("coatnet_table_grad", _grad_cases,
          "dL/dtable for A = softmax over keys of the relative bias alone (q = k = 0), L = sum(A * G).",
          atol=1e-9, rtol=1e-7)
def _coatnet_table_grad(table, G, H, W, window):
    from ..blocks.coatnet import RelativeAttention
    heads = table.shape[0]
    a = RelativeAttention(heads, heads, head_dim=1, window=window).double()   # heads of one channel each
    with torch.no_grad():
        a.qkv.weight[:2 * heads].zero_(), a.qkv.bias[:2 * heads].zero_()      # q = k = 0: the logits are the bias
        a.table.copy_(table)
    A = a.attention(torch.zeros(1, H * W, heads, dtype=torch.float64), H, W)[0]
    (A * G).sum().backward()
    return a.table.grad


@solution("coatnet_table_grad")
def coatnet_table_grad(table, G, H, W, window):
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    y, x = ys.flatten(), xs.flatten()
    dy = y[:, None] - y[None, :] + window - 1                  # query minus key, shifted to start at 0
    dx = x[:, None] - x[None, :] + window - 1
    idx = (dy * (2 * window - 1) + dx).flatten()               # (N * N,) table entries
    A = torch.softmax(table[:, idx].reshape(-1, H * W, H * W), dim=-1)
    dB = A * (G - (A * G).sum(dim=-1, keepdim=True))           # through the softmax over keys
    grad = torch.zeros_like(table)
    return grad.index_add_(1, idx, dB.reshape(table.shape[0], -1))  # every pair adds to its offset's entry
