"""Dual attention: position attention (PAM) and channel attention (CAM). Fu, Liu, Tian, Li, Bao, Fang, Lu: "Dual
Attention Network for Scene Segmentation", CVPR 2019, arXiv 1809.02983 (official code: github.com/junfu1115/DANet,
``encoding/nn/da_att.py``).

PAM lets every position attend to every other position (a SAGAN-style self-attention over the H x W pixels, so its
attention matrix is (HW) x (HW)); CAM lets every channel attend to every other channel through their Gram matrix.
Each adds its result to the input through a scalar ``gamma`` that starts at 0, so a freshly built module is the
identity. DANet puts both on the last feature map of a segmentation network (1/8 of the image); in a CIFAR ResNet
PAM is affordable only on the small maps of the late stages, which ``from_site`` chooses (``max_resolution``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import bottleneck_width, check_choice, check_float, check_int
from ..registry import register

_DANET = dict(paper="Dual Attention Network for Scene Segmentation", year=2019, arxiv="1809.02983",
              url="https://github.com/junfu1115/DANet")


def _decline(site, max_resolution: Optional[int]) -> bool:
    """True where the site's map is known to be larger than ``max_resolution`` (the module is not built there)."""
    if max_resolution is not None:
        check_int("max_resolution", max_resolution, min_value=1)
    return max_resolution is not None and site.resolution is not None and site.resolution > max_resolution


