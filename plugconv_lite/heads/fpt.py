"""Feature Pyramid Transformer as a classifier head. Zhang, Zhang, Tang, Wang, Hua, Sun: "Feature Pyramid Transformer",
ECCV 2020, arXiv 2007.09451 (official code: github.com/ZHANGDONG-NJUST/FPT, lib/modeling/FPT_a.py with
self_trans.py, grounding_trans.py and rendering_trans.py).

FPT transforms every level of a feature pyramid with three kinds of non-local interaction: a self-transformer (ST)
inside the level, a grounding transformer (GT) from each coarser level (top-down) and a rendering transformer (RT)
from each finer level (bottom-up); the level's results and its own map are concatenated and fused by a 3x3 conv.
The paper feeds the transformed pyramid to detection and segmentation heads. Here the pyramid is built from chosen
stage outputs of the backbone and each fused level is pooled into the classifier (``FPTHead``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_divides, check_int
from ..registry import register


def _conv_init(conv: nn.Conv2d) -> None:
    """FPT_a.initialize: every conv of the transformer kaiming_uniform_(a=1), biases zero."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class SelfTransformer(nn.Module):
    """ST (the official ``SelfTrans``, one head): a non-local block whose attention is a mixture of softmaxes.

        q = W_qk x (N = H W queries),  k = W_qk pool(x),  v = W_v pool(x) (N' = ceil(H/2) ceil(W/2) positions;
        pool = AvgPool(3, 2, 1) without the padded zeros); W_qk is ONE 1x1 conv for queries and keys (official).
        pi = softmax_m(w_m . mean_i q_i)  (B, m): the mixture weights, one distribution per image;
        the C channels of q and k split into m groups of C/m:  A_m = softmax_j(q_m k_m^T / sqrt(C))  (N x N');
        y = sum_m pi_m A_m v;   out = x + BN(W_o y).

    The temperature is sqrt(C), not sqrt(C/m) (official). Each A_m v is a plain softmax attention, so the mixture
    runs as ONE ``F.scaled_dot_product_attention`` call with m heads (head m: q_m, k_m and the values pi_m v; the
    heads are then summed): pi_m A_m v = A_m (pi_m v). What SDPA cannot do here is the mixing itself (a sum of
    softmaxes is not a softmax), hence the head sum outside it. That costs m products with v instead of one, and on
    the CPU the fused kernel wins only on large maps: ``fused=None`` takes it when N > ``FUSED_MIN_QUERIES`` and
    otherwise the explicit form (the m maps A_m, mixed, then one product with v, as the official code).
    """

    FUSED_MIN_QUERIES = 256  # measured (CPU, batch 32, C = 64): SDPA is faster at 32 x 32, slower at 16 x 16 and below

    def __init__(self, channels: int, n_mix: int = 2, pool: bool = True, fused: Optional[bool] = None, device=None,
                 dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        self.n_mix = check_int("n_mix", n_mix, min_value=1)
        check_divides("n_mix", n_mix, "channels", channels)
        if fused is not None and not isinstance(fused, bool):
            raise ValueError(f"fused={fused!r} must be True, False or None (by map size)")
        self.fused = fused
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False) if pool else nn.Identity()
        self.W_qk = nn.Conv2d(C, C, 1, **factory)
        # no bias on W_v (the official conv has one): softmax rows and the mixture weights sum to 1, so a bias on the
        # values adds the same vector at every position, which the BN after W_o removes in training; its gradient
        # is exactly 0 and FPT_a's zero-initialised bias never moves. Without it the network trains identically.
        self.W_v = nn.Conv2d(C, C, 1, bias=False, **factory)
        self.W_o = nn.Conv2d(C, C, 1, bias=False, **factory)
        self.bn = nn.BatchNorm2d(C, **factory)
        self.w_mix = nn.Parameter(torch.empty(n_mix, C, **factory)) if n_mix > 1 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.W_qk, self.W_v, self.W_o):
            _conv_init(conv)
        self.bn.reset_parameters()
        if self.w_mix is not None:  # official: U(-1/sqrt(m), 1/sqrt(m))
            bound = self.n_mix ** -0.5
            nn.init.uniform_(self.w_mix, -bound, bound)

    def mixture_weights(self, q: torch.Tensor) -> torch.Tensor:
        """pi (B, m) from the queries q (B, C, N): a softmax over the m components of w_m . mean_i q_i."""
        if self.w_mix is None:
            return q.new_ones(q.shape[0], 1)
        return torch.softmax(q.mean(dim=2) @ self.w_mix.t(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        m = self.n_mix
        x_p = self.pool(x)
        q = self.W_qk(x).reshape(B, C, H * W)
        k = self.W_qk(x_p).flatten(2)                                 # (B, C, N')
        v = self.W_v(x_p).flatten(2)
        pi = self.mixture_weights(q)                                  # (B, m)
        q = q.reshape(B, m, C // m, H * W).transpose(-1, -2)          # (B, m, N, C/m)
        k = k.reshape(B, m, C // m, -1).transpose(-1, -2)             # (B, m, N', C/m)
        fused = H * W > self.FUSED_MIN_QUERIES if self.fused is None else self.fused
        if fused:
            v = pi[:, :, None, None] * v.transpose(1, 2)[:, None]     # (B, m, N', C): pi_m v
            y = F.scaled_dot_product_attention(q, k, v, scale=C ** -0.5).sum(dim=1)   # (B, N, C)
        else:
            A = torch.softmax((q @ k.transpose(-1, -2)) * C ** -0.5, dim=-1)       # (B, m, N, N')
            y = (pi[:, :, None, None] * A).sum(dim=1) @ v.transpose(1, 2)          # (B, N, C)
        return x + self.bn(self.W_o(y.transpose(1, 2).reshape(B, C, H, W)))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, n_mix={self.n_mix}, pool={not isinstance(self.pool, nn.Identity)}, "
                f"fused={self.fused}")


class GroundingTransformer(nn.Module):
    """GT (the official ``GroundTrans``, mode ``'dot'``): top-down, queries from the fine level, keys and values
    from the coarse one, and NO softmax:

        y = theta(f) (phi(c)^T g(c)) / N_c  (theta, phi, g: 1x1 convs C -> C_i with biases; N_c coarse positions);
        z = BN(W_z y)  (W_z: 1x1 conv C_i -> C with bias; the BN's weight and bias start at ZERO, so z = 0).

    The paper describes a Euclidean-distance similarity with a softmax; the official code's 'dot' mode is the plain
    product divided by N_c (as here). Without a softmax the product re-associates: theta (phi^T g) costs
    (N_f + N_c) C_i^2 multiply-adds instead of (theta phi^T) g's 2 N_f N_c C_i, and the cheaper order is taken
    (``_reassociate``). No softmax, so no ``F.scaled_dot_product_attention``.
    """

    def __init__(self, channels: int, inter_channels: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        self.inter_channels = C_i = check_int("inter_channels", max(C // 2, 1) if inter_channels is None
                                              else inter_channels, min_value=1)
        self.theta = nn.Conv2d(C, C_i, 1, **factory)
        self.phi = nn.Conv2d(C, C_i, 1, **factory)
        self.g = nn.Conv2d(C, C_i, 1, **factory)
        self.W_z = nn.Conv2d(C_i, C, 1, **factory)
        self.bn = nn.BatchNorm2d(C, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.theta, self.phi, self.g, self.W_z):
            _conv_init(conv)
        nn.init.zeros_(self.bn.weight)   # GT starts at exactly zero (official)
        nn.init.zeros_(self.bn.bias)
        self.bn.reset_running_stats()

    @staticmethod
    def _reassociate(n_fine: int, n_coarse: int, c_i: int) -> bool:
        """Whether theta (phi^T g) is cheaper than (theta phi^T) g."""
        return (n_fine + n_coarse) * c_i < 2 * n_fine * n_coarse

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        B, _, H, W = fine.shape
        theta = self.theta(fine).reshape(B, self.inter_channels, H * W).transpose(1, 2)   # (B, N_f, C_i)
        phi = self.phi(coarse).flatten(2)                                                 # (B, C_i, N_c)
        g = self.g(coarse).flatten(2).transpose(1, 2)                                     # (B, N_c, C_i)
        n_c = g.shape[1]
        if self._reassociate(H * W, n_c, self.inter_channels):
            y = theta @ ((phi @ g) / n_c)
        else:
            y = ((theta @ phi) / n_c) @ g
        return self.bn(self.W_z(y.transpose(1, 2).reshape(B, self.inter_channels, H, W)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inter_channels={self.inter_channels}"


class RenderingTransformer(nn.Module):
    """RT (the official ``RenderTrans``, ``upsample=False``): bottom-up, the fine level's global average gates a
    3x3 conv of the coarse level, and a strided 3x3 conv brings the fine level down to the coarse size:

        w = ReLU(BN(W_w GAP(f)))  (B, C, 1, 1);   q = BN(W_q c);   out = ReLU(BN(W_s f) + q * w),

    W_w 1x1, W_q 3x3, W_s 3x3 with stride 2^gap (``gap`` = how many halvings lie between the two levels), no
    biases. The official code's W_s has stride 2 whatever the gap (its P5 <- P3 and P5 <- P2 pairs fail on shape);
    with stride 2^gap a 3x3 kernel samples 3 of every 2^gap rows and columns when gap > 1. The official class also
    builds two convs it never uses (``conv_reduction``, ``conv_cat``); they are left out.
    """

    def __init__(self, channels: int, gap: int = 1, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        self.gap = check_int("gap", gap, min_value=1)
        self.W_w = nn.Conv2d(C, C, 1, bias=False, **factory)
        self.bn_w = nn.BatchNorm2d(C, **factory)
        self.W_q = nn.Conv2d(C, C, 3, padding=1, bias=False, **factory)
        self.bn_q = nn.BatchNorm2d(C, **factory)
        self.W_s = nn.Conv2d(C, C, 3, stride=2 ** gap, padding=1, bias=False, **factory)
        self.bn_s = nn.BatchNorm2d(C, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.W_w, self.W_q, self.W_s):
            _conv_init(conv)
        for bn in (self.bn_w, self.bn_q, self.bn_s):
            bn.reset_parameters()

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        w = torch.relu(self.bn_w(self.W_w(fine.mean(dim=(2, 3), keepdim=True))))
        q = self.bn_q(self.W_q(coarse))
        return torch.relu(self.bn_s(self.W_s(fine)) + q * w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, gap={self.gap}, stride={2 ** self.gap}"


def _check_levels(levels, n_stages: int) -> tuple[int, ...]:
    if levels is None:
        return tuple(range(max(1, n_stages - 2), n_stages + 1))
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(f"levels={levels!r} must be a non-empty sequence of stage numbers (1 = the first stage)")
    for i, lv in enumerate(levels):
        check_int(f"levels[{i}]", lv, min_value=1, max_value=n_stages)
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"levels={tuple(levels)!r} must be strictly increasing (fine to coarse)")
    return tuple(int(lv) for lv in levels)


@register("fpt", "head", paper="Feature Pyramid Transformer", year=2020, arxiv="2007.09451")
class FPTHead(nn.Module):
    """The FPT pyramid on chosen stage outputs, pooled into a classifier.

    For the levels l in ``levels`` (stage numbers, fine to coarse; stage l has half the resolution of stage l-1):

        P_l = L_l(S_l)  (1x1 lateral conv with bias, width C_l -> d);
        P'_l = ReLU(BN(F_l(cat[ST(P_l), RT(P_l, P_j) for finer j (nearest first),
                               GT(P_l, P_j) for coarser j (nearest first), P_l])))   (F_l: 3x3, (L+1) d -> d);
        logits = fc(cat_l GAP(P'_l))  (fc: L d -> num_classes).

    The concatenation order is FPT_a's (ST, RTs, GTs, the level itself). Where FPT_a's neck would hand P'_l to a
    detector, the head pools each level and concatenates the L pooled vectors. The BN + ReLU after F_l is this
    book's (FPT_a offers a norm, no activation): a 3x3 conv followed directly by a global average pool is, up to
    border effects, a linear map of the pooled input, so without a nonlinearity between them the fusion conv's
    spatial taps would do nothing for the classifier.

    ``levels=None`` takes the last three stages (stages 2-4 of ResNet-18: at 32x32 input, stage 1's 32 x 32 map
    would make the head cost more than the backbone). ``d``: the pyramid width (FPT: 256; here 64, ResNet-18's base
    width, which keeps the head cheap to train); ``n_mix``: the ST's
    number of softmaxes (FPT_a: 2); ``gt_channels``: GT's inner width (default d/2, official).
    """

    def __init__(self, channels: Sequence[int], num_classes: int, d: int = 64, levels=None, n_mix: int = 2,
                 gt_channels: Optional[int] = None, st_pool: bool = True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
            raise ValueError(f"channels={channels!r} must be a non-empty list of stage widths")
        for i, c in enumerate(channels):
            check_int(f"channels[{i}]", c, min_value=1)
        self.num_classes = check_int("num_classes", num_classes, min_value=1)
        self.d = check_int("d", d, min_value=1)
        check_int("n_mix", n_mix, min_value=1)
        check_divides("n_mix", n_mix, "d", d)
        self.levels = _check_levels(levels, len(channels))
        self.n_mix = n_mix
        L = len(self.levels)
        self.lateral = nn.ModuleList(nn.Conv2d(channels[lv - 1], d, 1, **factory) for lv in self.levels)
        self.st = nn.ModuleList(SelfTransformer(d, n_mix, st_pool, **factory) for _ in self.levels)
        # rt[f"{l}_{j}"]: level l (coarse) rendered from the finer level j; gt[f"{l}_{j}"]: level l grounded in j
        self.rt = nn.ModuleDict({f"{l}_{j}": RenderingTransformer(d, l - j, **factory)
                                 for l in self.levels for j in reversed(self.levels) if j < l})
        self.gt = nn.ModuleDict({f"{l}_{j}": GroundingTransformer(d, gt_channels, **factory)
                                 for l in self.levels for j in self.levels if j > l})
        self.fuse = nn.ModuleList(
            nn.Sequential(nn.Conv2d((L + 1) * d, d, 3, padding=1, bias=False, **factory),
                          nn.BatchNorm2d(d, **factory), nn.ReLU(inplace=True)) for _ in self.levels)
        self.fc = nn.Linear(L * d, num_classes, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in list(self.lateral) + [f[0] for f in self.fuse]:
            _conv_init(conv)
        for m in list(self.st) + list(self.rt.values()) + list(self.gt.values()):
            m.reset_parameters()
        for f in self.fuse:
            f[1].reset_parameters()
        self.fc.reset_parameters()

    def pyramid(self, stages: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The transformed levels P'_l (B, d, H_l, W_l), fine to coarse."""
        P = {lv: lat(stages[lv - 1]) for lv, lat in zip(self.levels, self.lateral)}
        out = []
        for i, lv in enumerate(self.levels):
            parts = [self.st[i](P[lv])]
            parts += [self.rt[f"{lv}_{j}"](P[lv], P[j]) for j in reversed(self.levels) if j < lv]
            parts += [self.gt[f"{lv}_{j}"](P[lv], P[j]) for j in self.levels if j > lv]
            parts.append(P[lv])
            out.append(self.fuse[i](torch.cat(parts, dim=1)))
        return out

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fc(torch.cat([p.mean(dim=(2, 3)) for p in self.pyramid(stages)], dim=1))

    def extra_repr(self) -> str:
        return f"d={self.d}, levels={self.levels}, n_mix={self.n_mix}, num_classes={self.num_classes}"
