"""Model surgery for any network, not only ours: swap convs, add attention, fold re-parameterized modules.

``where`` selects modules; it may be None (the default rule), a regular expression matched against the full dotted
module name, a collection of names, or a callable ``(name, module) -> bool``.
"""
from __future__ import annotations

import copy
import re
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
    """Square k x k convs with k > 1 and groups = 1."""
    k = m.kernel_size
    return k[0] == k[1] and k[0] > 1 and m.groups == 1


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


def _input_resolutions(model: nn.Module, names: list[str], input_size) -> dict[str, int]:
    if input_size is None:
        return {}
    found, hooks = {}, []
    for name in names:
        def hook(mod, args, name=name):
            found[name] = args[0].shape[-2]
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters(), None)
        with torch.no_grad():
            model(torch.zeros(input_size, device=p.device if p is not None else None))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def swap_convs(model: nn.Module, name_or_factory, where: Where = None, conv_kw=None,
               input_size: Optional[tuple] = None) -> tuple[nn.Module, list[str]]:
    """Replace every selected ``nn.Conv2d`` of ``model`` (in place) by a conv-contract module.

    The new module gets the old one's channels, kernel size, stride, padding, dilation, groups and bias flag, plus
    ``conv_kw`` (a dict or a callable ``PlugSite -> dict``). With ``input_size`` the sites also carry the input
    resolution each conv sees (needed by position-dependent modules such as PyConv's pyramid).
    Returns the model and the names of the replaced convs.
    """
    factory = resolve(name_or_factory, "conv")
    select = _where(where, _default_swap)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and select(n, m) and not _inside_plug_module(model, n)]
    res = _input_resolutions(model, names, input_size)
    for name in names:
        m = model.get_submodule(name)
        if m.kernel_size[0] != m.kernel_size[1] or m.stride[0] != m.stride[1] or m.dilation[0] != m.dilation[1]:
            raise ValueError(f"conv {name!r} has a non-square kernel/stride/dilation; exclude it with where=")
        pad = m.padding if isinstance(m.padding, str) else m.padding[0]
        if isinstance(pad, str) or m.padding[0] != m.padding[1]:
            raise ValueError(f"conv {name!r} has padding={m.padding!r}; only symmetric integer padding is swapped")
        site = PlugSite(name, "conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], pad,
                        m.dilation[0], m.groups, m.bias is not None, resolution=res.get(name))
        new = build_conv(factory, site, _kwargs(conv_kw, site, "conv_kw"))
        new.to(device=m.weight.device)
        _set_module(model, name, new)
    return model, names


def _channels_of(m: nn.Module) -> Optional[int]:
    for attr in ("out_channels", "num_features", "channels"):
        if isinstance(getattr(m, attr, None), int):
            return getattr(m, attr)
    return None


def add_attention(model: nn.Module, name_or_factory, where: Where, attn_kw=None,
                  input_size: Optional[tuple] = (1, 3, 32, 32)) -> tuple[nn.Module, list[str]]:
    """Apply an attention module to the output of every selected module: ``m`` becomes ``Sequential(m, attn)``.

    The channel count comes from the module (``out_channels`` / ``num_features``) or from a probe forward pass with
    ``input_size``. A factory's ``from_site`` may decline a site (return None): that module is left as it is.
    Returns the model and the names of the modules that received attention.
    """
    factory = resolve(name_or_factory, "attention")
    select = _where(where, lambda n, m: False)
    names = [n for n, m in model.named_modules() if n and select(n, m) and not _inside_plug_module(model, n)]
    if not names:
        raise ValueError("where= selected no module of the model")
    channels = {n: _channels_of(model.get_submodule(n)) for n in names}
    unknown = [n for n, c in channels.items() if c is None]
    if unknown:
        if input_size is None:
            raise ValueError(f"cannot tell the channels of {unknown}; pass input_size= for a probe forward pass")
        found, hooks = {}, []
        for n in unknown:
            hooks.append(model.get_submodule(n).register_forward_hook(
                lambda mod, args, out, n=n: found.__setitem__(n, out.shape[1])))
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(input_size))
        finally:
            for h in hooks:
                h.remove()
        channels.update(found)
    plugged = []
    for n in names:
        m = model.get_submodule(n)
        site = PlugSite(n, "attn", channels[n], channels[n], 1)
        kw = _kwargs(attn_kw, site, "attn_kw")
        attn = factory.from_site(site, **kw) if hasattr(factory, "from_site") else factory(channels[n], **kw)
        if attn is None:  # from_site declined this site (see models/plugs.py)
            continue
        p = next(m.parameters(), None)
        _set_module(model, n, nn.Sequential(m, attn.to(p.device) if p is not None else attn))
        plugged.append(n)
    return model, plugged


def fold(model: nn.Module, bn: bool = False, input_size: Optional[tuple] = (1, 3, 32, 32)) -> nn.Module:
    """Replace (in place) every sub-module that has ``fold()`` by its folded equivalent (an ``nn.Conv2d``).

    With ``bn=True`` BatchNorm layers are then fused into the conv that feeds them (inference only; see
    ``fuse_bn``). Returns the model.
    """
    if callable(getattr(model, "fold", None)):
        raise ValueError("fold(model) folds the sub-modules of a network; call model.fold() on a single module")

    def visit(module: nn.Module) -> None:
        for child_name, child in module.named_children():
            if callable(getattr(child, "fold", None)):
                setattr(module, child_name, child.fold())
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
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode).to(conv.weight.device)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((b - bn.running_mean) * scale + shift)
    return fused


def fuse_bn(model: nn.Module, input_size: tuple = (1, 3, 32, 32), atol: float = 1e-4) -> nn.Module:
    """Fuse every eval-mode BatchNorm2d into the nn.Conv2d whose output it directly consumes (in place).

    Pairs are found by a probe forward pass (a BN whose input tensor is exactly a conv's output); the fused model
    is then checked against the original on a random input and a ``RuntimeError`` is raised if they differ (a conv
    output that was also used elsewhere). Puts the model in eval mode.
    """
    model.eval()
    reference = copy.deepcopy(model)
    outputs, pairs, hooks = {}, [], []
    named = dict(model.named_modules())
    for name, m in named.items():
        if type(m) is nn.Conv2d or (isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward):
            hooks.append(m.register_forward_hook(lambda mod, a, out, name=name: outputs.__setitem__(id(out), (name, out))))
        elif isinstance(m, nn.BatchNorm2d):
            def pre(mod, args, name=name):
                hit = outputs.get(id(args[0]))
                if hit is not None and hit[1] is args[0]:
                    pairs.append((hit[0], name))
            hooks.append(m.register_forward_pre_hook(pre))
    p = next(model.parameters())
    x = torch.randn(input_size, device=p.device)
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