@register("pam", "attention", **_DANET)
class PositionAttention(nn.Module):
    """y = x + gamma * out,  out = V S^T,  S = softmax(Q^T K)  (the paper's position attention module).

    Shapes, with N = H W: x (B, C, H, W); Q = W_q x + b_q and K = W_k x + b_k, (B, d, N); V = W_v x + b_v, (B, C, N)
    (1x1 convolutions); S (B, N, N), softmax over its last axis, S[i, j] = how much position i draws from position
    j; out (B, C, N) reshaped to (B, C, H, W). There is no 1/sqrt(d) scaling (neither the paper nor the code has
    one). gamma is a scalar initialised to 0.

    Width rule: d = min(C, make_divisible(C / reduction, divisor)). The official code uses C // 8, which is 0 below
    8 channels (the module then crashes) and 2 for a 16-channel layer; rounding to a multiple of ``divisor`` gives
    d = 8 from 8 to 64 channels (the official value at 64) and C / 8 above, and d = C under 8 channels.

    ``fused=True`` computes softmax(Q^T K) V with ``F.scaled_dot_product_attention`` (scale 1), which dispatches to
    a fused kernel where the backend has one; ``fused=False`` is the explicit matrix product, which is also what
    ``attention(x)`` returns for plotting. Both need O(N^2) arithmetic; only the explicit path always stores the
    N x N matrix (a fused kernel does not, where it applies: on a CPU d != C rules it out).

    ``from_site(site, max_resolution=8)`` declines plug sites whose map is larger than ``max_resolution`` (the
    block then keeps no attention there): the N x N matrix costs 4 N^2 bytes per image, 4 MB at 32 x 32.
    """

    def __init__(self, channels: int, reduction: float = 8, divisor: int = 8, qk_channels: Optional[int] = None,
                 fused: bool = True, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.channels = C = check_int("channels", channels, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=1)
        self.divisor = check_int("divisor", divisor, min_value=1)
        self.qk_channels = d = bottleneck_width(C, self.reduction, self.divisor, qk_channels, "qk_channels")
        self.fused = bool(fused)
        self.query = nn.Conv2d(C, d, 1, **factory)   # W_q, b_q
        self.key = nn.Conv2d(C, d, 1, **factory)     # W_k, b_k
        self.value = nn.Conv2d(C, C, 1, **factory)   # W_v, b_v
        self.gamma = nn.Parameter(torch.zeros(1, **factory))

    @classmethod
    def from_site(cls, site, max_resolution: Optional[int] = 8, **kw):
        """The module for a plug site, or None (declined) where its map is larger than ``max_resolution``;
        ``max_resolution=None`` builds it everywhere."""
        return None if _decline(site, max_resolution) else cls(site.out_channels, **kw)

    def reset_parameters(self) -> None:
        """PyTorch's default 1x1-conv initialisation (as the official code) and gamma = 0 (the identity)."""
        for conv in (self.query, self.key, self.value):
            conv.reset_parameters()
        nn.init.zeros_(self.gamma)

    def _qkv(self, x: torch.Tensor):
        # (B, N, d), (B, N, d), (B, N, C): positions are the tokens
        q, k, v = (f(x).flatten(2).transpose(1, 2) for f in (self.query, self.key, self.value))
        return q, k, v

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """S = softmax(Q^T K), shape (B, N, N); row i is the distribution position i attends with."""
        q, k, _ = self._qkv(x)
        return torch.softmax(q @ k.transpose(1, 2), dim=-1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """out = V S^T, reshaped to (B, C, H, W) (what gamma scales)."""
        B, C, H, W = x.shape
        q, k, v = self._qkv(x)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        else:
            out = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
        return out.transpose(1, 2).reshape(B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.context(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, qk_channels={self.qk_channels}, fused={self.fused}"


@register("cam", "attention", **_DANET)
class ChannelAttention(nn.Module):
    """y = x + gamma * out,  out = S X,  S = softmax(-E) (default) or softmax(E),  E = X X^T.

    Shapes: X = x reshaped to (B, C, N), N = H W; E (B, C, C), the channels' Gram matrix; S (B, C, C), softmax
    over its last axis; out (B, C, N) reshaped to (B, C, H, W). No parameters except the scalar gamma (init 0).

    ``attend_to`` chooses the sign, the one place where the paper and its code differ:

    * ``"dissimilar"`` (default, the official code): S = softmax(max_j E_ij - E_ij). Softmax is unchanged by
      adding a constant to a row, so this is softmax(-E): channel i draws most from the channels LEAST similar to
      it. Every released DANet result was produced this way, which is why it is the default here.
    * ``"similar"`` (the paper's equation): S = softmax(E), channel i draws most from the channels most similar
      to it (usually itself: E_ii = |x_i|^2 tends to dominate its row).

    CAM is attention with channels as tokens and their N values as features, q = k = v = X and scale -1 or +1.
    ``fused=True`` sends it through ``F.scaled_dot_product_attention``; the default is the explicit matrix
    product, because the head dimension is N = H W (1024 at 32x32), beyond what fused kernels take, and the
    generic path measured 13-16% slower than the official code's explicit product on a CPU (forward + backward,
    batch 32, 64 channels, 32x32), where the explicit product is on par. Both compute the same.
    """

    def __init__(self, channels: int, attend_to: str = "dissimilar", fused: bool = False, device=None, dtype=None):
        super().__init__()
        self.channels = check_int("channels", channels, min_value=1)
        check_choice("attend_to", attend_to, ("dissimilar", "similar"))
        self.attend_to = attend_to
        self.fused = bool(fused)
        self.gamma = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.gamma)

    @property
    def _sign(self) -> float:
        return -1.0 if self.attend_to == "dissimilar" else 1.0

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """S, shape (B, C, C); row i is the distribution channel i attends with."""
        X = x.flatten(2)
        return torch.softmax(self._sign * (X @ X.transpose(1, 2)), dim=-1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """out = S X, reshaped to (B, C, H, W) (what gamma scales)."""
        B, C, H, W = x.shape
        X = x.reshape(B, 1, C, H * W)  # one head; the C channels are the tokens
        if self.fused:
            out = F.scaled_dot_product_attention(X, X, X, scale=self._sign)
        else:
            out = torch.softmax(self._sign * (X @ X.transpose(-1, -2)), dim=-1) @ X
        return out.reshape(B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.context(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, attend_to={self.attend_to!r}, fused={self.fused}"


@register("danet", "attention", **_DANET)
class DualAttention(nn.Module):
    """y = x + gamma_P * PAM_out(x) + gamma_C * CAM_out(x): position and channel attention side by side.

    The DANet head runs PAM and CAM on two parallel branches (each between its own 3x3 conv + BN + ReLU layers) and
    sums the branches. As a plug-in without those convolutions, the two attention terms are added to one shared
    identity, so the module is the identity at initialisation (gamma_P = gamma_C = 0), as PAM and CAM alone are.
    ``pam_kw`` / ``cam_kw`` go to the two halves (e.g. ``cam_kw={"attend_to": "similar"}``); ``from_site`` declines
    maps larger than ``max_resolution`` (default 8), for PAM's sake.
    """

    def __init__(self, channels: int, pam_kw: Optional[dict] = None, cam_kw: Optional[dict] = None, device=None,
                 dtype=None):
        super().__init__()
        self.channels = check_int("channels", channels, min_value=1)
        for name, kw in (("pam_kw", pam_kw), ("cam_kw", cam_kw)):
            if kw is not None and not isinstance(kw, dict):
                raise ValueError(f"{name}={kw!r} must be a dict of keyword arguments or None")
        self.pam = PositionAttention(channels, **(pam_kw or {}), device=device, dtype=dtype)
        self.cam = ChannelAttention(channels, **(cam_kw or {}), device=device, dtype=dtype)

    @classmethod
    def from_site(cls, site, max_resolution: Optional[int] = 8, **kw):
        """As ``PositionAttention.from_site``: None (declined) where the map is larger than ``max_resolution``."""
        return None if _decline(site, max_resolution) else cls(site.out_channels, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pam.gamma * self.pam.context(x) + self.cam.gamma * self.cam.context(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
