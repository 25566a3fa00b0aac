"""Plots for the book: sampling patterns, receptive fields, training curves, result bars.

Importing this module sets the book's seaborn theme once. Every function draws on a given ``ax`` (or makes one)
and returns the figure, so chapters and ``widgets.explore`` frames use the same code.
"""
from __future__ import annotations

from typing import Iterable, Optional

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .receptive import sampling_offsets

sns.set_theme(context="notebook", style="whitegrid", palette="deep")

PALETTE = sns.color_palette("deep")


def _ax(ax=None, figsize=(4.5, 4)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax.figure, ax


def sampling_pattern(kernel_size: int, dilation: int = 1, ax=None, extent: Optional[int] = None, title=None):
    """The input pixels one output pixel of a k x k conv with dilation d reads, on the input grid."""
    fig, ax = _ax(ax)
    span = dilation * (kernel_size - 1) + 1
    extent = extent or span + 2
    half = extent // 2
    grid = np.zeros((extent, extent))
    for dy, dx in sampling_offsets(kernel_size, dilation):
        grid[int(dy + half), int(dx + half)] = 1.0
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=1.3, extent=(-half - .5, half + .5, half + .5, -half - .5))
    ax.set_xticks(range(-half, half + 1))
    ax.set_yticks(range(-half, half + 1))
    ax.tick_params(labelsize=7)
    ax.grid(False)
    for v in np.arange(-half - .5, half + 1):
        ax.axhline(v, color="0.85", lw=0.5)
        ax.axvline(v, color="0.85", lw=0.5)
    ax.set_xlabel("input column offset")
    ax.set_ylabel("input row offset")
    ax.set_title(title or f"{kernel_size}x{kernel_size} kernel, dilation {dilation}: span {span}")
    return fig


def heatmap(values: np.ndarray, ax=None, title: str = "", xlabel: str = "", ylabel: str = "", cmap="magma",
            colorbar: bool = True, **kw):
    fig, ax = _ax(ax)
    im = ax.imshow(values, cmap=cmap, **kw)
    ax.grid(False)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar:
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def erf_map(erf: np.ndarray, ax=None, title: str = "effective receptive field", radius: Optional[float] = None):
    """An effective-receptive-field map (pixels of the input); optionally with a circle of ``radius``."""
    fig = heatmap(erf, ax=ax, title=title, xlabel="input column", ylabel="input row", cmap="magma", vmin=0, vmax=1)
    if radius is not None:
        h, w = erf.shape
        fig.axes[0].add_patch(plt.Circle(((w - 1) / 2, (h - 1) / 2), radius, fill=False, color="c", lw=1.5, ls="--"))
    return fig


def history(records: Iterable[dict], metric: str = "test_top1", ax=None, title: Optional[str] = None):
    """Per-epoch ``metric`` of results records, one line per record (label: variant and seed)."""
    fig, ax = _ax(ax, figsize=(6, 4))
    for r in records:
        epochs = [h["epoch"] for h in r["history"]]
        ax.plot(epochs, [h[metric] for h in r["history"]], marker="o" if len(epochs) < 3 else None,
                label=f"{r['variant']} (seed {r['seed']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title or f"{metric.replace('_', ' ')} per epoch")
    ax.legend(fontsize=8)
    return fig


def result_bars(table, metric: str = "top1_mean", err: Optional[str] = "top1_std", ax=None,
                title: Optional[str] = None):
    """Mean ``metric`` per variant with +- ``err`` error bars, from ``results.table``."""
    fig, ax = _ax(ax, figsize=(6, 3.5))
    labels = [f"{b}\n{v}" if table["backbone"].nunique() > 1 else v for b, v in zip(table["backbone"], table["variant"])]
    yerr = table[err].fillna(0).to_numpy() if err and err in table else None
    ax.bar(labels, table[metric], yerr=yerr, capsize=4, color=PALETTE[: len(labels)])
    lo = float(np.nanmin(table[metric] - (yerr if yerr is not None else 0)))
    hi = float(np.nanmax(table[metric] + (yerr if yerr is not None else 0)))
    pad = max(0.5, 0.15 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title or metric.replace("_", " "))
    return fig
