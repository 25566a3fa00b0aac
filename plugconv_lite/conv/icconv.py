"""Inception Convolution. Liu, Li, Liang, Lin, Sun, Yan, Ouyang, Xu: "Inception Convolution with Efficient Dilation
Search", arXiv 2012.13587 (2020); official code and searched patterns: yifan123/IC-Conv.

A k x k convolution whose output channels each have their own dilation (d_h, d_w), independently along H and W, in
1..D_max. Every output channel still reads all input channels, so the parameters and FLOPs are those of the plain
conv; only the receptive field changes, channel by channel. The per-channel dilations (the *pattern*) come from a
search over the data (EDO, ``plugconv_lite.edo``), one pattern per layer.

Pattern formats (JSON-friendly; ``pattern_to_json`` writes them, ``parse_pattern`` reads them):

* per channel: a list of ``[d_h, d_w]`` pairs, one per output channel, in channel order;
* counts: ``{"d_h,d_w": n, ...}``, ``n`` consecutive output channels per dilation, in the dict's order (JSON objects
  keep their order when read by Python's ``json``; ``pattern_to_json`` writes the keys sorted);
* a preset name: ``"plain"``, ``"uniform"``, ``"isotropic"`` (see ``preset_pattern``).

The official pattern_zoo files use the counts form with zero-based keys ``"(i, j)"`` meaning dilation
``(i + 1, j + 1)``, one dict per replaced conv in construction order; ``patterns_from_zoo`` converts them.
"""
from __future__ import annotations

import numbers
import re
from typing import Iterable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_int, check_odd
from ..registry import register
from .base import ConvBase

Dilation = tuple[int, int]
PatternLike = Union[None, str, Sequence[Sequence[int]], Mapping[str, int]]
PRESETS = ("plain", "uniform", "isotropic")
_COUNT_KEY = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*$")
_ZOO_KEY = re.compile(r"^\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*$")


def candidates(D_max: int) -> list[Dilation]:
    """Every (d_h, d_w) with 1 <= d_h, d_w <= D_max, in lexicographic order ((1, 1) first)."""
    return [(dh, dw) for dh in range(1, D_max + 1) for dw in range(1, D_max + 1)]


