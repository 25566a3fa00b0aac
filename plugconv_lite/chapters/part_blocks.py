"""The part page "Blocks and ensembles at a glance" (book/part_blocks.ipynb): every module of the part next to the
layer or block it replaces, at one place of its network, measured in parameters, FLOPs and latency.

The modules of this part are sold as cheaper: a half-depthwise conv, a block with depthwise convs at its wide ends,
a grouped ensemble. Each pair below is built at the place where its chapter plugs the module in, so that the ratios
are the ones the chapter's network sees. The list is fixed (the part's chapters): a module that is missing from the
library is an error naming it, never a row that silently disappears.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..measure import compare, saved_activation_mb
from ..registry import available, create


def _basic_block(c: int, size: int) -> nn.Module:
    from ..models.plugs import PlugSite, Plugs
    from ..models.resnet import BasicBlock
    return BasicBlock(PlugSite("layer1.1", "block", c, c, 3, 1, stage=0, block=1, resolution=size), Plugs())


def _mobilenet_pair(c: int, size: int, expand_ratio: int = 6) -> tuple[nn.Module, nn.Module]:
    """MobileNetV2's inverted residual and the sandglass block at the same block site (c -> c, stride 1)."""
    from ..models.mobilenetv2 import InvertedResidual
    from ..models.plugs import PlugSite, Plugs
    site = PlugSite("blocks.8", "block", c, c, 3, 1, stage=3, block=1, resolution=size)
    return InvertedResidual(site, Plugs(), expand_ratio), Plugs(block="sandglass").block(site,
                                                                                        expand_ratio=expand_ratio)


def _genet_pair(width: int) -> tuple[nn.Module, nn.Module]:
    """ResNet-18's last stage, plain and as chapter 30's GENet variant builds it (grouped members from layer4 on)."""
    from ..models.resnet import resnet18
    from .genet import GENET
    torch.manual_seed(0)
    return resnet18(width=width).layer4, resnet18(width=width, **GENET.model_kw).layer4


# name -> (what it replaces, a function building (replaced, module), the input shape without the batch). The places:
# a ResNet-18 stage-1 conv / block (64 channels, 32 x 32), MobileNetV2's 64-channel stage (8 x 8), ResNet-18's last
# stage (256 channels in, 8 x 8).
PAIRS: dict[str, tuple[str, Callable[[], tuple[nn.Module, nn.Module]], tuple[int, int, int]]] = {
    "sandglass": ("inverted residual", lambda: _mobilenet_pair(64, 8), (64, 8, 8)),
    "genet": ("layer4", lambda: _genet_pair(64), (256, 8, 8)),
    "gsconv": ("3x3 conv", lambda: (create("conv2d", 64, 64, 3), create("gsconv", 64, 64, 3)), (64, 32, 32)),
    "vovgscsp": ("basic block", lambda: (_basic_block(64, 32), create("vovgscsp", 64, 64)), (64, 32, 32)),
    "cg": ("basic block", lambda: (_basic_block(64, 32), create("cg", 64, 64)), (64, 32, 32)),
}
PART = tuple(PAIRS)


def check_available(names: Sequence[str] = PART) -> tuple[str, ...]:
    """``names`` if the library has each of them; otherwise a ``LookupError`` naming the missing ones."""
    registered = set(available())
    missing = [n for n in names if n not in PAIRS or (n != "genet" and n not in registered)]
    if "genet" in names and "genet" not in missing:
        try:
            _genet_pair(8)
        except TypeError:  # the builder has no ``ensemble`` option
            missing.append("genet")
    if missing:
        raise LookupError(f"module(s) {', '.join(missing)} of the part are not in the library: the part page "
                          f"compares all of {', '.join(names)}")
    return tuple(names)


def pair_costs(names: Sequence[str] = PART, batch: int = 1, device=None, warmup: int = 1, repeats: int = 6,
               rounds: int = 3):
    """One row per module: what it replaces, the parameters and FLOPs of both and their ratios, the median latency
    of interleaved rounds (module / replaced) with the smallest and largest round ratio, and the memory a training
    step keeps for backward, of the module and of what it replaces (a lone conv keeps nothing but its input,
    which does not count)."""
    import pandas as pd

    names = check_available(names)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for n in names:
        replaces, build, shape = PAIRS[n]
        torch.manual_seed(0)
        plain, module = (m.to(device).eval() for m in build())
        size = (batch, *shape)
        t = compare({"replaced": plain, n: module}, baseline="replaced", input_size=size, device=device,
                    warmup=warmup, repeats=repeats, rounds=rounds)
        rows.append({"module": n, "replaces": replaces, "at": "×".join(map(str, shape)),
                     "params": int(t.loc[n, "params"]), "params_x": t.loc[n, "params"] / t.loc["replaced", "params"],
                     "MFLOPs": t.loc[n, "flops"] / 1e6, "MFLOPs_x": t.loc[n, "flops"] / t.loc["replaced", "flops"],
                     "latency_ms": t.loc[n, "latency_ms"], "latency_x": t.loc[n, "latency_ms_ratio"],
                     "ratio_low": t.loc[n, "ratio_low"], "ratio_high": t.loc[n, "ratio_high"],
                     "saved_MB": saved_activation_mb(module, size, device, nan_if_untrainable=True),
                     "saved_MB_replaced": saved_activation_mb(plain, size, device, nan_if_untrainable=True)})
    df = pd.DataFrame(rows).set_index("module")
    df.attrs.update(batch=batch, device=str(device))
    return df


def faster_slower(df) -> dict[str, list[str]]:
    """The modules whose every interleaved round had them faster (ratio < 1) or slower (> 1) than what they
    replace, and those inside the timing noise."""
    out = {"faster": [], "slower": [], "noise": []}
    for n, r in df.iterrows():
        out["faster" if r["ratio_high"] < 1 else "slower" if r["ratio_low"] > 1 else "noise"].append(n)
    return out
