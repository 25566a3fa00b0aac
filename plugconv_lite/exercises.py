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


# IC-Conv and EDO (chapter 05) --------------------------------------------------------------------------------------

def _icconv_forward_cases(g):
    from .conv.icconv import candidates
    cases = []
    for _ in range(5):
        c, o, D_max = _ints(g, 1, 6), _ints(g, 1, 8), _ints(g, 1, 3)
        cands = candidates(D_max)
        pattern = [cands[i] for i in torch.randint(0, len(cands), (o,), generator=g).tolist()]
        cases.append(dict(x=torch.randn(_ints(g, 1, 2), c, _ints(g, 3, 11), _ints(g, 3, 11), generator=g),
                          weight=torch.randn(o, c, 3, 3, generator=g), pattern=pattern))
    return cases


@exercise("icconv_forward", _icconv_forward_cases,
          "Return the IC-Conv output (stride 1, 'same' padding) for x (B, C, H, W), weight (O, C, 3, 3) and pattern, "
          "a list of (d_h, d_w) per output channel: channel o is the 3x3 conv of x with weight[o] and dilation "
          "pattern[o].")
def _icconv_forward(x, weight, pattern):
    from .conv.icconv import ICConv2d
    m = ICConv2d(x.shape[1], weight.shape[0], 3, pattern=[list(d) for d in pattern],
                 D_max=max(max(d) for d in pattern))
    with torch.no_grad():
        m.weight.copy_(weight)
        return m(x)


def _edo_errors_cases(g):
    cases = []
    for _ in range(5):
        c, o, D_max = _ints(g, 1, 4), _ints(g, 1, 5), _ints(g, 1, 3)
        K = 2 * D_max + 1
        cases.append(dict(x=torch.randn(_ints(g, 1, 3), c, _ints(g, 4, 10), _ints(g, 4, 10), generator=g),
                          W_s=torch.randn(o, c, K, K, generator=g), D_max=D_max))
    return cases


@exercise("edo_errors", _edo_errors_cases,
          "EDO's criterion: for a supernet kernel W_s (O, C, 2 D_max + 1, 2 D_max + 1) and input x, return the "
          "(D_max^2, O) tensor of mean L1 errors |Y_s - Y_d| (mean over batch and positions) between the supernet "
          "output (stride 1, 'same' padding) and each candidate (d_h, d_w) in lexicographic order, the candidate "
          "being the 3x3 conv with dilation d whose weights are W_s's taps at the centre +- d.")
def _edo_errors(x, W_s, D_max):
    from .edo import SupernetConv2d, dilation_errors
    conv = SupernetConv2d(x.shape[1], W_s.shape[0], 3, D_max=D_max)
    with torch.no_grad():
        conv.weight.copy_(W_s)
    return dilation_errors(conv, x) / (x.shape[0] * x.shape[2] * x.shape[3])


# SPD-Conv (chapter 09) --------------------------------------------------------------------------------------------

def _space_to_depth_cases(g):
    return [dict(x=torch.randn(_ints(g, 1, 2), _ints(g, 1, 4), _ints(g, 1, 9), _ints(g, 1, 9), generator=g))
            for _ in range(6)]


@exercise("space_to_depth", _space_to_depth_cases,
          "Space-to-depth with scale 2 in the official channel order: (B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2)), "
          "blocks (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col); odd H or W are "
          "first zero-padded at the bottom / right.")
def _space_to_depth(x):
    from .conv.spdconv import space_to_depth
    return space_to_depth(x, 2)


def _spd_cost_cases(g):
    return [dict(C=_ints(g, 1, 64), O=_ints(g, 1, 64), k=[1, 3, 5][_ints(g, 0, 2)], H=_ints(g, 1, 33),
                 s=_ints(g, 2, 3)) for _ in range(8)]


@exercise("spdconv_cost", _spd_cost_cases,
          "Return (params, FLOPs) of an SPD-Conv replacing a bias-free k x k conv with stride s from C to O channels "
          "on an H x H input (FLOPs = 2 x multiply-accumulates).")
def _spdconv_cost(C, O, k, H, s):
    from .conv.spdconv import SPDConv2d
    from .measure import count_flops
    m = SPDConv2d(C, O, k, stride=s)
    return count_params(m), count_flops(m, (1, C, H, H))
