"""Weight initialisation shared by conv modules whose kernel is not an ``nn.Conv2d.weight``.

A plugged conv should start like the conv it replaces, or a comparison measures the initialisation instead of the
module. Two rules exist in practice:

* ``"default"``: ``nn.Conv2d.reset_parameters``: ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-b, b) with
  b = 1 / sqrt(fan_in). What a module gets when nobody re-initialises it, and what most official plug-in code uses.
* ``"fan_out"``: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, which torchvision's ResNets and this
  book's backbones (``models.plugs.plain_conv``) apply to their own convs after construction.

Fans are computed by ``torch.nn.init`` from the tensor's shape: dimension 0 is the output, dimension 1 the input,
the rest the receptive field.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .._validate import check_choice

WEIGHT_INITS = ("default", "fan_out")


def check_weight_init(weight_init: str) -> str:
    check_choice("weight_init", weight_init, WEIGHT_INITS)
    return weight_init


@torch.no_grad()
def init_weight(weight: torch.Tensor, weight_init: str = "default") -> None:
    """Initialise a kernel-like tensor (out, in / groups, ...) in place with one of ``WEIGHT_INITS``."""
    check_weight_init(weight_init)
    if weight_init == "default":
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    else:
        nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


@torch.no_grad()
def init_bias(bias: torch.Tensor, weight: torch.Tensor) -> None:
    """``nn.Conv2d``'s bias rule: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in computed from ``weight``."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(bias, -bound, bound)


def init_convs_fan_out(module: nn.Module) -> None:
    """The backbone's rule for a whole block: every ``nn.Conv2d`` weight in ``module`` Kaiming-normal (fan-out,
    ReLU gain; torchvision's ResNets, the book's backbones and the official Res2Net/MobileNeXt/slim-neck code), every
    BatchNorm at (1, 0). Other parameters are left as they are."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            m.reset_parameters()
