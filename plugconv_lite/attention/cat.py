"""CAT: channel and spatial attention combined by learned "colla-factors", with global entropy pooling. Wu, Wang, Sun,
Li, Xu, Wang, Huang: "CAT: Learning to Collaborate Channel and Spatial Attention from Multi-Information Fusion",
IET Computer Vision 2023, arXiv 2212.06335.

A LABELLED RECONSTRUCTION. The paper's abstract states the ideas (trainable coefficients that weigh the channel and
the spatial attention, a global entropy pooling "measuring the information disorder" of a feature map next to
average and max pooling, and an adaptive fusion of the three poolings); no code was released and the exact
equations were not available to us. Everything below that goes beyond those statements is this library's choice,
made CBAM-like where a choice was needed, and is named as such in ``CATModule``'s docstring.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .._validate import bottleneck_width, check_float, check_int, check_layer, check_odd
from ..registry import register


def global_entropy_pool(x: torch.Tensor, dim, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of softmax(x / temperature) along ``dim``: H = -sum p log p with log p = log_softmax.

    Reconstructed GEP. log_softmax never takes log(0) and a constant slice gives p uniform, H = log n exactly, so the
    result is finite for any finite input, in any dtype; it is computed in float32 or float64 (a bf16 sum over 1024 positions
    would lose the digits that separate log 1024 from its neighbours) and returned in ``x``'s dtype. H lies in
    [0, log n] for a slice of n values: log n for a flat slice, near 0 for one dominated by a single value.
    """
    logp = torch.log_softmax((x if x.dtype in (torch.float32, torch.float64) else x.float()) / temperature, dim=dim)
    return -(logp.exp() * logp).sum(dim=dim).to(x.dtype)


@register("cat", "attention", paper="CAT: Learning to Collaborate Channel and Spatial Attention from "
                                      "Multi-Information Fusion", year=2023, arxiv="2212.06335")
class CATModule(nn.Module):
    """y = x * (lambda_c M_c + lambda_s M_s)   (a reconstruction; see the module docstring).

    Channel attention, one shared MLP over three pooled descriptors (B, C) of x:
        z_avg = GAP(x), z_max = GMP(x), z_ent = GEP(x) (entropy of softmax(x / T) over each channel's H W positions)
        M_c = sigmoid(a_1 MLP(z_avg) + a_2 MLP(z_max) + a_3 MLP(z_ent)),  MLP = W2 relu(W1 z + b1) + b2
    Spatial attention, three channel-pooled maps (B, 1, H, W) stacked and convolved:
        M_s = sigmoid(conv_kxk([mean_c x, max_c x, entropy over channels of softmax_c(x / T)]))
    Collaboration: lambda = softmax(theta) (two colla-factors, sum 1); a = softmax(phi) (pooling weights, sum 1);
    theta and phi are learned scalars per module, initialised to 0 (equal weights).

    What is the paper's (abstract): trainable colla-factors that combine a channel and a spatial attention; GEP as a
    third global pooling that measures disorder; the three poolings fused adaptively. What is reconstructed (this
    library's choices): GEP as the entropy of a softmax (over positions for the channel branch, over channels for
    the spatial one); a shared CBAM-style MLP with reduction 16; the softmax normalisation of both sets of weights;
    the parallel combination x * (lambda_c M_c + lambda_s M_s); a 7x7 conv with bias and no BN for the spatial
    map. The spatial branch fuses its three maps through the conv's own weights (a separate scalar per map would be
    redundant with them). The entropy of a softmax depends on the scale of its input: ``temperature`` T (default 1)
    divides the features before it.

    Width rule: C_r = min(C, make_divisible(C / reduction, divisor)), as SE: 8 units for 16 to 128 channels at
    reduction 16, never 0 or 1.
    """

    def __init__(self, channels: int, reduction: float = 16, divisor: int = 8, hidden: Optional[int] = None,
                 kernel_size: int = 7, temperature: float = 1.0, act_layer=nn.ReLU, gate_layer=nn.Sigmoid,
                 device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.channels = C = check_int("channels", channels, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=1)
        self.divisor = check_int("divisor", divisor, min_value=1)
        self.hidden = bottleneck_width(C, self.reduction, self.divisor, hidden)
        self.kernel_size = k = check_odd("kernel_size", kernel_size)
        self.temperature = check_float("temperature", temperature, min_value=0, min_inclusive=False)
        check_layer("act_layer", act_layer, "nn.ReLU")
        check_layer("gate_layer", gate_layer, "nn.Sigmoid")
        self.fc1 = nn.Linear(C, self.hidden, **factory)   # W1, b1 (shared by the three descriptors)
        self.act = act_layer()
        self.fc2 = nn.Linear(self.hidden, C, **factory)   # W2, b2
        self.spatial = nn.Conv2d(3, 1, k, padding=k // 2, **factory)
        self.gate = gate_layer()
        self.phi = nn.Parameter(torch.zeros(3, **factory))     # pooling weights a = softmax(phi)
        self.theta = nn.Parameter(torch.zeros(2, **factory))   # colla-factors lambda = softmax(theta)

    def reset_parameters(self) -> None:
        for m in (self.fc1, self.fc2, self.spatial):
            m.reset_parameters()
        nn.init.zeros_(self.phi)
        nn.init.zeros_(self.theta)

    def channel_descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """(3, B, C): z_avg, z_max, z_ent."""
        z_ent = global_entropy_pool(x.flatten(2), -1, self.temperature)
        return torch.stack((x.mean(dim=(2, 3)), x.amax(dim=(2, 3)), z_ent))

    def spatial_descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W): mean, max and entropy over the channels at each position."""
        return torch.stack((x.mean(dim=1), x.amax(dim=1), global_entropy_pool(x, 1, self.temperature)), dim=1)

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_c, shape (B, C, 1, 1)."""
        e = self.fc2(self.act(self.fc1(self.channel_descriptors(x))))   # (3, B, C)
        a = torch.softmax(self.phi, dim=0)
        return self.gate((a[:, None, None] * e).sum(dim=0))[:, :, None, None]

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_s, shape (B, 1, H, W)."""
        return self.gate(self.spatial(self.spatial_descriptors(x)))

    def colla_factors(self) -> torch.Tensor:
        """(lambda_c, lambda_s), summing to 1."""
        return torch.softmax(self.theta, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.colla_factors()
        return x * (lam[0] * self.channel_attention(x) + lam[1] * self.spatial_attention(x))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, reduction={self.reduction}, hidden={self.hidden}, "
                f"kernel_size={self.kernel_size}, temperature={self.temperature}  (reconstruction: no official code)")
