"""Poly-Scale Convolution. Li, Yao, Chen: "PSConv: Squeezing Feature Pyramid into One Compact Poly-Scale
Convolutional Layer", ECCV 2020, arXiv 2007.06191.

Several dilation rates inside ONE k x k convolution: the input and output channels are cut into P parts, and the
kernel block that connects input part i to output part j uses a dilation that depends on (j, i), cyclically.
Every block of the dense weight is used exactly once, so the layer has the parameters and the multiply-accumulates
of the plain conv; the official code computes it as a dense conv with masked blocks plus two grouped convs (about
(1 + 2/P) times the arithmetic). ``PSConv2d`` groups the blocks by dilation instead, so no zero is multiplied.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_divides, check_int, check_odd
from ..registry import register
from ._layout import channels_last_on_cpu
from .base import ConvBase


def dilation_map(parts: int, d: int) -> torch.Tensor:
    """(P, P) int tensor: the dilation rate of the block from input part i (column) to output part j (row).

    delta(j, i) = d if i = j;  2d if i = (j + P/2) mod P;  1 otherwise.
    """
    P = parts
    j, i = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    m = torch.ones(P, P, dtype=torch.long)
    m[i == (j + P // 2) % P] = 2 * d
    m[i == j] = d
    return m


@register("psconv", "conv", paper="PSConv: Squeezing Feature Pyramid into One Compact Poly-Scale Convolutional Layer",
          year=2020, arxiv="2007.06191")
class PSConv2d(ConvBase):
    """y = sum_{delta in {d, 2d, 1}} Conv_{k x k, dilation delta}(x, W masked to the blocks with dilation delta).

    With C = C_in, O = C_out cut into P parts (C/P and O/P channels), output part j reads input part j with
    dilation d, input part (j + P/2) mod P with dilation 2d, and every other input part with dilation 1. Computed as
    three grouped convolutions (groups = P), one per dilation, each touching only its own blocks:

        y = Conv_{d}(x, W_d, groups=P) + Conv_{2d}(x_shift, W_2d, groups=P) + Conv_{1}(x_rest, W_1, groups=P)

    x_shift (B, C, H, W): x with its parts rotated by P/2, so that its part j is x's part (j + P/2) mod P.
    x_rest (B, (P-2) C, H, W): for each j, the P-2 remaining input parts (j + r) mod P, r = 1 .. P-1, r != P/2.
    W_d, W_2d: (O, C/P, k, k) (the official code's ``gwconv`` / ``gwconv_shift`` layouts); W_1: (O, (P-2) C/P, k, k).
    Together they hold exactly O * C * k^2 weights, and the three convs do exactly the plain conv's O * C * k^2
    multiply-accumulates per output pixel. ``dense_weight()`` / ``load_dense_weight(W)`` map to and from the dense
    (O, C, k, k) weight of the official formulation.

    The conv's own ``dilation`` (default 1) multiplies every rate. groups must be 1: the official grouped variant
    (PSGConv2d) has a mask indexing we could not verify, so it is not reproduced. Init: Kaiming-normal (fan-out,
    ReLU) of the dense weight, as the official backbone's init and the book's ResNet convs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, parts: int = 4, d: int = 2):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if self.groups != 1:
            raise ValueError(f"groups={groups}: PSConv2d supports groups=1 only (the official grouped PSGConv2d is "
                             "unverified)")
        P = check_int("parts", parts, min_value=2)
        if P % 2:
            raise ValueError(f"parts={P} must be even (part j pairs with part j + P/2)")
        check_divides("parts", P, "in_channels", self.in_channels)
        check_divides("parts", P, "out_channels", self.out_channels)
        self.parts, self.d = P, check_int("d", d, min_value=1)
        for name, k in zip(("kernel_size[0]", "kernel_size[1]"), self.kernel_size):
            check_odd(name, k)
        C, O, (kh, kw) = self.in_channels, self.out_channels, self.kernel_size
        Ci = C // P
        self.weight_d = nn.Parameter(torch.empty(O, Ci, kh, kw))
        self.weight_2d = nn.Parameter(torch.empty(O, Ci, kh, kw))
        self.register_parameter("weight_1", nn.Parameter(torch.empty(O, (P - 2) * Ci, kh, kw)) if P > 2 else None)
        self.register_parameter("bias", nn.Parameter(torch.empty(O)) if self.use_bias else None)

        # x_rest's channels: for output part j = 0 .. P-1, the input parts (j + r) mod P with r in `rest`
        part = torch.arange(C).view(P, Ci)
        rest = torch.tensor([r for r in range(1, P) if r != P // 2], dtype=torch.long)
        rest_parts = (torch.arange(P)[:, None] + rest[None, :]) % P          # (P, P - 2)
        self.register_buffer("rest_index", part[rest_parts].reshape(-1), persistent=False)
        self.reset_parameters()

    def _padding(self, rate: int) -> tuple[int, int]:
        """Padding for a dilation ``rate`` (times the conv's dilation) that gives the output size of the base conv."""
        return tuple(p + (rate - 1) * dl * (k - 1) // 2
                     for p, dl, k in zip(self.padding, self.dilation, self.kernel_size))

    def rates(self) -> tuple[int, int, int]:
        """The three dilation rates (d, 2d, 1), before multiplying by the conv's own dilation."""
        return self.d, 2 * self.d, 1

    def reset_parameters(self) -> None:
        std = math.sqrt(2.0 / (self.out_channels * self.kernel_size[0] * self.kernel_size[1]))   # dense fan-out
        for w in (self.weight_d, self.weight_2d, self.weight_1):
            if w is not None:
                nn.init.normal_(w, 0.0, std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        P, d = self.parts, self.d
        dil = lambda rate: tuple(rate * dl for dl in self.dilation)  # noqa: E731
        x, restore = channels_last_on_cpu(x)   # grouped convs: faster on a CPU (see _layout)
        y = F.conv2d(x, self.weight_d, self.bias, self.stride, self._padding(d), dil(d), P)
        x_shift = torch.roll(x, self.in_channels // 2, dims=1)
        y = y + F.conv2d(x_shift, self.weight_2d, None, self.stride, self._padding(2 * d), dil(2 * d), P)
        if self.weight_1 is not None:
            x_rest = x.index_select(1, self.rest_index)
            y = y + F.conv2d(x_rest, self.weight_1, None, self.stride, self._padding(1), dil(1), P)
        return y.contiguous() if restore else y

    # --- the dense view -------------------------------------------------------------------------------------------

    def dilation_map(self) -> torch.Tensor:
        """(P, P): the dilation rate of each (output part j, input part i) block (times the conv's own dilation)."""
        return dilation_map(self.parts, self.d)

    def _column_index(self) -> torch.Tensor:
        """(O, C): for output channel o, the input channel each column of cat(W_d, W_2d, W_1)[o] belongs to."""
        P, C, O = self.parts, self.in_channels, self.out_channels
        part = torch.arange(C).view(P, C // P)
        j = torch.arange(P)
        order = [j[:, None]] + [(j[:, None] + P // 2) % P] + \
            [(j[:, None] + r) % P for r in range(1, P) if r != P // 2]
        cols = part[torch.cat(order, dim=1)].reshape(P, C)          # (P, C) per output part
        return cols.repeat_interleave(O // P, dim=0).to(self.weight_d.device)

    def _weights(self) -> list[torch.Tensor]:
        return [w for w in (self.weight_d, self.weight_2d, self.weight_1) if w is not None]

    def dense_weight(self) -> torch.Tensor:
        """The (O, C, k, k) weight of the official (dense) formulation: block (j, i) holds the kernel that connects
        input part i to output part j (used with dilation ``dilation_map()[j, i]``)."""
        W_cat = torch.cat(self._weights(), dim=1)
        index = self._column_index()[:, :, None, None].expand_as(W_cat)
        return torch.zeros_like(W_cat).scatter(1, index, W_cat)

    @torch.no_grad()
    def load_dense_weight(self, W: torch.Tensor) -> "PSConv2d":
        """Set the weights from a dense (O, C, k, k) weight (the inverse of ``dense_weight``); returns self."""
        expected = (self.out_channels, self.in_channels, *self.kernel_size)
        if tuple(W.shape) != expected:
            raise ValueError(f"W has shape {tuple(W.shape)}, expected {expected}")
        index = self._column_index()[:, :, None, None].expand(expected)
        W_cat = W.to(self.weight_d).gather(1, index)
        Ci = self.in_channels // self.parts
        for w, chunk in zip(self._weights(), W_cat.split([Ci, Ci, W_cat.shape[1] - 2 * Ci], dim=1)):
            w.copy_(chunk)
        return self

    def masked(self) -> "MaskedPSConv2d":
        """The same function in the official formulation (dense masked conv + two grouped convs), for comparison."""
        return MaskedPSConv2d(self)

    def hparams_repr(self) -> str:
        return f"parts={self.parts}, d={self.d}"


class MaskedPSConv2d(nn.Module):
    """PSConv computed the way the official code does, for cost comparisons (not registered):

        y = gwconv(x) + gwconv_shift(x_shift) + conv(x),

    where ``gwconv`` (dilation d) and ``gwconv_shift`` (dilation 2d) are grouped convs (groups = P) and ``conv`` is a
    DENSE dilation-1 conv whose 2P blocks covered by the other two are zero (a boolean ``mask`` buffer; a gradient
    hook keeps them zero in training). Parameters stored: (1 + 2/P) x the plain conv's; multiply-accumulates: the same
    (1 + 2/P) x, of which 2/P multiply zeros. Built from a ``PSConv2d``, whose function it reproduces.
    """

    def __init__(self, ps: PSConv2d):
        super().__init__()
        P, d = ps.parts, ps.d
        dil = ps.dilation
        self.gwconv = nn.Conv2d(ps.in_channels, ps.out_channels, ps.kernel_size, ps.stride, ps._padding(d),
                                tuple(d * x for x in dil), P, bias=ps.bias is not None)
        self.gwconv_shift = nn.Conv2d(ps.in_channels, ps.out_channels, ps.kernel_size, ps.stride, ps._padding(2 * d),
                                      tuple(2 * d * x for x in dil), P, bias=False)
        self.conv = nn.Conv2d(ps.in_channels, ps.out_channels, ps.kernel_size, ps.stride, ps._padding(1), dil,
                              bias=False)
        j, i = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
        covered = (i == j) | (i == (j + P // 2) % P)          # the blocks gwconv and gwconv_shift compute
        Co, Ci = ps.out_channels // P, ps.in_channels // P
        mask = covered.repeat_interleave(Co, 0).repeat_interleave(Ci, 1)[:, :, None, None]
        self.register_buffer("mask", mask.expand_as(self.conv.weight).clone())
        with torch.no_grad():
            self.gwconv.weight.copy_(ps.weight_d)
            if ps.bias is not None:
                self.gwconv.bias.copy_(ps.bias)
            self.gwconv_shift.weight.copy_(ps.weight_2d)
            self.conv.weight.copy_(ps.dense_weight().masked_fill(self.mask, 0.0))
        self.conv.weight.register_hook(lambda g: g.masked_fill(self.mask, 0.0))
        self.in_channels = ps.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_shift = torch.roll(x, self.in_channels // 2, dims=1)
        return self.gwconv(x) + self.gwconv_shift(x_shift) + self.conv(x)
