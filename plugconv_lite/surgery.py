"""Model surgery for any network, not only ours: swap convs, add attention, fold re-parameterized modules.

``where`` selects modules; it may be None (the default rule), a regular expression matched against the full dotted
module name, a collection of names, or a callable ``(name, module) -> bool``.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import re
import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Optional, Union

import torch
import torch.nn as nn

from .models.plugs import PlugSite, build_conv, _kwargs
from .registry import resolve

Where = Union[None, str, Iterable[str], Callable[[str, nn.Module], bool]]


def _where(where: Where, default: Callable[[str, nn.Module], bool]) -> Callable[[str, nn.Module], bool]:
    if where is None:
        return default
    if isinstance(where, str):
        pattern = re.compile(where)
        return lambda name, m: pattern.fullmatch(name) is not None
    if callable(where):
        return where
    try:
        names = set(where)
    except TypeError:
        raise ValueError(f"where={where!r} must be None, a regex, a collection of names or a callable") from None
    return lambda name, m: name in names


def _default_swap(name: str, m: nn.Module) -> bool:
    """Square k x k convs with k > 1 and groups = 1 that compute what nn.Conv2d computes (not a subclass with its
    own forward, such as a weight-standardised conv: selected explicitly, those raise)."""
    k = m.kernel_size
    return k[0] == k[1] and k[0] > 1 and m.groups == 1 and type(m).forward is nn.Conv2d.forward


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _inside_plug_module(model: nn.Module, name: str) -> bool:
    """True if ``name`` lives inside a registered plug module (its internals are not the model's convs)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if hasattr(type(model.get_submodule(".".join(parts[:i]))), "registry_name"):
            return True
    return False


def _candidates(model: nn.Module, keep: Callable[[str, nn.Module], bool],
                select: Callable[[str, nn.Module], bool], what: str) -> dict[int, tuple[nn.Module, list[str]]]:
    """The selected modules, each with ALL the names it is reachable under (a module shared by two parents, as in
    weight tying, has two). Selecting some of a shared module's names but not all raises: changing it in one place
    only would untie what the model ties."""
    names: dict[int, tuple[nn.Module, list[str]]] = {}
    chosen: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if not name or not keep(name, m) or _inside_plug_module(model, name):
            continue
        names.setdefault(id(m), (m, []))[1].append(name)
        if select(name, m):
            chosen.setdefault(id(m), []).append(name)
    for key, picked in chosen.items():
        every = names[key][1]
        if len(picked) != len(every):
            others = [n for n in every if n not in picked]
            raise ValueError(f"{what} {picked[0]!r} is shared: the same module is also {others}, which where= does not "
                             "select; select all of its names (one replacement then serves every use) or none")
    return {key: names[key] for key in chosen}


def _placement(*modules: nn.Module) -> tuple[Optional[torch.device], Optional[torch.dtype]]:
    """Device and floating dtype of the first of ``modules`` that holds a floating tensor (None, None if none)."""
    for m in modules:
        for t in itertools.chain(m.parameters(), m.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
    return None, None


@contextmanager
def _modes_kept(model: nn.Module):
    """Restore every sub-module's own train/eval flag afterwards (a model may mix them, e.g. frozen BNs)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:  # parents first: m.train() also sets the children, which come later and are fixed
            m.train(mode)


def _probe(model: nn.Module, input_size: tuple, hooks: list) -> None:
    """One eval-mode forward pass without gradients on zeros of ``input_size`` (in the model's device and dtype),
    with ``hooks`` installed; the hooks are removed and every module's train/eval mode is restored afterwards."""
    device, dtype = _placement(model)
    try:
        with _modes_kept(model), torch.no_grad():
            model.eval()
            model(torch.zeros(input_size, device=device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()


def _input_resolutions(model: nn.Module, convs: list[nn.Module], input_size) -> dict[int, int]:
    if input_size is None:
        return {}
    found: dict[int, int] = {}

    def hook(mod, args) -> None:
        found.setdefault(id(mod), args[0].shape[-2])  # a conv called twice keeps the first size it saw

    _probe(model, input_size, [m.register_forward_pre_hook(hook) for m in convs])
    return found


def _padding(name: str, m: nn.Conv2d) -> int:
    """The conv's padding as one symmetric int; 'same' and 'valid' are translated where they are symmetric."""
    if m.padding == "valid":
        return 0
    if m.padding == "same":
        total = [d * (k - 1) for k, d in zip(m.kernel_size, m.dilation)]
        if total[0] != total[1] or total[0] % 2:
            raise ValueError(f"conv {name!r} has padding='same' with kernel_size={m.kernel_size} and "
                             f"dilation={m.dilation}, which pads unevenly; only symmetric padding is swapped")
        return total[0] // 2
    if m.padding[0] != m.padding[1]:
        raise ValueError(f"conv {name!r} has padding={m.padding!r}; only symmetric padding is swapped")
    return m.padding[0]


def _accepts(factory, param: str) -> bool:
    try:
        return param in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and the like have no signature
        return False


def _conv_site(name: str, m: nn.Conv2d, resolution: Optional[int]) -> PlugSite:
    """The plug site of conv ``m``; ``ValueError`` where a conv-contract module could not take its geometry."""
    if type(m).forward is not nn.Conv2d.forward:
        raise ValueError(f"conv {name!r} is a {type(m).__name__}, whose forward is not nn.Conv2d's; a replacement "
                         "would not compute what it computes. Exclude it with where=")
    if m._forward_hooks or m._forward_pre_hooks:
        raise ValueError(f"conv {name!r} has forward hooks (weight_norm, spectral_norm, feature hooks, ...), which a "
                         "replacement would silently drop; remove them first or exclude it with where=")
    if m.kernel_size[0] != m.kernel_size[1] or m.stride[0] != m.stride[1] or m.dilation[0] != m.dilation[1]:
        raise ValueError(f"conv {name!r} has a non-square kernel/stride/dilation; exclude it with where=")
    return PlugSite(name, "conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], _padding(name, m),
                    m.dilation[0], m.groups, m.bias is not None, resolution=resolution)


def _padding_mode_kw(name: str, m: nn.Conv2d, factory, kw: dict) -> dict:
    """Pass a non-zero ``padding_mode`` on (unless ``conv_kw`` sets one), or refuse a factory that cannot take it."""
    if m.padding_mode == "zeros" or "padding_mode" in kw:
        return kw
    if not _accepts(factory, "padding_mode"):
        owner = getattr(factory, "registry_name", None) or getattr(factory, "__name__", type(factory).__name__)
        raise ValueError(f"conv {name!r} has padding_mode={m.padding_mode!r}, which {owner!r} cannot honour (it takes "
                         "no padding_mode and pads with zeros); exclude it with where=")
    return {**kw, "padding_mode": m.padding_mode}


@torch.no_grad()
def _keep_weights(name: str, new: nn.Module, old: nn.Conv2d) -> None:
    """Give ``new`` the weights of ``old`` so that it computes exactly what ``old`` does, or raise ``ValueError``."""
    if isinstance(new, nn.Conv2d) and type(new).forward is nn.Conv2d.forward:
        same = (new.weight.shape, new.bias is None, new.stride, new.dilation, new.groups, new.padding_mode) == \
            (old.weight.shape, old.bias is None, old.stride, old.dilation, old.groups, old.padding_mode)
        if not same or _padding(name, new) != _padding(name, old):
            raise ValueError(f"keep_weights: the replacement of conv {name!r} is an nn.Conv2d of another geometry")
        new.weight.copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
        return
    load = getattr(new, "load_conv_weights", None)
    if load is None:
        raise ValueError(f"keep_weights: {type(new).__name__} (for conv {name!r}) has no load_conv_weights, so it "
                         "cannot take the pretrained weights")
    try:
        load(old.weight.detach(), None if old.bias is None else old.bias.detach())
    except ValueError as err:
        raise ValueError(f"keep_weights: conv {name!r}: {err}") from None


def swap_convs(model: nn.Module, name_or_factory, where: Where = None, conv_kw=None,
               input_size: Optional[tuple] = None, keep_weights: bool = False) -> tuple[nn.Module, list[str]]:
    """Replace every selected ``nn.Conv2d`` of ``model`` (in place) by a conv-contract module.

    The new module gets the old one's channels, kernel size, stride, padding (and ``padding_mode``, or a
    ``ValueError`` if the replacement cannot honour it), dilation, groups and bias flag, plus ``conv_kw`` (a dict or
    a callable ``PlugSite -> dict``); it is placed on the old one's device and dtype and in its train/eval mode.
    Its weights are freshly initialised, also for the plain ``"conv2d"``; with ``keep_weights=True`` they are set
    from the old conv where the replacement can compute exactly what it computed (``load_conv_weights``), and a
    ``ValueError`` names the conv where it cannot.

    A conv shared by several parents (weight tying) gets ONE replacement used everywhere; ``where`` must select all
    of its names or none, and a conv whose parameters are shared with another module is refused. Every replacement
    is built before the first is put in place, so an error leaves the model unchanged. With ``input_size`` the sites
    also carry the input resolution each conv sees (position-dependent modules such as PyConv's pyramid need it).
    Returns the model and the names of the replaced convs (every name of a shared one).
    """
    factory = resolve(name_or_factory, "conv")
    chosen = _candidates(model, lambda n, m: isinstance(m, nn.Conv2d), _where(where, _default_swap), "conv")
    _check_parameter_ties(model, chosen)
    res = _input_resolutions(model, [m for m, _ in chosen.values()], input_size)
    plan = []
    for key, (m, names) in chosen.items():
        name = names[0]
        site = _conv_site(name, m, res.get(key))
        kw = _padding_mode_kw(name, m, factory, _kwargs(conv_kw, site, "conv_kw"))
        try:
            new = build_conv(factory, site, kw)
        except ValueError as err:
            raise ValueError(f"conv {name!r}: {err}") from None
        new.to(device=m.weight.device, dtype=m.weight.dtype)
        new.train(m.training)
        if keep_weights:
            _keep_weights(name, new, m)
        plan.append((names, new))
    for names, new in plan:  # nothing above changed the model: now swap
        for name in names:
            _set_module(model, name, new)
    return model, [n for names, _ in plan for n in names]


def _check_parameter_ties(model: nn.Module, chosen: dict[int, tuple[nn.Module, list[str]]]) -> None:
    """Refuse convs whose weight or bias another module also holds (``b.weight = a.weight``): two replacements could
    not share a tensor, so the tie would break."""
    owners: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(name)
    for m, names in chosen.values():
        for p in m._parameters.values():
            others = [n for n in owners.get(id(p), []) if n not in names] if p is not None else []
            if others:
                raise ValueError(f"conv {names[0]!r} shares a parameter with {others} (weight tying); swap_convs "
                                 "cannot keep that tie. Exclude it with where=")


def _channels_of(m: nn.Module) -> Optional[int]:
    for attr in ("out_channels", "num_features", "channels"):
        if isinstance(getattr(m, attr, None), int):
            return getattr(m, attr)
    return None


def add_attention(model: nn.Module, name_or_factory, where: Where, attn_kw=None,
                  input_size: Optional[tuple] = (1, 3, 32, 32)) -> tuple[nn.Module, list[str]]:
    """Apply an attention module to the output of every selected module: ``m`` becomes ``Sequential(m, attn)``.

    The channel count comes from the module (``out_channels`` / ``num_features``) or from a probe forward pass with
    ``input_size`` (eval mode, no gradients; every module's train/eval mode is restored). The attention module is
    placed on the device and dtype of the module (else of the model) and takes its train/eval mode. A module used in
    several places gets one attention module, applied wherever it is used; selecting only some of its names, or a
    module together with one inside it, raises ``ValueError``. Everything is built before the model is changed. A
    factory's ``from_site`` may decline a site (return None): that module is left as it is. Returns the model and the
    names of the modules that received attention.
    """
    factory = resolve(name_or_factory, "attention")
    chosen = _candidates(model, lambda n, m: True, _where(where, lambda n, m: False), "module")
    if not chosen:
        raise ValueError("where= selected no module of the model")
    for m, names in chosen.values():
        for inner_name, inner in m.named_modules(remove_duplicate=False):
            if inner_name and id(inner) in chosen:
                raise ValueError(f"where= selected both {names[0]!r} and a module inside it, "
                                 f"{chosen[id(inner)][1][0]!r}; attention would be applied at two nested levels. "
                                 "Select one of them")
    channels = {key: _channels_of(m) for key, (m, _) in chosen.items()}
    unknown = [key for key, c in channels.items() if c is None]
    if unknown:
        if input_size is None:
            raise ValueError(f"cannot tell the channels of {[chosen[k][1][0] for k in unknown]}; pass input_size= for "
                             "a probe forward pass")
        found: dict[int, int] = {}

        def hook(mod, args, out) -> None:  # returns None: a forward hook's return value replaces the output
            found.setdefault(id(mod), out.shape[1])

        hooks = [chosen[k][0].register_forward_hook(hook) for k in unknown]
        _probe(model, input_size, hooks)
        channels.update(found)
    plan = []
    for key, (m, names) in chosen.items():
        site = PlugSite(names[0], "attn", channels[key], channels[key], 1)
        kw = _kwargs(attn_kw, site, "attn_kw")
        try:
            attn = factory.from_site(site, **kw) if hasattr(factory, "from_site") else factory(channels[key], **kw)
        except ValueError as err:
            raise ValueError(f"module {names[0]!r}: {err}") from None
        if attn is None:  # from_site declined this site (see models/plugs.py)
            continue
        device, dtype = _placement(m, model)
        attn.to(device=device, dtype=dtype).train(m.training)
        wrapped = nn.Sequential(m, attn)
        wrapped.training = m.training  # not .train(): that would reset the modes inside m
        plan.append((names, wrapped))
    for names, wrapped in plan:
        for name in names:
            _set_module(model, name, wrapped)
    return model, [n for names, _ in plan for n in names]


def fold(model: nn.Module, bn: bool = False, input_size: Optional[tuple] = (1, 3, 32, 32)) -> nn.Module:
    """Replace (in place) every sub-module that has ``fold()`` by its folded equivalent (an ``nn.Conv2d``); a module
    used in several places is folded once and the folded conv is shared the same way.

    With ``bn=True`` BatchNorm layers are then fused into the conv that feeds them (inference only; see
    ``fuse_bn``, which skips, with a warning, BNs that keep no running statistics). Returns the model.
    """
    if callable(getattr(model, "fold", None)):
        raise ValueError("fold(model) folds the sub-modules of a network; call model.fold() on a single module")
    folded: dict[int, nn.Module] = {}

    def visit(module: nn.Module) -> None:
        for child_name, child in module.named_children():
            if callable(getattr(child, "fold", None)):
                if id(child) not in folded:
                    folded[id(child)] = child.fold()
                setattr(module, child_name, folded[id(child)])
            else:
                visit(child)

    visit(model)
    return fuse_bn(model, input_size) if bn else model


def _fused_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by eval-mode BN as one conv: W' = W * g / sqrt(v + eps), b' = (b - mu) * g / sqrt(v + eps) + beta."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(
        bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((b - bn.running_mean) * scale + shift)
    return fused


def fuse_bn(model: nn.Module, input_size: tuple = (1, 3, 32, 32), atol: float = 1e-4) -> nn.Module:
    """Fuse every eval-mode BatchNorm2d into the nn.Conv2d whose output it directly consumes (in place).

    Pairs are found by a probe forward pass (a BN whose input tensor is exactly a conv's output); the fused model
    is then checked against the original on a random input and a ``RuntimeError`` is raised if they differ (a conv
    output that was also used elsewhere). A BN without running statistics (``track_running_stats=False``)
    normalises every batch by its own statistics, even in eval mode, so no conv can absorb it: it is left in place
    and a warning names it. Puts the model in eval mode.
    """
    model.eval()
    reference = copy.deepcopy(model)
    outputs, pairs, hooks, batch_stats = {}, [], [], []
    named = dict(model.named_modules())
    for name, m in named.items():
        if type(m) is nn.Conv2d or (isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward):
            hooks.append(m.register_forward_hook(lambda mod, a, out, name=name: outputs.__setitem__(id(out), (name, out))))
        elif isinstance(m, nn.BatchNorm2d) and m.running_var is None:
            batch_stats.append(name)
        elif isinstance(m, nn.BatchNorm2d):
            def pre(mod, args, name=name):
                hit = outputs.get(id(args[0]))
                if hit is not None and hit[1] is args[0]:
                    pairs.append((hit[0], name))
            hooks.append(m.register_forward_pre_hook(pre))
    if batch_stats:
        warnings.warn(f"fuse_bn: {batch_stats} left unfused: BatchNorm2d(track_running_stats=False) uses the "
                      "statistics of each batch, also in eval mode, so it is not an affine map a conv can absorb",
                      stacklevel=2)
    device, dtype = _placement(model)
    x = torch.randn(input_size, device=device, dtype=dtype)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    consumers: dict[str, int] = {}
    for conv_name, _ in pairs:
        consumers[conv_name] = consumers.get(conv_name, 0) + 1
    fused = [(c, b) for c, b in pairs if consumers[c] == 1]
    for conv_name, bn_name in fused:
        _set_module(model, conv_name, _fused_conv(named[conv_name], named[bn_name]))
        _set_module(model, bn_name, nn.Identity())
    with torch.no_grad():
        expected = reference(x)
        err = (model(x) - expected).abs().max().item()
    if err > atol * max(1.0, expected.abs().max().item()):
        for conv_name, bn_name in fused:  # leave the model as it was
            _set_module(model, conv_name, named[conv_name])
            _set_module(model, bn_name, named[bn_name])
        raise RuntimeError(f"BN fusion changed the model's output (max abs diff {err:.3g}); a fused conv's output "
                           "is probably used by something besides its BatchNorm. The model was left unfused.")
    return model
