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


# DO-Conv (chapter 02) -------------------------------------------------------------------------------------------

def _doconv_fold_cases(g):
    cases = []
    for C, O, groups, k, D_mul in [(4, 6, 1, 3, 9), (6, 4, 1, 3, 13), (8, 8, 2, 3, 9), (4, 4, 4, 3, 18),
                                   (6, 9, 3, 3, 10), (4, 8, 4, 3, 9), (2, 3, 1, 5, 25)]:
        cases.append(dict(W=torch.randn(O, C // groups, D_mul, generator=g),
                          D=0.5 * torch.randn(C, k * k, D_mul, generator=g), groups=groups, kernel_size=k))
    return cases


@exercise("doconv_fold", _doconv_fold_cases,
          "Fold DO-Conv: given W (O, C/g, D_mul), the trainable D (C, M*N, D_mul), groups g and the kernel size k "
          "(M = N = k), return the conventional kernel (O, C/g, k, k), with D_i applied to input channel i. Remember "
          "the frozen identity D_diag.")
def _doconv_fold(W, D, groups, kernel_size):
    from .conv.doconv import DOConv2d
    m = DOConv2d(D.shape[0], W.shape[0], kernel_size, groups=groups, D_mul=W.shape[2])
    with torch.no_grad():
        m.W.copy_(W), m.D.copy_(D)
        return m.kernel()


def _doconv_params_cases(g):
    return [dict(C_in=ci, C_out=co, k=k, D_mul=dm, groups=gr)
            for ci, co, k, dm, gr in [(64, 64, 3, None, 1), (64, 128, 3, 18, 1), (32, 32, 3, 12, 32),
                                      (16, 48, 5, None, 4), (64, 64, 1, None, 1), (128, 256, 3, 27, 2)]]


@exercise("doconv_params", _doconv_params_cases,
          "Return (parameters while training, parameters after folding) of a bias-free DO-Conv layer; D_mul=None "
          "means M*N.")
def _doconv_params(C_in, C_out, k, D_mul, groups):
    from .conv.doconv import DOConv2d
    m = DOConv2d(C_in, C_out, k, groups=groups, D_mul=D_mul)
    return count_params(m), count_params(m.fold())


# C2sp (chapter 08) ----------------------------------------------------------------------------------------------

def _c2sp_cases(g):
    cases = []
    for C, O, h, w in [(4, 2, 3, 3), (8, 4, 5, 6), (12, 3, 1, 4), (16, 8, 7, 7)]:
        cases.append(dict(x=torch.randn(2, C, h, w, generator=g), weight=torch.randn(O, C, 2, 2, generator=g)))
    return cases


@exercise("c2sp_forward", _c2sp_cases,
          "Stride-1 C2sp: split the C channels of x (B, C, H, W) into four equal quarters, pad quarter p by the "
          "p-th (top, bottom, left, right) pattern (0,1,0,1), (1,0,1,0), (0,1,1,0), (1,0,0,1), concatenate, and "
          "apply the 2x2 `weight` (O, C, 2, 2) without padding. The output is (B, O, H, W).")
def _c2sp_forward(x, weight):
    from .conv.c2sp import C2spConv2d
    m = C2spConv2d(x.shape[1], weight.shape[0])
    with torch.no_grad():
        m.weight.copy_(weight)
        return m(x)


@exercise("c2sp_kernel3x3", lambda g: [dict(weight=c["weight"]) for c in _c2sp_cases(g)],
          "Return the 3x3 kernel (O, C, 3, 3) whose padding-1 convolution equals stride-1 C2sp with the 2x2 "
          "`weight` (O, C, 2, 2): place each input channel's 2x2 kernel in the corner its padding pattern selects.")
def _c2sp_kernel3x3(weight):
    from .conv.c2sp import C2spConv2d
    m = C2spConv2d(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        m.weight.copy_(weight)
        return m.equivalent_kernel()

# SCConv -----------------------------------------------------------------------------------------------------------

def _scconv_param_cases(g):
    cases = []
    for _ in range(8):
        groups = [1, 1, 2][_ints(g, 0, 2)]
        cases.append(dict(C_in=2 * groups * _ints(g, 1, 12) + (0 if groups > 1 else _ints(g, 0, 1)),
                          C_out=2 * groups * _ints(g, 1, 12) + (0 if groups > 1 else _ints(g, 0, 1)),
                          k=[1, 3, 5][_ints(g, 0, 2)], groups=groups))
    return cases


@exercise("scconv_params", _scconv_param_cases,
          "Return the number of parameters of SCConv2d(C_in, C_out, k, groups=groups) (no bias; BN after K_2 and "
          "K_3): the self-calibrated half has C_1 = C_in // 2 input and O_1 = C_out // 2 output channels, the plain "
          "half the rest.")
def _scconv_params(C_in, C_out, k, groups):
    from .conv.scconv import SCConv2d
    return count_params(SCConv2d(C_in, C_out, k, groups=groups))


def _scconv_forward_cases(g):
    cases = []
    for _ in range(6):
        c, o, k = _ints(g, 2, 9), _ints(g, 2, 9), [1, 3][_ints(g, 0, 1)]
        c1, o1 = c // 2, o // 2
        cases.append(dict(x=torch.randn(2, c, _ints(g, 1, 9), _ints(g, 1, 9), generator=g),
                          W1=torch.randn(o - o1, c - c1, k, k, generator=g), W2=torch.randn(c1, c1, k, k, generator=g),
                          W3=torch.randn(c1, c1, k, k, generator=g), W4=torch.randn(o1, c1, k, k, generator=g),
                          r=_ints(g, 1, 4)))
    return cases


@exercise("scconv_forward", _scconv_forward_cases,
          "Implement the SCConv forward pass at stride 1 without norms (K_i are the convolutions with weights W_i, "
          "'same' padding k // 2): X_1 = x[:, :C // 2], X_2 = the rest; T_1 = the mean of every r x r window of "
          "X_1 (windows clipped at the border); X_1' = K_2(T_1) repeated r x r times and cropped to H x W; "
          "Y_1 = K_4(K_3(X_1) * sigmoid(X_1 + X_1')); Y_2 = K_1(X_2); return cat(Y_1, Y_2).",
          atol=1e-4)
def _scconv_forward(x, W1, W2, W3, W4, r):
    from .conv.scconv import SCConv2d
    m = SCConv2d(x.shape[1], W4.shape[0] + W1.shape[0], W1.shape[-1], pooling_r=r, norm_layer=None)
    with torch.no_grad():
        for conv, W in ((m.K1, W1), (m.K2[0], W2), (m.K3[0], W3), (m.K4, W4)):
            conv.weight.copy_(W)
        return m(x)


# Res2Net ----------------------------------------------------------------------------------------------------------

def _res2net_rf_cases(g):
    return [dict(scale=s, stype=t) for s, t in [(1, "normal"), (2, "normal"), (4, "normal"), (6, "normal"),
                                                (8, "normal"), (4, "stage"), (3, "stage"), (1, "stage")]]


@exercise("res2net_split_rf", _res2net_rf_cases,
          "Return a tuple with the theoretical receptive field (pixels of the block's input) of each split output "
          "y_1, ..., y_s of one Res2Net block (identity split last, as in the official code).")
def _res2net_split_rf(scale, stype):
    from .blocks.res2net import Res2NetBlock
    return tuple(Res2NetBlock.split_receptive_fields(scale, stype))


def _res2net_param_cases(g):
    cases = []
    for _ in range(8):
        c_out = 8 * _ints(g, 1, 8)
        stride = _ints(g, 1, 2)
        c_in = c_out if (stride == 1 and _ints(g, 0, 1)) else 4 * _ints(g, 1, 8)
        cases.append(dict(C_in=c_in, C_out=c_out, stride=stride, scale=_ints(g, 1, 6), width=_ints(g, 1, 12)))
    return cases


@exercise("res2net_params", _res2net_param_cases,
          "Return the number of parameters of Res2NetBlock(C_in, C_out, stride, scale=scale, width=width): 1x1 "
          "conv, s - 1 split 3x3 convs (one if s = 1), 1x1 conv, a BN after each conv, and the projection shortcut "
          "(1x1 conv + BN) where stride > 1 or C_in != C_out.")
def _res2net_params(C_in, C_out, stride, scale, width):
    from .blocks.res2net import Res2NetBlock
    return count_params(Res2NetBlock(C_in, C_out, stride, scale=scale, width=width))


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
