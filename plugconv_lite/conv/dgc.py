"""Dynamic group convolution. Su, Fang, Kang, Hu, Pietikäinen, Liu: "Dynamic Group Convolution for Accelerating
Convolutional Neural Networks", ECCV 2020, arXiv 2007.04242 (official code: github.com/hellozhuo/dgc).

The output channels are split into ``heads`` groups. Each head scores every input channel of every sample with a
small saliency generator and convolves only its highest-scoring input channels, each multiplied by its score: a
group convolution whose groups are chosen per image. The number of channels a head drops grows during training
(progressive pruning, ``set_progress``), and a group-lasso term on the scores (``aux_loss``) pushes them towards
sparsity.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_float, check_int, check_layer, check_norm_layer_2d, make_divisible
from ..registry import register
from .base import ConvBase

PRUNE_START, PRUNE_END = 1 / 12, 3 / 4  # the official schedule: no pruning before 1/12 of training, full from 3/4


def inactive_channels(p: float, C: int, gate_factor: float) -> int:
    """Input channels each head drops at training progress ``p`` (the official schedule): 0 up to p = 1/12, then
    round(C (1 - gate_factor) 1.5 (p - 1/12)), reaching round(C (1 - gate_factor)) at p = 3/4 and staying there."""
    if p <= PRUNE_START:
        return 0
    if p >= PRUNE_END:
        return round(C * (1 - gate_factor))
    return round(C * (1 - gate_factor) * 1.5 * (p - PRUNE_START))


@register("dgc", "conv", paper="Dynamic Group Convolution for Accelerating Convolutional Neural Networks", year=2020,
          arxiv="2007.04242", url="https://github.com/hellozhuo/dgc")
class DGConv2d(ConvBase):
    """y = sum over heads h of conv(x_hat * g_h(x), W_h), with x_hat = ReLU(BN(x)) and head h owning outputs h::heads:

        x_hat = act(norm(x))                                   (B, C, H, W)   ``pre_norm`` (official: inside the layer)
        s     = GAP(x_hat)                                     (B, C)
        g_h   = ReLU(W2_h ReLU(W1_h s) + b2_h)                 (B, C) for h = 0..heads-1, the saliencies
        m_h   = 1 on the C - n top-scoring channels of g_h, else 0   (n = ``inactive`` channels per head)
        y[:, j*heads + h] = conv(x_hat * (g_h * m_h), W[j*heads + h])   (B, O, H', W')

    W (O, C, k, k) is stored in output order, head h owning rows h, h + heads, ... (the official interleaving of the
    heads' outputs); W1_h (C_r, C) without bias, W2_h (C, C_r) with bias b2_h initialised to 1. Kept channels are
    multiplied by their saliency ("unbiased gating"), not by 1.

    **Two exact forms of the training (dense masked) pass.** The official code scales the input once per head and
    convolves the heads' copies as ``heads`` groups (a heads-fold copy of the input, B heads C H W values). By
    linearity conv(x_hat * g, W) = conv(x_hat, W * g) for a scale g over input channels, so the per-sample kernel
    W_b[o, c] = W[o, c] g_{h(o)}[b, c] m_{h(o)}[b, c] (B O C k^2 values) with the batch folded into the groups of
    ONE convolution gives the same outputs. ``forward_dense`` builds whichever tensor is smaller: the per-sample
    kernels while O k^2 <= heads H W (early, large maps), the input copies otherwise (late layers, where the
    kernels would outweigh the feature maps many times over and the CPU's grouped conv with B groups is slow).

    **Pruning schedule.** ``set_progress(p)`` sets the number of dropped channels per head, ``inactive_channels(p)``
    (none before p = 1/12, all C (1 - gate_factor) of them from p = 3/4), held in the buffer ``inactive`` so that a
    checkpoint keeps it. A fresh module has p = 0 and prunes nothing, in training and in eval mode alike.

    **Inference form.** In eval mode with pruned channels (and ``prune_at_inference``, the default) each head reads
    only its C - n kept channels: they are gathered per sample and convolved with the matching kernel columns, one
    grouped convolution with B * heads groups. Its FLOPs are (C - n) / C of the dense masked form's; its outputs are
    the training form's (the tests check it).

    **Group lasso.** ``aux_loss()`` returns lasso_lambda * sum_h mean(g_h) of the latest training forward (the
    official term, before pruning), which the trainer adds to the loss (``registry.aux_loss``).

    Saliency width: C_r = min(C, make_divisible(C / r, divisor)) with r = squeeze_rate, halved when C < 80 (the
    official rule; with ``divisor=8`` this gives the official widths at ResNet-18's 64-512 channels and keeps 16-channel
    layers at 8 units instead of 2). ``groups`` must be 1: every head reads every input channel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, bias: bool = False, heads: int = 4, squeeze_rate: float = 16,
                 gate_factor: float = 0.25, lasso_lambda: float = 1e-5, pre_norm: bool = True, divisor: int = 8,
                 norm_layer: Optional[Callable[[int], nn.Module]] = nn.BatchNorm2d,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, prune_at_inference: bool = True,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if self.groups != 1:
            raise ValueError(f"groups={self.groups} must be 1: every DGC head reads every input channel (the heads are "
                             "the groups, chosen per sample)")
        C, O = self.in_channels, self.out_channels
        self.heads = check_int("heads", heads, min_value=1)
        if O % self.heads:
            raise ValueError(f"heads={self.heads} must divide out_channels={O}: each head owns O / heads outputs")
        self.squeeze_rate = check_float("squeeze_rate", squeeze_rate, min_value=1)
        self.gate_factor = check_float("gate_factor", gate_factor, min_value=0, min_inclusive=False, max_value=1)
        self.lasso_lambda = check_float("lasso_lambda", lasso_lambda, min_value=0)
        self.divisor = check_int("divisor", divisor, min_value=1)
        for name, flag in (("pre_norm", pre_norm), ("prune_at_inference", prune_at_inference)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}={flag!r} must be a bool")
        self.pre_norm, self.prune_at_inference = pre_norm, prune_at_inference
        check_layer("act_layer", act_layer, "nn.ReLU")
        r = self.squeeze_rate / 2 if C < 80 else self.squeeze_rate
        self.C_r = min(C, make_divisible(C / r, self.divisor))
        kw = {"device": device, "dtype": dtype}
        if pre_norm:
            self.norm = nn.Identity() if norm_layer is None else check_norm_layer_2d("norm_layer", norm_layer, C).to(**kw)
            self.act = act_layer()
        self.weight = nn.Parameter(torch.empty(O, C, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(O, **kw)) if self.use_bias else None
        self.W1 = nn.Parameter(torch.empty(self.heads, self.C_r, C, **kw))
        self.W2 = nn.Parameter(torch.empty(self.heads, C, self.C_r, **kw))
        self.b2 = nn.Parameter(torch.empty(self.heads, C, **kw))
        self.register_buffer("inactive", torch.zeros((), dtype=torch.long, device=device))
        self._n_inactive = 0          # the buffer's value as a Python int: the inference form's shapes depend on it
        self._aux: Optional[torch.Tensor] = None
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_inactive())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation: each head's kernel Kaiming-normal with its own fan-out ((O/heads) k^2, as the
        official ResNet initialises every head's nn.Conv2d), W1 and W2 Kaiming-normal (fan-in), b2 = 1, bias 0."""
        with torch.no_grad():
            for h in range(self.heads):
                nn.init.kaiming_normal_(self.weight[h::self.heads], mode="fan_out", nonlinearity="relu")
                nn.init.kaiming_normal_(self.W1[h])
                nn.init.kaiming_normal_(self.W2[h])
            nn.init.ones_(self.b2)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
        if self.pre_norm and hasattr(self.norm, "reset_parameters"):
            self.norm.reset_parameters()

    # --- the schedule --------------------------------------------------------------------------------------------

    def set_progress(self, p: float) -> None:
        """Prune ``inactive_channels(p)`` input channels per head from now on (the trainer calls this every step)."""
        n = inactive_channels(p, self.in_channels, self.gate_factor)
        self.inactive.fill_(n)
        self._n_inactive = n  # not read back from the buffer: a module built on the meta device has no values

    def _sync_inactive(self) -> None:
        self._n_inactive = int(self.inactive)

    @property
    def kept_channels(self) -> int:
        """Input channels each head reads: C - n."""
        return self.in_channels - self._n_inactive

    # --- the forward pass ----------------------------------------------------------------------------------------

    def saliency(self, x_hat: torch.Tensor) -> torch.Tensor:
        """g (B, heads, C): every head's score of every input channel, before pruning."""
        s = x_hat.mean(dim=(2, 3))                                               # (B, C)
        z = torch.relu(torch.einsum("bc,hrc->bhr", s, self.W1))                  # (B, heads, C_r)
        return torch.relu(torch.einsum("bhr,hcr->bhc", z, self.W2) + self.b2)    # (B, heads, C)

    def ranking(self, g: torch.Tensor) -> torch.Tensor:
        """The channels of every (sample, head) from the highest saliency to the lowest, (B, heads, C). Stable, so
        ties are broken by channel index, the same way in the training and the inference form."""
        return g.detach().argsort(dim=-1, descending=True, stable=True)

    def mask(self, g: torch.Tensor) -> torch.Tensor:
        """m (B, heads, C): 1 on the C - n top-scoring channels of each head, 0 on the n it drops. The rank test
        against the ``inactive`` tensor keeps shapes independent of n, so a compiled training step is not re-traced
        as the schedule advances."""
        order = self.ranking(g)
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(g.shape[-1], device=g.device).expand_as(order))
        return (rank < self.in_channels - self.inactive).to(g.dtype)

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_hat = self.act(self.norm(x)) if self.pre_norm else x
        return x_hat, self.saliency(x_hat)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, groups)

    def forward_dense(self, x_hat: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The training form: every input channel convolved, scaled by g * m (zero where pruned)."""
        gm = g * self.mask(g)                                                    # (B, heads, C)
        if self.out_channels * self.kernel_size[0] * self.kernel_size[1] <= self.heads * x_hat[0, 0].numel():
            return self.dense_per_sample(x_hat, gm)
        return self.dense_copies(x_hat, gm)

    def dense_per_sample(self, x_hat: torch.Tensor, gm: torch.Tensor) -> torch.Tensor:
        """Per-sample kernels W_b = W * gm_{h(o)}: the batch folded into the groups of one conv."""
        B, C, H, W = x_hat.shape
        gm = gm.repeat(1, self.out_channels // self.heads, 1)                   # (B, O, C): row o uses head o % heads
        W_b = self.weight[None] * gm[:, :, :, None, None]                        # (B, O, C, k, k)
        # sample b's kernel applied to sample b's channels only
        y = self._conv(x_hat.reshape(1, B * C, H, W), W_b.reshape(B * self.out_channels, C, *self.kernel_size), B)
        return y.reshape(B, self.out_channels, *y.shape[-2:])

    def dense_copies(self, x_hat: torch.Tensor, gm: torch.Tensor) -> torch.Tensor:
        """The official form: the input scaled once per head, the copies convolved as ``heads`` groups."""
        B, C, H, W = x_hat.shape
        heads, O_h = self.heads, self.out_channels // self.heads
        x_h = (x_hat[:, None] * gm[:, :, :, None, None]).reshape(B, heads * C, H, W)
        W_h = self.weight.reshape(O_h, heads, C, *self.kernel_size).transpose(0, 1)   # head h: rows h, h + heads...
        y = self._conv(x_h, W_h.reshape(self.out_channels, C, *self.kernel_size), heads)
        # (B, heads, O_h) -> (B, O_h, heads): output j*heads + h, the interleaved order of W's rows
        return y.reshape(B, heads, O_h, *y.shape[-2:]).transpose(1, 2).reshape(B, self.out_channels, *y.shape[-2:])

    def forward_pruned(self, x_hat: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The inference form: each head convolves only its kept channels (gathered per sample), with their kernel
        columns scaled by the saliency. FLOPs (C - n) / C of ``forward_dense``'s; the same outputs."""
        B, C, H, W = x_hat.shape
        heads, O_h, K = self.heads, self.out_channels // self.heads, self.kept_channels
        keep = self.ranking(g)[..., :K]                                          # (B, heads, K)
        x_keep = x_hat.gather(1, keep.reshape(B, heads * K, 1, 1).expand(-1, -1, H, W))   # (B, heads*K, H, W)
        W_h = self.weight.reshape(O_h, heads, C, *self.kernel_size).transpose(0, 1)      # (heads, O_h, C, k, k)
        idx = keep[:, :, None, :, None, None].expand(-1, -1, O_h, -1, *self.kernel_size)
        W_keep = W_h[None].expand(B, -1, -1, -1, -1, -1).gather(3, idx)                  # (B, heads, O_h, K, k, k)
        W_keep = W_keep * g.gather(2, keep)[:, :, None, :, None, None]
        y = self._conv(x_keep.reshape(1, B * heads * K, H, W),
                       W_keep.reshape(B * heads * O_h, K, *self.kernel_size), B * heads)
        # (B, heads, O_h) -> (B, O_h, heads): output j*heads + h, the interleaved order of W's rows
        return y.reshape(B, heads, O_h, *y.shape[-2:]).transpose(1, 2).reshape(B, self.out_channels, *y.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat, g = self._prepare(x)
        if self.training and torch.is_grad_enabled():
            # the group lasso of this step, before pruning; the trainer collects it through aux_loss()
            # (accumulated in at least float32: under bf16 autocast the mean of B * C scores would lose digits)
            acc = torch.promote_types(g.dtype, torch.float32)
            self._aux = self.lasso_lambda * g.mean(dim=(0, 2), dtype=acc).sum()
        if not self.training and self.prune_at_inference and self._n_inactive > 0:
            y = self.forward_pruned(x_hat, g)
        else:
            y = self.forward_dense(x_hat, g)
        return y if self.bias is None else y + self.bias[:, None, None]

    def aux_loss(self) -> Optional[torch.Tensor]:
        """lasso_lambda * sum_h mean_{b,c} g_h of the latest training forward (then forgotten); None if none."""
        term, self._aux = self._aux, None
        return term

    def hparams_repr(self) -> str:
        return (f"heads={self.heads}, C_r={self.C_r}, gate_factor={self.gate_factor}, "
                f"inactive={self._n_inactive}/{self.in_channels}, lasso_lambda={self.lasso_lambda}, "
                f"pre_norm={self.pre_norm}")
