"""Hyperparameter validation shared by every module.

Each helper raises ``ValueError`` with the parameter's name, its value and the rule it broke, e.g.
``groups=3 must divide in_channels=64``. Modules call these in ``__init__`` so a bad configuration fails at
construction, never as a shape error deep inside ``forward``.
"""
from __future__ import annotations

import copy
import math
import numbers
from typing import Iterable, Sequence

import torch
import torch.nn as nn


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, *, min_value: int | None = None, max_value: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer within ``[min_value, max_value]``."""
    if not _is_int(value):
        raise ValueError(f"{name}={value!r} must be an integer")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name}={value} must be >= {min_value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name}={value} must be <= {max_value}")
    return int(value)


def check_float(name: str, value, *, min_value: float | None = None, max_value: float | None = None,
                min_inclusive: bool = True) -> float:
    """Return ``value`` as a float if it is a finite real number in range (nan and +-inf are never accepted)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be a real number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} must be a finite number")
    if min_value is not None:
        if min_inclusive and value < min_value:
            raise ValueError(f"{name}={value} must be >= {min_value}")
        if not min_inclusive and value <= min_value:
            raise ValueError(f"{name}={value} must be > {min_value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name}={value} must be <= {max_value}")
    return value


def check_divides(divisor_name: str, divisor: int, name: str, value: int) -> None:
    """Raise unless ``divisor`` divides ``value`` ("groups=3 must divide in_channels=64")."""
    if divisor <= 0 or value % divisor != 0:
        raise ValueError(f"{divisor_name}={divisor} must divide {name}={value}")


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {choices}")


def check_layer(name: str, value, example: str) -> None:
    """Raise unless ``value`` is a module class or factory such as ``example`` (``act_layer=nn.ReLU``): callable, and
    not a module instance (an instance is callable too, but calling it runs its forward)."""
    if not callable(value) or isinstance(value, nn.Module):
        raise ValueError(f"{name}={value!r} must be a module class or factory (a callable such as {example}), "
                         "not an instance or a name")


def check_norm_layer_2d(name: str, value, channels: int) -> nn.Module:
    """Return ``value(channels)`` if it is a module that maps (B, C, H, W) maps to their own shape; raise otherwise
    (so ``nn.BatchNorm1d`` fails at construction rather than at the first forward pass). A copy of the norm is tried
    on a zero map in eval mode, so the returned module (running statistics, lazy shapes) is untouched."""
    check_layer(name, value, "nn.BatchNorm2d")
    x, why, norm = torch.zeros(2, channels, 2, 2), "", None
    try:
        norm = value(channels)
        if not isinstance(norm, nn.Module):
            why = f"{name}({channels}) returns {type(norm).__name__}, not an nn.Module"
        else:
            with torch.no_grad():
                y = copy.deepcopy(norm).eval()(x)
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                why = f"{name}({channels}) maps a {tuple(x.shape)} map to {getattr(y, 'shape', type(y).__name__)}"
    except (RuntimeError, ValueError, TypeError, AttributeError) as err:
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        why = f"{name}({channels}) fails on a {tuple(x.shape)} map: {cause}"
    if why:
        raise ValueError(f"{name}={getattr(value, '__name__', value)} must build a norm for (B, C, H, W) maps such "
                         f"as nn.BatchNorm2d; {why}")
    return norm


def check_odd(name: str, value: int) -> int:
    value = check_int(name, value, min_value=1)
    if value % 2 == 0:
        raise ValueError(f"{name}={value} must be odd")
    return value


def pair(name: str, value, *, min_value: int | None = 1) -> tuple[int, int]:
    """Normalise an int or a pair of ints to ``(h, w)``, validating both entries."""
    if _is_int(value):
        value = (value, value)
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{name}={value!r} must be an int or a pair of ints")
    h = check_int(f"{name}[0]", value[0], min_value=min_value)
    w = check_int(f"{name}[1]", value[1], min_value=min_value)
    return h, w


def check_same_length(name_a: str, a: Sequence, name_b: str, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} (length {len(a)}) and {name_b} (length {len(b)}) must have the same length")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to a multiple of ``divisor`` (at least ``min_value``), never more than 10% below it.

    Used for reduced widths (``channels / reduction``) so that a 16-channel CIFAR layer never gets a zero- or
    one-unit bottleneck.
    """
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


def bottleneck_width(channels: int, reduction: float, divisor: int, hidden: int | None = None,
                     name: str = "hidden") -> int:
    """The hidden width of a reduce-then-expand gate (SE, CBAM, GC): ``hidden`` if given, else
    ``min(channels, make_divisible(channels / reduction, divisor))``.

    With the library's ``divisor=8`` every CIFAR width (16 to 512 channels at reduction 16) gets at least
    ``min(channels, 8)`` units, never the 0 or 1 that ``channels // reduction`` gives at 16 channels; ``divisor=1``
    gives the papers' ``C / r`` (rounded, at least 1). ``name`` is the parameter an error names (e.g. DANet's
    ``qk_channels``).
    """
    check_int("channels", channels, min_value=1)
    check_float("reduction", reduction, min_value=1)
    check_int("divisor", divisor, min_value=1)
    if hidden is None:
        hidden = min(channels, make_divisible(channels / reduction, divisor))
    return check_int(name, hidden, min_value=1)
