"""What dynamic convolutions share: the per-sample convolution and the annealed temperature.

**Per-sample kernels.** A dynamic convolution computes a kernel W_b for every sample b. Looping over the samples
launches B small convolutions; instead the batch is folded into the groups of ONE convolution: the input becomes a
single image with B x C channels, the kernels are stacked in batch order into B x O filters, and ``groups`` is
multiplied by B, so group block b sees only sample b's channels and only W_b's filters (Chen et al.'s DY-CNN,
timm's CondConv2d and ODConv's official code all do this). ``reshape``, not ``view``: a channels-last input cannot be
viewed as (1, B*C, H, W), and is copied instead.

**Temperature.** Attention that is divided by a temperature T before its softmax (or sigmoid) starts almost
uniform when T is large, so every kernel is trained at the start; T is then lowered to 1. ``AnnealedTemperature``
holds T as a buffer (so ``torch.compile`` reads it as data and does not recompile when it changes, and a saved
model keeps the T it was trained to) and sets it from the training progress p in [0, 1] that the trainer passes to
``set_progress`` every step: T(p) = 1 + (T_0 - 1) max(0, 1 - p / anneal). ``anneal`` is the fraction of the
training over which T falls; ODConv's official recipe anneals over the first 10 of 100 epochs (0.1).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validate import check_float


def per_sample_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1,
                    padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """y_b = conv2d(x_b, weight_b, bias_b) for every sample b, computed as one grouped convolution.

    x (B, C, H, W); weight (B, O, C/g, kh, kw), one kernel per sample; bias (B, O) or None -> (B, O, H', W').
    At batch 1 this is an ordinary convolution with the sample's kernel.
    """
    B, C, H, W = x.shape
    if B == 1:
        return F.conv2d(x, weight[0], None if bias is None else bias[0], stride, padding, dilation, groups)
    O = weight.shape[1]
    # sample b's channels form group block b of the folded input; its kernel is filters b*O ... (b+1)*O - 1
    y = F.conv2d(x.reshape(1, B * C, H, W), weight.reshape(B * O, *weight.shape[2:]),
                 None if bias is None else bias.reshape(B * O), stride, padding, dilation, groups * B)
    return y.reshape(B, O, *y.shape[-2:])


def check_temperature(temperature, anneal) -> tuple[float, float]:
    """Validate the schedule: temperature T_0 >= 1 and anneal in [0, 1]."""
    T0 = check_float("temperature", temperature, min_value=1.0)
    anneal = check_float("anneal", anneal, min_value=0.0, max_value=1.0)
    return T0, anneal


def temperature_at(p: float, temperature: float, anneal: float) -> float:
    """T(p) = 1 + (T_0 - 1) max(0, 1 - p / anneal): T_0 at p = 0, 1 from p = anneal on (1 throughout if anneal = 0)."""
    if anneal == 0:
        return 1.0
    return 1.0 + (temperature - 1.0) * max(0.0, 1.0 - p / anneal)


class AnnealedTemperature:
    """Mixin for an ``nn.Module`` whose attention logits are divided by a temperature ``self.T`` (a 0-d buffer).

    Call ``_init_temperature(temperature, anneal, device, dtype)`` in ``__init__``; a fresh module is at p = 0
    (T = T_0). ``set_progress(p)`` (called by the trainer every step) moves T along the schedule."""

    temperature: float
    anneal: float
    T: torch.Tensor

    def _init_temperature(self, temperature, anneal, device=None, dtype=None) -> None:
        self.temperature, self.anneal = check_temperature(temperature, anneal)
        # persistent: a saved model keeps the temperature it was trained to (T = 1 after training)
        self.register_buffer("T", torch.tensor(self.temperature_at(0.0), device=device, dtype=dtype or
                                               torch.get_default_dtype()))

    def temperature_at(self, p: float) -> float:
        return temperature_at(p, self.temperature, self.anneal)

    @torch.no_grad()
    def set_progress(self, p: float) -> None:
        """Set T for training progress p in [0, 1] (the fraction of the training steps done)."""
        p = check_float("p", p, min_value=0.0, max_value=1.0)
        self.T.fill_(self.temperature_at(p))

    def schedule_repr(self) -> str:
        return f"temperature={self.temperature:g}->1 over p<={self.anneal:g}, T={float(self.T):.3g}"


def check_batch_statistics(module: nn.Module, norm: nn.Module, batch: int, what: str) -> None:
    """A BatchNorm on pooled (B, C, 1, 1) attention features cannot train on a batch of 1 (one value per channel).
    Say so, naming the module, instead of BatchNorm's error from deep inside."""
    if (isinstance(norm, nn.modules.batchnorm._BatchNorm) and (norm.training or norm.running_mean is None)
            and batch == 1):
        raise ValueError(f"{type(module).__name__} cannot train on a batch of 1: the BatchNorm in its {what} sees one "
                         "value per channel (the input is pooled to 1 x 1). Train with a batch of >= 2, pass "
                         "norm_layer=None, or run it in eval mode")
