"""Auto-checkers for the chapters' exercises.

An exercise is a reference function built on the library plus a generator of random test cases. ``check(name, fn)``
runs the student's ``fn`` and the reference on the same cases and reports, case by case, what differs: a wrong
type or shape, the largest absolute difference and where it is, or the exception raised.

    from plugconv_lite import exercises
    def se_params(C, reduction): ...
    exercises.check("se_params", se_params)
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from .measure import count_params


@dataclass
class Exercise:
    name: str
    reference: Callable[..., Any]
    cases: Callable[[torch.Generator], list[dict]]
    description: str = ""
    atol: float = 1e-5
    rtol: float = 1e-4


EXERCISES: dict[str, Exercise] = {}


def exercise(name: str, cases: Callable[[torch.Generator], list[dict]], description: str = "", atol: float = 1e-5,
             rtol: float = 1e-4):
    """Register the decorated function as the reference solution of exercise ``name``."""
    def decorator(fn):
        if name in EXERCISES:
            raise ValueError(f"exercise {name!r} is already registered")
        EXERCISES[name] = Exercise(name, fn, cases, description or (fn.__doc__ or "").strip(), atol, rtol)
        return fn
    return decorator


@dataclass
class Report:
    name: str
    cases: int
    failures: list[str] = field(default_factory=list)
    not_implemented: bool = False

    @property
    def passed(self) -> bool:
        return not self.failures and not self.not_implemented

    def __str__(self) -> str:
        if self.not_implemented:
            return f"{self.name}: not implemented yet (the function raises NotImplementedError)"
        if self.passed:
            return f"{self.name}: all {self.cases} cases pass"
        head = f"{self.name}: {len(self.failures)} of {self.cases} cases fail"
        return "\n".join([head, *(f"  - {f}" for f in self.failures[:5])] +
                         ([f"  ... and {len(self.failures) - 5} more"] if len(self.failures) > 5 else []))

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        mark = "✅" if self.passed else ("✏️" if self.not_implemented else "❌")
        return f"{mark} " + str(self).replace("\n  - ", "\n- ").replace("\n", "  \n")


def _describe(kw: dict) -> str:
    parts = []
    for k, v in kw.items():
        parts.append(f"{k}: tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"{k}={v!r}")
    return ", ".join(parts)


def _compare(got, expected, atol: float, rtol: float) -> str | None:
    """None if equal enough, else what differs."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a tensor of shape {tuple(expected.shape)}, got {type(got).__name__}"
        if got.shape != expected.shape:
            return f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        got = got.detach().to(expected.dtype)
        diff = (got - expected).abs()
        if not torch.allclose(got, expected, atol=atol, rtol=rtol):
            idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), expected.shape))
            return (f"max abs difference {diff.max().item():.3g} at index {idx} "
                    f"(got {got[idx].item():.5g}, expected {expected[idx].item():.5g})")
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a sequence of length {len(expected)}, got {got!r}"
        for i, (g, e) in enumerate(zip(got, expected)):
            msg = _compare(g, e, atol, rtol)
            if msg:
                return f"item {i}: {msg}"
        return None
    if isinstance(expected, float):
        ok = isinstance(got, (int, float)) and abs(got - expected) <= atol + rtol * abs(expected)
        return None if ok else f"got {got!r}, expected {expected!r}"
    return None if got == expected else f"got {got!r}, expected {expected!r}"


