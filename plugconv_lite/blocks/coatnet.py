"""CoAtNet's transformer block: self-attention with a relative position bias. Dai, Liu, Le, Tan: "CoAtNet: Marrying
Convolution and Attention for All Data Sizes", NeurIPS 2021, arXiv 2106.04803 (no official code was released).

A convolution's weights depend on the offset between two positions, not on where they are: it is translation
equivariant, and that is a useful prior on small data. Plain self-attention has no such prior. CoAtNet adds to every
attention logit a learned scalar that depends only on the offset between query and key (one table per head), so
the attention keeps its global, input-dependent weights and gains the convolution's equivariant bias. The paper
stacks MBConv stages first and these blocks last (C-C-T-T); on a CIFAR ResNet-18 that means blocks in stages 3-4,
where the maps are 8 x 8 and 4 x 4.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_float, check_int
from ..registry import register


@functools.lru_cache(maxsize=16)
def relative_index(H: int, W: int, window: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """(H W, H W) indices into a (2 window - 1)^2 table: entry (i, j) is the table row of the offset from key j to
    query i, (dy, dx), each clamped to [-(window - 1), window - 1]. Cached per map size and device (a tensor never
    written to): building it costs more than the attention on large maps, and a GPU forward does not copy it from
    the host every call."""
    ys, xs = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1)                    # (N, 2)
    d = (pos[:, None, :] - pos[None, :, :]).clamp(-(window - 1), window - 1) + window - 1
    return d[..., 0] * (2 * window - 1) + d[..., 1]


class RelativeAttention(nn.Module):
    """Multi-head attention on (B, N, C_in) tokens with a relative position bias:

        A_h = softmax(q_h k_h^T / sqrt(d) + B_h),  B_h[i, j] = table_h[offset(i, j)],  out = proj(concat_h A_h v_h)

    The bias is added to the logits before the softmax (``F.scaled_dot_product_attention`` with a float
    ``attn_mask`` of shape (1, heads, N, N): the fused kernels apply where the backend supports an additive
    mask). Offsets beyond ``window - 1`` share the table's edge entries."""

    def __init__(self, in_channels: int, out_channels: int, head_dim: int = 32, window: int = 8):
        super().__init__()
        self.head_dim = min(head_dim, out_channels)
        if out_channels % self.head_dim:
            raise ValueError(f"head_dim={head_dim} must divide out_channels={out_channels}")
        self.num_heads = out_channels // self.head_dim
        self.window = check_int("window", window, min_value=1)
        self.qkv = nn.Linear(in_channels, 3 * out_channels)
        self.proj = nn.Linear(out_channels, out_channels)
        self.table = nn.Parameter(torch.zeros(self.num_heads, (2 * window - 1) ** 2))
        nn.init.trunc_normal_(self.table, std=0.02)

    def bias(self, H: int, W: int) -> torch.Tensor:
        """B, (heads, H W, H W)."""
        return self.table[:, relative_index(H, W, self.window, self.table.device)]

    def _qkv(self, t: torch.Tensor):
        B, N, _ = t.shape
        q, k, v = self.qkv(t).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def attention(self, t: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """The attention weights (B, heads, N, N); every row sums to 1."""
        q, k, _ = self._qkv(t)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + self.bias(H, W), dim=-1)

    def forward(self, t: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, _ = t.shape
        q, k, v = self._qkv(t)
        # a 4-D (1, heads, N, N) mask: torch's fused CPU kernel takes no 3-D mask and falls back to the math path
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(H, W).to(q.dtype)[None])
        return self.proj(o.transpose(1, 2).reshape(B, N, -1))


@register("coatnet", "block", paper="CoAtNet: Marrying Convolution and Attention for All Data Sizes", year=2021,
          arxiv="2106.04803")
class CoAtNetBlock(nn.Module):
    """The paper's transformer block (pre-norm), with its down-sampling form for the first block of a stage:

        x' = pool(x) (2 x 2 max pool where stride = 2, else x)
        y = proj(x') + RelAttn(pool(LN(x)))         proj: 1x1 conv where the width changes, else the identity
        y = y + FFN(LN(y))                          FFN: C -> mlp_ratio C -> C with GELU

    LN normalises over channels at every position. ``window``: the side of the largest map whose offsets all get
    their own bias (``from_site`` sets it to the map the block sees). Heads of ``head_dim`` channels (32 in the paper;
    one head of all channels where the block is narrower).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, head_dim: int = 32,
                 mlp_ratio: float = 4, window: int = 8):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, min_value=1)
        self.out_channels = check_int("out_channels", out_channels, min_value=1)
        self.stride = check_int("stride", stride, min_value=1)
        if stride not in (1, 2):
            raise ValueError(f"stride={stride} must be 1 or 2 (a 2 x 2 pool down-samples)")
        check_int("head_dim", head_dim, min_value=1)
        hidden = max(1, round(out_channels * check_float("mlp_ratio", mlp_ratio, min_value=0, min_inclusive=False)))
        self.norm1 = nn.LayerNorm(in_channels)
        self.attn = RelativeAttention(in_channels, out_channels, head_dim, window)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.norm2 = nn.LayerNorm(out_channels)
        self.ffn = nn.Sequential(nn.Linear(out_channels, hidden), nn.GELU(), nn.Linear(hidden, out_channels))

    @classmethod
    def from_site(cls, site, window: Optional[int] = None, first_stage: int = 3, **kw) -> Optional["CoAtNetBlock"]:
        """For a backbone's block plug point: None (declined: the backbone keeps its own block) in stages before
        ``first_stage`` (numbered 1-4; the default 3 gives the paper's C-C-T-T on a ResNet-18: attention on the 8 x 8
        and 4 x 4 maps, not on stage 1's 1024 tokens); ``window`` defaults to the side of the map after the block's
        pooling."""
        if site.before_stage(first_stage):
            return None
        if window is None and site.resolution is not None:
            window = max(1, -(-site.resolution // site.stride))
        return cls(site.in_channels, site.out_channels, stride=site.stride,
                   **({"window": window} if window is not None else {}), **kw)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2, ceil_mode=True) if self.stride == 2 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self._pool(self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        B, _, H, W = t.shape
        y = self.shortcut(self._pool(x))
        y = y + self.attn(t.flatten(2).transpose(1, 2), H, W).transpose(1, 2).reshape(B, -1, H, W)
        z = y.permute(0, 2, 3, 1)
        return y + self.ffn(self.norm2(z)).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, heads={self.attn.num_heads}, "
                f"window={self.attn.window}")
