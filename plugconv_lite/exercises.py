"""The exercise machinery: self-checks on the chapters' pages and grading for course assignments.

A chapter file (``plugconv_lite/chapters/<chapter>.py``) registers each exercise with ``@exercise``: a *reference*
built on the library (what the answer must reproduce) and a generator of random test cases; and, with
``@solution``, a from-scratch *solution* written as a student would (instructors' answer key; the autograder's
solution notebook). Nothing chapter-specific lives here.

    from plugconv_lite import exercises
    def se_overhead(width, reduction, divisor): ...
    exercises.check("se_overhead", se_overhead)      # on the page: what differs, never the expected values

The checker runs the answer under a profiler hook and rejects one that calls into ``plugconv_lite`` (the library
computes every answer, so a call to it is not a solution), except the names an exercise explicitly ``allow``s.
``grade(name, fn, seed)`` is the autograder's entry point: hidden cases (a seed only the autograder knows), and
only pass/fail counts are printed.
"""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

_PACKAGE_DIR = str(Path(__file__).resolve().parent) + os.sep


@dataclass
class Exercise:
    name: str
    reference: Callable[..., Any]            # the library's behaviour; never shown, never a model answer
    cases: Callable[[torch.Generator], list[dict]]
    description: str = ""
    atol: float = 1e-5
    rtol: float = 1e-4
    allow: tuple = ()                        # qualified names of plugconv_lite callables an answer may use
    solution: Optional[Callable[..., Any]] = None   # a from-scratch answer (``@solution``)
    chapter: str = ""                        # the chapter file that registered it

    @property
    def stub(self) -> str:
        """The student's starting point: the solution's signature with an empty body."""
        import inspect
        if self.solution is None:
            raise ValueError(f"exercise {self.name!r} has no @solution, so it has no stub")
        params = ", ".join(inspect.signature(self.solution).parameters)
        return f"def {self.solution.__name__}({params}):\n    raise NotImplementedError  # your code here\n"


EXERCISES: dict[str, Exercise] = {}


def exercise(name: str, cases: Callable[[torch.Generator], list[dict]], description: str = "", atol: float = 1e-5,
             rtol: float = 1e-4, allow: tuple = ()):
    """Register the decorated function as the reference of exercise ``name`` (it may use the library)."""
    def decorator(fn):
        if name in EXERCISES:
            raise ValueError(f"exercise {name!r} is already registered")
        EXERCISES[name] = Exercise(name, fn, cases, description or (fn.__doc__ or "").strip(), atol, rtol,
                                   tuple(allow), chapter=fn.__module__.rpartition(".")[2])
        return fn
    return decorator


def solution(name: str):
    """Register the decorated function as the from-scratch solution of exercise ``name`` (registered first). Its
    name and parameters are what the student's function must have."""
    def decorator(fn):
        if name not in EXERCISES:
            raise ValueError(f"exercise {name!r} must be registered (@exercise) before its solution")
        EXERCISES[name].solution = fn
        return fn
    return decorator


@dataclass
class Report:
    name: str
    cases: int
    failures: list[str] = field(default_factory=list)
    not_attempted: bool = False
    library_calls: list[str] = field(default_factory=list)
    hidden: bool = False

    @property
    def passed(self) -> bool:
        return not self.failures and not self.not_attempted and not self.library_calls

    def __str__(self) -> str:
        if self.not_attempted:
            return f"{self.name}: not attempted yet (the function still raises NotImplementedError or returns nothing)"
        if self.library_calls:
            return (f"{self.name}: not accepted: the answer calls the library's own implementation "
                    f"({', '.join(self.library_calls[:3])}); write it yourself with torch")
        if self.passed:
            return f"{self.name}: all {self.cases} {'hidden ' if self.hidden else ''}cases pass"
        head = f"{self.name}: {len(self.failures)} of {self.cases} {'hidden ' if self.hidden else ''}cases fail"
        if self.hidden:
            return head
        return "\n".join([head, *(f"  - {f}" for f in self.failures[:5])] +
                         ([f"  ... and {len(self.failures) - 5} more"] if len(self.failures) > 5 else []))

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        mark = "✅" if self.passed else ("✏️" if self.not_attempted else "❌")
        return f"{mark} " + str(self).replace("\n  - ", "\n- ").replace("\n", "  \n")