def _clone(kw: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


def check(name: str, fn: Callable[..., Any], seed: int = 0) -> Report:
    """Run ``fn`` against exercise ``name``'s reference on its random cases; returns a ``Report``."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; valid names: {', '.join(sorted(EXERCISES))}")
    ex = EXERCISES[name]
    cases = ex.cases(torch.Generator().manual_seed(seed))
    report = Report(name, len(cases))
    for i, kw in enumerate(cases):
        expected = ex.reference(**_clone(kw))
        try:
            got = fn(**_clone(kw))
        except NotImplementedError:
            report.not_implemented = True
            return report
        except Exception as err:  # the student's code may raise anything; report it, do not crash the notebook
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            report.failures.append(f"case {i} ({_describe(kw)}): raised {last}")
            continue
        msg = _compare(got, expected, ex.atol, ex.rtol)
        if msg:
            report.failures.append(f"case {i} ({_describe(kw)}): {msg}")
    return report


# ----------------------------------------------------------------------------------------------------------------
# Exercises, grouped by chapter. Each reference is built from the library, so it is the library's behaviour that
# the student reproduces.

def _ints(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


# Foundations ------------------------------------------------------------------------------------------------------

def _conv_cost_cases(g):
    cases = []
    for _ in range(8):
        groups = [1, 2, 4][_ints(g, 0, 2)]
        cases.append(dict(c_in=groups * _ints(g, 1, 16), c_out=groups * _ints(g, 1, 16), k=[1, 3, 5][_ints(g, 0, 2)],
                          groups=groups, h=_ints(g, 4, 20), stride=_ints(g, 1, 2)))
    return cases


@exercise("conv_cost", _conv_cost_cases,
          "Return (params, FLOPs) of a bias-free k x k conv with `groups` on an h x h input (padding k // 2, the "
          "given stride); FLOPs = 2 x multiply-accumulates.")
def _conv_cost(c_in, c_out, k, groups, h, stride):
    from .measure import count_flops
    conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
    return count_params(conv), count_flops(conv, (1, c_in, h, h))


def _rf_cases(g):
    cases = []
    for _ in range(6):
        cases.append(dict(layers=[(_ints(g, 1, 3) * 2 + 1, _ints(g, 1, 2), _ints(g, 1, 3)) for _ in range(_ints(g, 1, 5))]))
    return cases


@exercise("receptive_field", _rf_cases,
          "Return the receptive field (an int) of a stack of convs given as (kernel, stride, dilation) tuples.")
def _receptive_field(layers):
    from .receptive import receptive_field
    return receptive_field(layers)[-1][0]


# SE ---------------------------------------------------------------------------------------------------------------

def _se_param_cases(g):
    return [dict(C=c, reduction=r) for c, r in [(64, 16), (256, 16), (48, 4), (512, 8), (96, 3), (16, 16)]]


@exercise("se_params", _se_param_cases,
          "Return the number of parameters of an SE module with C channels and C_r = C / reduction hidden units "
          "(the paper's sizing; every case divides exactly), biases included.")
def _se_params(C, reduction):
    from .attention.se import SEModule
    return count_params(SEModule(C, reduction, divisor=1))


def _se_forward_cases(g):
    cases = []
    for _ in range(5):
        c = _ints(g, 4, 32)
        hdim = _ints(g, 1, 8)
        b, h, w = _ints(g, 1, 3), _ints(g, 1, 9), _ints(g, 1, 9)
        cases.append(dict(x=torch.randn(b, c, h, w, generator=g), W1=torch.randn(hdim, c, generator=g),
                          b1=torch.randn(hdim, generator=g), W2=torch.randn(c, hdim, generator=g),
                          b2=torch.randn(c, generator=g)))
    return cases


@exercise("se_forward", _se_forward_cases,
          "Implement y = x * sigmoid(W2 relu(W1 GAP(x) + b1) + b2) for x of shape (B, C, H, W).")
def _se_forward(x, W1, b1, W2, b2):
    from .attention.se import SEModule
    m = SEModule(x.shape[1], hidden=W1.shape[0])
    with torch.no_grad():
        m.fc1.weight.copy_(W1), m.fc1.bias.copy_(b1), m.fc2.weight.copy_(W2), m.fc2.bias.copy_(b2)
        return m(x)


# PyConv -----------------------------------------------------------------------------------------------------------

def _pyconv_param_cases(g):
    cases = []
    for _ in range(8):
        L = _ints(g, 1, 4)
        C_in = [16, 32, 48, 64][_ints(g, 0, 3)]
        groups = [[1, 2, 4, 8, 16][_ints(g, 0, 4)] for _ in range(L)]
        splits = [G * _ints(g, 1, 4) for G in groups]
        cases.append(dict(C_in=C_in, kernels=[3 + 2 * l for l in range(L)], groups=groups, splits=splits))
    return cases


@exercise("pyconv_params", _pyconv_param_cases,
          "Return the number of parameters (an int) of a bias-free PyConv with C_in input channels and levels given "
          "by kernels[l], groups[l] and splits[l] (output channels of level l).")
def _pyconv_params(C_in, kernels, groups, splits):
    from .conv.pyconv import PyConv2d
    return count_params(PyConv2d(C_in, sum(splits), kernels=kernels, groups=groups, splits=splits))


def _coverage_cases(g):
    return [dict(kernel_size=[1, 3, 5, 7, 9][_ints(g, 0, 4)], resolution=_ints(g, 1, 32), dilation=_ints(g, 1, 2))
            for _ in range(10)]


@exercise("tap_coverage", _coverage_cases,
          "Return (a float) the fraction of a k x k kernel's taps (dilation d) that land on an R x R map rather than "
          "on its zero padding, averaged over all output positions of a stride-1, same-padded convolution.")
def _tap_coverage(kernel_size, resolution, dilation):
    from .conv.pyconv import tap_coverage
    return tap_coverage(kernel_size, resolution, dilation)


# PSConv -----------------------------------------------------------------------------------------------------------

def _psconv_map_cases(g):
    return [dict(P=P, d=d) for P, d in [(2, 1), (2, 2), (4, 2), (4, 1), (6, 3), (8, 2)]]


@exercise("psconv_dilation_map", _psconv_map_cases,
          "Return a (P, P) tensor whose entry [j, i] is the dilation rate PSConv uses between input part i and "
          "output part j (parts P, base dilation d).")
def _psconv_dilation_map(P, d):
    from .conv.psconv import dilation_map
    return dilation_map(P, d).float()


def _psconv_forward_cases(g):
    cases = []
    for _ in range(5):
        P, d, k = [2, 4][_ints(g, 0, 1)], _ints(g, 1, 2), [1, 3, 3, 5][_ints(g, 0, 3)]
        C, O = P * _ints(g, 1, 3), P * _ints(g, 1, 3)
        cases.append(dict(x=torch.randn(_ints(g, 1, 2), C, _ints(g, 3, 9), _ints(g, 3, 9), generator=g),
                          W=torch.randn(O, C, k, k, generator=g), P=P, d=d))
    return cases


@exercise("psconv_forward", _psconv_forward_cases,
          "Implement PSConv's forward pass (stride 1, same padding, no bias) from its dense weight W (O, C, k, k): "
          "output part j reads input part j with dilation d, part (j + P/2) mod P with dilation 2d, the others "
          "with dilation 1.")
def _psconv_forward(x, W, P, d):
    from .conv.psconv import PSConv2d
    m = PSConv2d(W.shape[1], W.shape[0], W.shape[-1], parts=P, d=d).load_dense_weight(W)
    with torch.no_grad():
        return m(x)
