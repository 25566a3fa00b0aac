"""DCDC, as a LABELLED RECONSTRUCTION. Yan, Qin, Liu, Chen: "Dual Complementary Dynamic Convolution for Image
Recognition", arXiv 2211.06163, 2022.

No code and, to this book's knowledge, no equations of DCDC are public. What the abstract states: scene features are
modelled as local spatial-adaptive parts (owned by each sample) plus global shift-invariant parts, handled by a
two-branch operator that replaces a vanilla convolution. What secondary summaries add: the local branch predicts a
kernel per position (involution-like, shared within channel groups), the global branch a kernel per sample shared
over all positions (dynamic-convolution-like, from the pooled input), and the two outputs are summed.

Everything else here is this book's choice, not the paper's: the local branch is an involution (Li et al., CVPR
2021) followed by a 1x1 channel mix, the global branch is a DY-CNN-style softmax attention over K kernels (Chen et
al., CVPR 2020) with its annealed temperature, and all widths and defaults are assumptions.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_float, check_int, make_divisible
from ..registry import register
from ._dynamic import AnnealedTemperature, per_sample_conv
from ._init import check_weight_init, init_bias, init_weight
from .base import ConvBase


@register("dcdc", "conv", paper="Dual Complementary Dynamic Convolution for Image Recognition (book's reconstruction)",
          year=2022, arxiv="2211.06163")
class DCDCConv2d(AnnealedTemperature, ConvBase):
    """y = LSA(x) + GSI(x) (+ bias): a reconstruction of DCDC from its abstract, NOT the paper's published method.

    **GSI, global shift-invariant** (one kernel per sample, the same at every position)::

        GSI(x)_b = conv2d(x_b, W(x_b)),   W(x_b) = sum_k pi_k(x_b) W_k,   pi = softmax(z / T),
        z = W_z2 relu(W_z1 GAP(x_b)) + b_z2

    W_k (O, C/g, kh, kw), K = ``num_kernels`` of them, stacked in ``weight`` as (K O, C/g, kh, kw): a 4-D
    parameter, so that ``model.to(memory_format=torch.channels_last)`` (what the trainer does) can convert it, where
    a 5-D one raises. W_z1 (C_h, C), W_z2 (K, C_h); pi (B, K). The per-sample kernels go through
    ``per_sample_conv`` (the batch folded into the groups of one convolution).

    **LSA, local spatial-adaptive** (one kernel per position and channel group, shared by the group's channels)::

        A[b, c, p] = sum_t H[b, c // (C/G), t, p] x[b, c, s p + d t - pad],   LSA(x) = W_v A   (1x1, C -> O)
        H = W_h2 relu(W_h1 x_center)   (B, G, kh kw, H' W')

    x_center (B, C, H', W') is the input at the centre tap of every output window (x itself at stride 1 with same
    padding; the strided samples at stride 2), so H is defined on exactly the conv's output grid. W_h1 (C_r, C)
    with C_r = make_divisible(C / ``reduction``, 8) (16 for C = 64; 8, never fewer, for C <= 32); W_h2 (G kh kw,
    C_r); W_v (O, C/g) honours ``groups``. G = C / gcd(C, ``group_channels``): 16 channels share a kernel where C
    allows (G = 4 for C = 64). The per-position weighted sum is element-wise work: FLOP counters (which count
    convs and matrix products) do not see its 2 C kh kw H' W' FLOPs, a fraction g / O of the GSI conv's.

    No normalisation in either generator: each sample's kernels depend on that sample only, in training too (a
    BatchNorm would mix the batch), so every sample's output equals its output computed alone.

    ``load_conv_weights(weight)`` sets every W_k to ``weight`` and W_v to 0: the module then computes that plain
    convolution (the softmax weights sum to 1) and the LSA branch starts silent.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, num_kernels: int = 4, reduction: float = 4,
                 group_channels: int = 16, temperature: float = 30.0, anneal: float = 0.1,
                 weight_init: str = "fan_out", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.num_kernels = K = check_int("num_kernels", num_kernels, min_value=1)
        self.reduction = check_float("reduction", reduction, min_value=1.0)
        self.group_channels = check_int("group_channels", group_channels, min_value=1)
        self.weight_init = check_weight_init(weight_init)
        C, O, g = self.in_channels, self.out_channels, self.groups
        kk = self.kernel_size[0] * self.kernel_size[1]
        self.lsa_groups = G = C // math.gcd(C, self.group_channels)
        self.hidden = make_divisible(C / self.reduction, 8)
        fk = dict(device=device, dtype=dtype)
        # GSI: the kernel bank and its attention
        self.weight = nn.Parameter(torch.empty(K * O, C // g, *self.kernel_size, **fk))      # W_1 ... W_K
        self.attn1 = nn.Linear(C, self.hidden, bias=False, **fk)                              # W_z1
        self.attn2 = nn.Linear(self.hidden, K, **fk)                                          # W_z2, b_z2
        # LSA: the per-position kernel generator and the channel mix
        self.gen1 = nn.Conv2d(C, self.hidden, 1, **fk)                                        # W_h1
        self.gen2 = nn.Conv2d(self.hidden, G * kk, 1, **fk)                                   # W_h2
        self.mix = nn.Conv2d(C, O, 1, groups=g, bias=False, **fk)                             # W_v
        self.bias = nn.Parameter(torch.empty(O, **fk)) if self.use_bias else None
        self._init_temperature(temperature, anneal, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        O = self.out_channels
        for k in range(self.num_kernels):  # one fan per kernel of the bank, as if each were its own conv
            init_weight(self.weight[k * O:(k + 1) * O], self.weight_init)
        for fc in (self.attn1, self.attn2):
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.attn2.bias)
        for m in (self.gen1, self.gen2, self.mix):
            m.reset_parameters()
        if self.bias is not None:
            init_bias(self.bias, self.weight[:self.out_channels])

    # --- GSI ----------------------------------------------------------------------------------------------------
    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """pi = softmax(z / T), shape (B, K): the weights of the kernel bank for every sample."""
        z = self.attn2(F.relu(self.attn1(x.mean(dim=(2, 3)))))
        return torch.softmax(z / self.T, dim=1)

    def gsi_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """W(x_b) = sum_k pi_k W_k, shape (B, O, C/g, kh, kw); a matrix product (2 B K O (C/g) kh kw FLOPs)."""
        pi = self.attention(x)
        W = pi @ self.weight.reshape(self.num_kernels, -1)
        return W.reshape(x.shape[0], self.out_channels, *self.weight.shape[1:])

    def gsi(self, x: torch.Tensor) -> torch.Tensor:
        return per_sample_conv(x, self.gsi_kernel(x), None, self.stride, self.padding, self.dilation, self.groups)

    # --- LSA ----------------------------------------------------------------------------------------------------
    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x under tap t of every output window, for t = 0 ... kh kw - 1: kh kw strided views (B, C, H', W') of the
        zero-padded input (no unfold: im2col copies kh kw times the input and was ~10x slower on a CPU)."""
        H, W = x.shape[-2:]
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        Ho, Wo = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        xp = F.pad(x, (pw, pw, ph, ph))
        return [xp[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh, j * dw:j * dw + sw * (Wo - 1) + 1:sw]
                for i in range(kh) for j in range(kw)]

    def _lsa_kernel(self, centre: torch.Tensor) -> torch.Tensor:
        B, _, Ho, Wo = centre.shape
        kk = self.kernel_size[0] * self.kernel_size[1]
        return self.gen2(F.relu(self.gen1(centre))).reshape(B, self.lsa_groups, kk, Ho, Wo)

    def lsa_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """H, the kernel of every output position and channel group: (B, G, kh kw, H', W')."""
        taps = self._taps(x)
        return self._lsa_kernel(taps[len(taps) // 2])

    def lsa(self, x: torch.Tensor) -> torch.Tensor:
        taps = self._taps(x)
        B, C, Ho, Wo = taps[0].shape
        G = self.lsa_groups
        Hk = self._lsa_kernel(taps[len(taps) // 2]).unsqueeze(2)     # (B, G, 1, kh kw, H', W')
        # A[b, c, p] = sum_t x_t[b, c, p] H[b, g(c), t, p], tap by tap: element-wise work, which FLOP counters do
        # not see (2 C kh kw H' W' FLOPs; a batched matmul that they would see was ~15x slower on a CPU)
        A = taps[0].reshape(B, G, C // G, Ho, Wo) * Hk[:, :, :, 0]
        for t in range(1, len(taps)):
            A = torch.addcmul(A, taps[t].reshape(B, G, C // G, Ho, Wo), Hk[:, :, :, t])
        return self.mix(A.reshape(B, C, Ho, Wo))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gsi(x) + self.lsa(x)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y

    @torch.no_grad()
    def load_conv_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "DCDCConv2d":
        """Compute exactly the plain conv with ``weight``: every W_k = weight (the softmax weights sum to 1, so
        W(x) = weight for every sample, to rounding) and W_v = 0 (the LSA branch contributes nothing)."""
        self.check_conv_weights(weight, bias)
        self.weight.copy_(weight.repeat(self.num_kernels, 1, 1, 1))
        self.mix.weight.zero_()
        if bias is not None:
            self.bias.copy_(bias)
        return self

    def hparams_repr(self) -> str:
        s = (f"num_kernels={self.num_kernels}, lsa_groups={self.lsa_groups}, hidden={self.hidden}, "
             f"{self.schedule_repr()}")
        return s if self.weight_init == "fan_out" else f"{s}, weight_init={self.weight_init!r}"
