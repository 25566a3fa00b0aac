"""Efficient Channel Attention. Wang, Wu, Zhu, Li, Zuo, Hu: "ECA-Net: Efficient Channel Attention for Deep
Convolutional Neural Networks", CVPR 2020, arXiv 1910.03151 (official code: github.com/BangguWu/ECANet).

SE without the bottleneck: each channel's gate is computed from its own global average and those of its k - 1
nearest channels, by one 1-D convolution across the channel axis shared by all channels. k weights in all.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .._validate import check_float, check_int, check_layer, check_odd
from ..registry import register


def adaptive_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """The paper's k = psi(C) = |log2(C) / gamma + b / gamma|_odd: the nearest odd integer, ties rounded up.

    Written as the usual floor-then-next-odd (t = floor((log2 C + b) / gamma); k = t if t is odd else t + 1),
    which is exactly "nearest odd, ties up" for any real t. 16 and 32 channels give 3, 64 gives 3, 128 to 512
    give 5 (gamma = 2, b = 1).
    """
    check_int("channels", channels, min_value=1)
    check_float("gamma", gamma, min_value=0, min_inclusive=False)
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@register("eca", "attention", paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
          year=2020, arxiv="1910.03151")
class ECAModule(nn.Module):
    """y = x * s,  s = sigmoid(w * z),  z = GAP(x):

        z (B, C) global averages; w * z the 1-D convolution of z along the channel axis with the kernel w (k,),
        zero-padded by (k - 1) / 2 at both ends, no bias; s (B, C, 1, 1).

    ``kernel_size=None`` (the default) takes the paper's adaptive k = psi(C) (``adaptive_kernel_size``): the rule
    depends only on C, so it holds wherever the module is plugged. The released code never computes psi: its
    ResNets take one fixed k per stage (README models such as "k3557"); ``kernel_size=k`` gives that, and
    ``from_site(site, stage_kernel_sizes=[3, 5, 5, 7])`` builds it per stage inside a backbone. k must be odd: an even
    kernel has no centre tap (the official padding (k - 1) // 2 then yields C - 1 gates for C channels).
    """

    def __init__(self, channels: int, kernel_size: Optional[int] = None, gamma: float = 2, b: float = 1,
                 gate_layer: Callable[[], nn.Module] = nn.Sigmoid, device=None, dtype=None):
        super().__init__()
        self.channels = check_int("channels", channels, min_value=1)
        self.gamma = check_float("gamma", gamma, min_value=0, min_inclusive=False)
        self.b = check_float("b", b)
        self.adaptive = kernel_size is None
        k = adaptive_kernel_size(channels, self.gamma, self.b) if kernel_size is None else kernel_size
        self.kernel_size = check_odd("kernel_size", k)
        check_layer("gate_layer", gate_layer, "nn.Sigmoid")
        self.conv = nn.Conv1d(1, 1, self.kernel_size, padding=self.kernel_size // 2, bias=False, device=device,
                              dtype=dtype)  # w: exactly k parameters
        self.gate = gate_layer()

    @classmethod
    def from_site(cls, site, stage_kernel_sizes: Optional[Sequence[int]] = None, **kw) -> "ECAModule":
        """Build for a backbone's plug site; ``stage_kernel_sizes[i]`` is stage i's k (the released code's
        per-stage k, e.g. ``attn_kw={"stage_kernel_sizes": [3, 5, 5, 7]}``)."""
        if stage_kernel_sizes is not None:
            if "kernel_size" in kw:
                raise ValueError("give kernel_size or stage_kernel_sizes, not both")
            if not 0 <= site.stage < len(stage_kernel_sizes):
                raise ValueError(f"stage_kernel_sizes={list(stage_kernel_sizes)} has no entry for stage "
                                 f"{site.stage} (site {site.name!r})")
            kw["kernel_size"] = stage_kernel_sizes[site.stage]
        return cls(site.out_channels, **kw)

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """The channel gate s, shape (B, C, 1, 1)."""
        z = x.mean(dim=(2, 3))[:, None, :]       # (B, 1, C): the channels become the conv's length axis
        return self.gate(self.conv(z))[:, 0, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excitation(x)

    def extra_repr(self) -> str:
        rule = f"psi(C) with gamma={self.gamma:g}, b={self.b:g}" if self.adaptive else "fixed"
        return f"channels={self.channels}, kernel_size={self.kernel_size} ({rule})"
