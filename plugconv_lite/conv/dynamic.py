"""Mixtures of expert kernels. Yang, Bender, Le, Ngiam: "CondConv: Conditionally Parameterized Convolutions for
Efficient Inference", NeurIPS 2019, arXiv 1904.04971; Chen, Dai, Liu, Chen, Yuan, Liu: "Dynamic Convolution:
Attention over Convolution Kernels", CVPR 2020, arXiv 1912.03458.

Both keep K kernels W_1 ... W_K and convolve each sample with its own combination W(x) = sum_k r_k(x) W_k, the
weights r(x) computed from the globally pooled input. Because convolution is linear in the kernel, this is the
weighted sum of the K experts' outputs at the cost of ONE convolution (plus the small routing function and the
aggregation). They differ in the routing: CondConv uses independent sigmoids (the weights need not sum to 1),
DY-CNN a softmax over the K kernels, divided by a temperature that is annealed from 30 to 1 early in training.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_float, check_int, make_divisible
from ..registry import register
from ._dynamic import AnnealedTemperature, per_sample_conv
from ._init import check_weight_init, init_bias, init_weight
from .base import ConvBase


class ExpertConv2d(ConvBase):
    """The part CondConv and DY-CNN share: K expert kernels, their aggregation, and the per-sample convolution.

    ``weight`` (K, O, C/g, kh, kw) and ``bias`` (K, O) hold the experts, each initialised as if it were its own conv
    (``weight_init``, see ``conv/_init.py``; "fan_out" is TF CondConv-EfficientNet's kernel initializer). Subclasses
    define ``routing(x) -> r`` of shape (B, K)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, num_experts: int = 4, weight_init: str = "fan_out",
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.num_experts = K = check_int("num_experts", num_experts, min_value=1)
        self.weight_init = check_weight_init(weight_init)
        fk = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(K, self.out_channels, self.in_channels // self.groups,
                                               *self.kernel_size, **fk))
        self.bias = nn.Parameter(torch.empty(K, self.out_channels, **fk)) if self.use_bias else None

    def reset_parameters(self) -> None:
        for k in range(self.num_experts):  # one fan per expert, not one over the stacked (K, O, ...) tensor
            init_weight(self.weight[k], self.weight_init)
            if self.bias is not None:
                init_bias(self.bias[k], self.weight[k])

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """The expert weights r(x), shape (B, K); defined by the subclass."""
        raise NotImplementedError(f"{type(self).__name__} must define routing(x)")

    def aggregate(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample kernels W(x) = sum_k r_k W_k (B, O, C/g, kh, kw) and biases (B, O), as matrix products (which
        FLOP counters see: 2 B K O (C/g) kh kw FLOPs)."""
        K = self.num_experts
        W = (r @ self.weight.reshape(K, -1)).reshape(r.shape[0], *self.weight.shape[1:])
        b = None if self.bias is None else r @ self.bias
        return W, b

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel each sample of ``x`` is convolved with, (B, O, C/g, kh, kw)."""
        return self.aggregate(self.routing(x))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W, b = self.aggregate(self.routing(x))
        return per_sample_conv(x, W, b, self.stride, self.padding, self.dilation, self.groups)

    def expert_repr(self) -> str:
        s = f"num_experts={self.num_experts}"
        return s if self.weight_init == "fan_out" else f"{s}, weight_init={self.weight_init!r}"


@register("condconv", "conv", paper="CondConv: Conditionally Parameterized Convolutions for Efficient Inference",
          year=2019, arxiv="1904.04971")
class CondConv2d(ExpertConv2d):
    """y = conv2d(x, W(x)) + b(x),  W(x) = sum_k r_k W_k,  b(x) = sum_k r_k b_k,  r = sigmoid(W_r GAP(x) + b_r).

    Shapes: x (B, C, H, W); GAP(x) (B, C); W_r (K, C), b_r (K); r (B, K) in (0, 1)^K, NOT normalised (the kernel
    is not a convex combination of the experts: its scale follows sum_k r_k); W_k (O, C/g, kh, kw).
    ``num_experts`` K: the paper's CondConv-EfficientNets use 8 (the default); the book's experiment uses 4.

    Departures from the official TF layer: the routing is computed per layer from the layer's own input (the
    official EfficientNet-CondConv computes one routing vector per block, from the block input, and shares it
    between the block's CondConv layers, which a drop-in conv cannot do); experts are stored OIHW (TF: HWIO);
    padding is symmetric ("same" for odd kernels), where TF's 'SAME' pads asymmetrically at stride 2 on even sizes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, num_experts: int = 8, weight_init: str = "fan_out",
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         num_experts, weight_init, device, dtype)
        self.route = nn.Linear(self.in_channels, self.num_experts, device=device, dtype=dtype)  # W_r, b_r
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.route.reset_parameters()

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """r = sigmoid(W_r GAP(x) + b_r), shape (B, K)."""
        return torch.sigmoid(self.route(x.mean(dim=(2, 3))))

    def load_conv_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "CondConv2d":
        """Refused: W(x) = sum_k r_k(x) W_k with unnormalised sigmoid weights has the scale sum_k r_k(x), which
        depends on the input. Only a constant routing (W_r = 0) would reproduce a plain conv, and with it every
        expert would receive the same gradient and stay identical: the module would be that plain conv for good."""
        raise ValueError("CondConv2d cannot take a plain conv's weights: its sigmoid routing weights do not sum to "
                         "1, so the kernel's scale depends on the input; only a constant routing would reproduce "
                         "the conv, and with it the experts could never become different")

    def hparams_repr(self) -> str:
        return self.expert_repr()


@register("dyconv", "conv", paper="Dynamic Convolution: Attention over Convolution Kernels", year=2020,
          arxiv="1912.03458")
class DynamicConv2d(AnnealedTemperature, ExpertConv2d):
    """y = conv2d(x, W(x)) + b(x),  W(x) = sum_k pi_k W_k,  pi = softmax(z / T),  z = W_2 relu(W_1 GAP(x)) + b_2.

    Shapes: GAP(x) (B, C); W_1 (C_h, C) without bias; W_2 (K, C_h), b_2 (K); pi (B, K), sum_k pi_k = 1, so the
    kernel stays in the convex hull of the experts. ``num_experts`` K = 4 as the paper. The hidden width C_h is
    ``make_divisible(C / reduction, 8)`` (reduction 4 as the paper: 16 units for 64 channels; 8, not 4, for 16
    channels), or ``hidden`` if given (the unofficial kaijieshi7 code uses int(C / 4) + 1).

    The temperature T (``AnnealedTemperature``) starts at ``temperature`` = 30 and falls linearly to 1 over the
    first ``anneal`` fraction of training (default 0.1: the official ODConv recipe's first 10 of 100 epochs; the
    unofficial DY-CNN code steps 34 -> 1 by 3 per epoch instead). With a large T the attention is near uniform, so
    every expert receives gradient early; ``anneal=0`` trains at T = 1 from the start. Inference uses the T the
    module was left at (1 after training; a fresh module is at T_0).

    ``load_conv_weights`` sets every expert to the given kernel: the softmax weights sum to 1, so the module then
    computes that plain convolution (to rounding), whatever the attention.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, num_experts: int = 4, reduction: float = 4,
                 hidden: int | None = None, temperature: float = 30.0, anneal: float = 0.1,
                 weight_init: str = "fan_out", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         num_experts, weight_init, device, dtype)
        self.reduction = check_float("reduction", reduction, min_value=1.0)
        if hidden is None:
            hidden = make_divisible(self.in_channels / self.reduction, 8)
        self.hidden = check_int("hidden", hidden, min_value=1)
        fk = dict(device=device, dtype=dtype)
        self.fc1 = nn.Linear(self.in_channels, self.hidden, bias=False, **fk)   # W_1
        self.fc2 = nn.Linear(self.hidden, self.num_experts, **fk)               # W_2, b_2
        self._init_temperature(temperature, anneal, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for fc in (self.fc1, self.fc2):  # as the unofficial code: Kaiming-normal (fan-out), zero bias
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc2.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """z = W_2 relu(W_1 GAP(x)) + b_2, shape (B, K), before the temperature."""
        return self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """pi = softmax(z / T), shape (B, K)."""
        return torch.softmax(self.logits(x) / self.T, dim=1)

    @torch.no_grad()
    def load_conv_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "DynamicConv2d":
        """Every expert := ``weight`` (and ``bias``): sum_k pi_k W_k = W for any attention pi."""
        self.check_conv_weights(weight, bias)
        self.weight.copy_(weight.expand_as(self.weight))
        if bias is not None:
            self.bias.copy_(bias.expand_as(self.bias))
        return self

    def hparams_repr(self) -> str:
        return f"{self.expert_repr()}, hidden={self.hidden}, {self.schedule_repr()}"
