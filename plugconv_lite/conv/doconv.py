"""DO-Conv. Cao, Li, Sun, Chen, Lischinski, Cohen-Or, Chen, Tu: "DO-Conv: Depthwise Over-parameterized
Convolutional Layer", IEEE Transactions on Image Processing 31, 2022, arXiv 2006.12030.

Trains a convolution whose kernel is the product of a per-input-channel ("depthwise") matrix D and a conventional
kernel W. The product is linear in both, so after training it is folded into one ordinary convolution: extra
parameters while training, none at inference.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_choice, check_int
from ..registry import register
from ._init import check_weight_init, init_bias, init_weight
from .base import ConvBase

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")  # nn.Conv2d's


@register("doconv", "conv", paper="DO-Conv: Depthwise Over-parameterized Convolutional Layer", year=2022,
          arxiv="2006.12030")
class DOConv2d(ConvBase):
    """y = conv2d(x, W'),   W'[o, j, m] = sum_s (D + D_diag)[i, m, s] W[o, j, s],   i = (o // (O/g)) (C/g) + j.

    Shapes (kernel M x N, g groups, C input and O output channels):
    W (O, C/g, D_mul); D and the frozen identity D_diag (C, M*N, D_mul); W' (O, C/g, M*N), viewed as (O, C/g, M, N).
    Output channel o of group o // (O/g) reads input channel i = (o // (O/g)) (C/g) + j through slot j, so every
    kernel entry that touches input channel i is produced by D_i: the paper's per-input-channel D, for dense,
    grouped and depthwise convs alike. (The official code reshapes W to (O/g, C, D_mul) instead, which ties D_i to
    input channel i only for groups = 1 and groups = C = O; see the chapter.)

    ``D`` is a trainable parameter initialised to zero and ``D_diag`` a non-trainable buffer holding the identity
    I_{MN} tiled along the last axis (zero columns for the remainder when M*N does not divide D_mul), so a fresh
    DO-Conv computes the plain conv with kernel sum_t W[..., t M*N:(t+1) M*N]; with the default D_mul = M*N that is
    exactly reshape(W, (O, C/g, M, N)). ``D_mul >= M*N`` as the paper requires. For a 1x1 kernel (M*N = 1) there is
    nothing to over-parameterize: no D is created and D_mul is set to 1 whatever was passed, as in the official code.

    ``fold()`` returns the ``nn.Conv2d`` with weight W' (and the same bias): identical outputs, the parameters and
    FLOPs of a plain conv. ``weight_init`` picks W's initialisation ("default": nn.Conv2d's, as the official code;
    "fan_out": the Kaiming fan-out rule the book's backbones apply to their own convs; see ``conv/_init.py``).
    ``padding_mode`` as ``nn.Conv2d``'s; ``load_conv_weights`` makes it compute a given plain conv exactly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, D_mul: int | None = None, weight_init: str = "default",
                 padding_mode: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        check_choice("padding_mode", padding_mode, PADDING_MODES)
        self.padding_mode = padding_mode
        M, N = self.kernel_size
        MN = M * N
        if D_mul is not None:
            check_int("D_mul", D_mul, min_value=1)
        if MN == 1:
            D_mul = 1
        elif D_mul is None:
            D_mul = MN
        elif D_mul < MN:
            raise ValueError(f"D_mul={D_mul} must be >= M*N={MN} (the paper's requirement for a {M}x{N} kernel)")
        self.D_mul = D_mul
        self.weight_init = check_weight_init(weight_init)
        C, O, g = self.in_channels, self.out_channels, self.groups
        self.W = nn.Parameter(torch.empty(O, C // g, D_mul))
        if MN > 1:
            self.D = nn.Parameter(torch.empty(C, MN, D_mul))
            tiles = torch.eye(MN).repeat(1, D_mul // MN)
            identity = torch.cat([tiles, torch.zeros(MN, D_mul % MN)], dim=1)
            self.register_buffer("D_diag", identity.expand(C, MN, D_mul).clone(), persistent=False)
        else:
            self.register_parameter("D", None)
            self.register_buffer("D_diag", None, persistent=False)
        self.bias = nn.Parameter(torch.empty(O)) if self.use_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weight(self.W, self.weight_init)
        if self.D is not None:
            nn.init.zeros_(self.D)
        if self.bias is not None:
            init_bias(self.bias, self.W)

    def kernel(self) -> torch.Tensor:
        """The conventional kernel W' = D^T o W, shape (O, C/g, M, N); differentiable in D and W."""
        O, C, g = self.out_channels, self.in_channels, self.groups
        if self.D is None:
            return self.W.reshape(O, C // g, *self.kernel_size)
        MN = self.D.shape[1]
        # per group: D_i for the group's C/g input channels, W for its O/g output channels
        D = (self.D + self.D_diag).view(g, C // g, MN, self.D_mul)
        W = self.W.view(g, O // g, C // g, self.D_mul)
        return torch.einsum("gjms,gojs->gojm", D, W).reshape(O, C // g, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # as nn.Conv2d: pad explicitly, then a conv without padding
            (ph, pw) = self.padding
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            return F.conv2d(x, self.kernel(), self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, self.kernel(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    @torch.no_grad()
    def load_conv_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "DOConv2d":
        """Compute exactly the plain conv with ``weight`` (O, C/g, M, N): D = 0, the first M*N columns of W hold the
        kernel and the rest are zero, so W' = D_diag^T o W = weight (D_mul >= M*N always holds here)."""
        self.check_conv_weights(weight, bias)
        O, C, g = self.out_channels, self.in_channels, self.groups
        self.W.zero_()
        self.W[..., :weight[0, 0].numel()].copy_(weight.reshape(O, C // g, -1))
        if self.D is not None:
            self.D.zero_()
        if bias is not None:
            self.bias.copy_(bias)
        return self

    @torch.no_grad()
    def fold(self) -> nn.Conv2d:
        """The equivalent plain ``nn.Conv2d`` (weight W', same bias), for inference."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, bias=self.use_bias, padding_mode=self.padding_mode,
                         device=self.W.device, dtype=self.W.dtype)
        conv.weight.copy_(self.kernel())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def hparams_repr(self) -> str:
        s = f"D_mul={self.D_mul}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s if self.weight_init == "default" else f"{s}, weight_init={self.weight_init!r}"