def preset_pattern(name: str, out_channels: int, D_max: int = 4) -> list[Dilation]:
    """A named pattern: ``plain`` (all (1, 1): the plain conv), ``uniform`` (every (d_h, d_w) of 1..D_max in equal
    consecutive shares), ``isotropic`` ((d, d) for d = 1..D_max in equal shares)."""
    if name not in PRESETS:
        raise ValueError(f"pattern={name!r} must be one of {list(PRESETS)}, a list of [d_h, d_w] per output channel "
                         "or a {'d_h,d_w': count} dict")
    pool = {"plain": [(1, 1)], "uniform": candidates(D_max), "isotropic": [(d, d) for d in range(1, D_max + 1)]}[name]
    return [pool[o * len(pool) // out_channels] for o in range(out_channels)]


def parse_pattern(pattern: PatternLike, out_channels: int, D_max: int = 4) -> list[Dilation]:
    """Any accepted pattern format -> a list of (d_h, d_w), one per output channel; ``ValueError`` if malformed."""
    if pattern is None:
        pattern = "plain"
    if isinstance(pattern, str):
        return preset_pattern(pattern, out_channels, D_max)
    if isinstance(pattern, Mapping):
        channels = []
        for key, n in pattern.items():
            m = _COUNT_KEY.match(key) if isinstance(key, str) else None
            if m is None:
                raise ValueError(f"pattern key {key!r} must be a string 'd_h,d_w' such as '1,2' (the official "
                                 "'(i, j)' zero-based keys are read by patterns_from_zoo)")
            check_int(f"pattern[{key!r}]", n, min_value=0)
            channels += [(int(m.group(1)), int(m.group(2)))] * n
    elif isinstance(pattern, Sequence):
        channels = []
        for o, d in enumerate(pattern):
            if (isinstance(d, (str, bytes)) or not isinstance(d, Sequence) or len(d) != 2
                    or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in d)):
                raise ValueError(f"pattern[{o}]={d!r} must be a pair of ints [d_h, d_w]")
            channels.append((int(d[0]), int(d[1])))
    else:
        raise ValueError(f"pattern={pattern!r} must be None, a preset name {list(PRESETS)}, a list of [d_h, d_w] per "
                         "output channel or a {'d_h,d_w': count} dict")
    if len(channels) != out_channels:
        raise ValueError(f"pattern has {len(channels)} channels; it must have one per output channel "
                         f"(out_channels={out_channels})")
    for o, (dh, dw) in enumerate(channels):
        if not (1 <= dh <= D_max and 1 <= dw <= D_max):
            raise ValueError(f"pattern[{o}]=({dh}, {dw}): dilations must be in 1..D_max={D_max}")
    return channels


def pattern_counts(pattern: Iterable[Sequence[int]]) -> dict[str, int]:
    """Channels per dilation, keys sorted: ``{"1,1": 42, "1,2": 5, ...}`` (the counts format, in sorted order)."""
    counts: dict[Dilation, int] = {}
    for dh, dw in pattern:
        counts[(dh, dw)] = counts.get((dh, dw), 0) + 1
    return {f"{dh},{dw}": counts[(dh, dw)] for dh, dw in sorted(counts)}


def pattern_to_json(pattern: Iterable[Sequence[int]], format: str = "channels"):
    """A pattern as JSON-ready data: ``"channels"`` keeps the channel order ([[d_h, d_w], ...]); ``"counts"``
    groups equal dilations into sorted consecutive blocks (the channel order then follows the key order)."""
    if format == "channels":
        return [[int(dh), int(dw)] for dh, dw in pattern]
    if format == "counts":
        return pattern_counts(pattern)
    raise ValueError(f"format={format!r} must be 'channels' or 'counts'")


def patterns_from_zoo(entries: Sequence[Mapping[str, int]], names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Official pattern_zoo entries (zero-based ``"(i, j)"`` keys, one dict per replaced conv in construction order)
    -> our per-site counts ``{site_name: {"i+1,j+1": n}}``, keeping each dict's order (= its channel order)."""
    if len(entries) != len(names):
        raise ValueError(f"the zoo has {len(entries)} patterns but {len(names)} site names were given; they must "
                         "pair up one to one, in construction order")
    out = {}
    for name, entry in zip(names, entries):
        counts = {}
        for key, n in entry.items():
            m = _ZOO_KEY.match(key)
            if m is None:
                raise ValueError(f"zoo key {key!r} must look like '(i, j)' (zero-based dilation offsets)")
            counts[f"{int(m.group(1)) + 1},{int(m.group(2)) + 1}"] = int(n)
        out[name] = counts
    return out


@register("icconv", "conv", paper="Inception Convolution with Efficient Dilation Search", year=2020,
          arxiv="2012.13587")
class ICConv2d(ConvBase):
    """y[:, o] = (W[o] *_{d(o)} x),   d(o) = (d_h(o), d_w(o)) in {1..D_max}^2,

    where ``*_d`` is the k x k convolution with dilation d (and stride s) and W (O, C, k, k) holds the same weights
    as a plain conv. Shapes: x (B, C, H, W) -> y (B, O, H', W') with H' as ``nn.Conv2d(C, O, k, s, k // 2)``.
    Padding per dilation: p + (d - 1)(k - 1) / 2 (p = the dilation-1 padding), so every branch has the same H' x W'.

    Forward: one conv per distinct dilation (the channels sharing it, all at once), then the outputs are put back
    in the pattern's channel order. When equal dilations sit on consecutive channels (the counts format, or
    ``pattern_to_json(.., "counts")``) the branches are weight slices and no reordering happens; otherwise the
    weights are gathered per branch and the output is permuted once (``index_select``).

    ``pattern=None`` is the plain conv (all (1, 1)); patterns come from ``plugconv_lite.edo`` or a preset.
    ``groups`` must be 1 and ``dilation`` 1: the pattern holds the dilations.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, pattern: PatternLike = None, D_max: int = 4):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        for axis, k in zip("hw", self.kernel_size):
            check_odd(f"kernel_size ({axis})", k)
        if self.dilation != (1, 1):
            raise ValueError(f"dilation={self.dilation} must be 1: IC-Conv's dilations come from its pattern")
        if self.groups != 1:
            raise ValueError(f"groups={self.groups} must be 1 for IC-Conv (every output channel reads all inputs)")
        self.D_max = check_int("D_max", D_max, min_value=1)
        self.pattern: list[Dilation] = parse_pattern(pattern, self.out_channels, self.D_max)
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, *self.kernel_size))
        self.register_parameter("bias", nn.Parameter(torch.empty(self.out_channels)) if self.use_bias else None)

        # branches: (d, padding, start, end) over the channels in branch order; perm[i] = pattern channel of row i
        order: dict[Dilation, list[int]] = {}
        for o, d in enumerate(self.pattern):
            order.setdefault(d, []).append(o)
        perm = [o for chans in order.values() for o in chans]
        self.branches = []
        start = 0
        for d, chans in order.items():
            pad = tuple(p + (di - 1) * (k - 1) // 2 for p, di, k in zip(self.padding, d, self.kernel_size))
            self.branches.append((d, pad, start, start + len(chans)))
            start += len(chans)
        self.blocked = perm == list(range(self.out_channels))
        if self.blocked:
            self.perm = self.inv_perm = None
        else:
            self.register_buffer("perm", torch.tensor(perm), persistent=False)
            self.register_buffer("inv_perm", torch.argsort(torch.tensor(perm)), persistent=False)
        self.reset_parameters()

    @classmethod
    def from_site(cls, site, patterns: Optional[Mapping[str, PatternLike]] = None, pattern: PatternLike = None,
                  **kw) -> "ICConv2d":
        """Build the conv at ``site``; ``patterns`` maps site names to patterns (e.g. the output of an EDO search:
        each layer gets its own), ``pattern`` is used for every site (a preset, typically)."""
        if patterns is not None:
            if pattern is not None:
                raise ValueError("give either patterns= (one per site) or pattern= (the same everywhere), not both")
            if site.name not in patterns:
                shown = ", ".join(list(patterns)[:6]) + (", ..." if len(patterns) > 6 else "")
                raise ValueError(f"patterns has no entry for site {site.name!r} (it has: {shown}); search the "
                                 "network with the same conv_where, or give a pattern for every replaced conv")
            pattern = patterns[site.name]
        return cls(site.in_channels, site.out_channels, site.kernel_size, stride=site.stride, padding=site.padding,
                   dilation=site.dilation, groups=site.groups, bias=site.bias, pattern=pattern, **kw)

    def reset_parameters(self) -> None:
        # the init of the backbone's plain convs (Kaiming normal, fan-out), so IC-Conv starts like the baseline
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W, b = self.weight, self.bias
        if self.perm is not None:
            W = W.index_select(0, self.perm)
            b = None if b is None else b.index_select(0, self.perm)
        ys = [F.conv2d(x, W[s:e], None if b is None else b[s:e], self.stride, pad, d)
              for d, pad, s, e in self.branches]
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)
        return y if self.inv_perm is None else y.index_select(1, self.inv_perm)

    @torch.no_grad()
    def load_conv_weights(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "ICConv2d":
        """Compute exactly the plain conv with ``weight`` (O, C, k, k), where that is possible: an output channel
        dilated along an axis must be zero off the centre row (d_h > 1) or column (d_w > 1) of its kernel, the taps
        that read the same pixels at every dilation. The plain pattern (all (1, 1)) always fits."""
        self.check_conv_weights(weight, bias)
        (kh, kw), nz = self.kernel_size, weight.ne(0)
        off_rows = torch.cat([nz[:, :, :kh // 2], nz[:, :, kh // 2 + 1:]], dim=2).flatten(1).any(1).tolist()
        off_cols = torch.cat([nz[..., :kw // 2], nz[..., kw // 2 + 1:]], dim=3).flatten(1).any(1).tolist()
        bad = [o for o, (dh, dw) in enumerate(self.pattern) if (dh > 1 and off_rows[o]) or (dw > 1 and off_cols[o])]
        if bad:
            raise ValueError(f"ICConv2d cannot hold this conv's weights exactly: {len(bad)} output channels (the "
                             f"first is {bad[0]}, dilation {self.pattern[bad[0]]}) are dilated but their kernels are "
                             "not zero off the centre row/column; use pattern='plain' to keep the weights")
        self.weight.copy_(weight)
        if bias is not None:
            self.bias.copy_(bias)
        return self

    def pattern_json(self, format: str = "channels"):
        return pattern_to_json(self.pattern, format)

    def hparams_repr(self) -> str:
        counts = ", ".join(f"({k}): {n}" for k, n in pattern_counts(self.pattern).items())
        return f"D_max={self.D_max}, pattern={{{counts}}}" + ("" if self.blocked else ", reordered")
