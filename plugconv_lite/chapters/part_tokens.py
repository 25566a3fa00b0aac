"""The part page "Token mixers at a glance" (book/part_tokens.ipynb): the token mixers of the vision-transformer papers
(issue 10's modules) against the 3x3 convolution they would replace, as the feature map grows.

Each mixer is built at 64 channels with its defaults and measured on square maps of growing side: parameters, FLOPs
(matrix products included, so the attention maps count), forward latency and the memory a training step keeps for the
backward pass. From the FLOPs at the two largest sizes the page reads how the cost grows with the number of pixels N
(the exponent of N: 1 for a linear mixer, 2 for full attention), and from an impulse response how far one output
position reaches (local, a dilated neighbourhood, or the whole map). The list is fixed: a module missing from the
registry is an error naming it, never a row that silently disappears.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ..measure import compare, saved_activation_mb
from ..registry import available, create

BASELINE = "conv 3x3"
# display name -> (registry name, constructor keywords); attention-contract mixers take (channels, **kw), blocks
# (channels, channels, **kw). SRA twice: full attention (R = 1) and PVTv2's linear variant.
MIXERS: dict[str, tuple[str, dict]] = {
    "sra": ("sra", {}),
    "sra linear": ("sra", {"linear": True}),
    "msda": ("msda", {}),
    "focal": ("focal", {}),
    "fcvit": ("fcvit", {}),
    "lscm": ("lscm", {}),
    "ncb": ("ncb", {}),
    "ntb": ("ntb", {}),
    "coatnet": ("coatnet", {}),
}
PART = tuple(MIXERS)


def check_registered(names: Sequence[str] = PART) -> tuple[str, ...]:
    """``names`` if each is one of the part's mixers and registered; otherwise a ``LookupError`` naming them."""
    registered = set(available())
    missing = [n for n in names if n not in MIXERS or MIXERS[n][0] not in registered]
    if missing:
        raise LookupError(f"token mixer(s) {', '.join(missing)} not available: the part page compares all of "
                          f"{', '.join(names)}")
    return tuple(names)


def build(name: str, channels: int = 64, spec: Optional[tuple[str, dict]] = None) -> nn.Module:
    """The mixer ``name`` (or the 3x3 conv) at ``channels`` in and out, in eval mode; ``spec`` (registry name,
    keywords) builds a setting outside ``MIXERS`` (a chapter's own hyperparameters) under that name."""
    if name == BASELINE:
        return create("conv2d", channels, channels, 3).eval()
    reg, kw = MIXERS[name] if spec is None else spec
    args = (channels,) if _kind(reg) == "attention" else (channels, channels)
    return create(reg, *args, **kw).eval()


def _kind(reg: str) -> str:
    from ..registry import get
    return get(reg).kind


def cost_vs_size(names: Sequence[str] = PART, sizes: Sequence[int] = (8, 16, 32, 64), channels: int = 64,
                 batch: int = 1, device=None, repeats: int = 2, rounds: int = 2,
                 extra: Optional[Mapping[str, tuple[str, dict]]] = None):
    """A long table, one row per (module, map side): parameters, FLOPs, median forward latency (ms) and the MB one
    training step keeps for backward, for the 3x3 conv and every mixer. ``extra`` adds settings by name, each a
    (registry name, keywords) pair: a chapter's own hyperparameters measured in the same sweep (SRA's ratios)."""
    import pandas as pd

    names = check_registered(names)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    modules = {n: build(n, channels).to(device) for n in (BASELINE, *names)}
    for n, spec in (extra or {}).items():
        if n in modules:
            raise ValueError(f"extra setting {n!r} repeats a name already measured")
        modules[n] = build(n, channels, spec).to(device)
    rows = []
    for s in sizes:
        shape = (batch, channels, s, s)
        t = compare(modules, baseline=BASELINE, input_size=shape, device=device, warmup=1, repeats=repeats,
                    rounds=rounds)
        for n, m in modules.items():
            rows.append({"module": n, "side": s, "N": s * s, "params": int(t.loc[n, "params"]),
                         "MFLOPs": t.loc[n, "flops"] / 1e6 / batch, "latency_ms": t.loc[n, "latency_ms"],
                         "saved_MB": saved_activation_mb(m, shape, device, nan_if_untrainable=True)})
    return pd.DataFrame(rows)


