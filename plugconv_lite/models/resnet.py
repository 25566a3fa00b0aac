"""CIFAR ResNets with plug points. He, Zhang, Ren, Sun: "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv 1512.03385.

``resnet18``: the ImageNet ResNet-18 adapted to 32 x 32 inputs (3x3 stem, stride 1, no max-pool; stages at 32, 16,
8, 4 pixels). ``resnet20`` / ``resnet56``: the paper's CIFAR networks (16-32-64 channels, 3 stages). All shortcuts
that change shape are a strided 1x1 conv + BN ("option B"; the paper's CIFAR nets used zero-padding "option A").

Plug points: ``conv=`` replaces the k x k convs in the residual blocks, ``attn=`` sits on the residual branch after
its last BN and before the addition (SE's standard position), ``block=`` replaces the whole block, ``mixer=`` puts a
token mixer (an attention-contract module: FocalNet's modulation, MSDA, SRA, ...) in place of each block's second
3x3 conv, the one that keeps the shape (C -> C, stride 1), where ``mixer_where`` (a ``conv_where`` preset or
predicate) allows; the first conv still changes the width and the stride.

Options that hand state from one block or stage to another (threaded through a ``Flow``, see ``flow.py``):
``attn_connect=True`` connects each block's attention to the previous one's (DCANet), ``stage_attn=`` replaces each
stage's output by an attention over its blocks' outputs (SDA), ``head=`` replaces the pool + linear classifier by a
head that reads every stage's output (FPT, AFA).

Model option ``ensemble=G`` of ``resnet18``: GENet's group ensemble (``models/genet.py``): from stage
``ensemble_from`` on every conv is grouped into G members with a grouped classifier; ``ensemble=1`` is the plain net.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from .._validate import check_int
from ..registry import resolve
from .flow import Flow, run_stage, uses_flow
from .plugs import PlugSite, Plugs, plain_conv


class BasicBlock(nn.Module):
    """relu(BN(conv2(relu(BN(conv1(x))))) [-> attn] + shortcut(x)).

    With a ``Flow`` (see ``flow.py``) a connected attention reads and updates it, and with ``flow.keep_blocks`` the
    sum before the final ReLU is recorded in ``flow.blocks`` (a stage attention selects over those)."""
    uses_flow = True

    def __init__(self, site: PlugSite, plugs: Plugs):
        super().__init__()
        c_in, c_out, s, r = site.in_channels, site.out_channels, site.stride, site.resolution
        conv1 = site.child(name=f"{site.name}.conv1", role="conv1", kernel_size=3)
        self.conv1 = plugs.conv(conv1)
        self.bn1 = nn.BatchNorm2d(c_out)
        conv2 = site.child(name=f"{site.name}.conv2", role="conv2", in_channels=c_out, stride=1, kernel_size=3,
                           resolution=conv1.out_resolution)
        mixer = plugs.mixer(conv2)
        self.conv2 = plugs.conv(conv2) if mixer is None else mixer
        self.bn2 = nn.BatchNorm2d(c_out)
        self.attn = plugs.attn(site.child(name=f"{site.name}.attn", role="attn", in_channels=c_out, stride=1,
                                          resolution=conv1.out_resolution)) or nn.Identity()
        self.shortcut = nn.Identity()
        if s != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                plugs.conv(site.child(name=f"{site.name}.shortcut.0", role="shortcut", kernel_size=1, padding=0,
                                      resolution=r)),
                nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, flow: Optional[Flow] = None) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.attn(out, flow) if uses_flow(self.attn) else self.attn(out)
        out = out + self.shortcut(x)
        if flow is not None and flow.keep_blocks:
            flow.blocks.append(out)
            return torch.relu(out)  # not in place: the recorded tensor must keep the values before the ReLU
        return self.relu(out)


class CifarResNet(nn.Module):
    """Stem (3x3 conv, BN, ReLU) -> stages of residual blocks -> global average pool -> linear classifier."""

    def __init__(self, layers: Sequence[int], widths: Sequence[int], num_classes: int = 100, conv=None, attn=None,
                 block=None, conv_kw=None, attn_kw=None, block_kw=None, conv_where=None, in_channels: int = 3,
                 image_size: int = 32, attn_connect: bool = False, stage_attn=None, stage_attn_kw=None, head=None,
                 head_kw=None, mixer=None, mixer_kw=None, mixer_where=None,
                 stage_groups: Optional[Sequence[int]] = None, stem_width: Optional[int] = None):
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers (length {len(layers)}) and widths (length {len(widths)}) must match")
        for i, (n, w) in enumerate(zip(layers, widths)):
            check_int(f"layers[{i}]", n, min_value=1)
            check_int(f"widths[{i}]", w, min_value=1)
        check_int("num_classes", num_classes, min_value=1)
        if not isinstance(attn_connect, bool):
            raise ValueError(f"attn_connect={attn_connect!r} must be True or False")
        # conv groups per stage (every conv of the stage's blocks, shortcut included): GENet's members, models/genet.py
        stage_groups = [1] * len(layers) if stage_groups is None else list(stage_groups)
        stem_width = widths[0] if stem_width is None else stem_width   # GENet widens layer1 but not the stem
        self.plugs = plugs = Plugs(conv, attn, block, conv_kw, attn_kw, block_kw, conv_where, attn_connect, mixer,
                                   mixer_kw, mixer_where)
        self.stem = nn.Sequential(
            plain_conv(PlugSite("stem.0", "stem", in_channels, stem_width, 3, resolution=image_size)),
            nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        c_in, res = stem_width, image_size
        stages = []
        for i, (n, c_out) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                site = PlugSite(f"layer{i + 1}.{j}", "block", c_in, c_out, 3, stride, groups=stage_groups[i],
                                stage=i, block=j, resolution=res)
                blocks.append(plugs.block(site) or BasicBlock(site, plugs))
                c_in, res = c_out, site.out_resolution
            stages.append(nn.Sequential(*blocks))
        if mixer is not None and not plugs.mixers:
            raise ValueError(f"mixer={mixer!r} was placed nowhere: mixer_where={mixer_where!r} and the mixer's "
                             f"from_site left out every block's second conv")
        self.layer1, self.layer2, self.layer3 = stages[0], stages[1], stages[2]
        if len(stages) > 3:
            self.layer4 = stages[3]
        self.stages = len(stages)
        self.stage_attn = None
        if stage_attn is not None:
            for stage in stages:
                if not all(uses_flow(b) for b in stage):
                    raise ValueError(f"stage_attn={stage_attn!r} needs blocks that record their outputs (the "
                                     f"model's BasicBlock), not block={block!r}")
            factory, kw = resolve(stage_attn, "stage"), _kw(stage_attn_kw, "stage_attn_kw")
            self.stage_attn = nn.ModuleList(factory(w, n, **kw) for n, w in zip(layers, widths))
        elif stage_attn_kw is not None:
            raise ValueError("stage_attn_kw is given without stage_attn")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = None
        if head is not None:  # the head has its own classifier: no pool + linear beside it
            self.head = resolve(head, "head")(list(widths), num_classes, **_kw(head_kw, "head_kw"))
            self.fc = None
        else:
            if head_kw is not None:
                raise ValueError("head_kw is given without head")
            self.fc = nn.Linear(c_in, num_classes)
        self.threads_flow = attn_connect or self.stage_attn is not None or self.head is not None

    @property
    def sites(self) -> list[PlugSite]:
        """Every plug site the builder visited (plugged or not), in construction order."""
        return list(self.plugs.sites)

    def features(self, x: torch.Tensor, flow: Optional[Flow] = None) -> torch.Tensor:
        """The last stage's output; with a ``flow``, the state is threaded through every block and stage."""
        x = self.stem(x)
        for i in range(self.stages):
            stage = getattr(self, f"layer{i + 1}")
            if flow is None:
                x = stage(x)
            else:
                x = run_stage(stage, x, flow, None if self.stage_attn is None else self.stage_attn[i])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.threads_flow:
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))
        flow = Flow(keep_blocks=self.stage_attn is not None)
        x = self.features(x, flow)
        if self.head is not None:
            return self.head(flow.stages)
        return self.fc(torch.flatten(self.pool(x), 1))


