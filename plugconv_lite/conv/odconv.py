"""ODConv. Li, Zhou, Yao: "Omni-Dimensional Dynamic Convolution", ICLR 2022, arXiv 2209.07947 (official code:
github.com/OSVAI/ODConv).

Dynamic convolution along all four dimensions of the kernel space: besides attention over the K kernels (as
DY-CNN), three sigmoid attentions rescale the kernel's spatial positions, its input channels and its output
filters, all computed from the globally pooled input by one small squeeze branch.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_float, check_int, check_norm_layer_2d
from ..registry import register
from ._dynamic import AnnealedTemperature, check_batch_statistics, per_sample_conv
from ._init import check_weight_init, init_bias, init_weight
from .base import ConvBase


@register("odconv", "conv", paper="Omni-Dimensional Dynamic Convolution", year=2022, arxiv="2209.07947",
          url="https://github.com/OSVAI/ODConv")
class ODConv2d(AnnealedTemperature, ConvBase):
    """y = a_f * conv2d(a_c * x, sum_k a_w,k (a_s * W_k)),  with the attentions from z = relu(BN(W_z GAP(x))):

        a_c = sigmoid(W_c z / T)  (B, C)      input-channel attention, applied to x (same as to the kernel)
        a_f = sigmoid(W_f z / T)  (B, O)      filter attention, applied to the output; 1 for a depthwise conv
        a_s = sigmoid(W_s z / T)  (B, kh*kw)  spatial attention over the kernel positions; 1 for a 1x1 kernel
        a_w = softmax(W_w z / T)  (B, K)      kernel attention over the K kernels; 1 if K = 1

    Shapes: W_k (O, C/g, kh, kw) for k = 1..K (``kernels``; stored flattened, ``weight`` (K, O C/g kh kw)); z (B, A) with A = max(int(C * reduction), min_channels) (the
    official rule: 16 units for every C <= 256 at reduction 1/16). W_c, W_f, W_s, W_w carry biases (zero at init),
    W_z does not; all are Kaiming-normal (fan-out) as the official code. a_s is shared by all K kernels, and so are
    a_c and a_f (the paper's Figure 1 draws one set per kernel; the official code computes one set for all K).
    ``kernel_num`` K: 4 is the paper's "ODConv (4x)", 1 its "(1x)".

    The temperature T divides all four logits; it falls from ``temperature`` = 30 to 1 over the first ``anneal``
    fraction of training (official: 10 of 100 epochs), through ``set_progress``. ``norm_layer`` (BatchNorm2d, as the
    official code, on the (B, A, 1, 1) squeeze) cannot train on a batch of 1: that raises a ``ValueError``; use
    ``norm_layer=None`` to drop it. ``bias=True`` adds a static bias after the filter attention (the official layer
    has none). With K = 1 and a 1x1 kernel nothing is per-sample but a_c and a_f: one ordinary convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, kernel_num: int = 4, reduction: float = 0.0625,
                 min_channels: int = 16, temperature: float = 30.0, anneal: float = 0.1,
                 norm_layer: Optional[Callable[[int], nn.Module]] = nn.BatchNorm2d, weight_init: str = "fan_out",
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        C, O, g = self.in_channels, self.out_channels, self.groups
        self.kernel_num = K = check_int("kernel_num", kernel_num, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=0.0, max_value=1.0, min_inclusive=False)
        self.min_channels = check_int("min_channels", min_channels, min_value=1)
        self.attention_channels = A = max(int(C * self.reduction), self.min_channels)
        self.weight_init = check_weight_init(weight_init)
        self.depthwise = C == g == O
        kh, kw = self.kernel_size
        fk = dict(device=device, dtype=dtype)
        self.fc = nn.Conv2d(C, A, 1, bias=False, **fk)                             # W_z
        self.norm = nn.Identity() if norm_layer is None else check_norm_layer_2d("norm_layer", norm_layer, A)
        self.norm.to(**fk)
        self.channel_fc = nn.Conv2d(A, C, 1, **fk)                                 # W_c
        self.filter_fc = None if self.depthwise else nn.Conv2d(A, O, 1, **fk)      # W_f
        self.spatial_fc = None if kh * kw == 1 else nn.Conv2d(A, kh * kw, 1, **fk)  # W_s
        self.kernel_fc = None if K == 1 else nn.Conv2d(A, K, 1, **fk)              # W_w
        # the K kernels flattened to the rows of the aggregation's matrix product: a 5-D (K, O, C/g, kh, kw)
        # parameter would make model.to(memory_format=torch.channels_last) (the trainer's call) raise
        self.weight = nn.Parameter(torch.empty(K, O * (C // g) * kh * kw, **fk))
        self.bias = nn.Parameter(torch.empty(O, **fk)) if self.use_bias else None
        self._init_temperature(temperature, anneal, device, dtype)
        self.reset_parameters()

    @property
    def kernels(self) -> torch.Tensor:
        """The K kernels W_k as a (K, O, C/g, kh, kw) view of ``weight``."""
        return self.weight.view(self.kernel_num, self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def reset_parameters(self) -> None:
        for k in range(self.kernel_num):  # one fan per kernel
            init_weight(self.kernels[k], self.weight_init)
        if self.bias is not None:
            init_bias(self.bias, self.kernels[0])
        for m in (self.fc, self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc):
            if m is not None:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if hasattr(self.norm, "reset_parameters"):
            self.norm.reset_parameters()

    def attention(self, x: torch.Tensor):
        """(a_c (B, C), a_f (B, O) or None, a_s (B, kh*kw) or None, a_w (B, K) or None); None means 1."""
        B = x.shape[0]
        if self.training:
            check_batch_statistics(self, self.norm, B, "attention branch")
        z = F.relu(self.norm(self.fc(x.mean(dim=(2, 3), keepdim=True))))
        T = self.T

        def head(fc):
            return None if fc is None else fc(z).reshape(B, -1) / T

        a_c = torch.sigmoid(head(self.channel_fc))
        a_f = None if self.filter_fc is None else torch.sigmoid(head(self.filter_fc))
        a_s = None if self.spatial_fc is None else torch.sigmoid(head(self.spatial_fc))
        a_w = None if self.kernel_fc is None else torch.softmax(head(self.kernel_fc), dim=1)
        return a_c, a_f, a_s, a_w

    def aggregate(self, a_s: Optional[torch.Tensor], a_w: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """W_b = a_s,b * sum_k a_w,b,k W_k, shape (B, O, C/g, kh, kw).

        a_s is shared by the K kernels, so it factors out of the sum: one (B, K) x (K, O C/g kh kw) matrix product
        (which FLOP counters see), then a broadcast product over the kernel positions. The official code forms the
        (B, K, O, C/g, kh, kw) product of both attentions with every kernel and sums it over K."""
        K, O, Cg, kh, kw = self.kernels.shape
        W = self.weight
        W = W.expand(batch, -1) if a_w is None else a_w @ W
        if a_s is not None:
            W = W.reshape(batch, O * Cg, kh * kw) * a_s[:, None, :]
        return W.reshape(batch, O, Cg, kh, kw)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel each sample is convolved with, input-channel and filter attentions included:
        a_f,b,o * a_c,b,i * W_b[o, i] (B, O, C/g, kh, kw); ``conv2d(x_b, kernel(x)[b])`` is the module's output."""
        a_c, a_f, a_s, a_w = self.attention(x)
        W = self.aggregate(a_s, a_w, x.shape[0])
        g, (B, O, Cg) = self.groups, W.shape[:3]
        a_c = a_c.reshape(B, g, 1, Cg).expand(B, g, O // g, Cg).reshape(B, O, Cg)  # input channel of slot i, group of o
        W = W * a_c[..., None, None]
        return W if a_f is None else W * a_f[:, :, None, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_c, a_f, a_s, a_w = self.attention(x)
        x = x * a_c[:, :, None, None]  # on the features: the same as scaling the kernel's input channels, cheaper
        if a_s is None and a_w is None:  # K = 1, 1x1 kernel: the kernel is static
            y = F.conv2d(x, self.kernels[0], None, self.stride, self.padding, self.dilation, self.groups)
        else:
            W = self.aggregate(a_s, a_w, x.shape[0])
            y = per_sample_conv(x, W, None, self.stride, self.padding, self.dilation, self.groups)
        if a_f is not None:
            y = y * a_f[:, :, None, None]
        return y if self.bias is None else y + self.bias[:, None, None]

    def hparams_repr(self) -> str:
        s = f"kernel_num={self.kernel_num}, attention_channels={self.attention_channels}, {self.schedule_repr()}"
        return s if self.weight_init == "fan_out" else f"{s}, weight_init={self.weight_init!r}"
