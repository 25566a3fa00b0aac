"""Spatial-reduction attention (PVT) and its linear variant (PVTv2). Wang, Xie, Li, Fan, Song, Liang, Lu, Luo, Shao:
"Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions", ICCV 2021, arXiv
2102.12122; "PVT v2: Improved Baselines with Pyramid Vision Transformer", CVMJ 2022, arXiv 2106.13797 (official code:
github.com/whai362/PVT, classification/pvt.py and pvt_v2.py, class ``Attention``).

Full self-attention over the N = H W positions of a map costs O(N^2) in time and memory. SRA keeps one query per
position but computes keys and values from a map shrunk R times in each direction (a k = s = R convolution, then a
LayerNorm): N / R^2 keys, O(N^2 / R^2). The linear variant pools the map to a fixed P x P grid (then a 1x1 conv,
LayerNorm and GELU): P^2 keys whatever the map size, so the cost grows linearly with N.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_int
from ..registry import register


def default_heads(channels: int, head_dim: int = 64) -> int:
    """PVT's heads: one per 64 channels (its stages: 64, 128, 320, 512 channels with 1, 2, 5, 8 heads); one head
    where 64 does not divide the channels."""
    h = max(1, channels // head_dim)
    return h if channels % h == 0 else 1


def auto_sr_ratio(resolution: Optional[int], keys: int = 64) -> int:
    """The largest power of two R that divides ``resolution`` and leaves at least ``keys`` keys, (H / R)^2 >= keys
    (MODULES.md's rule for CIFAR maps: 32 -> 4, 16 -> 2, 8 and 4 -> 1); 1 for an unknown resolution."""
    if resolution is None:
        return 1
    r = 1
    while resolution % (2 * r) == 0 and (resolution // (2 * r)) ** 2 >= keys:
        r *= 2
    return r


@register("sra", "attention", paper="Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without "
          "Convolutions", year=2021, arxiv="2102.12122", url="https://github.com/whai362/PVT")
class SpatialReductionAttention(nn.Module):
    """y = x + proj(softmax(q k^T / sqrt(d)) v), with t = LN(x) as tokens (B, N, C), N = H W, and

        q = t W_q                       (B, h, N, d),  d = C / h
        s = LN(conv_R(t as a map))      (B, N / R^2, C)      sr_ratio R > 1 (R = 1: s = t)
        s = GELU(LN(conv_1x1(pool_P(t as a map))))  (B, P^2, C)   linear=True (PVTv2), P = pool_size
        k, v = s W_k, s W_v             (B, h, M, d),  M = the number of keys

    the pre-norm residual form of a PVT block's attention half, so that the module keeps the attention contract
    (shape in = shape out) and sits on a block's residual branch. The attention itself is
    ``F.scaled_dot_product_attention`` (plain softmax attention, so the fused kernels apply on a GPU).

    Departure from the official code: where R does not divide H or W, the official k = s = R convolution drops the
    last rows or columns (they never become keys) and a map smaller than R raises; here the map is zero-padded at the
    bottom and right to a multiple of R first, so every position reaches the keys. On maps R divides, the two are
    the same computation (tested against the official ``Attention`` with transplanted weights).
    """

    def __init__(self, channels: int, num_heads: Optional[int] = None, sr_ratio: int = 1, linear: bool = False,
                 pool_size: int = 7, qkv_bias: bool = True, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        self.num_heads = default_heads(C) if num_heads is None else check_int("num_heads", num_heads, min_value=1)
        if C % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide channels={C}")
        self.sr_ratio = check_int("sr_ratio", sr_ratio, min_value=1)
        self.linear = bool(linear)
        self.pool_size = check_int("pool_size", pool_size, min_value=1)
        if self.linear and sr_ratio != 1:
            raise ValueError(f"sr_ratio={sr_ratio} is unused with linear=True (the keys come from a "
                             f"{pool_size}x{pool_size} pool): leave it at 1")
        self.norm = nn.LayerNorm(C, eps=eps, **factory)        # the block's pre-norm
        self.q = nn.Linear(C, C, bias=qkv_bias, **factory)
        self.kv = nn.Linear(C, 2 * C, bias=qkv_bias, **factory)
        self.proj = nn.Linear(C, C, **factory)
        self.sr = self.norm_kv = None
        if self.linear:
            self.sr = nn.Conv2d(C, C, 1, **factory)
        elif self.sr_ratio > 1:
            self.sr = nn.Conv2d(C, C, self.sr_ratio, stride=self.sr_ratio, **factory)
        if self.sr is not None:  # the official keys' LayerNorm keeps torch's default eps (the block norms use 1e-6)
            self.norm_kv = nn.LayerNorm(C, **factory)
        self.reset_parameters()

    @classmethod
    def from_site(cls, site, sr_ratio: Optional[int] = None, keys: int = 64, first_stage: int = 2, **kw):
        """For a backbone's attention plug point: None (declined) in stages before ``first_stage`` (numbered 1-4
        as in the papers; the default leaves out stage 1, whose 32 x 32 map has 1024 tokens); ``sr_ratio=None``
        picks ``auto_sr_ratio(site.resolution, keys)`` (not with ``linear=True``)."""
        if site.before_stage(first_stage):
            return None
        if sr_ratio is None:
            sr_ratio = 1 if kw.get("linear") else auto_sr_ratio(site.resolution, keys)
        return cls(site.out_channels, sr_ratio=sr_ratio, **kw)

    def reset_parameters(self) -> None:
        """As the official code: linear layers truncated normal (std 0.02) with zero biases, the reduction conv
        normal with std sqrt(2 / fan_out), LayerNorms at (1, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    def key_source(self, t: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """The tokens keys and values are computed from, (B, M, C): t itself, its R-fold reduction or its pool."""
        if self.sr is None:
            return t
        B, N, C = t.shape
        m = t.transpose(1, 2).reshape(B, C, H, W)
        if self.linear:
            m = F.adaptive_avg_pool2d(m, self.pool_size)
        else:
            R = self.sr_ratio
            m = F.pad(m, (0, -W % R, 0, -H % R))  # a multiple of R: no position is left out of the keys
        s = self.norm_kv(self.sr(m).flatten(2).transpose(1, 2))
        return F.gelu(s) if self.linear else s

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.reshape(B, N, self.num_heads, -1).transpose(1, 2)     # (B, h, N, d)

    def _qkv(self, x: torch.Tensor):
        B, C, H, W = x.shape
        t = self.norm(x.flatten(2).transpose(1, 2))
        k, v = self.kv(self.key_source(t, H, W)).chunk(2, dim=-1)
        return self._heads(self.q(t)), self._heads(k), self._heads(v)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights, (B, h, N, M): row n is the distribution query n puts over the M keys."""
        q, k, _ = self._qkv(x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self._qkv(x)
        o = F.scaled_dot_product_attention(q, k, v)                       # scale 1 / sqrt(d), as the official
        o = self.proj(o.transpose(1, 2).reshape(B, H * W, C))
        return x + o.transpose(1, 2).reshape(B, C, H, W)

    def extra_repr(self) -> str:
        keys = f"pool_size={self.pool_size}" if self.linear else f"sr_ratio={self.sr_ratio}"
        return f"channels={self.channels}, num_heads={self.num_heads}, {keys}, linear={self.linear}"
