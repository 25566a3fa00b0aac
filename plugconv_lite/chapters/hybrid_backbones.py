"""The reading page "Hybrid backbones: ViP and HLG" (book/hybrid_backbones.ipynb): two whole-network designs, the
Visual Parser (part tokens, a whole-to-part encoder and a part-to-whole decoder) and the HLG Transformer
(hierarchical local-global attention), read against the token mixers of the part.

Neither design is a library module: they are backbones, not plug-ins. The page reads their token mixing through
two small sketches defined here, each only the attention steps (no position terms, no MLPs, no convolutions), so
that their cost formulas can be checked with the library's FLOP counter and their reach drawn with the part page's
gradient probe:

- ``HLGSketch``: window attention inside k x k windows, one mean token per window, then every position attending to
  the window tokens, the two attentions sharing one set of q / kv / output weights (the HLG layer's token mixing);
- ``ViPSketch``: M learned part tokens attending to every position (whole -> part), then every position attending
  to the M parts (part -> whole).

Both keep the attention contract (B, C, H, W) -> (B, C, H, W), so the part page's helpers measure them like the
registered mixers. They are not registered and no experiment uses them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_int
from ..exercises import exercise, solution


def windows(t: torch.Tensor, k: int, dilated: bool = False) -> torch.Tensor:
    """(B, H, W, C) tokens -> (B, s*s, k*k, C) groups of k x k tokens, s = H / k groups per side.

    Contiguous (HLG's even layers): group (i, j) is the k x k block at rows i k .. i k + k - 1. Dilated (HLG's odd
    layers): group (i, j) holds the tokens at rows i + a s and columns j + b s, a, b in [0, k): k x k tokens spread
    over the whole map, s apart. Groups in raster order of (i, j), tokens in raster order inside a group."""
    B, H, W, C = t.shape
    if H % k or W % k:
        raise ValueError(f"window k={k} must divide the map ({H}x{W})")
    sh, sw = H // k, W // k
    if dilated:
        g = t.reshape(B, k, sh, k, sw, C).permute(0, 2, 4, 1, 3, 5)
    else:
        g = t.reshape(B, sh, k, sw, k, C).permute(0, 1, 3, 2, 4, 5)
    return g.reshape(B, sh * sw, k * k, C)


def unwindows(g: torch.Tensor, H: int, W: int, dilated: bool = False) -> torch.Tensor:
    """The inverse of ``windows``: (B, s*s, k*k, C) -> (B, H, W, C)."""
    B, n, kk, C = g.shape
    k = math.isqrt(kk)
    sh, sw = H // k, W // k
    g = g.reshape(B, sh, sw, k, k, C)
    g = g.permute(0, 3, 1, 4, 2, 5) if dilated else g.permute(0, 1, 3, 2, 4, 5)
    return g.reshape(B, H, W, C)


class _Attend(nn.Module):
    """Multi-head attention of queries from one token set to keys/values from another: q = W_q a, [k, v] = W_kv b,
    out = W_o softmax(q k^T / sqrt(d)) v, through ``F.scaled_dot_product_attention``."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads={heads} must divide channels={channels}")
        self.heads = heads
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        *lead, n, C = a.shape
        m, h = b.shape[-2], self.heads
        q = self.q(a).reshape(*lead, n, h, C // h).transpose(-3, -2)
        k, v = (t.reshape(*lead, m, h, C // h).transpose(-3, -2) for t in self.kv(b).chunk(2, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v).transpose(-3, -2).reshape(*lead, n, C)
        return self.proj(o)


class HLGSketch(nn.Module):
    """The token mixing of one HLG layer (MODULES.md section 40), attention steps only:

        l = w + Attn(LN_0(w), LN_0(w))        w: the k x k windows of x (contiguous or dilated)
        p = mean over each window of l        (B, N / k^2, C): one pooled token per window
        y = l + Attn(LN_1(l), LN_p(p))        every position attends to every window token

    with ONE ``Attn`` (q, kv and output weights) for both steps, as the official layer. Left out: the
    spatial-smoothing convolutions before the windows, the dynamic position bias, the MLP."""

    def __init__(self, channels: int, window: int = 4, heads: int = 1, dilated: bool = False):
        super().__init__()
        self.window = check_int("window", window, min_value=1)
        self.dilated = bool(dilated)
        self.attn = _Attend(check_int("channels", channels, min_value=1), check_int("heads", heads, min_value=1))
        self.norm0, self.norm1, self.norm_p = (nn.LayerNorm(channels) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        w = windows(x.permute(0, 2, 3, 1), self.window, self.dilated)          # (B, n, k*k, C)
        t = self.norm0(w)
        local = w + self.attn(t, t)
        pooled = local.mean(dim=2)                                              # (B, n, C)
        tokens = unwindows(local, H, W, self.dilated).reshape(B, H * W, C)
        y = tokens + self.attn(self.norm1(tokens), self.norm_p(pooled))
        return y.transpose(1, 2).reshape(B, C, H, W)


class ViPSketch(nn.Module):
    """The part-whole attention of one ViP block (MODULES.md section 37), attention steps only:

        P' = P + Attn_e(LN(P), LN(X))        whole -> part: M part tokens (learned) read every position
        Y  = X + Attn_d(LN(X), LN(P'))       part -> whole: every position reads the M parts

    Left out: the parts' position terms, the reasoning step across parts, the FFNs and the decoder's window
    attention. Returns Y as a map; ``parts_out`` keeps P' of the last call (the next block's parts)."""

    def __init__(self, channels: int, parts: int = 8, heads: int = 1):
        super().__init__()
        self.num_parts = check_int("parts", parts, min_value=1)
        self.parts = nn.Parameter(torch.randn(parts, channels) * 0.02)
        self.enc = _Attend(channels, heads)
        self.dec = _Attend(channels, heads)
        self.norm_p, self.norm_x, self.norm_pd, self.norm_xd = (nn.LayerNorm(channels) for _ in range(4))
        self.parts_out = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        X = x.flatten(2).transpose(1, 2)                                        # (B, N, C)
        P = self.parts + X.new_zeros(B, 1, 1)                                  # (B, M, C)
        P = P + self.enc(self.norm_p(P), self.norm_x(X))
        self.parts_out = P
        Y = X + self.dec(self.norm_xd(X), self.norm_pd(P))
        return Y.transpose(1, 2).reshape(B, C, H, W)


def hlg_flops(side: int, channels: int, window: int) -> int:
    """FLOPs (2 x MACs) of ``HLGSketch`` on one side x side map: N = side^2 positions, n = N / k^2 windows,

        local:  q, kv, out projections 4 N C^2;  q k^T and a v  2 N k^2 C
        global: q and out 2 N C^2;  kv of the window tokens 2 n C^2;  q k^T and a v  2 N n C"""
    N, C = side * side, channels
    n = N // window ** 2
    macs = 4 * N * C * C + 2 * N * window ** 2 * C + 2 * N * C * C + 2 * n * C * C + 2 * N * n * C
    return 2 * macs


def vip_flops(side: int, channels: int, parts: int) -> int:
    """FLOPs (2 x MACs) of ``ViPSketch``: N = side^2 positions, M parts,

        encoder: q and out 2 M C^2;  kv of the positions 2 N C^2;  q k^T and a v  2 M N C
        decoder: q and out 2 N C^2;  kv of the parts 2 M C^2;  q k^T and a v  2 N M C"""
    N, C, M = side * side, channels, parts
    return 2 * (4 * M * C * C + 4 * N * C * C + 4 * N * M * C)


def best_window(N: int) -> float:
    """The window side k minimising the attention products' N k^2 + N^2 / k^2 (both halves of an HLG layer): k^4 = N,
    where the two are equal and the sum is 2 N^1.5."""
    return N ** 0.25


def reach(m: nn.Module, side: int = 16, channels: int = 16):
    """The part page's gradient probe on ``m`` with fresh random parameters: |d y[centre] / d x| per input position,
    a (side, side) numpy array (0: not reached)."""
    from .part_tokens import randomised, reach_map
    torch.manual_seed(0)
    return reach_map(randomised(m), side, channels).numpy()


def plot_reach(maps: dict, vmin: float = None, vmax: float = None, width: float = 6.8):
    """One panel per reach map (log10 of the gradient magnitude; white where nothing is reached), the query (the
    centre) marked with a red cross, and how many positions are reached in each title. Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(maps), figsize=(width, 2.5 if len(maps) > 1 else 3.0),
                             layout="constrained", squeeze=False)
    for ax, (name, a) in zip(axes[0], maps.items()):
        logged = np.where(a > 0, np.log10(np.where(a > 0, a, 1.0)), np.nan)
        ax.imshow(logged, cmap="viridis", vmin=vmin, vmax=vmax)
        c = a.shape[0] // 2
        ax.plot(c, c, "r+", ms=8)
        ax.set_title(f"{name}\n{int((a > 0).sum())} of {a.size} reached", fontsize=9)
        ax.set(xticks=[], yticks=[])
    return fig


# ---------------------------------------------------------------------------------------------------- exercises
def _map_cases(g: torch.Generator) -> list[dict]:
    out = []
    for B, C, H, W, k in ((1, 3, 8, 8, 4), (2, 5, 12, 6, 3), (1, 2, 16, 16, 2), (2, 4, 6, 6, 6)):
        out.append({"x": torch.randn(B, C, H, W, generator=g), "k": k})
    return out


@exercise("hlg_dilated_windows", _map_cases, "HLG's dilated windows: (B, C, H, W) -> (B, s_h s_w, k k, C)")
def _dilated_windows_reference(x, k):
    return windows(x.permute(0, 2, 3, 1), k, dilated=True)


@solution("hlg_dilated_windows")
def dilated_windows(x, k):
    B, C, H, W = x.shape
    sh, sw = H // k, W // k
    out = torch.empty(B, sh * sw, k * k, C, dtype=x.dtype)
    for i in range(sh):
        for j in range(sw):
            for a in range(k):
                for b in range(k):
                    out[:, i * sw + j, a * k + b] = x[:, :, i + a * sh, j + b * sw]
    return out


def _pooled_cases(g: torch.Generator) -> list[dict]:
    out = []
    for B, h, H, W, k in ((1, 1, 4, 4, 2), (2, 2, 6, 6, 3), (1, 3, 8, 4, 2)):
        n = (H // k) * (W // k)
        a = torch.softmax(torch.randn(B, h, H * W, n, generator=g), dim=-1)
        out.append({"a": a, "H": H, "W": W, "k": k})
    return out


@exercise("hlg_pooled_to_pixels", _pooled_cases,
          "HLG's global attention over window tokens, spread onto the positions it averages: (B, h, N, n) -> "
          "(B, h, N, N)")
def _pooled_to_pixels_reference(a, H, W, k):
    B, h, N, n = a.shape
    # which positions each window token averages: (n, k^2) indices, then an (n, N) membership matrix / k^2
    idx = windows(torch.arange(N, dtype=a.dtype).reshape(1, H, W, 1), k)[0, :, :, 0].long()
    member = torch.zeros(n, N, dtype=a.dtype).scatter_(1, idx, 1.0)
    return a @ (member / k ** 2)


@solution("hlg_pooled_to_pixels")
def pooled_to_pixels(a, H, W, k):
    B, h, N, n = a.shape
    out = torch.zeros(B, h, N, N, dtype=a.dtype)
    sw = W // k
    for y in range(H):
        for x in range(W):
            win = (y // k) * sw + x // k
            out[..., y * W + x] = a[..., win] / (k * k)
    return out
