"""Selective Depth Attention. Guo, Wu, Feng, Xu, Hu: "SDA-xNet: Selective Depth Attention Networks for Adaptive
Multi-scale Feature Representation", arXiv 2209.10327 (2022; IEEE Trans. Artif. Intell. 2024).

A stage attention (registry kind ``"stage"``, see ``models/flow.py``): the blocks of one stage produce maps of the
same shape with growing receptive fields; SDA mixes them with per-sample, per-channel weights that sum to one over
the depth index, in the manner of SK-Net's selection across branches, but across the blocks of a stage.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_float, check_int, check_layer
from ..registry import register


@register("sda", "stage", paper="SDA-xNet: Selective Depth Attention Networks for Adaptive Multi-scale Feature "
          "Representation", year=2022, arxiv="2209.10327")
class SelectiveDepthAttention(nn.Module):
    """O = relu(sum_i a_i * Z_i),  a = softmax_i(W_i v + b_i),  v = relu(BN(W_d GAP(sum_i Z_i))).

    Shapes: Z_i (B, C, H, W) for i = 1..n (``n = depth``, the stage's block outputs before their final ReLU);
    GAP(sum_i Z_i) (B, C, 1, 1); W_d (d, C) without bias; v (B, d, 1, 1); W_i (C, d) with bias b_i, one per block;
    a (B, n, C, 1, 1), softmax over n: for each sample and channel the weights over depth sum to one.

    Hidden width ``d = max(floor(C / reduction), min_hidden)``, the official code's rule with r = 16, L = 64. At
    CIFAR widths (C = 64..512) C / 16 is 4..32 units, so the floor L sets d in every stage.

    The n per-block projections W_i are stored as one 1x1 conv d -> n*C (``fcs``; rows i*C..(i+1)*C-1 are W_i), one
    matrix product instead of n; the official code keeps n separate convs (the same numbers).
    """

    def __init__(self, channels: int, depth: int, reduction: float = 16, min_hidden: int = 64, act_layer=nn.ReLU,
                 norm_layer=nn.BatchNorm2d, device=None, dtype=None):
        super().__init__()
        self.channels = check_int("channels", channels, min_value=1)
        self.depth = check_int("depth", depth, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=1)
        self.min_hidden = check_int("min_hidden", min_hidden, min_value=1)
        check_layer("act_layer", act_layer, "nn.ReLU")
        check_layer("norm_layer", norm_layer, "nn.BatchNorm2d")
        self.hidden = max(int(channels / self.reduction), self.min_hidden)  # d; int() truncates as the official code
        kw = dict(device=device, dtype=dtype)
        self.fc = nn.Conv2d(channels, self.hidden, 1, bias=False, **kw)  # W_d: its BN supplies the shift
        self.bn = norm_layer(self.hidden, **kw)
        self.act = act_layer()
        self.fcs = nn.Conv2d(self.hidden, depth * channels, 1, bias=True, **kw)  # W_1..W_n stacked, b_1..b_n

    def depth_weights(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """The weights a over depth, shape (B, n, C, 1, 1); they sum to one over dim 1."""
        self._check(blocks)
        s = blocks[0]
        for z in blocks[1:]:
            s = s + z                                    # F = sum_i Z_i (one running sum, no stacked copy)
        u = s.mean(dim=(2, 3), keepdim=True)            # (B, C, 1, 1)
        v = self.act(self.bn(self.fc(u)))                # (B, d, 1, 1)
        logits = self.fcs(v).reshape(u.shape[0], self.depth, self.channels, 1, 1)
        return logits.softmax(dim=1)

    def forward(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        a = self.depth_weights(blocks)
        o = a[:, 0] * blocks[0]
        for i in range(1, self.depth):
            o = o + a[:, i] * blocks[i]                  # sum_i a_i * Z_i without stacking the maps
        return F.relu(o)

    def _check(self, blocks) -> None:
        if len(blocks) != self.depth:
            raise ValueError(f"blocks has {len(blocks)} maps; depth={self.depth} needs one per block of the stage")
        if blocks[0].dim() != 4 or blocks[0].shape[1] != self.channels:
            raise ValueError(f"blocks[0] has shape {tuple(blocks[0].shape)}; channels={self.channels} needs "
                             "(B, channels, H, W) maps")

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, depth={self.depth}, reduction={self.reduction}, "
                f"min_hidden={self.min_hidden}, hidden={self.hidden}")
