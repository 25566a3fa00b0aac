"""The part page "Attention across layers and scales at a glance" (book/part_across.ipynb): the four network options
that hand state between blocks and stages (models/flow.py), measured on the whole ResNet-18 they change.

A per-layer table would miss the point of these modules: what they cost is the state they keep alive (every block
output of a stage, every stage output) and the extra work at the places they read it from. So each option is
measured as a whole network against the plain ResNet-18: parameters, FLOPs (matrix products included), latency, and
the memory one training step keeps for the backward pass. The list is fixed (the part's four chapters, DCANet on SE
beside plain SE): a missing option is an error naming it, never a row that silently disappears.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..measure import compare, saved_activation_mb
from ..models.resnet import resnet18

# name -> the resnet18 options; "se" is the network DCA-SE connects (its fair reference), "resnet18" the plain one
OPTIONS: dict[str, dict] = {
    "resnet18": {},
    "se": {"attn": "se"},
    "dca-se": {"attn": "se", "attn_connect": True},
    "sda": {"stage_attn": "sda"},
    "fpt": {"head": "fpt"},
    "afa": {"head": "afa"},
}
PART = tuple(OPTIONS)


def build(name: str, width: int = 64, num_classes: int = 100):
    """The ResNet-18 with option ``name``; a ``LookupError`` naming it if the library lacks what it needs."""
    if name not in OPTIONS:
        raise LookupError(f"{name!r} is not one of the part's options {', '.join(OPTIONS)}")
    try:
        return resnet18(num_classes=num_classes, width=width, **OPTIONS[name])
    except ValueError as e:  # an unregistered stage attention or head, or no connected form
        raise LookupError(f"option {name!r} ({OPTIONS[name]}) cannot be built: {e}") from e


def network_costs(names: Sequence[str] = PART, width: int = 64, batch: int = 1, device=None, warmup: int = 1,
                  repeats: int = 4, rounds: int = 3):
    """One row per option (the plain ResNet-18 first): parameters and FLOPs of one 32 x 32 image and their ratios
    to the plain network, the median latency of interleaved rounds at ``batch`` and its ratio (with the smallest
    and largest round ratio), and the MB a training step at ``batch`` keeps for backward, with its ratio."""
    import pandas as pd

    names = list(dict.fromkeys(["resnet18", *names]))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    nets = {n: build(n, width).to(device).eval() for n in names}
    shape = (batch, 3, 32, 32)
    t = compare(nets, baseline="resnet18", input_size=shape, device=device, warmup=warmup, repeats=repeats,
                rounds=rounds)
    # NaN where a network cannot train at this batch (a BatchNorm on pooled features at batch 1)
    saved = [saved_activation_mb(nets[n], shape, device, nan_if_untrainable=True) for n in names]
    df = pd.DataFrame({
        "params_M": t["params"] / 1e6, "GFLOPs": t["flops"] / 1e9 / batch,
        "latency_ms": t["latency_ms"], "latency_x": t["latency_ms_ratio"], "ratio_low": t["ratio_low"],
        "ratio_high": t["ratio_high"], "saved_MB": saved}, index=pd.Index(names, name="network"))
    df.insert(1, "params_x", df["params_M"] / df.loc["resnet18", "params_M"])
    df.insert(3, "GFLOPs_x", df["GFLOPs"] / df.loc["resnet18", "GFLOPs"])
    df["saved_x"] = df["saved_MB"] / df.loc["resnet18", "saved_MB"]
    df.attrs.update(batch=batch, width=width, device=str(device))
    return df