def growth_exponent(table, column: str = "MFLOPs") -> dict[str, float]:
    """Per module, the exponent a of cost ~ N^a between the two largest map sizes (from ``cost_vs_size``)."""
    out = {}
    for n, g in table.groupby("module", sort=False):
        g = g.sort_values("N")
        (n1, c1), (n2, c2) = g[["N", column]].to_numpy()[-2:]
        out[n] = math.log(c2 / c1) / math.log(n2 / n1)
    return out


def randomised(m: nn.Module, seed: int = 0) -> nn.Module:
    """``m`` in float64 with every parameter drawn afresh (weights N(0, 0.3^2), vectors N(0, 0.5^2)), so that no path
    is switched off by a zero-initialised layer."""
    m = m.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.dim() > 1 else 0.5))
    return m


def reach_map(m: nn.Module, side: int = 17, channels: int = 16) -> torch.Tensor:
    """|d y[centre] / d x| summed over channels, (side, side): how strongly the centre output of ``m`` (any module
    with the attention contract, used as it is) reads each input position, on a random float64 input."""
    m = m.double().eval()
    x = torch.randn(1, channels, side, side, dtype=torch.float64, requires_grad=True)
    c = side // 2
    m(x)[0, :, c, c].sum().backward()
    return x.grad[0].abs().sum(0)


def reach(name: str, side: int = 17, channels: int = 16) -> dict:
    """How far one output position reads: the gradient of the centre output of a fresh mixer (parameters moved
    off their initial values, float64) with respect to the input. Returns the number of input positions reached,
    their largest Chebyshev distance from the centre, and a word: "global" (every position), "dilated" (gaps inside
    the reached square), or "local"."""
    torch.manual_seed(0)
    hit = reach_map(randomised(build(name, channels)), side, channels) > 0
    c = side // 2
    ys, xs = torch.nonzero(hit, as_tuple=True)
    radius = int(max((ys - c).abs().max(), (xs - c).abs().max()))
    square = (2 * radius + 1) ** 2
    kind = "global" if bool(hit.all()) else ("dilated" if int(hit.sum()) < square else "local")
    return {"reached": int(hit.sum()), "of": side * side, "radius": radius, "reach": kind}


def plot_growth(table, names: Sequence[str], columns=("MFLOPs", "latency_ms")):
    """Log-log panels of each column against the number of pixels N, one line per module (the 3x3 conv dashed),
    with N^1 and N^2 guide slopes. Returns the figure."""
    import matplotlib.pyplot as plt

    from ..viz import PALETTE, compact_text
    fig, axes = plt.subplots(1, len(columns), figsize=(6.8, 3.4), layout="constrained", squeeze=False)
    order = [BASELINE, *names]
    for ax, col in zip(axes[0], columns):
        for i, n in enumerate(order):
            g = table[table.module == n].sort_values("N")
            style = dict(ls="--", color="0.3", lw=1.2) if n == BASELINE else dict(color=PALETTE[i % len(PALETTE)],
                                                                                 lw=1.2)
            ax.plot(g["N"], g[col], marker="o", ms=3, label=n, **style)
        base = table[table.module == BASELINE].sort_values("N")
        n0, c0 = base["N"].iloc[0], base[col].iloc[0]
        ns = base["N"].to_numpy(float)
        for power, ls in ((1, ":"), (2, "-.")):  # guide slopes through the conv's first point
            ax.plot(ns, c0 * (ns / n0) ** power, ls=ls, color="0.6", lw=0.8)
            ax.annotate(f"∝ N{'²' if power == 2 else ''}", (ns[-1], c0 * (ns[-1] / n0) ** power), fontsize=7,
                        color="0.4", ha="right", va="bottom")
        ax.set(xscale="log", yscale="log", xlabel="pixels N (map side²)", title=col)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return compact_text(fig)
