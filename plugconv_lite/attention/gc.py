"""Global Context block. Cao, Xu, Lin, Wei, Hu: "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
Beyond", ICCV Workshops 2019, arXiv 1904.11492 (official code: github.com/xvjiarui/GCNet, mmdet/ops/gcb).

A non-local block whose attention map turns out to be nearly the same for every query position, simplified to
one: a softmax over positions pools the map into one context vector (the same for every pixel), an SE-like
bottleneck with LayerNorm transforms it, and it is added to every position.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import bottleneck_width, check_choice, check_float, check_int, check_layer
from ..registry import register

FUSIONS = ("add", "mul", "both")


def _transform(C: int, C_r: int, act_layer, factory: dict, C_out: Optional[int] = None) -> nn.Sequential:
    """W_v2 relu(LN(W_v1 c)): the bottleneck transform, on (B, C) vectors, to (B, C_out) (C_out = C unless given)."""
    return nn.Sequential(nn.Linear(C, C_r, **factory), nn.LayerNorm(C_r, **factory), act_layer(),
                         nn.Linear(C_r, C if C_out is None else C_out, **factory))


@register("gc", "attention", paper="GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
          year=2019, arxiv="1904.11492")
class GlobalContextBlock(nn.Module):
    """y_i = x_i + W_v2 relu(LN(W_v1 c)),  c = sum_j a_j x_j,  a = softmax_j(w_k . x_j)
    (``fusion="add"``, the paper's and the official code's default):

        x_j (C,) the feature vector at position j of the H x W map; w_k (C,) the context-mask weights; a (B, H*W)
        the attention pooling weights (they sum to 1 over positions); c (B, C) the context; W_v1 (C_r, C),
        W_v2 (C, C_r) with biases; LN a LayerNorm over the C_r hidden units.

    ``fusion="mul"`` scales instead, y_i = x_i * sigmoid(t(c)), with its own transform t; ``"both"`` scales, then
    adds (the official order). ``pooling="avg"`` replaces the attention pooling by a plain average (the paper's
    ablation). The last linear layer of each transform starts at zero (``zero_init_last``, as the official code),
    so with ``fusion="add"`` the block is the identity at initialisation; with ``"mul"`` it starts as x * 0.5.
    The attention pooling is a one-query attention (query w_k, keys = values = the positions), computed by
    ``F.scaled_dot_product_attention`` (``fused=False``: the explicit softmax and matrix product).
    ``C_r = make_divisible(C / reduction, divisor)`` (``_validate.bottleneck_width``); the official
    ``int(C * ratio)`` is 0 under 16 channels at ratio 1/16.
    """

    def __init__(self, channels: int, reduction: float = 16, divisor: int = 8, hidden: Optional[int] = None,
                 pooling: str = "att", fusion: str = "add", zero_init_last: bool = True, fused: bool = True,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=1)
        self.divisor = check_int("divisor", divisor, min_value=1)
        self.hidden = bottleneck_width(channels, self.reduction, self.divisor, hidden)
        check_choice("pooling", pooling, ("att", "avg"))
        check_choice("fusion", fusion, FUSIONS)
        self.pooling, self.fusion = pooling, fusion
        check_layer("act_layer", act_layer, "nn.ReLU")
        self.zero_init_last, self.fused = bool(zero_init_last), bool(fused)
        # w_k; no bias: softmax is shift-invariant, so a bias would change nothing and never learn
        self.w_k = nn.Parameter(torch.empty(C, **factory)) if pooling == "att" else None
        self.channel_mul = _transform(C, self.hidden, act_layer, factory) if fusion in ("mul", "both") else None
        self.channel_add = _transform(C, self.hidden, act_layer, factory) if fusion in ("add", "both") else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """w_k: Kaiming-normal (fan-in), as the official context mask; every transform's last layer at zero."""
        if self.w_k is not None:
            nn.init.normal_(self.w_k, std=(2.0 / self.channels) ** 0.5)
        for t in (self.channel_mul, self.channel_add):
            if t is not None:
                for m in t:
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
                if self.zero_init_last:
                    nn.init.zeros_(t[-1].weight)
                    nn.init.zeros_(t[-1].bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling weights a = softmax_j(w_k . x_j), shape (B, H, W); each map sums to 1."""
        if self.w_k is None:
            raise ValueError("pooling='avg' has no attention weights (every position weighs 1 / (H W))")
        B, C, H, W = x.shape
        logits = torch.einsum("c,bcn->bn", self.w_k, x.reshape(B, C, H * W))
        return logits.softmax(dim=-1).reshape(B, H, W)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """c = sum_j a_j x_j, shape (B, C)."""
        B, C, H, W = x.shape
        if self.w_k is None:
            return x.mean(dim=(2, 3))
        if not self.fused:
            a = self.attention(x).reshape(B, H * W, 1)
            return torch.bmm(x.reshape(B, C, H * W), a)[:, :, 0]
        kv = x.reshape(B, 1, C, H * W).transpose(-1, -2)                 # (B, 1, HW, C): keys = values = x_j
        q = self.w_k.to(x.dtype).expand(B, 1, 1, C)                      # one query per image: w_k
        return F.scaled_dot_product_attention(q, kv, kv, scale=1.0)[:, 0, 0]   # softmax_j(q . k_j) v_j

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.context(x)
        if self.channel_mul is not None:
            x = x * torch.sigmoid(self.channel_mul(c))[:, :, None, None]
        if self.channel_add is not None:
            x = x + self.channel_add(c)[:, :, None, None]
        return x

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, reduction={self.reduction:g}, hidden={self.hidden}, "
                f"pooling={self.pooling!r}, fusion={self.fusion!r}")
