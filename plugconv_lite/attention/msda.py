"""Multi-scale dilated attention (MSDA, DilateFormer). Jiao, Tang, Lin, Gao, Ma, Wang, Zheng: "DilateFormer: Multi-Scale
Dilated Transformer for Visual Recognition", IEEE TMM 2023, arXiv 2302.01791 (official code:
github.com/JIAOJIAYUASD/dilateformer, models/dilateformer.py, ``MultiDilatelocalAttention``).

Each query attends only to a k x k neighbourhood of keys sampled with a dilation r: k^2 keys per position, so the
cost is linear in the number of positions. The channels (and heads) are split into one group per dilation rate,
each group attends at its own rate, and the groups are concatenated: several receptive-field sizes in one layer,
each strictly local (radius r (k - 1) / 2).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_int
from ..registry import register


def neighbours(t: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """The k x k dilated neighbourhood of every position, zero-padded at the borders as ``nn.Unfold`` pads:
    (B, C, H, W) -> (B, C, k*k, H, W), neighbour j = (row j // k, column j % k) of the window."""
    H, W = t.shape[-2:]
    p = dilation * (kernel_size - 1) // 2
    tp = F.pad(t, (p, p, p, p))
    return torch.stack([tp[..., i * dilation:i * dilation + H, j * dilation:j * dilation + W]
                        for i in range(kernel_size) for j in range(kernel_size)], dim=2)


@register("msda", "attention", paper="DilateFormer: Multi-Scale Dilated Transformer for Visual Recognition",
          year=2023, arxiv="2302.01791", url="https://github.com/JIAOJIAYUASD/dilateformer")
class MultiScaleDilatedAttention(nn.Module):
    """y = x + proj(concat_g SWDA_g(q_g, k_g, v_g)),  with LN(x) as the input of the 1x1 qkv projection, and

        SWDA at dilation r_g:  out_n = sum_j softmax_j(q_n . k_{n + r_g o_j} / sqrt(d)) v_{n + r_g o_j}

    over the k x k window offsets o_j (zero vectors outside the map: the official code zero-pads the keys and
    values, so a border query gives softmax weight to keys that are 0 — logit 0 — and that contribute 0). The
    channels of q, k and v split into ``len(dilation)`` groups in order, group g attending at dilation ``r_g``
    with ``num_heads / len(dilation)`` heads of ``d = C / num_heads`` channels. The pre-norm residual form of a
    DilateFormer block's attention half, so that the module keeps the attention contract (shape in = shape out).

    ``mask_border=True`` leaves the padded keys out of the softmax instead (not the official computation).
    The default ``dilation=(1, 2)`` with one head per rate: the paper's (1, 2, 3) needs channels divisible by 3,
    and the CIFAR widths are powers of two (any rates with ``num_heads`` a multiple of their number work). Neither
    ``F.scaled_dot_product_attention`` nor its fused kernels apply: every query has its own k^2 keys.
    """

    def __init__(self, channels: int, num_heads: Optional[int] = None, kernel_size: int = 3,
                 dilation: Sequence[int] = (1, 2), qkv_bias: bool = False, mask_border: bool = False,
                 eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        self.kernel_size = check_int("kernel_size", kernel_size, min_value=1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be odd (a window centred on its query)")
        if isinstance(dilation, int) or not len(dilation):
            raise ValueError(f"dilation={dilation!r} must be a non-empty sequence of rates, e.g. (1, 2, 3)")
        self.dilation = tuple(check_int(f"dilation[{i}]", r, min_value=1) for i, r in enumerate(dilation))
        groups = len(self.dilation)
        self.num_heads = groups if num_heads is None else check_int("num_heads", num_heads, min_value=1)
        if self.num_heads % groups:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of the number of dilations "
                             f"({groups}: {self.dilation})")
        if C % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide channels={C}")
        self.head_dim = C // self.num_heads
        self.mask_border = bool(mask_border)
        self.norm = nn.LayerNorm(C, eps=eps, **factory)   # the block's pre-norm, over channels
        self.qkv = nn.Conv2d(C, 3 * C, 1, bias=qkv_bias, **factory)
        self.proj = nn.Linear(C, C, **factory)

    def _qkv(self, x: torch.Tensor):
        t = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.qkv(t).chunk(3, dim=1)                          # each (B, C, H, W)

    def _group_logits(self, q, k, r):
        """q, k: (B, h_g, d, H, W) -> logits (B, h_g, k*k, H, W) and the neighbours of k."""
        B, h, d, H, W = q.shape
        kn = neighbours(k.reshape(B, h * d, H, W), self.kernel_size, r).reshape(B, h, d, -1, H, W)
        logits = torch.einsum("bhdyx,bhdjyx->bhjyx", q, kn) / math.sqrt(d)
        if self.mask_border:
            inside = neighbours(torch.ones(1, 1, H, W, dtype=q.dtype, device=q.device), self.kernel_size, r)
            logits = logits.masked_fill(inside == 0, float("-inf"))  # (1, 1, k*k, H, W); the centre is always in
        return logits

    def attention(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per dilation group, the attention weights (B, h_g, k*k, H, W): each position's distribution over its
        k*k neighbours (window order row by row)."""
        q, k, _ = self._qkv(x)
        return [torch.softmax(self._group_logits(qg, kg, r), dim=2)
                for qg, kg, r in zip(*self._groups(q, k), self.dilation)]

    def _groups(self, *ts):
        n = len(self.dilation)
        out = []
        for t in ts:
            B, C, H, W = t.shape
            out.append(t.reshape(B, n, self.num_heads // n, self.head_dim, H, W).unbind(1))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self._qkv(x)
        outs = []
        for qg, kg, vg, r in zip(*self._groups(q, k, v), self.dilation):
            a = torch.softmax(self._group_logits(qg, kg, r), dim=2)          # (B, h, k*k, H, W)
            h = qg.shape[1]
            vn = neighbours(vg.reshape(B, h * self.head_dim, H, W), self.kernel_size, r)
            vn = vn.reshape(B, h, self.head_dim, -1, H, W)
            outs.append(torch.einsum("bhjyx,bhdjyx->bhdyx", a, vn).reshape(B, h * self.head_dim, H, W))
        o = self.proj(torch.cat(outs, dim=1).permute(0, 2, 3, 1))            # (B, H, W, C)
        return x + o.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, mask_border={self.mask_border}")
