"""FCViT's token mixer: a query-irrelevant global context plus convolutions. Ma, Wang, Qin, Li, Zhao, Fu, Fu: "A Close
Look at Spatial Modeling: From Attention to Convolution", arXiv 2212.12552 (official code: github.com/ma-xu/FCViT,
models/fcvit.py, ``GlobalContext`` and ``TokenMixer``).

The paper observes that a vision transformer's attention maps in deep layers look almost the same for every query:
the "query-irrelevant" behaviour. So it computes one global context per image (the mean token) instead of a map per
query, lets every position weigh that context by its similarity to it (a scalar per position and head), and leaves
local mixing to large depthwise convolutions. Everything is linear in the number of positions.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_float, check_int
from ..registry import register


class GlobalContext(nn.Module):
    """GC(x)[b, (k, j), n] = s[b, k, n] * v[b, (k, j)]: the global context v (one vector per image) placed at every
    position n, scaled per head k by the position's standardised similarity to the mean token:

        g = mean_n x_n                                        (B, C)
        s[b, k, n] = (x_n^k . g^k) / sqrt(d)                  per head k, d = C / heads
        s <- gamma_k (s - mean_{k,n} s) / (std_{k,n} s + eps) + beta_k   standardised over heads AND positions
        v = W_2 max(split_2(W_1 g))                           "compete": a maxout bottleneck, C -> 2 C / r -> C / r -> C
                                                              (compete=False: W_2 GELU(W_1 g), C -> C / r -> C)

    ``std`` is torch's unbiased estimate (as the official code). Linear in the number of positions: one vector g,
    one dot product per position and head.
    """

    def __init__(self, channels: int, heads: int = 8, reduction: int = 8, compete: bool = True, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        self.heads = check_int("heads", heads, min_value=1)
        if C % heads:
            raise ValueError(f"heads={heads} must divide channels={C}")
        self.reduction = check_int("reduction", reduction, min_value=1)
        hidden = C // reduction
        if hidden < 1:
            raise ValueError(f"reduction={reduction} leaves no hidden unit at channels={C} (C // reduction >= 1)")
        self.compete, self.eps = bool(compete), check_float("eps", eps, min_value=0)
        self.fc1 = nn.Linear(C, (2 if compete else 1) * hidden, **factory)
        self.fc2 = nn.Linear(hidden, C, **factory)
        self.rescale_weight = nn.Parameter(torch.ones(heads, **factory))
        self.rescale_bias = nn.Parameter(torch.zeros(heads, **factory))

    def context(self, g: torch.Tensor) -> torch.Tensor:
        """v from the mean token g, (B, C) -> (B, C)."""
        h = self.fc1(g)
        h = h.reshape(g.shape[0], 2, -1).amax(dim=1) if self.compete else F.gelu(h)
        return self.fc2(h)

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """The standardised, rescaled similarities s, (B, heads, H, W)."""
        B, C, H, W = x.shape
        t = x.reshape(B, self.heads, C // self.heads, H * W)
        g = t.mean(dim=-1)                                               # (B, h, d)
        s = torch.einsum("bhdn,bhd->bhn", t, g) * (C // self.heads) ** -0.5
        std, mean = torch.std_mean(s, dim=(1, 2), keepdim=True)
        s = (s - mean) / (std + self.eps)
        s = s * self.rescale_weight[:, None] + self.rescale_bias[:, None]
        return s.reshape(B, self.heads, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        v = self.context(x.mean(dim=(2, 3))).reshape(B, self.heads, C // self.heads, 1, 1)
        return (self.similarity(x)[:, :, None] * v).reshape(B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, reduction={self.reduction}, compete={self.compete}"


@register("fcvit", "attention", paper="A Close Look at Spatial Modeling: From Attention to Convolution", year=2022,
          arxiv="2212.12552", url="https://github.com/ma-xu/FCViT")
class FCViTMixer(nn.Module):
    """y = x + ls * M(GN(x)), the token-mixer half of an FCViT block, with M (the released models' setting):

        z = t + GC_1(t);  z = GELU(FC_1(DW_{k_1}(z)))       t = GN(x): GroupNorm with one group
        z = z + GC_2(z);  M = GELU(FC_2(DW_{k_2}(z)))       FC = 1x1 C -> max(C / fc_factor, fc_min), GELU, 1x1 -> C

    DW_k: depthwise k x k with bias; ``ls``: a per-channel layer scale starting at ``layer_scale`` (1e-5 in the
    released classification models: the module starts as almost the identity). The released models use
    k_1 = k_2 = 11, no spatial and no channel attention (the class defaults in the official file differ: 5 / 7 with
    both attentions on; MODULES.md). The attention contract: shape in = shape out.
    """

    def __init__(self, channels: int, heads: int = 8, gc_reduction: int = 8, compete: bool = True,
                 kernel_sizes=(11, 11), fc_factor: int = 8, fc_min: int = 16, layer_scale: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = C = check_int("channels", channels, min_value=1)
        if isinstance(kernel_sizes, int) or len(kernel_sizes) != 2:
            raise ValueError(f"kernel_sizes={kernel_sizes!r} must be two kernel sizes (one per mixing round)")
        self.kernel_sizes = tuple(check_int(f"kernel_sizes[{i}]", k, min_value=1) for i, k in enumerate(kernel_sizes))
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes={kernel_sizes!r} must be odd (padding k // 2 keeps the map size)")
        check_int("fc_factor", fc_factor, min_value=1)
        hidden = max(C // fc_factor, check_int("fc_min", fc_min, min_value=1))
        self.norm = nn.GroupNorm(1, C, **factory)
        self.gc = nn.ModuleList(GlobalContext(C, heads, gc_reduction, compete, **factory) for _ in range(2))
        self.dw = nn.ModuleList(nn.Conv2d(C, C, k, padding=k // 2, groups=C, **factory) for k in self.kernel_sizes)
        self.fc = nn.ModuleList(nn.Sequential(nn.Conv2d(C, hidden, 1, **factory), nn.GELU(),
                                              nn.Conv2d(hidden, C, 1, **factory)) for _ in range(2))
        self.layer_scale = nn.Parameter(torch.full((C,), check_float("layer_scale", layer_scale), **factory))

    @classmethod
    def from_site(cls, site, kernel_sizes=(11, 11), clip_to_map: bool = True, **kw) -> "FCViTMixer":
        """For a backbone's plug point (``mixer=`` or ``attn=``): with ``clip_to_map`` each kernel is clipped to
        ``2 * site.resolution - 1``, the widest kernel whose every tap reaches a pixel of the map from some output
        position. On an H x H map with padding k // 2 a tap at offset o from the centre reads a pixel only if
        |o| <= H - 1, so the taps beyond it multiply zero padding at every position: clipping them removes dead
        weights and counted FLOPs and leaves the function class unchanged (the clipped mixer computes what the
        full one does with those taps at any value). The released 11 x 11 stays on 8 x 8 and larger maps and
        becomes 7 x 7 on 4 x 4. The rule is set for the site's map (a 32 x 32 image); a larger input would see
        the clipped kernel's shorter reach."""
        if not isinstance(clip_to_map, bool):
            raise ValueError(f"clip_to_map={clip_to_map!r} must be True or False")
        if clip_to_map and site.resolution is not None and not isinstance(kernel_sizes, int):
            kernel_sizes = tuple(min(k, 2 * site.resolution - 1) if isinstance(k, int) else k
                                 for k in kernel_sizes)
        return cls(site.out_channels, kernel_sizes=kernel_sizes, **kw)

    def mixer(self, t: torch.Tensor) -> torch.Tensor:
        """M(t), the token mixer on a normalised map."""
        for gc, dw, fc in zip(self.gc, self.dw, self.fc):
            t = F.gelu(fc(dw(t + gc(t))))
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale[:, None, None] * self.mixer(self.norm(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_sizes={self.kernel_sizes}"
