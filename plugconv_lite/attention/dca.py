"""Connected attention (DCANet): the lookup the model builder uses for ``attn_connect=True``, and the connected forms
of SE, CBAM and GC.

Ma, Guo, Tang, Qiao, Chen, Yang, Fu: "DCANet: Learning Connected Attentions for Convolutional Neural Networks",
ECCV 2020, arXiv 2007.05099 (official code: github.com/13952522076/DCANet, models/resnet/resnet_*_dca.py).

Each attention block of the network reads what the previous one passed on (also across stage boundaries) and fuses
it with its own descriptor before its gate: the paper's f(alpha E_n, beta T_{n-1}). A connected attention module has
the constructor ``(channels, prev_channels, **hparams)`` (``prev_channels``: the width of the attention it connects
to, None for the first block of the network, which has no predecessor and no connection parameters), the class
attribute ``uses_flow = True`` and the forward ``forward(x, flow=None)`` (``models/flow.py``): it reads
``flow.attn`` and replaces it with what it passes on. With ``flow=None`` or ``flow.attn=None`` it is the plain
attention it extends (same parameters, same output).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_int
from .cbam import CBAM
from .gc import GlobalContextBlock, _transform
from .se import SEModule


def _check_prev_channels(prev_channels) -> Optional[int]:
    return None if prev_channels is None else check_int("prev_channels", prev_channels, min_value=1)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")
    return value


class AttentionFusion(nn.Module):
    """The learned fusion of a block's descriptor e with its predecessor's t, both (..., C):

        u = relu(LN_C(alpha e + beta t + b))      (``norm=True``: the official code)
        u = alpha e + beta t + b                   (``norm=False``: the paper's f(alpha E, beta T))

    (alpha, beta) is the official 2 -> 1 1x1 conv over the stacked pair, b its bias (``bias=False`` for CBAM's
    channel gate, as there); LN a LayerNorm over the C channels. ``zero_()`` sets alpha = 1, beta = 0, b = 0: the
    predecessor is cut off (and with ``norm=False`` the fusion is the identity on e).
    """

    def __init__(self, channels: int, bias: bool = True, norm: bool = True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = check_int("channels", channels, min_value=1)
        self.weight = nn.Parameter(torch.empty(2, **factory))  # (alpha, beta)
        self.bias = nn.Parameter(torch.empty(1, **factory)) if bias else None
        self.norm = nn.LayerNorm(channels, **factory) if norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default for the official Conv2d(2, 1, 1): alpha, beta, b ~ U(-1/sqrt(2), 1/sqrt(2))."""
        bound = 2 ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        if self.norm is not None:
            self.norm.reset_parameters()

    @torch.no_grad()
    def zero_(self) -> "AttentionFusion":
        self.weight.copy_(torch.tensor([1.0, 0.0]))
        if self.bias is not None:
            self.bias.zero_()
        return self

    def forward(self, e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        u = self.weight[0] * e + self.weight[1] * t
        if self.bias is not None:
            u = u + self.bias
        return u if self.norm is None else F.relu(self.norm(u))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bias={self.bias is not None}, norm={self.norm is not None}"


def _previous(module: nn.Module, flow) -> Optional[object]:
    """What the predecessor passed on, or None for a first block; a module built without a predecessor refuses one
    (it has no connection parameters)."""
    prev = None if flow is None else flow.attn
    if prev is not None and module.prev_channels is None:
        raise ValueError("this connected attention was built with prev_channels=None (the first block of a "
                         "network) but the flow carries a previous attention: build it with prev_channels")
    return prev


class ConnectedSE(SEModule):
    """DCA-SE (the official CSELayer). With z = GAP(x) (B, C) and t the previous block's passed-on vector:

        first block:  s = SE(z)
        later blocks: s = SE(fuse(z, m(t))),   m(t) = relu(LN(W_m t + b_m)) if C_prev != C else t
        y = x * s;   passed on: z * s (B, C), the recalibrated descriptor (the paper's T_{n-1} E_{n-1})

    ``fuse`` is ``AttentionFusion`` (bias, and LayerNorm + ReLU with ``fusion_norm=True``, the official code;
    ``False`` is the paper's plain weighted sum). ``SE`` is ``SEModule``'s excitation, unchanged: with the
    connection zeroed and ``fusion_norm=False`` the block equals ``SEModule`` with the same weights.
    """
    uses_flow = True

    def __init__(self, channels: int, prev_channels: Optional[int] = None, fusion_norm: bool = True, **kwargs):
        super().__init__(channels, **kwargs)
        self.prev_channels = _check_prev_channels(prev_channels)
        self.fusion_norm = _check_bool("fusion_norm", fusion_norm)
        self.match = self.fusion = None
        if self.prev_channels is not None:
            if self.prev_channels != channels:  # size matching across a stage boundary
                self.match = nn.Sequential(nn.Linear(self.prev_channels, channels), nn.LayerNorm(channels),
                                           nn.ReLU())
            self.fusion = AttentionFusion(channels, bias=True, norm=self.fusion_norm)

    def zero_connection_(self) -> "ConnectedSE":
        if self.fusion is not None:
            self.fusion.zero_()
        return self

    def forward(self, x: torch.Tensor, flow=None) -> torch.Tensor:
        prev = _previous(self, flow)
        z = x.mean(dim=(2, 3))
        e = z if prev is None else self.fusion(z, prev if self.match is None else self.match(prev))
        s = self.excite(e)
        if flow is not None:
            flow.attn = z * s
        return x * s[:, :, None, None]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prev_channels={self.prev_channels}, fusion_norm={self.fusion_norm}"


class ConnectedCBAM(CBAM):
    """DCA-CBAM (the official ChannelGate + SpatialGate pair). The predecessor passes on two maps: its
    channel-refined map x'_{n-1} and its output y_{n-1}. With x'_prev matched to C channels by
    m = relu(BN(1x1 conv)) where the widths differ (at the previous resolution, before pooling):

        channel: M_c = sigmoid(MLP(fuse(Avg x, Avg m(x'_prev))) + MLP(fuse(Max x, Max m(x'_prev))))
        spatial: M_s = sigmoid(BN(f(relu(BN_2(p1 [Avg_c; Max_c](x') + p2 [Avg_c; Max_c](P(y_prev)))))))

    ``fuse`` is one ``AttentionFusion`` without bias shared by both descriptors; P average-pools y_prev to the
    current resolution where it differs; p1 = 1, p2 = 0 at initialisation. ``fusion_norm=False`` drops both
    normalisations (BN_2 + ReLU, LayerNorm + ReLU): with the connection zeroed the block then equals ``CBAM``.
    Passed on: (x', y). Only ``order="channel-spatial"`` (the official order) has a connected form.
    """
    uses_flow = True

    def __init__(self, channels: int, prev_channels: Optional[int] = None, fusion_norm: bool = True, **kwargs):
        super().__init__(channels, **kwargs)
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        if self.order != "channel-spatial":
            raise ValueError(f"order={self.order!r}: the connected CBAM exists for order='channel-spatial' only")
        self.prev_channels = _check_prev_channels(prev_channels)
        self.fusion_norm = _check_bool("fusion_norm", fusion_norm)
        self.match = self.fusion = self.p = self.spatial_fusion_norm = None
        if self.prev_channels is not None:
            if self.prev_channels != channels:
                self.match = nn.Sequential(nn.Conv2d(self.prev_channels, channels, 1, **factory),
                                           nn.BatchNorm2d(channels, **factory), nn.ReLU())
            self.fusion = AttentionFusion(channels, bias=False, norm=self.fusion_norm, **factory)
            self.p = nn.Parameter(torch.tensor([1.0, 0.0], **factory))  # (p1, p2)
            if self.fusion_norm:
                self.spatial_fusion_norm = nn.Sequential(nn.BatchNorm2d(2, **factory), nn.ReLU())

    @torch.no_grad()
    def zero_connection_(self) -> "ConnectedCBAM":
        if self.fusion is not None:
            self.fusion.zero_()
            self.p.copy_(torch.tensor([1.0, 0.0]))
        return self

    def forward(self, x: torch.Tensor, flow=None) -> torch.Tensor:
        prev = _previous(self, flow)
        z = self.channel_descriptors(x)                                  # (2, B, C)
        if prev is not None:
            x_prev, y_prev = prev
            t = x_prev if self.match is None else self.match(x_prev)
            z = self.fusion(z, self.channel_descriptors(t))
        x = x * self.channel_gate(z)                                      # x'
        s = self.spatial_descriptors(x)                                   # (B, 2, H, W)
        if prev is not None:
            if y_prev.shape[-2:] != x.shape[-2:]:
                y_prev = F.adaptive_avg_pool2d(y_prev, x.shape[-2:])
            s = self.p[0] * s + self.p[1] * self.spatial_descriptors(y_prev)
            if self.spatial_fusion_norm is not None:
                s = self.spatial_fusion_norm(s)
        y = x * self.spatial_gate(s)
        if flow is not None:
            flow.attn = (x, y)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prev_channels={self.prev_channels}, fusion_norm={self.fusion_norm}"


class ConnectedGC(GlobalContextBlock):
    """DCA-GC (the official RContextBlock2d). With c the block's context (B, C) and t the previous block's added
    term:

        first block:  a = T(c)
        later blocks: a = T(c + beta m(t)),   m = W_2 relu(LN(W_1 t)) (C_prev -> C_r -> C) if C_prev != C else id
        y_i = x_i + a;   passed on: a (B, C)

    T is ``GlobalContextBlock``'s add transform, unchanged; beta a scalar that starts at 0 (as the official
    ``weight``), so a connected GC block starts as the plain one and equals it whenever beta = 0. No normalisation
    in this fusion. Only ``fusion="add"`` (the official) has a connected form.
    """
    uses_flow = True

    def __init__(self, channels: int, prev_channels: Optional[int] = None, **kwargs):
        super().__init__(channels, **kwargs)
        factory = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        if self.fusion != "add":
            raise ValueError(f"fusion={self.fusion!r}: the connected GC block exists for fusion='add' only")
        self.prev_channels = _check_prev_channels(prev_channels)
        self.match = self.beta = None
        if self.prev_channels is not None:
            if self.prev_channels != channels:
                self.match = _transform(self.prev_channels, self.hidden, nn.ReLU, factory, C_out=channels)
            self.beta = nn.Parameter(torch.zeros(1, **factory))

    @torch.no_grad()
    def zero_connection_(self) -> "ConnectedGC":
        if self.beta is not None:
            self.beta.zero_()
        return self

    def forward(self, x: torch.Tensor, flow=None) -> torch.Tensor:
        prev = _previous(self, flow)
        c = self.context(x)
        if prev is not None:
            c = c + self.beta * (prev if self.match is None else self.match(prev))
        a = self.channel_add(c)
        if flow is not None:
            flow.attn = a
        return x + a[:, :, None, None]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prev_channels={self.prev_channels}"


_CONNECTED: dict[str, Callable[..., nn.Module]] = {  # attention name -> its connected form
    "se": ConnectedSE, "cbam": ConnectedCBAM, "gc": ConnectedGC}


def connected_form(attn) -> Callable[..., nn.Module]:
    """The connected form of the attention ``attn`` (a registry name), or ``attn`` itself if it is already a
    connected attention class."""
    if getattr(attn, "uses_flow", False):
        return attn
    if isinstance(attn, str) and attn in _CONNECTED:
        return _CONNECTED[attn]
    raise ValueError(f"attn={attn!r} has no connected form for attn_connect=True; one of {sorted(_CONNECTED)}")
