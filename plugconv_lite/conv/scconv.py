"""Self-calibrated convolution. Liu, Hou, Cheng, Wang, Feng: "Improving Convolutional Networks with Self-Calibrated
Convolutions", CVPR 2020 (no arXiv version; official code: github.com/MCG-NKU/SCNet).

Half of the channels go through an ordinary convolution; the other half is convolved and then gated, position by
position, by a sigmoid of the input plus a context map computed on an r-times down-sampled copy of it. Each output
position of that half so sees, through the gate, an r x r-pooled neighbourhood that reaches far beyond the kernel.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_int, check_norm_layer_2d
from ..registry import register
from ._pool import avg_pool_ceil
from .base import ConvBase, same_padding


@register("scconv", "conv", paper="Improving Convolutional Networks with Self-Calibrated Convolutions", year=2020,
          url="https://github.com/MCG-NKU/SCNet")
class SCConv2d(ConvBase):
    """Y = [Y_1 | Y_2] for X = [X_1 | X_2] (channel halves; X_1 self-calibrated, X_2 plain):

        T_1  = AvgPool_r(X_1)                       (B, C_1, ceil(H/r), ceil(W/r))
        X_1' = Up_r(K_2(T_1))                       (B, C_1, H, W)    nearest, r x r repetition cropped to H x W
        Y_1' = K_3(X_1) * sigmoid(X_1 + X_1')       (B, C_1, H, W)    the self-calibration
        Y_1  = K_4(Y_1')                            (B, O_1, H', W')  stride s
        Y_2  = K_1(X_2)                             (B, O_2, H', W')  stride s

    Channel split: C_1 = floor(C_in / 2), C_2 = C_in - C_1; O_1 = floor(C_out / 2), O_2 = C_out - O_1. K_2 and K_3
    map C_1 -> C_1 (the gate adds X_1, so their channels must match the input half's) and are followed by
    ``norm_layer`` (BN, as in the official code); K_4 (C_1 -> O_1) and K_1 (C_2 -> O_2) are bare convolutions with
    the layer's stride, padding and bias, because the host network's BN follows this module as it follows any conv.
    There is no activation inside the module. K_2 and K_3 always use "same" padding (so ``kernel_size`` must be
    odd), the layer's ``padding`` applies to K_1 and K_4, which decide the output size; ``groups`` and ``dilation``
    apply to all four. With C_in = C_out = C even, the four weights hold 4 (C/2)^2 k^2 / g = C^2 k^2 / g numbers:
    exactly the plain convolution's, plus the affine parameters of the two norms.

    ``norm_layer`` must build a norm for (B, C, H, W) maps (checked at construction). Training with BN needs more
    than one pooled value per channel: batch 1 on maps no larger than ``pooling_r`` (ResNet-18's last stage, 4 x 4,
    at batch 1) raises a ``ValueError`` that says so, where the plain network could take the step.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, pooling_r: int = 4,
                 norm_layer: Optional[Callable[[int], nn.Module]] = nn.BatchNorm2d):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        for name, c in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if c < 2:
                raise ValueError(f"{name}={c} must be >= 2: SCConv splits the channels into a self-calibrated "
                                 "and a plain half")
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size={self.kernel_size} must be odd: K_2 and K_3 keep H x W so that the gate "
                             "sigmoid(X_1 + X_1') can multiply K_3(X_1)")
        self.pooling_r = r = check_int("pooling_r", pooling_r, min_value=1)
        self.C_1 = C_1 = self.in_channels // 2
        self.C_2 = C_2 = self.in_channels - C_1
        self.O_1 = O_1 = self.out_channels // 2
        self.O_2 = O_2 = self.out_channels - O_1
        g = self.groups
        for what, c in (("C_1", C_1), ("C_2", C_2), ("O_1", O_1), ("O_2", O_2)):
            if c % g:
                raise ValueError(f"groups={g} must divide every channel half (C_1={C_1}, C_2={C_2} of "
                                 f"in_channels={self.in_channels}; O_1={O_1}, O_2={O_2} of "
                                 f"out_channels={self.out_channels}); it does not divide {what}={c}")
        if norm_layer is None:
            norm = lambda c: nn.Identity()  # noqa: E731
        else:
            norm = lambda c: check_norm_layer_2d("norm_layer", norm_layer, c)  # noqa: E731
        k, d, same = self.kernel_size, self.dilation, same_padding(self.kernel_size, self.dilation)
        self.K1 = nn.Conv2d(C_2, O_2, k, self.stride, self.padding, d, g, bias=bias)
        self.K2 = nn.Sequential(nn.Conv2d(C_1, C_1, k, 1, same, d, g, bias=False), norm(C_1))
        self.K3 = nn.Sequential(nn.Conv2d(C_1, C_1, k, 1, same, d, g, bias=False), norm(C_1))
        self.K4 = nn.Conv2d(C_1, O_1, k, self.stride, self.padding, d, g, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-out) weights as the backbone's own convs, zero biases, norms at (1, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def _check_batch_statistics(self, T_1: torch.Tensor, X_1: torch.Tensor) -> None:
        """K_2's BatchNorm cannot normalise one value per channel with batch statistics (training mode). That happens
        on small maps: batch 1 and a map no larger than pooling_r pool to 1 x 1, where the host network's own BN
        (after the whole conv) still sees H x W values. Say so here, not as BN's error from deep inside."""
        bn = self.K2[-1]
        if (isinstance(bn, nn.modules.batchnorm._BatchNorm) and (bn.training or bn.running_mean is None)
                and T_1.shape[0] * T_1.shape[2] * T_1.shape[3] == 1):
            B, _, H, W = X_1.shape
            raise ValueError(f"SCConv2d(pooling_r={self.pooling_r}) cannot train on a batch of {B} with {H}x{W} maps: "
                             "AvgPool_r leaves one value per channel, too few for K_2's BatchNorm in training mode. "
                             "Use a batch of >= 2, a pooling_r smaller than the map, or eval mode")

    def calibration(self, X_1: torch.Tensor) -> torch.Tensor:
        """The gate sigmoid(X_1 + Up_r(K_2(AvgPool_r(X_1)))), shape of X_1."""
        r = self.pooling_r
        if r == 1:
            self._check_batch_statistics(X_1, X_1)
            return torch.sigmoid(X_1 + self.K2(X_1))
        H, W = X_1.shape[-2:]
        # ceil_mode: maps smaller than r, or not divisible by it, still get one pooled cell per started window
        T_1 = avg_pool_ceil(X_1, (r, r))  # = F.avg_pool2d(X_1, r, r, ceil_mode=True); see _pool.py for why
        self._check_batch_statistics(T_1, X_1)
        X_1p = F.interpolate(self.K2(T_1), scale_factor=r, mode="nearest")[..., :H, :W]
        return torch.sigmoid(X_1 + X_1p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        X_1, X_2 = x.split((self.C_1, self.C_2), dim=1)
        Y_1 = self.K4(self.K3(X_1) * self.calibration(X_1))
        return torch.cat((Y_1, self.K1(X_2)), dim=1)

    def load_conv_weights(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "SCConv2d":
        raise ValueError("SCConv2d cannot take a plain conv's weights: half of its output is gated by a sigmoid of its "
                         "input, which no setting of its weights turns into a plain convolution")

    def hparams_repr(self) -> str:
        return (f"pooling_r={self.pooling_r}, split=({self.C_1} self-calibrated + {self.C_2} plain) -> "
                f"({self.O_1} + {self.O_2})")
