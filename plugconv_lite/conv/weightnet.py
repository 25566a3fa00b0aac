"""WeightNet. Ma, Zhang, Huang, Sun: "WeightNet: Revisiting the Design Space of Weight Networks", ECCV 2020,
arXiv 2007.11823 (official code, MegEngine: github.com/megvii-model/WeightNet).

A small network of (grouped) fully-connected layers outputs the whole convolution kernel of every sample from its
pooled features. Two knobs span the design space: M, the number of activations per output filter, and G, the
number of groups per filter in the last FC. Channel scaling in the spirit of SE (M = G = 1) and CondConv's mixture
of K experts (M = K, G = 1, with the K activations shared by every filter) are points of that space.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .._validate import check_divides, check_int
from ..registry import register
from ._dynamic import per_sample_conv
from ._init import check_weight_init, init_bias, init_weight
from .base import ConvBase


@register("weightnet", "conv", paper="WeightNet: Revisiting the Design Space of Weight Networks", year=2020,
          arxiv="2007.11823")
class WeightNet2d(ConvBase):
    """y_b = conv2d(x_b, W(x_b)) (+ bias), with the kernel generated for every sample b by

        z     = W_r GAP(x) + b_r              (B, C_gap)   C_gap = max(min_channels, C // reduction)
        a     = sigmoid(W_1 z + b_1)          (B, M O)     M activations per output filter
        W(x)  = grouped_FC(a)                 (B, O, C/g, kh, kw), G O groups, no bias

    The grouped FC (weight ``W_2``, shape (O n, M/G) with n = (C/g) kh kw the weights of one filter) has G O
    groups: group j = G o + s reads the M/G activations a[j M/G : (j + 1) M/G] and writes slice s of the G equal
    slices of filter o. So filter o is generated from its own M activations only, and W_2 holds M O n / G weights:
    the generator's parameters grow with M/G while the convolution's FLOPs stay those of the plain conv. The layout
    is the official one (a 1x1 conv with M O inputs, O n outputs and G O groups), so official weights load by a
    reshape. Defaults as the official layer: M = G = 2, C_gap = max(16, C / 16).

    Special cases (tests/conv/test_weightnet.py checks them numerically):
      * M = G = 1: W(x)[o] = a_o W_2[o], i.e. y = a * conv(x, W_2): an output-channel gate. SE's gate differs in two
        places this layer cannot express: a ReLU between its two FCs, and it is computed from the conv's output.
      * CondConv with K experts: M = K, G = 1, W_1's rows tied (the activation m of every filter is routing weight
        m), W_r holding the routing FC (needs K <= C_gap); filter o of expert m is W_2's column m of filter o.

    No nonlinearity sits between W_r and W_1 (as in the official code, where W_r is the ShuffleNetV2 block's shared
    "reduce" conv): together they are one FC from C to M O of rank at most C_gap. The official block computes z
    once and shares it between its WeightNet layers; a drop-in conv computes its own. The official depthwise layer
    (WeightNet_DW) is ``groups=C`` here with M/G activations per filter and one group each (M -> M/G, G -> 1).
    ``bias=True`` adds a static bias (the official layer has none).

    Initialisation: W_r, W_1 as ``nn.Linear``; each of W_2's M/G columns, viewed as an (O, C/g, kh, kw) kernel,
    by ``weight_init`` and scaled by 2 / sqrt(M/G), so that the generated kernel, a sum of M/G columns weighted by
    activations near 1/2, starts at the variance of a plain conv's kernel under that rule.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, M: int = 2, G: int = 2, reduction: int = 16,
                 min_channels: int = 16, weight_init: str = "default", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        C, O = self.in_channels, self.out_channels
        self.M = check_int("M", M, min_value=1)
        self.G = check_int("G", G, min_value=1)
        check_divides("G", self.G, "M", self.M)  # each of the G O groups reads M / G activations
        self.filter_size = n = (C // self.groups) * self.kernel_size[0] * self.kernel_size[1]
        if n % self.G:
            raise ValueError(f"G={self.G} must divide the weights of one filter, (in_channels/groups) * kh * kw = "
                             f"{n}: each filter is generated in G equal slices")
        self.reduction = check_int("reduction", reduction, min_value=1)
        self.min_channels = check_int("min_channels", min_channels, min_value=1)
        self.gap_channels = max(self.min_channels, C // self.reduction)
        self.weight_init = check_weight_init(weight_init)
        fk = dict(device=device, dtype=dtype)
        self.reduce = nn.Linear(C, self.gap_channels, **fk)       # W_r, b_r
        self.fc1 = nn.Linear(self.gap_channels, self.M * O, **fk)  # W_1, b_1
        self.W_2 = nn.Parameter(torch.empty(O * n, self.M // self.G, **fk))
        self.bias = nn.Parameter(torch.empty(O, **fk)) if self.use_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reduce.reset_parameters()
        self.fc1.reset_parameters()
        O, Cg, cols = self.out_channels, self.in_channels // self.groups, self.W_2.shape[1]
        column = torch.empty(O, Cg, *self.kernel_size, device=self.W_2.device, dtype=self.W_2.dtype)
        with torch.no_grad():
            for m in range(cols):
                init_weight(column, self.weight_init)
                self.W_2[:, m] = column.reshape(-1) * (2 / math.sqrt(cols))
        if self.bias is not None:
            init_bias(self.bias, column)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """a = sigmoid(W_1 (W_r GAP(x) + b_r) + b_1), shape (B, M O)."""
        return torch.sigmoid(self.fc1(self.reduce(x.mean(dim=(2, 3)))))

    def generate(self, a: torch.Tensor) -> torch.Tensor:
        """The grouped FC: activations (B, M O) -> kernels (B, O, C/g, kh, kw)."""
        B, GO, m = a.shape[0], self.G * self.out_channels, self.M // self.G
        W_2 = self.W_2.reshape(GO, self.filter_size // self.G, m)
        # one small matmul per group, batched over the G O groups; bmm even for M/G = 1, where einsum would turn it
        # into a broadcast product that FLOP counters do not see
        W = torch.bmm(a.reshape(B, GO, m).transpose(0, 1), W_2.transpose(1, 2)).transpose(0, 1)  # (B, G O, n/G)
        return W.reshape(B, self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel each sample of ``x`` is convolved with, (B, O, C/g, kh, kw)."""
        return self.generate(self.activations(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = per_sample_conv(x, self.kernel(x), None, self.stride, self.padding, self.dilation, self.groups)
        return y if self.bias is None else y + self.bias[:, None, None]

    def hparams_repr(self) -> str:
        s = f"M={self.M}, G={self.G}, gap_channels={self.gap_channels}"
        return s if self.weight_init == "default" else f"{s}, weight_init={self.weight_init!r}"
