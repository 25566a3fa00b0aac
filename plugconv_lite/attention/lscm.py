"""DPNet's lightweight self-correlation module (LSCM). Zhou, Shi, Xiang, Kang, Wu, Latecki: "DPNet: Dual-Path Network
for Real-time Object Detection with Lightweight Attention", IEEE TNNLS 2025, arXiv 2209.13933 (official code:
github.com/Huiminshii/DPNet, mmdet/models/backbones/shufflenet_v2_dual_se.py, ``LSAM_Pyramid2`` — the class the
released configs build with ``use_se='LSAM'`` — and ``LSAM_avgpool``).

A channel weight and a spatial weight, each computed from a correlation between a value map and a single query,
in the spirit of polarized self-attention, but made cheap: the queries come from a map average-pooled to P x P, and
neither query is softmaxed. Both weights multiply the input, and the two products are summed. The paper's
cross-correlation module (LCCM) correlates two scales of a feature pyramid, so it belongs to a detector's neck and
is not part of this library's per-block plug points.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_choice, check_int
from ..registry import register

VARIANTS = ("pyramid2", "avgpool")


def pool_to(x: torch.Tensor, P: int) -> torch.Tensor:
    """Average-pool to P x P: a plain pool with kernel = stride = size / P where P divides the map (what the official
    fixed pool computes; cheaper in backward than the adaptive pool), the adaptive pool otherwise."""
    H, W = x.shape[-2:]
    if H % P == 0 and W % P == 0:
        return F.avg_pool2d(x, (H // P, W // P))
    return F.adaptive_avg_pool2d(x, P)


@register("lscm", "attention", paper="DPNet: Dual-Path Network for Real-time Object Detection with Lightweight "
          "Attention", year=2022, arxiv="2209.13933", url="https://github.com/Huiminshii/DPNet")
class LSCM(nn.Module):
    """y = sigmoid(LN(W_z (V_c q_c))) * x + sigmoid(w_s . (Q_s V_s)) * x, with c' = C / channel_down and P = pool_size:

        ``variant="pyramid2"`` (the released configs): p = W_p(pool_P(x)), W_p: 1x1, C -> 2c' + 1
            V_c = p[:c']  (B, c', P^2),  q_c = p[c']  (B, P^2, 1),  Q_s = p[c' + 1:]  (B, P^2, c')
            V_s = W_v(x)  (B, c', HW),   W_v: 1x1, C -> c'
        ``variant="avgpool"``: p = W_p(x), W_p: 1x1, C -> 3c' + 1, at full resolution
            V_c = p[:c']  (B, c', HW),   q_c = p[c']  (B, HW, 1),   V_s = p[c' + 1:2c' + 1]  (B, c', HW)
            Q_s = pool_P(p[2c' + 1:])  (B, P^2, c')

        channel weight: W_z (1x1, c' -> C) of V_c q_c (B, c'), LayerNorm over C, sigmoid -> (B, C, 1, 1)
        spatial weight: Q_s V_s (B, P^2, HW), a 1x1 conv w_s over its P^2 maps (P^2 -> 1), sigmoid -> (B, 1, H, W)

    No softmax on either query (the official code has them commented out), and no identity term. ``pool_P`` is an
    adaptive average pool to P x P; the official code builds a fixed ``AvgPool2d`` from the input size it was
    constructed for (kernel = stride = size / P where P divides the size: the same windows), which breaks at any
    other size. All convs with biases, as the official ones. Defaults: ``channel_down=8`` as the released configs;
    ``pool_size=4`` where they use 5, because 5 divides none of the CIFAR ResNet's map sizes (32, 16, 8, 4).
    """

    def __init__(self, channels: int, channel_down: int = 8, pool_size: int = 4, variant: str = "pyramid2",
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        self.channel_down = check_int("channel_down", channel_down, min_value=1)
        self.hidden = c = C // channel_down
        if c < 1:
            raise ValueError(f"channel_down={channel_down} leaves no channel at channels={C} (C // channel_down >= 1)")
        self.pool_size = P = check_int("pool_size", pool_size, min_value=1)
        check_choice("variant", variant, VARIANTS)
        self.variant = variant
        if variant == "pyramid2":
            self.proj = nn.Conv2d(C, 2 * c + 1, 1, **factory)
            self.value_s = nn.Conv2d(C, c, 1, **factory)
        else:
            self.proj = nn.Conv2d(C, 3 * c + 1, 1, **factory)
            self.value_s = None
        self.ch_wz = nn.Conv2d(c, C, 1, **factory)
        self.ln = nn.LayerNorm(C, **factory)
        self.sp_wz = nn.Conv2d(P * P, 1, 1, **factory)

    def _parts(self, x: torch.Tensor):
        B, C, H, W = x.shape
        c, P = self.hidden, self.pool_size
        if self.variant == "pyramid2":
            p = self.proj(pool_to(x, P)).flatten(2)                # (B, 2c + 1, P^2)
            v_c, q_c, q_s = p[:, :c], p[:, c:c + 1], p[:, c + 1:]
            v_s = self.value_s(x).flatten(2)                                    # (B, c, HW)
        else:
            p = self.proj(x)
            v_c, q_c, v_s = p[:, :c].flatten(2), p[:, c:c + 1].flatten(2), p[:, c + 1:2 * c + 1].flatten(2)
            q_s = pool_to(p[:, 2 * c + 1:], P).flatten(2)
        return v_c, q_c, v_s, q_s

    def weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The channel weight (B, C, 1, 1) and the spatial weight (B, 1, H, W), each in (0, 1)."""
        B, C, H, W = x.shape
        v_c, q_c, v_s, q_s = self._parts(x)
        z = self.ch_wz((v_c @ q_c.transpose(1, 2))[..., None])                # (B, C, 1, 1)
        w_c = torch.sigmoid(self.ln(z.reshape(B, C)))[:, :, None, None]
        corr = (q_s.transpose(1, 2) @ v_s).reshape(B, -1, H, W)                 # (B, P^2, H, W)
        w_s = torch.sigmoid(self.sp_wz(corr))
        return w_c, w_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_c, w_s = self.weights(x)
        return w_c * x + w_s * x

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden={self.hidden}, pool_size={self.pool_size}, "
                f"variant={self.variant!r}")
