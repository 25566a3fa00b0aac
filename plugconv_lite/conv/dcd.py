"""DCD. Li, Chen, Dai, Liu, Chen, Yu, Yuan, Liu, Chen, Vasconcelos: "Revisiting Dynamic Convolution via Matrix
Decomposition", ICLR 2021, arXiv 2103.08756.

Dynamic convolution (CondConv, DY-CNN) keeps K full kernels and mixes them per sample. DCD writes the per-sample
kernel as a static kernel plus a low-rank dynamic residual instead: W(x) = Lambda(x) W0 + P Phi(x) Q^T, with a
per-output-channel scale Lambda(x) (dynamic channel-wise attention) and an L x L matrix Phi(x) (dynamic channel
fusion) acting in a latent space of L << C channels. It is computed without ever building W(x): one static conv,
its output scaled, plus a 1x1 path C -> L -> L -> O.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_int
from ..registry import register
from ._dynamic import per_sample_conv
from ._init import check_weight_init, init_bias, init_weight
from .base import ConvBase


def hsigmoid2(z: torch.Tensor) -> torch.Tensor:
    """The official code's "Hsigmoid": relu6(z + 3) / 3, in [0, 2] and 1 at z = 0 (torch's hardsigmoid / 6 is in
    [0, 1]): a fresh scale multiplies the static kernel by about 1."""
    return F.relu6(z + 3.0) / 3.0


@register("dcd", "conv", paper="Revisiting Dynamic Convolution via Matrix Decomposition", year=2021,
          arxiv="2103.08756")
class DCDConv2d(ConvBase):
    """y = conv2d(x, W(x)) + b,   W(x) = Lambda(x) W0 + P Phi(x) Q^T   (the dynamic residual at the kernel centre).

    Computed in the decomposed form (the official code's), never as a dense per-sample kernel:

        r = conv2d(x, W0)                                (B, O, H', W')   the static k x k conv, stride s
        z = N1(Q^T x)                                    (B, L, H', W')   1x1, stride s, at the centre tap
        z = N2(Phi(x) z) + z                             (B, L, H'W')     dynamic channel fusion (+ identity)
        y = Lambda(x) r + P z + b                        (B, O, H', W')   P: 1x1, L -> O

    Shapes: W0 (O, C, k, k); Q^T (L, C); P (O, L); Phi(x) (B, L, L); Lambda(x) (B, O), a diagonal scale per output
    channel. N1, N2 are BatchNorms (BatchNorm2d on Q^T x, BatchNorm1d on the (B, L, H'W') fused map) as in the
    official code; ``norm=False`` drops them and ``identity=False`` drops the "+ z", which leaves the paper's plain
    W(x) = Lambda W0 + P Phi Q^T. With both (the default) the residual is P (I + A2 Phi(x)) A1 Q^T plus a bias from
    the BatchNorm shifts (A1, A2 their per-channel scales in eval mode).

    The dynamic branch (``pool_size`` p):  d = flatten(AvgPool_{p x p}(x)) (B, p^2 C);  h = W_s d (B, S);
    h = h * hsigmoid2(W_e h) (the official "SEModule_small");  Phi = reshape(W_phi h, (B, L, L));
    Lambda = hsigmoid2(W_lam h), in [0, 2].  All four are bias-free linear maps.
    Defaults follow the official ResNet-18/34 layer (``conv_basic_dy``): p = 2 (a 2 x 2 pooled descriptor, 4C
    values), latent size L = floor(sqrt(p^2 C)) (16 for C = 64) and squeeze width S = max(p^2 C, L^2) // 16, at
    least 4. The official bottleneck/MobileNetV2 layers pool to 1 x 1 (``pool_size=1``: L = floor(sqrt(C))).

    For a k x k kernel only W0 is k x k: the dynamic residual P Phi Q^T is a 1x1 kernel at the centre tap
    (kh // 2, kw // 2), as in the official code, so its 1x1 path reads the input at the centre tap's position with
    the conv's stride (for the default "same" padding: the 1x1 conv with stride s and no padding).

    ``dense_kernel(x)`` builds the per-sample kernel W(x) (B, O, C, kh, kw) and bias (B, O) explicitly and
    ``forward_dense(x)`` convolves with them (one grouped conv over the batch): equal to ``forward`` in eval mode
    (or with ``norm=False``), the reference the decomposition is tested against. In training mode the BatchNorms
    normalise over the batch, so a sample's output also depends on the other samples (as in the official code).
    ``groups`` must be 1: the residual P Phi Q^T mixes all channels. W0, Q^T and P are initialised with
    ``weight_init`` ("fan_out", the official ResNet's rule for every conv, by default).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, latent: int | None = None, pool_size: int = 2,
                 reduction: int = 16, min_squeeze: int = 4, norm: bool = True, identity: bool = True,
                 weight_init: str = "fan_out", device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if self.groups != 1:
            raise ValueError(f"groups={self.groups} must be 1 for DCD: its dynamic residual P Phi(x) Q^T mixes all "
                             "input channels into every output channel")
        self.pool_size = check_int("pool_size", pool_size, min_value=1)
        C, O = self.in_channels, self.out_channels
        D = self.pool_size ** 2 * C                                      # length of the pooled descriptor
        self.latent = L = check_int("latent", math.isqrt(D) if latent is None else latent, min_value=1)
        self.reduction = check_int("reduction", reduction, min_value=1)
        self.min_squeeze = check_int("min_squeeze", min_squeeze, min_value=1)
        self.squeeze = S = max(max(D, L * L) // self.reduction, self.min_squeeze)
        for name, flag in (("norm", norm), ("identity", identity)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}={flag!r} must be a bool")
        self.norm, self.identity = norm, identity
        self.weight_init = check_weight_init(weight_init)
        fk = dict(device=device, dtype=dtype)
        self.W0 = nn.Parameter(torch.empty(O, C, *self.kernel_size, **fk))
        self.Q = nn.Parameter(torch.empty(L, C, 1, 1, **fk))            # Q^T as a 1x1 conv kernel
        self.P = nn.Parameter(torch.empty(O, L, 1, 1, **fk))
        self.bias = nn.Parameter(torch.empty(O, **fk)) if self.use_bias else None
        self.fc = nn.Linear(D, S, bias=False, **fk)                      # W_s
        self.se = nn.Linear(S, S, bias=False, **fk)                      # W_e
        self.fc_phi = nn.Linear(S, L * L, bias=False, **fk)              # W_phi
        self.fc_scale = nn.Linear(S, O, bias=False, **fk)                # W_lam
        self.bn1 = nn.BatchNorm2d(L, **fk) if norm else None
        self.bn2 = nn.BatchNorm1d(L, **fk) if norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in (self.W0, self.Q, self.P):
            init_weight(w, self.weight_init)
        if self.bias is not None:
            init_bias(self.bias, self.W0)
        for fc in (self.fc, self.se, self.fc_phi, self.fc_scale):        # nn.Linear's default, as the official code
            fc.reset_parameters()
        for bn in (self.bn1, self.bn2):
            if bn is not None:
                bn.reset_parameters()

    # --- the dynamic branch -----------------------------------------------------------------------------------------

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """d = flatten(AvgPool_{p x p}(x)), (B, p^2 C) in channel-major order (channel c's p^2 cells together)."""
        if self.pool_size == 1:
            return x.mean(dim=(2, 3))
        return F.adaptive_avg_pool2d(x, self.pool_size).reshape(x.shape[0], -1)

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lambda(x) (B, O) in [0, 2] and Phi(x) (B, L, L)."""
        h = self.fc(self.descriptor(x))
        h = h * hsigmoid2(self.se(h))
        Phi = self.fc_phi(h).reshape(-1, self.latent, self.latent)
        return hsigmoid2(self.fc_scale(h)), Phi

    # --- the decomposed forward ---------------------------------------------------------------------------------------

    def _centre_input(self, x: torch.Tensor) -> torch.Tensor:
        """x shifted so that a 1x1 conv with the layer's stride reads what the centre tap of W0 reads: the centre
        tap sits d (k // 2) pixels from the start of a window and d (k - 1 - k // 2) from its end, so the input is
        padded (negative: cropped) by p minus those (nothing for "same" padding and odd k)."""
        (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
        pads = (pw - dw * (kw // 2), pw - dw * (kw - 1 - kw // 2), ph - dh * (kh // 2), ph - dh * (kh - 1 - kh // 2))
        return x if not any(pads) else F.pad(x, pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Lam, Phi = self.attention(x)
        r = F.conv2d(x, self.W0, None, self.stride, self.padding, self.dilation)        # W0 x
        z = F.conv2d(self._centre_input(x), self.Q, None, self.stride)                   # Q^T x, (B, L, H', W')
        if self.bn1 is not None:
            z = self.bn1(z)
        B, L, Hp, Wp = z.shape
        z = z.reshape(B, L, Hp * Wp)
        f = torch.bmm(Phi, z)                                                            # Phi(x) Q^T x
        if self.bn2 is not None:
            f = self.bn2(f)
        if self.identity:
            f = f + z
        out = F.conv2d(f.reshape(B, L, Hp, Wp), self.P, self.bias)                       # P (...) (+ b)
        return torch.addcmul(out, Lam[:, :, None, None], r)                              # + Lambda W0 x

    # --- the dense per-sample kernel (the reference) ------------------------------------------------------------------

    @staticmethod
    def _affine(bn: nn.Module | None, L: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A BatchNorm in eval mode as u -> a u + c (a, c of shape (L,)); identity without one."""
        if bn is None:
            return like.new_ones(L), like.new_zeros(L)
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return a, bn.bias - a * bn.running_mean

    def dense_kernel(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """W(x) (B, O, C, kh, kw) and b(x) (B, O) with forward(x)[b] = conv2d(x[b], W(x)[b]) + b(x)[b] (eval mode).

        W(x)_b = Lambda_b W0 + centre(P M_b A1 Q^T),  M_b = I + A2 Phi_b  (I: only with ``identity``),
        b(x)_b = P (M_b c1 + c2) + b,  with the BatchNorms in eval mode written as u -> A u + c."""
        if self.norm and self.training:
            raise ValueError("dense_kernel needs eval mode: in training mode the BatchNorms (norm=True) normalise "
                             "over the batch, so no per-sample kernel exists; call .eval() or use norm=False")
        Lam, Phi = self.attention(x)
        L = self.latent
        a1, c1 = self._affine(self.bn1, L, Phi)
        a2, c2 = self._affine(self.bn2, L, Phi)
        M = a2[:, None] * Phi                                            # A2 Phi_b, (B, L, L)
        if self.identity:
            M = M + torch.eye(L, dtype=Phi.dtype, device=Phi.device)
        P, Qt = self.P.reshape(-1, L), self.Q.reshape(L, -1)
        R = P @ M @ (a1[:, None] * Qt)                                   # P M_b A1 Q^T, (B, O, C)
        W = Lam[:, :, None, None, None] * self.W0
        kh, kw = self.kernel_size
        W[:, :, :, kh // 2, kw // 2] += R
        b = (P @ (M @ c1[:, None] + c2[:, None])).squeeze(-1)          # (B, O)
        if self.bias is not None:
            b = b + self.bias
        return W, b

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The same output through the dense per-sample kernel: one grouped conv over the batch (eval mode)."""
        W, b = self.dense_kernel(x)
        return per_sample_conv(x, W, b, self.stride, self.padding, self.dilation)

    @torch.no_grad()
    def load_conv_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "DCDConv2d":
        """Compute exactly the plain conv with ``weight`` (and ``bias``): W0 = weight, W_lam = 0 (so Lambda = 1
        whatever x) and P = 0 (no dynamic residual)."""
        self.check_conv_weights(weight, bias)
        self.W0.copy_(weight)
        self.fc_scale.weight.zero_()
        self.P.zero_()
        if bias is not None:
            self.bias.copy_(bias)
        return self

    def hparams_repr(self) -> str:
        s = f"latent={self.latent}, squeeze={self.squeeze}, pool_size={self.pool_size}"
        if not self.norm:
            s += ", norm=False"
        if not self.identity:
            s += ", identity=False"
        return s if self.weight_init == "fan_out" else f"{s}, weight_init={self.weight_init!r}"