def _kw(kw, what: str) -> dict:
    if kw is None:
        return {}
    if not isinstance(kw, dict):
        raise ValueError(f"{what}={kw!r} must be a dict")
    return dict(kw)


def resnet18(num_classes: int = 100, width: int = 64, conv=None, attn=None, block=None, conv_kw=None, attn_kw=None,
             block_kw=None, conv_where=None, ensemble: int = 1, ensemble_from: Optional[int] = None,
             ensemble_widen: Optional[float] = None, ensemble_loss: str = "average", **options) -> CifarResNet:
    """CIFAR ResNet-18: stages of 2 BasicBlocks at widths (w, 2w, 4w, 8w); 11.2M parameters at w=64. ``options``:
    ``attn_connect``, ``stage_attn`` (+ ``stage_attn_kw``), ``head`` (+ ``head_kw``), ``mixer`` (+ ``mixer_kw``,
    ``mixer_where``), see ``CifarResNet``.

    ``ensemble=G > 1`` makes it a GENet group ensemble of G members (``models/genet.py``, ``EnsembleResNet``):
    stages ``ensemble_from`` (1-4, default 4) and later grouped and widened by ``ensemble_widen``."""
    check_int("width", width, min_value=1)
    layers, widths = [2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width]
    plug_kw = dict(conv=conv, attn=attn, block=block, conv_kw=conv_kw, attn_kw=attn_kw, block_kw=block_kw,
                   conv_where=conv_where, **options)
    if check_int("ensemble", ensemble, min_value=1) > 1:
        from .genet import EnsembleResNet
        return EnsembleResNet(layers, widths, num_classes, ensemble=ensemble, ensemble_from=ensemble_from,
                              ensemble_widen=ensemble_widen, ensemble_loss=ensemble_loss, **plug_kw)
    for name, value, off in (("ensemble_from", ensemble_from, None), ("ensemble_widen", ensemble_widen, None),
                             ("ensemble_loss", ensemble_loss, "average")):
        if value != off:
            raise ValueError(f"{name}={value!r} needs ensemble > 1 (ensemble=1 is the plain network)")
    return CifarResNet(layers, widths, num_classes, **plug_kw)


def _cifar_resnet(depth: int, num_classes, width, **kw) -> CifarResNet:
    n = (depth - 2) // 6
    check_int("width", width, min_value=1)
    return CifarResNet([n, n, n], [width, 2 * width, 4 * width], num_classes, **kw)


def resnet20(num_classes: int = 100, width: int = 16, **kw) -> CifarResNet:
    """He et al.'s CIFAR ResNet-20 (3 stages of 3 BasicBlocks, 16-32-64 channels)."""
    return _cifar_resnet(20, num_classes, width, **kw)


def resnet56(num_classes: int = 100, width: int = 16, **kw) -> CifarResNet:
    """He et al.'s CIFAR ResNet-56 (3 stages of 9 BasicBlocks, 16-32-64 channels)."""
    return _cifar_resnet(56, num_classes, width, **kw)
