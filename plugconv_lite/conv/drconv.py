"""DRConv. Chen, Wang, Guo, Zhang, Sun: "Dynamic Region-Aware Convolution", CVPR 2021, arXiv 2003.12243.

A convolution with m kernels instead of one. A guide convolution splits the output map into m regions (at every
pixel, the argmax over m guide channels), and every region is convolved with its own kernel, generated per sample
from the input's pooled features. The argmax has no gradient; the paper (and the official CUDA op) passes the
gradient of the one-hot mask to the guide's softmax instead, so the guide learns where the regions go.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_int
from ..registry import register
from .base import ConvBase


def region_mask(F_guide: torch.Tensor) -> torch.Tensor:
    """The guided mask M with the paper's straight-through gradient, from the guided feature (B, m, H, W).

    Forward: M = one_hot(argmax_j F_j), exactly 0 or 1 (``onehot + (A - A)``: a - a is exactly 0 in IEEE
    arithmetic). Backward: dL/dA = dL/dM with A = softmax_j(F), i.e. the one-hot mask is differentiated as if it
    were its softmax (the paper's eq. for the backward pass; the official op's ``grad_Alpha``). The detached term
    contributes nothing to the gradient of whatever M multiplies, so the region outputs get the gradient of the
    hard mask only (the official op's default, ``use_alpha=False``)."""
    A = F_guide.softmax(dim=1)
    onehot = torch.zeros_like(A).scatter_(1, F_guide.argmax(dim=1, keepdim=True), 1.0)
    return onehot + (A - A.detach())


@register("drconv", "conv", paper="Dynamic Region-Aware Convolution", year=2021, arxiv="2003.12243")
class DRConv2d(ConvBase):
    """Y[b, :, p] = W_{b, M[b, p]} * X[b, :, N(p)] + bias,   M[b, p] = argmax_j F[b, j, p],   F = guide(X).

    Shapes (m regions, n basis kernels, groups g): the guide, a k x k conv C -> m with the layer's stride, padding
    and dilation, gives the guided feature F (B, m, H', W') at the output's resolution; M (B, H', W') in 0..m-1.
    The filter generator, as the official code computes it: a = 2 sigmoid(fc(GAP(X))) / n, shape (B, m, n), and
    W_{b, j} = sum_s a[b, j, s] basis[s], so each region's kernel (O, C/g, k, k) is a per-sample mixture of n
    shared basis kernels (CondConv-style). The paper describes the generator instead as adaptive pooling to
    k x k and two 1x1 convs that output the kernels directly; see the chapter's departures.

    Compute: without a custom kernel, every region's kernel is applied at every pixel (one grouped conv with
    m x O filters per sample, the batch folded into the groups) and the mask selects one result per pixel: m times
    the FLOPs of the plain conv. The backward pass needs all m results anyway (the guide's gradient at pixel p is
    <dL/dY_p, W_j X_p> for every j). ``region_map(x)`` returns M.

    Defaults are the official code's (``groups_num=8, num_W=8``). ``load_conv_weights`` makes it compute a plain
    conv exactly: every basis kernel = the plain kernel and the generator's weights zero, so every region's
    kernel is the plain one whatever the mask. Init as the official code: basis U(-b, b), b = sqrt(6 / (C/g k k));
    generator weights N(0, 0.01), biases zero; the guide has ``nn.Conv2d``'s default init and no bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, regions: int = 8, num_bases: int = 8, device=None,
                 dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.regions = check_int("regions", regions, min_value=1)
        self.num_bases = check_int("num_bases", num_bases, min_value=1)
        dd = dict(device=device, dtype=dtype)
        C, O, g = self.in_channels, self.out_channels, self.groups
        self.guide = nn.Conv2d(C, regions, self.kernel_size, self.stride, self.padding, self.dilation, bias=False,
                               **dd)
        self.generator = nn.Linear(C, regions * num_bases, **dd)
        # the n basis kernels stacked as one 4-D conv weight (n O, C/g, k, k): a module holding a 5-D parameter
        # cannot be converted with .to(memory_format=torch.channels_last), as the trainer does
        self.basis = nn.Parameter(torch.empty(num_bases * O, C // g, *self.kernel_size, **dd))
        self.bias = nn.Parameter(torch.empty(O, **dd)) if self.use_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        b = math.sqrt(6.0 / self.basis[0, 0].numel())  # He-uniform over the fan-in C/g * k * k (official)
        nn.init.uniform_(self.basis, -b, b)
        nn.init.normal_(self.generator.weight, 0.0, 0.01)
        nn.init.zeros_(self.generator.bias)
        self.guide.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's mixing weights a = 2 sigmoid(fc(GAP(x))) / n, shape (B, m, n)."""
        a = 2.0 * torch.sigmoid(self.generator(x.mean(dim=(2, 3)))) / self.num_bases
        return a.reshape(x.shape[0], self.regions, self.num_bases)

    def region_kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The generated kernels W (B, m, O, C/g, k, k): per sample, m mixtures of the n basis kernels. (The forward
        pass never builds them; see ``forward``.)"""
        V = self.basis.reshape(self.num_bases, self.out_channels, *self.basis.shape[1:])
        return torch.einsum("bjs,s...->bj...", self.routing(x), V)

    def region_map(self, x: torch.Tensor) -> torch.Tensor:
        """The guided mask M (B, H', W'): the region (0 ... m-1) whose kernel computes each output pixel."""
        return self.guide(x).argmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Y_p = W_{M_p} X_p = sum_s a[M_p, s] (basis_s * X)_p: convolution is linear in the kernel, so the n basis
        # convolutions Z_s are computed once for the whole batch (one ordinary conv with n x O filters, no per-sample
        # kernels) and mixed per pixel with c[s, p] = sum_j M[j, p] a[j, s]. Gradients are those of the per-pixel
        # form: through M's straight-through term the guide gets <dL/dY_p, W_j X_p> for every region j.
        n, O, g = self.num_bases, self.out_channels, self.groups
        basis = self.basis
        if g > 1:  # group i of the conv must hold every basis kernel's filters of output group i
            basis = basis.reshape(n, g, O // g, *basis.shape[1:]).transpose(0, 1).reshape(n * O, *basis.shape[1:])
        Z = F.conv2d(x, basis, None, self.stride, self.padding, self.dilation, g)
        B, _, H, W = Z.shape
        Z = Z.reshape(B, g, n, O // g, H, W).transpose(1, 2) if g > 1 else Z
        M = region_mask(self.guide(x))                       # (B, m, H', W'), one-hot in the forward pass
        c = torch.einsum("bjhw,bjs->bshw", M, self.routing(x).to(M.dtype))
        y = (Z.reshape(B, n, O, H, W) * c.unsqueeze(2).to(Z.dtype)).sum(dim=1)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    @torch.no_grad()
    def load_conv_weights(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> "DRConv2d":
        """Compute the plain conv with ``weight`` exactly: a = 2 sigmoid(0) / n = 1/n, so every region's kernel
        is the mean of n copies of ``weight``, whatever region the guide picks."""
        self.check_conv_weights(weight, bias)
        self.basis.copy_(weight.repeat(self.num_bases, 1, 1, 1))
        self.generator.weight.zero_()
        self.generator.bias.zero_()
        if bias is not None:
            self.bias.copy_(bias)
        return self

    def hparams_repr(self) -> str:
        return f"regions={self.regions}, num_bases={self.num_bases}"
