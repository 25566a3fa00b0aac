"""Ultra-Lightweight Subspace Attention Module. Saini, Jha, Das, Mittal, Mohan: "ULSAM: Ultra-Lightweight Subspace
Attention Module for Compact Convolutional Neural Networks", WACV 2020, arXiv 2006.15102 (official code:
github.com/Nandan91/ULSAM).

The channels are split into g subspaces; each gets its own spatial attention map, a softmax over all positions
computed from the subspace by a depthwise 1 x 1 conv, a 3 x 3 max-pool and a pointwise conv to one map. Each
subspace is then refined residually, y = x * A + x.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .._validate import check_divides, check_float, check_int
from ..registry import register


@register("ulsam", "attention", paper="ULSAM: Ultra-Lightweight Subspace Attention Module for Compact "
          "Convolutional Neural Networks", year=2020, arxiv="2006.15102")
class ULSAM(nn.Module):
    """y_n = x_n * A_n + x_n for each subspace n = 1..g, x_n the n-th group of C / g channels, (B, C/g, H, W):

        A_n = softmax_HW(PW_n(MaxPool_3x3(DW_n(x_n))))                 (B, 1, H, W), sums to 1 over positions

    DW_n is a depthwise 1 x 1 conv (a scale and a bias per channel), MaxPool_3x3 has stride 1 and padding 1,
    PW_n a 1 x 1 conv from the subspace's C / g channels to one map. ``norm_act=True`` (the default, as the
    official code) puts BN + ReLU after DW_n and after PW_n; the paper's equation, ``norm_act=False``, has
    neither. The convs have biases only without the norms: a BN's mean subtraction cancels a bias in front of it
    (in training the official code's biases there change no output and get no gradient; at inference they are
    absorbed by the running mean). The official BNs use ``momentum=0.9``, which in PyTorch means the running statistics keep only 10% of
    their history at each step (TensorFlow's 0.9 is PyTorch's 0.1); the default here is PyTorch's 0.1, and
    ``bn_momentum=0.9`` reproduces the release. All g subspaces are computed at once: the DW convs are one
    depthwise conv over C channels, the PW convs one grouped conv with g groups (no loop over subspaces).
    """

    def __init__(self, channels: int, groups: int = 4, norm_act: bool = True, bn_momentum: float = 0.1,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        self.groups = g = check_int("groups", groups, min_value=1)
        check_divides("groups", g, "channels", C)
        self.norm_act = bool(norm_act)
        self.bn_momentum = check_float("bn_momentum", bn_momentum, min_value=0, max_value=1)
        # a bias right before a BN is cancelled by the BN's mean: the convs have one only without the norms
        self.dw = nn.Conv2d(C, C, 1, groups=C, bias=not norm_act, **factory)   # DW_n for every n
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.pw = nn.Conv2d(C, g, 1, groups=g, bias=not norm_act, **factory)   # PW_n: C/g -> 1, for every n
        if self.norm_act:
            self.dw_norm = nn.Sequential(nn.BatchNorm2d(C, momentum=bn_momentum, **factory), nn.ReLU())
            self.pw_norm = nn.Sequential(nn.BatchNorm2d(g, momentum=bn_momentum, **factory), nn.ReLU())
        else:
            self.dw_norm = self.pw_norm = nn.Identity()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The g maps before the softmax, PW_n(MaxPool(DW_n(x_n))) with the norms, shape (B, g, H, W)."""
        C = x.shape[1]
        # a depthwise 1 x 1 conv is a scale (and bias) per channel: a broadcast multiply, not a conv kernel
        t = x * self.dw.weight.reshape(1, C, 1, 1)
        if self.dw.bias is not None:
            t = t + self.dw.bias.reshape(1, C, 1, 1)
        return self.pw_norm(self.pw(self.pool(self.dw_norm(t))))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The g attention maps A_n, shape (B, g, H, W); each sums to 1 over its H x W positions."""
        B, _, H, W = x.shape
        return self.logits(x).reshape(B, self.groups, H * W).softmax(dim=-1).reshape(B, self.groups, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        A = self.attention(x)[:, :, None]                                 # (B, g, 1, H, W)
        x_n = x.reshape(B, self.groups, C // self.groups, H, W)           # the subspaces
        return torch.addcmul(x_n, x_n, A).reshape(B, C, H, W)            # x_n * A_n + x_n in one pass

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, groups={self.groups} ({self.channels // self.groups} channels each), "
                f"norm_act={self.norm_act}, bn_momentum={self.bn_momentum:g}")
