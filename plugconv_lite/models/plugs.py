"""How a model builder asks for the module at each plug point.

A ``PlugSite`` describes one place in a network where a conv, an attention module or a block goes: its name, its
role, its channels, stride and the feature-map size it sees (for a 32 x 32 input). Builders hand the site to a
``Plugs`` object, which returns the plain layer or the plugged one.

A registered module may define a classmethod ``from_site(site, **kw)``; it is then built from the site, which is how
position-dependent modules are configured (PyConv's kernel pyramid follows the feature-map size, IC-Conv takes one
dilation pattern per layer). ``conv_kw`` / ``attn_kw`` / ``block_kw`` may also be a callable ``site -> dict``.

An attention module's ``from_site`` may also return None to decline a site: the block then has no attention there.
That is how a module whose cost depends on the map size keeps itself where it is affordable (DANet's position
attention stores an (HW) x (HW) matrix, so its ``from_site`` builds it only on maps of at most ``max_resolution``
pixels a side). The rule lives in the module, not in the caller, because it is a property of the module; a JSON
keyword (``attn_kw={"max_resolution": 16}``) changes it, which an experiment's hashed config can record and a
callable ``attn_kw`` could not.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Union

import torch.nn as nn

from .._validate import check_int
from ..receptive import conv_output_size
from ..conv.base import Conv2d
from ..registry import resolve


@dataclass(frozen=True)
class PlugSite:
    name: str                      # dotted module name in the model, e.g. "layer2.0.conv1"
    role: str                      # "stem", "conv1", "conv2", "shortcut", "dw", "attn", "block", "conv" ...
    in_channels: int
    out_channels: int
    kernel_size: int = 3
    stride: int = 1
    padding: Optional[int] = None
    dilation: int = 1
    groups: int = 1
    bias: bool = False
    stage: int = -1                # 0-based stage index; -1 outside the stages (stem, head) or unknown
    block: int = -1                # block index inside the stage
    resolution: Optional[int] = None   # input H (= W) at this site for a 32 x 32 image; None if unknown

    @property
    def out_resolution(self) -> Optional[int]:
        if self.resolution is None:
            return None
        pad = self.dilation * (self.kernel_size - 1) // 2 if self.padding is None else self.padding
        return conv_output_size(self.resolution, self.kernel_size, self.stride, pad, self.dilation)

    def child(self, **changes) -> "PlugSite":
        return replace(self, **changes)

    def before_stage(self, first_stage: int) -> bool:
        """Whether the site lies in a stage before ``first_stage`` (stages numbered 1-4 as in the papers; ``stage`` is
        0-based): the test a module's ``from_site`` uses to decline the early, large maps. A site outside the stages
        (stage -1) is never before."""
        check_int("first_stage", first_stage, min_value=1)
        return 0 <= self.stage < first_stage - 1


Where = Union[None, str, Callable[[PlugSite], bool]]
def _kxk(s: PlugSite) -> bool:
    """A k x k conv (k > 1) in the blocks: never the stem, never a 1x1 projection."""
    return s.kernel_size > 1 and s.role != "stem"


_WHERE_PRESETS: dict[str, Callable[[PlugSite], bool]] = {
    "kxk": _kxk,  # the default
    "strided": lambda s: s.stride > 1,
    "unstrided": lambda s: s.stride == 1 and _kxk(s),
    "all": lambda s: True,
    # the k x k block convs of the later stages only (stages numbered 1-4 as in the papers, ResNet's layer1-4;
    # site.stage is 0-based): for modules whose cost grows with the map (per-position kernels, attention over the
    # pixels), which the 32 x 32 stage 1 makes most expensive
    "stages2-4": lambda s: _kxk(s) and s.stage >= 1,
    "stages3-4": lambda s: _kxk(s) and s.stage >= 2,
}
# one stage's k x k convs ("layer3": ResNet's layer3, stage index 2): for a module too costly for every stage
_WHERE_PRESETS.update({f"layer{i + 1}": (lambda s, i=i: _kxk(s) and s.stage == i) for i in range(4)})


def where_predicate(where: Where, what: str = "conv_where") -> Callable[[PlugSite], bool]:
    if where is None:
        return _WHERE_PRESETS["kxk"]
    if isinstance(where, str):
        if where not in _WHERE_PRESETS:
            raise ValueError(f"{what}={where!r} must be a callable or one of {sorted(_WHERE_PRESETS)}")
        return _WHERE_PRESETS[where]
    if callable(where):
        return where
    raise ValueError(f"{what}={where!r} must be None, a preset name or a callable(site) -> bool")


def _kwargs(kw, site: PlugSite, what: str) -> dict:
    if kw is None:
        return {}
    if callable(kw):
        kw = kw(site)
    if not isinstance(kw, dict):
        raise ValueError(f"{what}={kw!r} must be a dict or a callable(site) -> dict")
    return dict(kw)


def build_conv(factory, site: PlugSite, kw: dict) -> nn.Module:
    """Build a conv-contract module for ``site`` (``from_site`` if the factory has one)."""
    if hasattr(factory, "from_site"):
        return factory.from_site(site, **kw)
    return factory(site.in_channels, site.out_channels, site.kernel_size, stride=site.stride, padding=site.padding,
                   dilation=site.dilation, groups=site.groups, bias=site.bias, **kw)


def build_attention(factory, site: PlugSite, kw: dict) -> Optional[nn.Module]:
    """Build an attention-contract module for ``site`` (``from_site`` if the factory has one; it may decline: None),
    on ``site.out_channels`` channels. Used for the ``attn=`` and the ``mixer=`` plug points."""
    if hasattr(factory, "from_site"):
        return factory.from_site(site, **kw)
    return factory(site.out_channels, **kw)


def plain_conv(site: PlugSite) -> nn.Conv2d:
    """The model's own conv at ``site`` (Kaiming-normal fan-out init, as torchvision's ResNet)."""
    conv = Conv2d(site.in_channels, site.out_channels, site.kernel_size, site.stride, site.padding, site.dilation,
                  site.groups, site.bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class Plugs:
    """The plug configuration of one model: which conv / attention / block goes where."""

    def __init__(self, conv=None, attn=None, block=None, conv_kw=None, attn_kw=None, block_kw=None,
                 conv_where: Where = None, attn_connect: bool = False, mixer=None, mixer_kw=None,
                 mixer_where: Where = None):
        self.conv_factory = None if conv is None else resolve(conv, "conv")
        # a token mixer (an attention-contract module) in place of the block's shape-keeping k x k conv
        self.mixer_factory = None if mixer is None else resolve(mixer, "attention")
        if mixer is None and (mixer_kw is not None or mixer_where is not None):
            raise ValueError("mixer_kw / mixer_where are given without mixer")
        self.mixer_kw, self.mixer_where = mixer_kw, where_predicate(mixer_where, "mixer_where")
        self.mixers = 0                     # how many sites took the mixer
        self.attn_factory = None if attn is None else resolve(attn, "attention")
        # DCANet: each attention module is built as the connected form of ``attn`` and told the channels of the
        # previous one it connects to (None for the first; the builder visits sites in forward order)
        self.attn_connect, self._prev_attn_channels = attn_connect, None
        if attn_connect:
            if attn is None:
                raise ValueError("attn_connect=True needs an attention module: pass attn=")
            from ..attention.dca import connected_form
            self.attn_factory = connected_form(attn)
        self.block_factory = None if block is None else resolve(block, "block")
        self.conv_kw, self.attn_kw, self.block_kw = conv_kw, attn_kw, block_kw
        self.conv_where = where_predicate(conv_where)
        self.sites: list[PlugSite] = []     # every site the builder asked about, plugged or not

    def conv(self, site: PlugSite) -> nn.Module:
        self.sites.append(site)
        if self.conv_factory is None or not self.conv_where(site):
            return plain_conv(site)
        return build_conv(self.conv_factory, site, _kwargs(self.conv_kw, site, "conv_kw"))

    def mixer(self, site: PlugSite) -> Optional[nn.Module]:
        """The token mixer for ``site`` (a k x k conv that keeps the shape: in = out channels, stride 1), or None
        (none asked for, ``mixer_where`` leaves the site out, or the mixer's ``from_site`` declines it): the caller
        then builds its conv with ``conv()``. The mixer replaces the conv, so its own residual form, norm and reach
        stand in for the conv's 3 x 3 window."""
        if self.mixer_factory is None or not self.mixer_where(site):
            return None
        if site.in_channels != site.out_channels or site.stride != 1 or site.groups != 1:
            raise ValueError(f"mixer= replaces a conv that keeps the shape (in_channels = out_channels, stride 1, "
                             f"groups 1); site {site.name} has {site.in_channels} -> {site.out_channels}, stride "
                             f"{site.stride}, groups {site.groups}")
        module = build_attention(self.mixer_factory, site, _kwargs(self.mixer_kw, site, "mixer_kw"))
        self.mixers += module is not None
        return module

    def attn(self, site: PlugSite) -> Optional[nn.Module]:
        """The attention module for ``site``, or None (no attention there: none asked for, or declined)."""
        if self.attn_factory is None:
            return None
        self.sites.append(site)
        kw = _kwargs(self.attn_kw, site, "attn_kw")
        if self.attn_connect:
            module = self.attn_factory(site.out_channels, prev_channels=self._prev_attn_channels, **kw)
            self._prev_attn_channels = site.out_channels
            return module
        return build_attention(self.attn_factory, site, kw)

    def block(self, site: PlugSite, **defaults) -> Optional[nn.Module]:
        """The plugged block for ``site``, or None for the model's own; ``defaults`` are the model's block
        settings at this site (e.g. MobileNetV2's ``expand_ratio``), overridable through ``block_kw``."""
        if self.block_factory is None:
            return None
        self.sites.append(site)
        kw = {**defaults, **_kwargs(self.block_kw, site, "block_kw")}
        if hasattr(self.block_factory, "from_site"):
            return self.block_factory.from_site(site, **kw)
        return self.block_factory(site.in_channels, site.out_channels, stride=site.stride, **kw)