def _describe(kw: dict) -> str:
    parts = []
    for k, v in kw.items():
        parts.append(f"{k}: tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"{k}={v!r}")
    return ", ".join(parts)


def _compare(got, expected, atol: float, rtol: float) -> Optional[str]:
    """None if ``got`` matches ``expected``, else what is wrong with ``got`` -- never the expected values."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"returned {type(got).__name__}, expected a tensor"
        if got.shape != expected.shape:
            return f"shape {tuple(got.shape)}, expected shape {tuple(expected.shape)}"
        got = got.detach().to(expected.dtype)
        close = torch.isclose(got, expected, atol=atol, rtol=rtol)
        if not close.all():
            bad = (~close).nonzero()
            idx = tuple(int(i) for i in bad[0])
            return (f"values differ at {len(bad)} of {expected.numel()} entries (first at index {idx}, "
                    f"where yours is {got[idx].item():.5g})")
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a sequence of {len(expected)} items, got {type(got).__name__}" + (
                f" of {len(got)}" if isinstance(got, (tuple, list)) else "")
        for i, (g, e) in enumerate(zip(got, expected)):
            msg = _compare(g, e, atol, rtol)
            if msg:
                return f"item {i}: {msg}"
        return None
    if isinstance(expected, bool) or not isinstance(expected, (int, float)):
        return None if got == expected else f"returned {got!r}, which is not the expected value"
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        return f"returned {type(got).__name__}, expected a number"
    if isinstance(expected, int) and got != expected:
        return f"returned {got!r}, which is not the expected value"
    if abs(got - expected) > atol + rtol * abs(expected):
        return f"returned {got!r}, which is not the expected value (tolerance {atol:g} + {rtol:g} x |value|)"
    return None


def _clone(kw: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


def _code_objects(fn) -> set:
    """The code object of ``fn`` and of every function nested in it."""
    found, todo = set(), [getattr(fn, "__code__", None)]
    while todo:
        code = todo.pop()
        if code is not None and code not in found:
            found.add(code)
            todo += [c for c in code.co_consts if hasattr(c, "co_code")]
    return found


class _LibraryCalls:
    """A ``sys.setprofile`` hook recording entries into plugconv_lite from the answer's code (not the library's
    calls to itself). The exercise's own registered solution counts as the answer's code, not as the library."""

    def __init__(self, allow: tuple, runner, trusted: set):
        self.allow, self.calls, self.runner, self.trusted = set(allow), [], runner, trusted

    def _library(self, frame) -> bool:
        return frame.f_code.co_filename.startswith(_PACKAGE_DIR) and frame.f_code not in self.trusted

    def __call__(self, frame, event, arg):
        if event != "call" or not self._library(frame):
            return
        caller = frame.f_back
        if caller is not None and caller is not self.runner and self._library(caller):
            return
        qualname = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
        name = f"{frame.f_globals.get('__name__', '?')}.{qualname}"
        if name not in self.allow and name not in self.calls:
            self.calls.append(name)


def _run(fn: Callable, kw: dict, allow: tuple, trusted: set):
    hook = _LibraryCalls(allow, sys._getframe(), trusted)
    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        return fn(**kw), hook.calls
    finally:
        sys.setprofile(previous)


def _get(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; valid names: {', '.join(sorted(EXERCISES))}")
    return EXERCISES[name]


def check(name: str, fn: Callable[..., Any], seed: int = 0, hidden: bool = False) -> Report:
    """Run ``fn`` on exercise ``name``'s cases (drawn with ``seed``) and compare with the reference; returns a
    ``Report`` that says what differs, case by case, without revealing expected values (``hidden``: counts only)."""
    ex = _get(name)
    cases = ex.cases(torch.Generator().manual_seed(seed))
    report = Report(name, len(cases), hidden=hidden)
    trusted = _code_objects(ex.solution) if ex.solution is not None else set()
    for i, kw in enumerate(cases):
        expected = ex.reference(**_clone(kw))
        try:
            got, calls = _run(fn, _clone(kw), ex.allow, trusted)
        except NotImplementedError:
            report.not_attempted = True
            return report
        except Exception as err:  # the student's code may raise anything; report it, do not crash the notebook
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            report.failures.append(f"case {i} ({_describe(kw)}): raised {last}")
            continue
        if calls:
            report.library_calls = calls
            return report
        if i == 0 and (got is None or got is Ellipsis):
            report.not_attempted = True
            return report
        msg = _compare(got, expected, ex.atol, ex.rtol)
        if msg:
            report.failures.append(f"case {i} ({_describe(kw)}): {msg}")
    return report


def grade(name: str, fn: Callable[..., Any], seed: int) -> bool:
    """The autograder's check: ``check`` on hidden cases; prints one line (counts only) and returns pass/fail."""
    report = check(name, fn, seed=seed, hidden=True)
    print(report)
    return report.passed


def draw_int(g: torch.Generator, lo: int, hi: int) -> int:
    """A random integer in [lo, hi] from ``g`` (for chapters' case generators)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def resnet18_overhead(count: str, width: int, **model_kw) -> int:
    """What ``model_kw`` (e.g. ``attn="se", attn_kw={...}``) adds to ``pl.resnet18(width=width)``, counted by
    ``count`` (``"params"``, or ``"flops"`` of one 32x32 image): the reference answer of the chapters'
    "what does the module add" exercises."""
    from .measure import count_flops, count_params
    from .models import resnet18

    counter = {"params": count_params, "flops": count_flops}[count]
    return counter(resnet18(width=width, **model_kw)) - counter(resnet18(width=width))


from . import chapters as _chapters  # noqa: E402,F401  (the chapter files register their exercises)
