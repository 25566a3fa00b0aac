"""MobileNetV2 for CIFAR with plug points. Sandler, Howard, Zhu, Zhmoginov, Chen: "MobileNetV2: Inverted Residuals
and Linear Bottlenecks", CVPR 2018, arXiv 1801.04381.

CIFAR adaptation (as commonly used for 32 x 32 inputs): stem stride 1 and the second stage stride 1, so the feature
maps go 32 -> 32 -> 16 -> 8 -> 4 instead of ImageNet's 224 -> 7.

Plug points: ``conv=`` replaces the 3x3 depthwise conv of each inverted residual (the module receives
``groups=channels``), ``attn=`` goes after the projection BN and before the addition, ``block=`` replaces the whole
inverted residual as ``block(in_channels, out_channels, stride=s, expand_ratio=t)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .._validate import check_float, check_int, make_divisible
from .plugs import PlugSite, Plugs, plain_conv

# (expansion t, output channels c, repeats n, first stride s); strides of the first two changed for CIFAR.
CIFAR_SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """1x1 expand (BN, ReLU6) -> 3x3 depthwise (BN, ReLU6) -> 1x1 project (BN, linear) [-> attn] (+ x)."""

    def __init__(self, site: PlugSite, plugs: Plugs, expand_ratio: int):
        super().__init__()
        c_in, c_out, s, r = site.in_channels, site.out_channels, site.stride, site.resolution
        hidden = c_in * expand_ratio
        self.use_residual = s == 1 and c_in == c_out
        layers = []
        if expand_ratio != 1:
            layers += [plugs.conv(site.child(name=f"{site.name}.expand", role="expand", out_channels=hidden,
                                             kernel_size=1, stride=1, padding=0)),
                       nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        dw = site.child(name=f"{site.name}.dw", role="dw", in_channels=hidden, out_channels=hidden, kernel_size=3,
                        groups=hidden)
        layers += [plugs.conv(dw), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                   plugs.conv(site.child(name=f"{site.name}.project", role="project", in_channels=hidden,
                                         kernel_size=1, stride=1, padding=0, resolution=dw.out_resolution)),
                   nn.BatchNorm2d(c_out)]
        self.body = nn.Sequential(*layers)
        self.attn = plugs.attn(site.child(name=f"{site.name}.attn", role="attn", in_channels=c_out, stride=1,
                                          resolution=dw.out_resolution)) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(self.body(x))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 100, width_mult: float = 1.0, conv=None, attn=None, block=None,
                 conv_kw=None, attn_kw=None, block_kw=None, conv_where=None, image_size: int = 32):
        super().__init__()
        check_int("num_classes", num_classes, min_value=1)
        width_mult = check_float("width_mult", width_mult, min_value=0.0, min_inclusive=False)
        self.plugs = plugs = Plugs(conv, attn, block, conv_kw, attn_kw, block_kw, conv_where)
        c_in = make_divisible(32 * width_mult, 8)
        self.stem = nn.Sequential(plain_conv(PlugSite("stem.0", "stem", 3, c_in, 3, resolution=image_size)),
                                  nn.BatchNorm2d(c_in), nn.ReLU6(inplace=True))
        res, blocks = image_size, []
        for i, (t, c, n, s) in enumerate(CIFAR_SETTING):
            c_out = make_divisible(c * width_mult, 8)
            for j in range(n):
                site = PlugSite(f"blocks.{len(blocks)}", "block", c_in, c_out, 3, s if j == 0 else 1, stage=i,
                                block=j, resolution=res)
                custom = plugs.block(site, expand_ratio=t)
                blocks.append(custom or InvertedResidual(site, plugs, t))
                c_in, res = c_out, site.out_resolution
        self.blocks = nn.Sequential(*blocks)
        c_last = make_divisible(1280 * max(1.0, width_mult), 8)
        self.head = nn.Sequential(plain_conv(PlugSite("head.0", "head", c_in, c_last, 1, padding=0)),
                                  nn.BatchNorm2d(c_last), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_last, num_classes)

    @property
    def sites(self) -> list[PlugSite]:
        return list(self.plugs.sites)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def mobilenetv2(num_classes: int = 100, width_mult: float = 1.0, **kw) -> MobileNetV2:
    """MobileNetV2 for 32 x 32 inputs (2.3M parameters at width_mult=1 with 100 classes)."""
    return MobileNetV2(num_classes, width_mult, **kw)
