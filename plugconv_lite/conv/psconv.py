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
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_divides, check_int, check_odd
from ..registry import register
from .base import ConvBase


def dilation_map(parts: int, d: int) -> torch.Tensor:
    """(P, P) int tensor: the dilation rate of the block from input part i (column) to output part j (row).

    rho(j, i) = d if i = j;  2d if i = (j + P/2) mod P;  1 otherwise.
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
    """y = sum_{rho in {d, 2d, 1}} Conv_{k x k, dilation rho}(x, W masked to the blocks with rate rho).

    With C = C_in, O = C_out cut into P parts (C/P and O/P channels), output part j reads input part j with
    dilation d, input part (j + P/2) mod P with dilation 2d, and every other input part with dilation 1. Computed as
    three grouped convolutions, one per dilation, each touching only its own blocks:

        y = Conv_d(x, W_d, groups=P) + Conv_2d(x_shift, W_2d, groups=P) + unpair(Conv_1(x_rest, W_1, groups=P/2))

    x_shift (B, C, H, W): x with its parts rotated by P/2, so that its part j is x's part (j + P/2) mod P.
    Dilation 1: output parts a and a + P/2 read the same P-2 input parts, (a + r) mod P for r != 0, P/2; so group
    a (a = 0 .. P/2-1) of one grouped conv computes both, from x_rest (B, (P-2) C/2, H, W), which holds those parts
    for each a; ``unpair`` puts its outputs (pair by pair) back in channel order (P = 4: x_rest is a permutation of x).
    W_d, W_2d: (O, C/P, k, k) (the official code's ``gwconv`` / ``gwconv_shift`` layouts); W_1: (O, (P-2) C/P, k, k)
    with its rows pair by pair. Together they hold exactly O * C * k^2 weights, and the three convs do exactly the
    plain conv's O * C * k^2 multiply-accumulates per output pixel. ``dense_weight()`` / ``load_dense_weight(W)``
    map to and from the dense (O, C, k, k) weight of the official formulation.

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
        Ci, half = C // P, P // 2
        self.weight_d = nn.Parameter(torch.empty(O, Ci, kh, kw))
        self.weight_2d = nn.Parameter(torch.empty(O, Ci, kh, kw))
        self.register_parameter("weight_1", nn.Parameter(torch.empty(O, (P - 2) * Ci, kh, kw)) if P > 2 else None)
        self.register_parameter("bias", nn.Parameter(torch.empty(O)) if self.use_bias else None)

        # dilation 1, pair a = output parts (a, a + P/2): input parts (a + r) mod P, r in `rest`
        rest = torch.tensor([r for r in range(1, P) if r != half], dtype=torch.long)
        pair_inputs = (torch.arange(half)[:, None] + rest[None, :]) % P                     # (P/2, P-2) parts
        pair_outputs = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1)  # (P/2, 2) parts
        in_part, out_part = torch.arange(C).view(P, Ci), torch.arange(O).view(P, O // P)
        self.register_buffer("rest_index", in_part[pair_inputs].reshape(-1), persistent=False)
        # W_1's row r is output channel pair_order[r]; unpair_index[o] is the row of output channel o
        self.register_buffer("pair_order", out_part[pair_outputs].reshape(-1), persistent=False)
        self.register_buffer("unpair_index", torch.argsort(self.pair_order), persistent=False)
        self.reset_parameters()

    def _padding(self, rate: int) -> tuple[int, int]:
        """Padding for a dilation ``rate`` (times the conv's dilation) that gives the output size of the base conv."""
        return tuple(p + (rate - 1) * dl * (k - 1) // 2
                     for p, dl, k in zip(self.padding, self.dilation, self.kernel_size))

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
        y = F.conv2d(x, self.weight_d, self.bias, self.stride, self._padding(d), dil(d), P)
        x_shift = torch.roll(x, self.in_channels // 2, dims=1)
        y = y + F.conv2d(x_shift, self.weight_2d, None, self.stride, self._padding(2 * d), dil(2 * d), P)
        if self.weight_1 is not None:
            x_rest = x.index_select(1, self.rest_index)
            y_1 = F.conv2d(x_rest, self.weight_1, None, self.stride, self._padding(1), dil(1), P // 2)
            y = y + y_1.index_select(1, self.unpair_index)
        return y

    # --- the dense view -------------------------------------------------------------------------------------------

    def dilation_map(self) -> torch.Tensor:
        """(P, P): the dilation rate of each (output part j, input part i) block (times the conv's own dilation)."""
        return dilation_map(self.parts, self.d)

    def _column_index(self) -> torch.Tensor:
        """(O, C): for output channel o, the input channel of each column of cat(W_d[o], W_2d[o], W_1[row of o])."""
        P, C, O = self.parts, self.in_channels, self.out_channels
        half, Ci = P // 2, C // P
        part = torch.arange(C).view(P, Ci)
        j = torch.arange(P)
        rest = torch.tensor([r for r in range(1, P) if r != half], dtype=torch.long)
        parts = torch.cat([j[:, None], ((j + half) % P)[:, None], (j[:, None] % half + rest[None, :]) % P], dim=1)
        return part[parts].reshape(P, C).repeat_interleave(O // P, dim=0).to(self.weight_d.device)

    def _weights(self) -> list[torch.Tensor]:
        """W_d, W_2d and (P > 2) W_1 with its rows in output-channel order."""
        ws = [self.weight_d, self.weight_2d]
        return ws + ([self.weight_1.index_select(0, self.unpair_index)] if self.weight_1 is not None else [])

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
        W_d, W_2d, W_1 = W_cat.split([Ci, Ci, W_cat.shape[1] - 2 * Ci], dim=1)
        self.weight_d.copy_(W_d)
        self.weight_2d.copy_(W_2d)
        if self.weight_1 is not None:
            self.weight_1.copy_(W_1.index_select(0, self.pair_order))
        return self

    @torch.no_grad()
    def load_conv_weights(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "PSConv2d":
        """Compute exactly the plain conv with ``weight`` (O, C, k, k), where that is possible: the blocks PSConv
        dilates (rate d or 2d, not 1) must be zero outside their centre tap, the one tap that reads the same pixel at
        every dilation. Always true for 1x1 kernels; a trained k x k conv's weights practically never satisfy it."""
        self.check_conv_weights(weight, bias)
        P, (kh, kw) = self.parts, self.kernel_size
        rates = self.dilation_map().repeat_interleave(self.out_channels // P, 0)
        rates = rates.repeat_interleave(self.in_channels // P, 1).to(weight.device)          # (O, C)
        off_centre = weight.clone()
        off_centre[..., kh // 2, kw // 2] = 0
        if ((rates != 1) & off_centre.ne(0).flatten(2).any(-1)).any():
            raise ValueError(f"PSConv2d (parts={P}, d={self.d}) cannot hold this conv's weights exactly: its blocks "
                             f"with dilation {self.d} and {2 * self.d} would have to be zero outside the centre tap")
        self.load_dense_weight(weight)
        if bias is not None:
            self.bias.copy_(bias)
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
            self.mask = self.mask.to(ps.weight_d.device)
            self.gwconv.weight.copy_(ps.weight_d)
            if ps.bias is not None:
                self.gwconv.bias.copy_(ps.bias)
            self.gwconv_shift.weight.copy_(ps.weight_2d)
            self.conv.weight.copy_(ps.dense_weight().masked_fill(self.mask, 0.0))
        self.conv.weight.register_hook(lambda g: g.masked_fill(self.mask, 0.0))
        self.in_channels = ps.in_channels
        self.to(ps.weight_d.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_shift = torch.roll(x, self.in_channels // 2, dims=1)
        return self.gwconv(x) + self.gwconv_shift(x_shift) + self.conv(x)
