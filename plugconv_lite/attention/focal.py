"""Focal modulation (FocalNet). Yang, Li, Dai, Gao: "Focal Modulation Networks", NeurIPS 2022, arXiv 2203.11926
(official code: github.com/microsoft/FocalNet, classification/focalnet.py, ``FocalModulation``).

Self-attention first lets each query interact with every token, then aggregates. Focal modulation reverses the
order: it aggregates context first — a stack of depthwise convolutions gives contexts at growing ranges, plus one
global level — mixes the levels with gates computed per position, and then modulates the query element-wise with
the result. No softmax, no query-key products: the cost is linear in the number of positions.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_int
from ..registry import register


@register("focal", "attention", paper="Focal Modulation Networks", year=2022, arxiv="2203.11926",
          url="https://github.com/microsoft/FocalNet")
class FocalModulation(nn.Module):
    """y = x + proj(q * h(sum_l g_l z_l + g_L z_glob)),  with t = LN(x) (over channels) and

        q, z_0, g = split(f(t))             f: 1x1, C -> 2C + L + 1 (with bias): query, context, L + 1 gates
        z_l = GELU(DW_{k_l}(z_{l-1}))       l = 1..L, depthwise, no bias, k_l = focal_factor (l - 1) + focal_window
        z_glob = GELU(mean_{H,W} z_L)       the global level, from the LAST local level
        h: 1x1, C -> C (with bias);  proj: 1x1, C -> C

    The gates g (B, L + 1, H, W) are the raw outputs of f, one scalar per level and position shared by all channels:
    not softmaxed, not sigmoided. ``normalize_modulator`` divides the gated sum by L + 1 and ``post_ln`` adds a
    LayerNorm before proj (both off by default, as the released classification models). The pre-norm residual form
    of a FocalNet block's modulation half, so that the module keeps the attention contract (shape in = shape out);
    the 1x1 convs are the official linear layers on a channels-first map (the same weights, transplanted as
    ``weight[..., None, None]``).

    Receptive field of level l: 1 + sum_{i <= l} (k_i - 1) pixels a side (``receptive_fields``); the global level
    sees the whole map.
    """

    def __init__(self, channels: int, focal_level: int = 2, focal_window: int = 3, focal_factor: int = 2,
                 normalize_modulator: bool = False, post_ln: bool = False, eps: float = 1e-5, device=None,
                 dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        self.focal_level = L = check_int("focal_level", focal_level, min_value=1)
        self.focal_window = check_int("focal_window", focal_window, min_value=1)
        self.focal_factor = check_int("focal_factor", focal_factor, min_value=0)
        if focal_window % 2 == 0:
            raise ValueError(f"focal_window={focal_window} must be odd (the official padding k // 2 keeps the map "
                             f"size only for odd kernels)")
        if focal_factor % 2:
            raise ValueError(f"focal_factor={focal_factor} must be even, or the kernels of later levels are even")
        self.kernel_sizes = [focal_factor * l + focal_window for l in range(L)]
        self.normalize_modulator = bool(normalize_modulator)
        self.norm = nn.LayerNorm(C, eps=eps, **factory)                  # the block's pre-norm
        self.f = nn.Conv2d(C, 2 * C + L + 1, 1, **factory)
        self.focal_layers = nn.ModuleList(
            nn.Conv2d(C, C, k, padding=k // 2, groups=C, bias=False, **factory) for k in self.kernel_sizes)
        self.h = nn.Conv2d(C, C, 1, **factory)
        self.post_ln = nn.LayerNorm(C, **factory) if post_ln else None
        self.proj = nn.Conv2d(C, C, 1, **factory)

    def receptive_fields(self) -> list[int]:
        """The side of each local level's receptive field, in pixels (the global level: the whole map)."""
        out, rf = [], 1
        for k in self.kernel_sizes:
            rf += k - 1
            out.append(rf)
        return out

    def _ln(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def contexts(self, x: torch.Tensor):
        """q (B, C, H, W), the gates (B, L + 1, H, W) and the levels [z_1, ..., z_L, z_glob] for input x."""
        C = self.channels
        q, z, gates = torch.split(self.f(self._ln(x, self.norm)), (C, C, self.focal_level + 1), dim=1)
        levels = []
        for conv in self.focal_layers:
            z = F.gelu(conv(z))
            levels.append(z)
        levels.append(F.gelu(z.mean(dim=(2, 3), keepdim=True)))
        return q, gates, levels

    def modulator(self, x: torch.Tensor) -> torch.Tensor:
        """h(sum of gated levels), (B, C, H, W): what multiplies the query."""
        _, gates, levels = self.contexts(x)
        return self._modulator(gates, levels)

    def _modulator(self, gates, levels):
        agg = sum(z * gates[:, l:l + 1] for l, z in enumerate(levels))
        if self.normalize_modulator:
            agg = agg / (self.focal_level + 1)
        return self.h(agg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, gates, levels = self.contexts(x)
        out = q * self._modulator(gates, levels)
        if self.post_ln is not None:
            out = self._ln(out, self.post_ln)
        return x + self.proj(out)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, focal_level={self.focal_level}, kernel_sizes={self.kernel_sizes}, "
                f"normalize_modulator={self.normalize_modulator}")
