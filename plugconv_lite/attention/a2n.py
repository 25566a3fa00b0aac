"""A2N: the attention-in-attention block. Chen, Gu, Zhang: "Attention in Attention Network for Image
Super-Resolution", arXiv 2104.09497 (2021); official code: github.com/haoyuc/A2N (``code/model/aan.py``, class AAB).

An attention branch (pixel attention: a sigmoid map per position and channel) and a non-attention branch (a plain
3x3 conv) run side by side; a second, "dynamic" attention computed from the pooled input chooses, per input, how
much of each branch to use (the code calls it the Attention Dropout Module). Written for super-resolution, where the
block is the body of the network; adapted here to sit on a classifier's residual branch (see ``A2NModule``).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import bottleneck_width, check_choice, check_float, check_int, check_norm_layer_2d, make_divisible
from ..registry import register


@register("a2n", "attention", paper="Attention in Attention Network for Image Super-Resolution", year=2021,
          arxiv="2104.09497", url="https://github.com/haoyuc/A2N")
class A2NModule(nn.Module):
    """y = u + norm(conv_last(lrelu(pi_1 * att + pi_2 * non)))  (the AAB, on a width-m inner path).

    Shapes: u (B, C, H, W); h = lrelu(conv_first(u)) (B, m, H, W), conv_first 1x1 C -> m;
        pi = softmax(ADM(GAP(h)) / t) (B, 2),   ADM = Linear(m -> m_r) -> ReLU -> Linear(m_r -> 2), no biases
        att = k4(k3(h) * sigmoid(k2(lrelu(k1(h)))))   k1, k3, k4 3x3 (no bias), k2 1x1 (bias): pixel attention
        non = conv_kxk(h)                              k = ``non_attention_kernel`` (3: A2N, 1: A2N-M)
    conv_last 1x1 m -> C. LeakyReLU slope 0.2; t = 30, so pi starts near (1/2, 1/2). pi is per sample (one scalar
    per branch), not per channel.

    Adapted from super-resolution to classification (the chapter's departures):
    * position: the block goes on a ResNet's residual branch (the ``attn=`` plug point) and keeps its own inner
      skip (y = u + ...), instead of being the body block of an SR network;
    * width: the inner path runs at m = ``mid_channels`` channels, by default m = min(C, make_divisible(C / 4,
      divisor)) (16 for C = 64). The official block runs at full width (m = C), where its four 3x3 convolutions
      make it about 39 C^2 parameters: twice the 18 C^2 of the ResNet block it would sit in.
      ``mid_channels=channels`` restores the official width;
    * normalisation: ``norm_layer`` (default BatchNorm2d) after conv_last, because the host network is trained with
      BN at a high learning rate and the official block has no normalisation; ``norm_layer=None`` removes it.
    With ``mid_channels=channels``, ``hidden=channels // 4`` and ``norm_layer=None`` the module computes the
    official AAB (``reduction=4``, ``t=30``).

    Width rule of the ADM: m_r = min(m, make_divisible(m / reduction, divisor)) (8 for m = 16, never 0 or 1; the
    official m // 4 is 1 at m = 4), or ``hidden``.
    """

    def __init__(self, channels: int, mid_channels: Optional[int] = None, reduction: float = 4, t: float = 30.0,
                 non_attention_kernel: int = 3, divisor: int = 8, hidden: Optional[int] = None,
                 norm_layer: Optional[Callable[[int], nn.Module]] = nn.BatchNorm2d, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.channels = C = check_int("channels", channels, min_value=1)
        self.divisor = check_int("divisor", divisor, min_value=1)
        if mid_channels is None:
            mid_channels = min(C, make_divisible(C / 4, self.divisor))
        self.mid_channels = m = check_int("mid_channels", mid_channels, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=1)
        self.hidden = bottleneck_width(m, self.reduction, self.divisor, hidden)
        self.t = check_float("t", t, min_value=0, min_inclusive=False)
        check_choice("non_attention_kernel", non_attention_kernel, (1, 3))
        self.non_attention_kernel = kn = non_attention_kernel
        self.conv_first = nn.Conv2d(C, m, 1, bias=False, **factory)
        self.adm = nn.Sequential(nn.Linear(m, self.hidden, bias=False, **factory), nn.ReLU(),
                                 nn.Linear(self.hidden, 2, bias=False, **factory))
        self.k1 = nn.Conv2d(m, m, 3, padding=1, bias=False, **factory)
        self.k2 = nn.Conv2d(m, m, 1, **factory)
        self.k3 = nn.Conv2d(m, m, 3, padding=1, bias=False, **factory)
        self.k4 = nn.Conv2d(m, m, 3, padding=1, bias=False, **factory)
        self.non_attention = nn.Conv2d(m, m, kn, padding=kn // 2, bias=False, **factory)
        self.conv_last = nn.Conv2d(m, C, 1, bias=False, **factory)
        self.norm = nn.Identity() if norm_layer is None else check_norm_layer_2d("norm_layer", norm_layer, C)
        if device is not None or dtype is not None:
            self.norm.to(device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation of every layer, as the official code."""
        for mod in self.modules():
            if mod is not self and hasattr(mod, "reset_parameters"):
                mod.reset_parameters()

    @staticmethod
    def _lrelu(x: torch.Tensor) -> torch.Tensor:
        # in place, as the official code: every input here is a fresh intermediate, and a leaky ReLU's gradient
        # can be read from its output, so autograd allows it (and one copy of the map is saved)
        return F.leaky_relu(x, 0.2, inplace=True)

    def branch_weights(self, h: torch.Tensor) -> torch.Tensor:
        """pi = softmax(ADM(GAP(h)) / t), shape (B, 2): the weights of the attention and non-attention branch."""
        return torch.softmax(self.adm(h.mean(dim=(2, 3))) / self.t, dim=1)

    def pixel_attention(self, h: torch.Tensor) -> torch.Tensor:
        """The attention branch's map sigmoid(k2(lrelu(k1(h)))), shape (B, m, H, W)."""
        return torch.sigmoid(self.k2(self._lrelu(self.k1(h))))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = self._lrelu(self.conv_first(u))
        pi = self.branch_weights(h)[:, :, None, None, None]   # (B, 2, 1, 1, 1)
        att = self.k4(self.k3(h) * self.pixel_attention(h))
        non = self.non_attention(h)
        z = self._lrelu(pi[:, 0] * att + pi[:, 1] * non)
        return u + self.norm(self.conv_last(z))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, mid_channels={self.mid_channels}, hidden={self.hidden}, t={self.t}, "
                f"non_attention_kernel={self.non_attention_kernel}")
