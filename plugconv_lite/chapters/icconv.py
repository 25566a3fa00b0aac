"""IC-Conv and EDO: what this chapter adds to the library (chapters/05_icconv.ipynb): its experiment variants and its
exercises."""

from __future__ import annotations

import torch

from .. import edo as _edo
from ..exercises import draw_int, exercise
from ..experiments import BASELINE, Variant, register_experiment, register_prepare

# the dilation patterns come from EDO, a search run once per profile before the variant trains
register_prepare("edo", _edo.prepare)
register_experiment("icconv", [BASELINE, Variant(
    "icconv", {"conv": "icconv"}, prepare="edo",
    prepare_kw={"D_max": 2, "supernet_budget": 1 / 3, "search_images": 1024},
    note="IC-Conv in every 3x3 conv of the blocks; per-channel dilations (1..2 in H and W) searched by EDO")])


def _icconv_forward_cases(g):
    from ..conv.icconv import candidates
    cases = []
    for _ in range(5):
        c, o, D_max = draw_int(g, 1, 6), draw_int(g, 1, 8), draw_int(g, 1, 3)
        cands = candidates(D_max)
        pattern = [cands[i] for i in torch.randint(0, len(cands), (o,), generator=g).tolist()]
        cases.append(dict(x=torch.randn(draw_int(g, 1, 2), c, draw_int(g, 3, 11), draw_int(g, 3, 11), generator=g),
                          weight=torch.randn(o, c, 3, 3, generator=g), pattern=pattern))
    return cases


@exercise("icconv_forward", _icconv_forward_cases,
          "Return the IC-Conv output (stride 1, 'same' padding) for x (B, C, H, W), weight (O, C, 3, 3) and pattern, "
          "a list of (d_h, d_w) per output channel: channel o is the 3x3 conv of x with weight[o] and dilation "
          "pattern[o].")
def _icconv_forward(x, weight, pattern):
    from ..conv.icconv import ICConv2d
    m = ICConv2d(x.shape[1], weight.shape[0], 3, pattern=[list(d) for d in pattern],
                 D_max=max(max(d) for d in pattern))
    with torch.no_grad():
        m.weight.copy_(weight)
        return m(x)


def _edo_errors_cases(g):
    cases = []
    for _ in range(5):
        c, o, D_max = draw_int(g, 1, 4), draw_int(g, 1, 5), draw_int(g, 1, 3)
        K = 2 * D_max + 1
        cases.append(dict(x=torch.randn(draw_int(g, 1, 3), c, draw_int(g, 4, 10), draw_int(g, 4, 10), generator=g),
                          W_s=torch.randn(o, c, K, K, generator=g), D_max=D_max))
    return cases


@exercise("edo_errors", _edo_errors_cases,
          "EDO's criterion: for a supernet kernel W_s (O, C, 2 D_max + 1, 2 D_max + 1) and input x, return the "
          "(D_max^2, O) tensor of mean L1 errors |Y_s - Y_d| (mean over batch and positions) between the supernet "
          "output (stride 1, 'same' padding) and each candidate (d_h, d_w) in lexicographic order, the candidate "
          "being the 3x3 conv with dilation d whose weights are W_s's taps at the centre +- d.")
def _edo_errors(x, W_s, D_max):
    from ..edo import SupernetConv2d, dilation_errors
    conv = SupernetConv2d(x.shape[1], W_s.shape[0], 3, D_max=D_max)
    with torch.no_grad():
        conv.weight.copy_(W_s)
    return dilation_errors(conv, x) / (x.shape[0] * x.shape[2] * x.shape[3])
