"""GSConv. Li, Li, Wei, Liu, Liu, Wei: "Slim-neck by GSConv: A lightweight-design for real-time detector
architectures", arXiv 2206.02424 (2022); official code: github.com/AlanLi1997/slim-neck-by-gsconv.

A dense conv computes only half of the output channels; a cheap depthwise conv on that half computes the other
half; a channel shuffle then interleaves the two halves, so each dense channel sits next to its depthwise-filtered
copy and the next layer's groups (or the next GSConv's dense conv) see both. About half the parameters and FLOPs
of the k x k dense conv it replaces.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from .._validate import check_divides, check_layer, check_norm_layer_2d, check_odd
from ..registry import register
from .base import ConvBase


def interleave_halves(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x 2 -> (B, 2C, H, W) with channel 2i = a[:, i] and channel 2i + 1 = b[:, i].

    The official ``models_inPaper.py`` shuffle (cat, reshape to (B, 2, C, H, W), swap the two channel axes, reshape
    back) is this permutation; stacking on a new axis gets it with one copy instead of two. The repository's
    ``gsconv-yolov5`` and ``gsconv-scaled-yolov4`` ``common.py`` run its inverse instead (even channels of the
    concatenation first, then the odd ones), which does not pair a dense channel with its depthwise copy.
    """
    B, C, H, W = a.shape
    return torch.stack((a, b), dim=2).reshape(B, 2 * C, H, W)


class ConvNormAct(nn.Sequential):
    """conv (no bias) -> norm -> act, the official ``Conv`` unit (YOLOv4 style: BN and Mish). ``norm_layer=None`` or
    ``act_layer=None`` leaves that stage out (``act=False`` in the official code)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=None, dilation=1,
                 groups: int = 1, norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
                 act_layer: Optional[Callable[..., nn.Module]] = nn.Mish, device=None, dtype=None):
        if padding is None:
            padding = tuple(d * (k - 1) // 2 for k, d in zip(_pair(kernel_size), _pair(dilation)))
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False,
                         device=device, dtype=dtype)
        norm = nn.Identity() if norm_layer is None else norm_layer(out_channels).to(device=device, dtype=dtype)
        act = nn.Identity() if act_layer is None else act_layer()
        super().__init__(conv, norm, act)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def check_optional_layers(norm_layer, act_layer, channels: int) -> None:
    """``ValueError`` unless ``norm_layer`` / ``act_layer`` are None or module classes (the norm one for 2-D maps)."""
    if norm_layer is not None:
        check_norm_layer_2d("norm_layer", norm_layer, channels)
    if act_layer is not None:
        check_layer("act_layer", act_layer, "nn.Mish")


@register("gsconv", "conv", paper="Slim-neck by GSConv: A lightweight-design for real-time detector architectures",
          year=2022, arxiv="2206.02424")
class GSConv2d(ConvBase):
    """y = shuffle(cat(x1, DW(x1))),  x1 = act(BN(W * x))  (c_ = O / 2 channels),  DW = act(BN(depthwise 5x5)).

    shuffle interleaves the halves: y[:, 2i] = x1[:, i] (dense), y[:, 2i + 1] = DW(x1)[:, i] (depthwise).

    Shapes: x (B, C, H, W); the dense conv W: (O/2, C/g, k, k) carries the contract's stride, padding, dilation and
    groups, so y has the shape of ``nn.Conv2d(C, O, k, stride, padding)``'s output; the depthwise conv
    (``dw_kernel_size``, 5 in the paper) keeps H' x W'. Parameters: k^2 C O / (2 g) + 25 O / 2 (+ BN) against
    k^2 C O / g for the dense conv.

    As the official GSConv, both halves end in BatchNorm and an activation (Mish, the ``models_inPaper.py`` unit;
    the repository's YOLOv8-11 variant uses SiLU: ``act_layer``). So this is not a bare conv: in a ResNet conv site it
    is followed by that site's own BN and ReLU too. ``act_layer=None`` is the official ``act=False``. ``bias=True``
    adds a learnable bias to y (after the shuffle). ``out_channels`` must be even (the official code silently
    drops a channel for odd O) and ``groups`` must divide O / 2 as well as C.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, dw_kernel_size: int = 5,
                 norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
                 act_layer: Optional[Callable[..., nn.Module]] = nn.Mish, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if self.out_channels % 2:
            raise ValueError(f"out_channels={self.out_channels} must be even: GSConv computes half of them densely "
                             "and the other half depthwise")
        c_ = self.out_channels // 2
        check_divides("groups", self.groups, "out_channels // 2", c_)
        self.dw_kernel_size = check_odd("dw_kernel_size", dw_kernel_size)
        check_optional_layers(norm_layer, act_layer, c_)
        dd = dict(device=device, dtype=dtype)
        self.cv1 = ConvNormAct(self.in_channels, c_, self.kernel_size, self.stride, self.padding, self.dilation,
                               self.groups, norm_layer, act_layer, **dd)
        self.cv2 = ConvNormAct(c_, c_, self.dw_kernel_size, 1, None, 1, c_, norm_layer, act_layer, **dd)
        self.bias = nn.Parameter(torch.empty(self.out_channels, **dd)) if self.use_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-out) convs, norms at their defaults, zero bias (the library's conv init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv1(x)
        y = interleave_halves(x1, self.cv2(x1))
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    def hparams_repr(self) -> str:
        return f"dw_kernel_size={self.dw_kernel_size}"
