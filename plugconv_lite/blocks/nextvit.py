"""Next-ViT's blocks: the Next Convolution Block (NCB) and the Next Transformer Block (NTB). Li, Xia, Li, Wang, Wang,
Xiao, Wang, Zheng, Pan: "Next-ViT: Next Generation Vision Transformer for Efficient Deployment in Realistic
Industrial Scenarios", arXiv 2207.05501 (official code: github.com/bytedance/Next-ViT, classification/nextvit.py).

NCB keeps a transformer block's layout — token mixer then MLP, each with a residual — but mixes tokens with
"multi-head convolutional attention" (MHCA): a grouped 3x3 conv whose groups play the heads, then a 1x1 projection.
NTB splits its output channels: about 3/4 go through efficient multi-head self-attention (E-MHSA, keys and values
average-pooled), the rest through an MHCA, and the two are concatenated before a shared MLP: global and local mixing
in one block. Everything is BatchNorm-based, so a deployed network folds the pre-norms into the next layer.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_float, check_int
from ..attention.sra import auto_sr_ratio
from ..registry import register

EPS = 1e-5


def _divisible(v: float, divisor: int) -> int:
    """The official ``_make_divisible``: the nearest multiple of ``divisor`` (at least one), rounded up when
    rounding down would lose more than 10%."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class PatchEmbed(nn.Sequential):
    """Stride 2: 2x2 average pool (ceil mode, padding not counted), 1x1 conv, BN; in != out: 1x1 conv, BN; else the
    identity (an empty Sequential)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        layers = []
        if stride == 2:
            layers.append(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False))
        if stride == 2 or in_channels != out_channels:
            layers += [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels, eps=EPS)]
        super().__init__(*layers)


class MHCA(nn.Sequential):
    """Multi-head convolutional attention: 1x1 projection of ReLU(BN(grouped 3x3 conv)), one group per head of
    ``head_dim`` channels, no biases."""

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__(nn.Conv2d(channels, channels, 3, padding=1, groups=channels // head_dim, bias=False),
                         nn.BatchNorm2d(channels, eps=EPS), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, channels, 1, bias=False))


class MLP(nn.Sequential):
    """1x1 (C -> make_divisible(ratio C, 32)), ReLU, 1x1 back, with biases."""

    def __init__(self, channels: int, ratio: float):
        hidden = _divisible(channels * ratio, 32)
        super().__init__(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))


def _check(in_channels, out_channels, stride, head_dim) -> int:
    """Validate; return the head width used: ``head_dim``, or all the channels of a layer narrower than it (one
    head; the official blocks do not build there)."""
    check_int("in_channels", in_channels, min_value=1)
    check_int("out_channels", out_channels, min_value=1)
    check_int("stride", stride, min_value=1)
    if stride not in (1, 2):
        raise ValueError(f"stride={stride} must be 1 or 2 (the patch embedding pools 2x2)")
    return min(check_int("head_dim", head_dim, min_value=1), out_channels)


@register("ncb", "block", paper="Next-ViT: Next Generation Vision Transformer for Efficient Deployment in Realistic "
          "Industrial Scenarios", year=2022, arxiv="2207.05501", url="https://github.com/bytedance/Next-ViT")
class NCB(nn.Module):
    """x = PE(x);  x = x + MHCA(x);  y = x + MLP(BN(x))   (MLP ratio 3; heads of ``head_dim`` channels).

    PE: the patch embedding (stride and width change). No activation after the sum, as the official block. A layer
    narrower than ``head_dim`` has one head of all its channels (the official block does not build there).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, head_dim: int = 32,
                 mlp_ratio: float = 3):
        super().__init__()
        head_dim = _check(in_channels, out_channels, stride, head_dim)
        if out_channels % head_dim:
            raise ValueError(f"head_dim={head_dim} must divide out_channels={out_channels} (MHCA's heads)")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.patch_embed = PatchEmbed(in_channels, out_channels, stride)
        self.mhca = MHCA(out_channels, head_dim)
        self.norm = nn.BatchNorm2d(out_channels, eps=EPS)
        self.mlp = MLP(out_channels, check_float("mlp_ratio", mlp_ratio, min_value=0, min_inclusive=False))

    @classmethod
    def from_site(cls, site, first_stage: int = 1, ntb_every: Optional[int] = None, ntb_kw: Optional[dict] = None,
                  **kw) -> Optional[nn.Module]:
        """For a backbone's block plug point, Next-ViT's stacking rule ("Next Hybrid Strategy"): None (declined:
        the backbone keeps its own block) in stages before ``first_stage`` (numbered 1-4); with ``ntb_every`` = n,
        block j of a stage (0-based) is an NTB where j + 1 is a multiple of n, built by ``NTB.from_site`` with
        ``ntb_kw`` (its ``sr_ratio`` chosen from the map unless given); every other block is an NCB with ``kw``.
        Next-ViT ends its stages with an NTB and puts one after every four NCBs in its long third stage (n = 5);
        a ResNet-18's stages of two blocks take n = 2: an NCB, then an NTB. Without ``ntb_every``, NCBs only."""
        ntb_kw = {} if ntb_kw is None else ntb_kw
        if not isinstance(ntb_kw, dict) or "first_stage" in ntb_kw:
            raise ValueError(f"ntb_kw={ntb_kw!r} must be a dict of NTB keywords without first_stage (the NCB rule's "
                             f"first_stage applies to both blocks)")
        if site.before_stage(first_stage):
            return None
        if ntb_every is not None:
            check_int("ntb_every", ntb_every, min_value=1)
            if site.block < 0:
                raise ValueError(f"ntb_every={ntb_every} needs the block's index in its stage; site {site.name} has "
                                 f"block={site.block}")
            if (site.block + 1) % ntb_every == 0:
                return NTB.from_site(site, first_stage=first_stage, **ntb_kw)
        elif ntb_kw:
            raise ValueError(f"ntb_kw={ntb_kw!r} is given without ntb_every (no block would be an NTB)")
        return cls(site.in_channels, site.out_channels, stride=site.stride, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + self.mhca(x)
        return x + self.mlp(self.norm(x))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class EMHSA(nn.Module):
    """Efficient multi-head self-attention on (B, N, C) tokens: q, k, v linear (with biases), heads of ``head_dim``;
    with ``sr_ratio`` R > 1 the keys and values come from the token sequence average-pooled in runs of R^2
    CONSECUTIVE tokens (raster order: strips along the rows, not R x R squares — the official ``AvgPool1d``), then a
    BatchNorm1d. The attention is ``F.scaled_dot_product_attention`` (scale 1 / sqrt(head_dim), as the official).

    The key projection has no bias, where the official one has: a key bias b adds q . b to every logit of a query's
    row, which the softmax cancels, so it changes nothing and its gradient is exactly zero."""

    def __init__(self, channels: int, head_dim: int = 32, sr_ratio: int = 1):
        super().__init__()
        self.num_heads = channels // head_dim
        self.sr_ratio = check_int("sr_ratio", sr_ratio, min_value=1)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels, bias=False)
        self.v = nn.Linear(channels, channels)
        self.proj = nn.Linear(channels, channels)
        self.norm = nn.BatchNorm1d(channels, eps=EPS) if sr_ratio > 1 else None

    def keys_from(self, t: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return t
        n = self.sr_ratio ** 2
        return self.norm(F.avg_pool1d(t.transpose(1, 2), n, n)).transpose(1, 2)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        B, N, C = t.shape
        heads = lambda z: z.reshape(B, -1, self.num_heads, C // self.num_heads).transpose(1, 2)
        s = self.keys_from(t)
        o = F.scaled_dot_product_attention(heads(self.q(t)), heads(self.k(s)), heads(self.v(s)))
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


@register("ntb", "block", paper="Next-ViT: Next Generation Vision Transformer for Efficient Deployment in Realistic "
          "Industrial Scenarios", year=2022, arxiv="2207.05501", url="https://github.com/bytedance/Next-ViT")
class NTB(nn.Module):
    """C_1 = make_divisible(int(mix_ratio C), 32) channels of attention, C_2 = C - C_1 of MHCA:

        x = PE(x) (to C_1);   x = x + E-MHSA(BN_1(x))            global mixing on C_1 channels
        o = PE'(x) (to C_2);  o = o + MHCA(o)                     local mixing on C_2 channels
        x = cat[x, o];        y = x + MLP(BN_2(x))               (MLP ratio 2)

    The concatenation puts the attention channels first. Where C_1 takes every channel (out_channels of 64 or
    less: make_divisible(0.75 C, 32) = C), C_2 = 0 and the block is E-MHSA + MLP only; the official block fails to
    build there (an MHCA of 0 channels). CIFAR ResNet-18 widths 256 and 512 give C_2 = 64 and 128. A layer narrower
    than ``head_dim`` has one head of all its channels, and one narrower than 32 rounds C_1 to its width instead of
    32 (so C_1 = C). The multiple is 32 whatever ``head_dim``, as in the official block.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, sr_ratio: int = 1, head_dim: int = 32,
                 mix_ratio: float = 0.75, mlp_ratio: float = 2):
        super().__init__()
        head_dim = _check(in_channels, out_channels, stride, head_dim)
        check_float("mix_ratio", mix_ratio, min_value=0, min_inclusive=False)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        # the official rounds int(mix_ratio C) to a multiple of 32, whatever head_dim; a layer narrower than 32 to
        # its own width
        self.attn_channels = _divisible(int(out_channels * mix_ratio), min(32, out_channels))
        self.conv_channels = out_channels - self.attn_channels
        if self.conv_channels < 0:
            raise ValueError(f"mix_ratio={mix_ratio} gives {self.attn_channels} attention channels, more than "
                             f"out_channels={out_channels}")
        for name, c in (("attention", self.attn_channels), ("MHCA", self.conv_channels)):
            if c % head_dim:
                raise ValueError(f"head_dim={head_dim} must divide the {name} channels ({c} of out_channels="
                                 f"{out_channels})")
        self.patch_embed = PatchEmbed(in_channels, self.attn_channels, stride)
        self.norm1 = nn.BatchNorm2d(self.attn_channels, eps=EPS)
        self.e_mhsa = EMHSA(self.attn_channels, head_dim, sr_ratio)
        self.projection = self.mhca = None
        if self.conv_channels:
            self.projection = PatchEmbed(self.attn_channels, self.conv_channels)
            self.mhca = MHCA(self.conv_channels, head_dim)
        self.norm2 = nn.BatchNorm2d(out_channels, eps=EPS)
        self.mlp = MLP(out_channels, check_float("mlp_ratio", mlp_ratio, min_value=0, min_inclusive=False))

    @classmethod
    def from_site(cls, site, first_stage: int = 3, sr_ratio: Optional[int] = None, keys: int = 49,
                  **kw) -> Optional["NTB"]:
        """For a backbone's block plug point: None (declined) in stages before ``first_stage`` (numbered 1-4; the
        default 3 keeps attention off a CIFAR ResNet-18's 32 x 32 and 16 x 16 maps: 1024 and 256 tokens).
        ``sr_ratio=None`` picks ``auto_sr_ratio(side, keys)`` for the map after the block's stride: the largest power
        of two leaving at least ``keys`` keys. ``keys=49`` gives the official ratios 8, 4, 2, 1 on Next-ViT's 56, 28,
        14 and 7 pixel maps (a 224 input: 49 keys everywhere), and 1 on the 8 x 8 and 4 x 4 maps of stages 3-4."""
        if site.before_stage(first_stage):
            return None
        if sr_ratio is None:
            sr_ratio = auto_sr_ratio(site.out_resolution, check_int("keys", keys, min_value=1))
        return cls(site.in_channels, site.out_channels, stride=site.stride, sr_ratio=sr_ratio, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        B, C, H, W = x.shape
        t = self.norm1(x).flatten(2).transpose(1, 2)
        x = x + self.e_mhsa(t).transpose(1, 2).reshape(B, C, H, W)
        if self.mhca is not None:
            o = self.projection(x)
            x = torch.cat([x, o + self.mhca(o)], dim=1)
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, attention={self.attn_channels}, "
                f"mhca={self.conv_channels}")
