"""The module registry: models and surgery name modules instead of importing them.

``@register("se", "attention", paper="Squeeze-and-Excitation Networks", year=2018, arxiv="1709.01507")`` on a class
(or factory) makes ``create("se", 64)`` build it and ``available("attention")`` list it. Five kinds exist, each with
a constructor contract (see DESIGN.md):

* ``conv``: ``(in_channels, out_channels, kernel_size=3, stride=1, padding=None, dilation=1, groups=1, bias=False,
  **hparams)``, a drop-in for a k x k ``nn.Conv2d``;
* ``attention``: ``(channels, **hparams)``, shape in = shape out;
* ``block``: ``(in_channels, out_channels, stride=1, **hparams)``, a residual block;
* ``stage``: ``(channels, depth, **hparams)``, a stage attention (SDA): called with the list of its stage's
  ``depth`` block outputs, it returns the stage's output (``models/flow.py``);
* ``head``: ``(channels, num_classes, **hparams)``, a multi-scale classifier head (FPT, AFA): ``channels`` lists
  each stage's width, stage 1 first; called with the list of stage outputs, it returns the logits.

Two hooks connect modules to the trainer without the module knowing the trainer: a module whose behaviour follows
the training schedule defines ``set_progress(p)`` (``set_progress`` below calls it on every such module), and a
module that adds a term to the training loss (DGC's group lasso) defines ``aux_loss()`` (``aux_loss`` below sums
them; the trainer adds the sum to the loss every step and logs it).

Two more hooks are the model's own (methods of the network, not of its modules), for a network with several heads
whose training objective and evaluation need more than its output (GENet's group ensemble, ``models/genet.py``):

* ``model.training_loss(x, target, criterion) -> (loss, logits)``: when the model defines it, the trainer calls it
  instead of ``criterion(model(x), target)`` (it runs the model's forward itself, eagerly: a compiled training step
  does not cover it); ``logits`` (B, K) are what the training accuracy is computed on. ``aux_loss`` terms are added
  to ``loss`` as for any model, and ``train_loss`` in the history is ``loss``.
* ``model.head_logits(x) -> (logits, {name: logits})``: when the model defines it, evaluation takes the output from
  it and also records the top-1 accuracy of every named head as ``test_top1_<name>`` (GENet: each member's).

A model without them trains and evaluates exactly as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn

KINDS = ("conv", "attention", "block", "stage", "head")


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    factory: Callable[..., nn.Module]
    paper: Optional[str] = None
    year: Optional[int] = None
    arxiv: Optional[str] = None
    url: Optional[str] = None
    extra: dict = field(default_factory=dict)

    @property
    def citation(self) -> str:
        parts = [p for p in (self.paper, str(self.year) if self.year else None,
                             f"arXiv:{self.arxiv}" if self.arxiv else None) if p]
        return ", ".join(parts)


_REGISTRY: dict[str, Entry] = {}


def register(name: str, kind: str, *, paper: str | None = None, year: int | None = None,
             arxiv: str | None = None, url: str | None = None, **extra):
    """Class/function decorator that registers a module factory under ``name``."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {list(KINDS)}")
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"name={name!r} must be a non-empty lower-case string")

    def decorator(factory):
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"name={name!r} is already registered to {_REGISTRY[name].factory!r}")
        _REGISTRY[name] = Entry(name, kind, factory, paper, year, arxiv, url, dict(extra))
        factory.registry_name = name
        return factory

    return decorator


def available(kind: str | None = None) -> list[str]:
    """Sorted names of the registered modules, optionally of one kind."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {list(KINDS)} or None")
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def get(name: str, kind: str | None = None) -> Entry:
    """The registry entry for ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    entry = _REGISTRY.get(name)
    if entry is None or (kind is not None and entry.kind != kind):
        what = f"{kind} module" if kind else "module"
        raise ValueError(f"unknown {what} {name!r}; valid names: {', '.join(available(kind))}")
    return entry


def create(name: str, *args, **kwargs) -> nn.Module:
    """Build the registered module ``name`` with the given constructor arguments."""
    return get(name).factory(*args, **kwargs)


def resolve(name_or_factory, kind: str) -> Callable[..., nn.Module]:
    """A registry name or a callable -> the callable that builds the module."""
    if isinstance(name_or_factory, str):
        return get(name_or_factory, kind).factory
    if callable(name_or_factory):
        return name_or_factory
    raise ValueError(f"{kind}={name_or_factory!r} must be a registered {kind} name or a callable")


def progress_modules(model: nn.Module) -> list[nn.Module]:
    """Modules whose behaviour follows the training schedule (they define ``set_progress(p)``)."""
    return [m for m in model.modules() if callable(getattr(m, "set_progress", None))]


def set_progress(model: nn.Module, p: float) -> None:
    """Call ``set_progress(p)`` (p in [0, 1]) on every module of ``model`` that has it."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p} must be in [0, 1]")
    for m in progress_modules(model):
        m.set_progress(p)


def aux_loss_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that add a term to the training loss (they define ``aux_loss()``)."""
    return [m for m in model.modules() if callable(getattr(m, "aux_loss", None))]


def aux_loss(model: nn.Module, modules: Optional[list[nn.Module]] = None) -> Optional[torch.Tensor]:
    """The sum of the loss terms of ``model``'s modules, or None if none has one.

    The contract of ``aux_loss()`` on a module: it returns the term of its latest forward pass in training mode (a
    scalar tensor that carries its graph, already weighted by the module's own coefficient, e.g. DGC's
    ``lasso_lambda``) and forgets it, so a term is counted once and no graph outlives its step; it returns None when
    there is no such term (no training forward since the last call). ``modules`` (from ``aux_loss_modules``) saves
    walking the model every step.
    """
    terms = [t for m in (aux_loss_modules(model) if modules is None else modules) if (t := m.aux_loss()) is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total
