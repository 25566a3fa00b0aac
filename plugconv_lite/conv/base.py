"""What every conv-contract module shares: argument validation, defaults and ``extra_repr``.

A conv module is a drop-in for ``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
groups, bias)``: same positional order, and with ``padding=None`` the output has the shape of
``nn.Conv2d(..., padding=kernel_size // 2)``.

A module that can compute exactly what a plain conv of its geometry computes defines
``load_conv_weights(weight, bias)``, which sets its parameters from that conv's (``swap_convs(...,
keep_weights=True)`` uses it); one that cannot raises ``ValueError`` saying why (``ConvBase``'s default).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from .._validate import check_divides, check_int, pair
from ..registry import register


class ConvArgs(NamedTuple):
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool


def same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Padding that keeps H x W at stride 1 for odd kernels: dilation * (k - 1) / 2."""
    return tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))


def conv_args(in_channels, out_channels, kernel_size=3, stride=1, padding=None, dilation=1, groups=1,
              bias=False) -> ConvArgs:
    """Validate and normalise the ``nn.Conv2d`` arguments (``padding=None`` -> same padding)."""
    in_channels = check_int("in_channels", in_channels, min_value=1)
    out_channels = check_int("out_channels", out_channels, min_value=1)
    kernel_size, stride, dilation = pair("kernel_size", kernel_size), pair("stride", stride), pair("dilation", dilation)
    padding = same_padding(kernel_size, dilation) if padding is None else pair("padding", padding, min_value=0)
    groups = check_int("groups", groups, min_value=1)
    check_divides("groups", groups, "in_channels", in_channels)
    check_divides("groups", groups, "out_channels", out_channels)
    if not isinstance(bias, bool):
        raise ValueError(f"bias={bias!r} must be a bool")
    return ConvArgs(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)


class ConvBase(nn.Module):
    """Validates and stores the ``nn.Conv2d`` arguments; subclasses build their own parameters."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False):
        super().__init__()
        a = conv_args(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.in_channels, self.out_channels, self.groups, self.use_bias = a.in_channels, a.out_channels, a.groups, a.bias
        self.kernel_size, self.stride, self.padding, self.dilation = a.kernel_size, a.stride, a.padding, a.dilation

    def hparams_repr(self) -> str:
        """Module-specific hyperparameters for ``extra_repr`` (override)."""
        return ""

    def load_conv_weights(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "ConvBase":
        """Set the parameters so that this module computes ``F.conv2d(x, weight, bias)`` with its own geometry, or
        raise ``ValueError`` if it cannot do so exactly. The default: it cannot (subclasses that can override)."""
        raise ValueError(f"{type(self).__name__} cannot take a plain conv's weights: no setting of its parameters is "
                         "known to compute a plain convolution exactly")

    def check_conv_weights(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        """``ValueError`` unless ``weight`` (and ``bias``) are those of a plain conv with this module's geometry."""
        expected = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        if tuple(weight.shape) != expected:
            raise ValueError(f"weight has shape {tuple(weight.shape)}; {type(self).__name__} expects {expected}")
        if (bias is not None) != self.use_bias:
            raise ValueError(f"bias is {'given' if bias is not None else 'None'} but {type(self).__name__} was built "
                             f"with bias={self.use_bias}")

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.use_bias:
            s += ", bias=True"
        extra = self.hparams_repr()
        return f"{s}, {extra}" if extra else s


@register("conv2d", "conv", paper="the plain convolution (baseline)")
class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` under the conv contract: ``padding=None`` means same padding and ``bias`` defaults to False.
    ``padding_mode`` as ``nn.Conv2d``'s (so that surgery can keep a reflect-padded conv reflect-padded)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, padding_mode: str = "zeros"):
        super().__init__(*conv_args(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias),
                         padding_mode=padding_mode)
