"""The part page "Dynamic convolutions at a glance" (book/part_dynamic.ipynb): every dynamic convolution of the part
measured against a plain 3x3 convolution on one layer, at batch 1 and at a large batch.

The list of modules is fixed (the part's eight chapters), not read from the registry: a module that is missing is an
error (``check_registered``), never a row that silently disappears from the page.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..measure import compare, peak_memory_mb, saved_activation_mb
from ..registry import available, create

# the part's modules, in chapter order (10 CondConv + DY-CNN, 11 WeightNet, 12 DGC, 13 DRConv, 14 DCD, 15 ODConv,
# 16 DCDC)
DYNAMIC = ("condconv", "dyconv", "weightnet", "dgc", "drconv", "dcd", "odconv", "dcdc")
BASELINE = "conv2d"


def check_registered(names: Sequence[str] = DYNAMIC, kind: str = "conv") -> tuple[str, ...]:
    """``names`` if every one is a registered module of ``kind``; otherwise a ``LookupError`` naming the missing
    ones (a part page compares a fixed list: a missing module is an error, never a row that silently disappears).
    The other part pages use it too."""
    registered = set(available(kind))
    missing = [n for n in names if n not in registered]
    if missing:
        raise LookupError(f"{kind} module(s) {', '.join(missing)} not in the registry: the part page compares "
                          f"all of {', '.join(names)}; registered: {', '.join(sorted(registered))}")
    return tuple(names)


def build(name: str, channels: int, device=None) -> nn.Module:
    """``create(name, channels, channels, 3)`` with its defaults, moved to the end of its schedule
    (``set_progress(1)`` where the module has one: temperature 1, pruning done), as a trained module is used."""
    m = create(name, channels, channels, 3)
    if hasattr(m, "set_progress"):
        m.set_progress(1.0)
    return m.to(device).eval()


def layer_costs(names: Sequence[str] = DYNAMIC, channels: int = 64, size: int = 32, batch: int = 1, device=None,
                warmup: int = 1, repeats: int = 6, rounds: int = 3):
    """One row per module (the plain conv first) on a (batch, channels, size, size) map: parameters, FLOPs
    (convolutions and matrix products, so routing, attention and kernel aggregation included), both as ratios to the
    plain conv too, the median latency of interleaved rounds and its ratio to the conv's, the CUDA peak memory of the
    forward (NaN on a CPU) and the memory a training step keeps for backward (any device; NaN where the module
    cannot train at this batch)."""
    import pandas as pd

    names = check_registered(names)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    modules = {n: build(n, channels, device) for n in (BASELINE, *names)}
    shape = (batch, channels, size, size)
    timed = compare(modules, baseline=BASELINE, input_size=shape, device=device, warmup=warmup, repeats=repeats,
                    rounds=rounds)
    rows = []
    for n, m in modules.items():
        # compare() counted the parameters and FLOPs already (one forward each module; not repeated here)
        rows.append({"module": n, "params": int(timed.loc[n, "params"]), "MFLOPs": timed.loc[n, "flops"] / 1e6,
                     "latency_ms": timed.loc[n, "latency_ms"], "latency_x": timed.loc[n, "latency_ms_ratio"],
                     "peak_MB": peak_memory_mb(m, shape, device) if device.type == "cuda" else float("nan"),
                     "saved_MB": saved_activation_mb(m, shape, device, nan_if_untrainable=True)})
    df = pd.DataFrame(rows).set_index("module")
    df.insert(1, "params_x", df["params"] / df.loc[BASELINE, "params"])
    df.insert(3, "MFLOPs_x", df["MFLOPs"] / df.loc[BASELINE, "MFLOPs"])
    df.attrs.update(batch=batch, size=size, channels=channels, device=str(device))
    return df
