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
# figures are drawn at the size the book's column shows them (about 680 px): 100 dpi, at most ~6.8 inches wide
plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "figure.figsize": (6.4, 3.6)})

PALETTE = sns.color_palette("deep")


class _Source:
    """Syntax-highlighted source whose long lines wrap inside the column (with a hanging indent) instead of
    scrolling sideways; plain text where HTML is not rendered."""

    STYLE = (".plugconv-source pre {white-space: pre-wrap; overflow-wrap: anywhere; padding-left: 2.5em; "
             "text-indent: -2.5em; font-size: 0.85em;}")

    def __init__(self, code: str):
        self.code = code

    def _repr_html_(self) -> str:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        lines = highlight(self.code, PythonLexer(), HtmlFormatter(nowrap=True)).splitlines()
        # one <span> per line, so the hanging indent applies to each source line, not to the whole block
        body = "\n".join(f'<span style="display:block">{line or " "}</span>' for line in lines)
        return (f"<style>{self.STYLE}</style><div class=\"plugconv-source highlight\"><pre>{body}</pre></div>")

    def __repr__(self) -> str:
        return self.code


def source(obj):
    """The library's own source of ``obj`` (class, function or module), syntax-highlighted in a notebook; long
    lines wrap inside the book's column."""
    import inspect

    return _Source(inspect.getsource(obj))


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
    ticks = np.arange(-half, half + 1, max(1, half // 3))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticks(np.arange(-half - .5, half + 1), minor=True)
    ax.set_yticks(np.arange(-half - .5, half + 1), minor=True)
    ax.tick_params(labelsize=7, which="both", length=0)
    ax.grid(False)
    ax.grid(True, which="minor", color="0.85", lw=0.5)
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


def erf_map(erf: np.ndarray, ax=None, title: str = "effective receptive field", radius: Optional[float] = None,
            colorbar: bool = True):
    """An effective-receptive-field map (pixels of the input); optionally with a circle of ``radius``."""
    fig, ax = _ax(ax)
    heatmap(erf, ax=ax, title=title, xlabel="input column", ylabel="input row", cmap="magma", vmin=0, vmax=1,
            colorbar=colorbar)
    if radius is not None:
        h, w = erf.shape
        ax.add_patch(plt.Circle(((w - 1) / 2, (h - 1) / 2), radius, fill=False, color="c", lw=1.5, ls="--"))
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


def group_connectivity(in_channels: int, out_channels: int, groups: int, ax=None, title=None):
    """Which input channels each output channel reads under ``groups`` (a block-diagonal matrix)."""
    fig, ax = _ax(ax)
    m = np.zeros((out_channels, in_channels))
    ci, co = in_channels // groups, out_channels // groups
    for g in range(groups):
        m[g * co:(g + 1) * co, g * ci:(g + 1) * ci] = 1
    ax.imshow(m, cmap="Greens", vmin=0, vmax=1.3, interpolation="nearest")
    ax.grid(False)
    ax.set_xlabel("input channel")
    ax.set_ylabel("output channel")
    ax.set_title(title or f"groups={groups}: each output reads {ci} of {in_channels} inputs")
    return fig


def conv_geometry(kernel_size: int, dilation: int, groups: int, channels: int = 64, size: int = 32):
    """Three panels for one conv layer (C -> C channels, size x size input): sampling pattern, channel connectivity
    and its cost (parameters and FLOPs measured on the layer itself, receptive field of one and two layers)."""
    import torch.nn as nn

    from .measure import count_flops, count_params
    from .receptive import receptive_field

    fig = plt.figure(figsize=(6.8, 4.2), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 0.75])
    axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])]
    span = dilation * (kernel_size - 1) + 1
    sampling_pattern(kernel_size, dilation, ax=axes[0], extent=19, title=f"k = {kernel_size}, d = {dilation}: "
                     f"span {span} px")
    group_connectivity(channels, channels, groups, ax=axes[1],
                       title=f"g = {groups}: each output reads {channels // groups} of {channels}")
    for ax in axes[:2]:
        ax.title.set_fontsize(10)
    conv = nn.Conv2d(channels, channels, kernel_size, padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                     groups=groups, bias=False)
    p, f = count_params(conv), count_flops(conv, (1, channels, size, size))
    dense = count_params(nn.Conv2d(channels, channels, 3, bias=False))
    rf1 = receptive_field([(kernel_size, 1, dilation)])[-1][0]
    rf2 = receptive_field([(kernel_size, 1, dilation)] * 2)[-1][0]
    axes[2].axis("off")
    axes[2].text(0, 1, "\n".join([
        f"{channels} -> {channels} channels on {size}x{size}, measured on the layer:",
        f"parameters {p:,} = O (C / g) k^2 = {p / dense:.2f} x a dense 3x3",
        f"FLOPs {f / 1e6:.1f} M (2 x MACs); receptive field {rf1} px (1 layer), {rf2} px (2 layers)",
    ]), va="top", family="monospace", fontsize=8.5)
    return fig


def erf_log_map(erf: np.ndarray, ax=None, title: str = "effective receptive field (log10)", floor: float = 1e-4,
                colorbar: bool = True):
    """An ERF map on a log10 scale clipped at ``floor``: faint long-range dependencies stay visible next to the
    bright centre that a linear scale shows alone."""
    return heatmap(np.log10(np.maximum(erf, floor)), ax=ax, title=title, xlabel="input column", ylabel="input row",
                   cmap="magma", colorbar=colorbar, vmin=np.log10(floor), vmax=0)


def erf_profiles(erfs, ax=None, title: str = "ERF along the centre row", floor: float = 1e-4, colors=None):
    """The centre row of several ERF maps (name -> (H, W) array, max-normalised) on a log axis, one line each."""
    fig, ax = _ax(ax, figsize=(5, 3.6))
    for i, (name, erf) in enumerate(erfs.items()):
        h, w = erf.shape
        ax.semilogy(np.arange(w) - w // 2, np.maximum(erf[h // 2], floor), marker=".", ms=3, label=name,
                    color=None if colors is None else colors[i])
    ax.set_ylim(floor * 0.7, 1.5)
    ax.set_xlabel("input column offset from the centre")
    ax.set_ylabel(f"ERF (clipped at {floor:g})")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def dilation_grid(pattern, D_max: int, ax=None, title: Optional[str] = None, cmap="Blues"):
    """How many output channels use each dilation (d_h, d_w) of a per-channel pattern (IC-Conv), as a D_max x D_max
    grid annotated with the counts."""
    fig, ax = _ax(ax, figsize=(3.6, 3.2))
    counts = np.zeros((D_max, D_max), dtype=int)
    for dh, dw in pattern:
        counts[dh - 1, dw - 1] += 1
    ax.imshow(counts, cmap=cmap, vmin=0, vmax=max(1, counts.max()) * 1.2)
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(D_max), range(1, D_max + 1))
    ax.set_yticks(range(D_max), range(1, D_max + 1))
    ax.grid(False)
    ax.set_xlabel("dilation along W (d_w)")
    ax.set_ylabel("dilation along H (d_h)")
    ax.set_title(title or f"{counts.sum()} channels per dilation")
    return fig


def cost_bars(costs: dict, baseline: Optional[str] = None, title: str = "cost", axes=None,
              ylim: Optional[tuple[float, float]] = None):
    """Side-by-side bars of parameters and FLOPs for named models: ``costs = {name: (params, flops)}``; ratios to
    ``baseline`` (default: the first) are written on the bars. ``ylim``: the (parameters, FLOPs) axes' upper
    limits in millions, to keep the axes fixed across the frames of a widget."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.2), layout="constrained")
    fig = axes[0].figure
    names = list(costs)
    base = costs[baseline or names[0]]
    for ax, i, label, unit in [(axes[0], 0, "parameters", 1e6), (axes[1], 1, "FLOPs", 1e6)]:
        values = [costs[n][i] / unit for n in names]
        bars = ax.bar(names, values, color=PALETTE[: len(names)])
        for b, n in zip(bars, names):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{costs[n][i] / base[i]:.2f}x", ha="center",
                    va="bottom", fontsize=8)
        ax.set_ylabel(f"{label} (M)")
        ax.set_ylim(0, max(values) * 1.18 if ylim is None else ylim[i])
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def searched_patterns(patterns: dict, D_max: int, title: str = "searched dilation patterns"):
    """Per-layer dilation patterns (``{layer: [(d_h, d_w), ...]}``, e.g. an EDO search): the share of each layer's
    channels that moved away from (1, 1), and the channels per dilation summed over all layers."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6.8, 3.4), layout="constrained",
                                   gridspec_kw={"width_ratios": [1.5, 1]})
    names = list(patterns)
    share = [100 * sum(tuple(d) != (1, 1) for d in p) / len(p) for p in patterns.values()]
    ax1.bar(range(len(names)), share, color=PALETTE[0])
    ax1.set_xticks(range(len(names)), [n.replace("layer", "L") for n in names], rotation=90, fontsize=8)
    ax1.set_ylim(0, 100)
    ax1.set_ylabel("channels with d != (1, 1) (%)", fontsize=9)
    ax1.set_title(title, fontsize=10)
    dilation_grid([tuple(d) for p in patterns.values() for d in p], D_max, ax=ax2,
                  title="all layers: channels\nper dilation")
    ax2.title.set_fontsize(10)
    return fig


def sampling_overlay(kernels, labels=None, ax=None, extent: Optional[int] = None, title: Optional[str] = None):
    """The taps of several k x k kernels around one output pixel, one colour each: ``kernels`` is a list of
    ``(kernel_size, dilation)``. Larger patterns are drawn first (bigger markers), so nested ones stay visible."""
    fig, ax = _ax(ax)
    spans = [d * (k - 1) + 1 for k, d in kernels]
    extent = extent or max(spans) + 2
    half = extent // 2
    labels = labels or [f"{k}x{k}, dilation {d}" for k, d in kernels]
    cell = ax.get_window_extent().width * 72 / fig.dpi / extent    # points per input pixel
    order = sorted(range(len(kernels)), key=lambda i: -spans[i])
    for rank, i in enumerate(order):
        k, d = kernels[i]
        off = sampling_offsets(k, d)
        ax.scatter(off[:, 1], off[:, 0], s=(0.8 - 0.45 * rank / max(1, len(kernels) - 1)) ** 2 * cell ** 2, marker="s",
                   color=PALETTE[i % len(PALETTE)], label=labels[i], edgecolors="white", linewidths=0.5)
    ax.set_xlim(-half - .5, half + .5)
    ax.set_ylim(half + .5, -half - .5)
    ax.xaxis.set_major_locator(plt.MaxNLocator(5, integer=True))
    ax.yaxis.set_major_locator(plt.MaxNLocator(5, integer=True))
    ax.set_aspect("equal")
    ax.set_xlabel("input column offset")
    ax.set_ylabel("input row offset")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.set_title(title or "sampling pattern of one output pixel")
    return fig


def padded_map(kernel_size: int, resolution: int, position=(0, 0), dilation: int = 1, ax=None,
               title: Optional[str] = None):
    """An R x R feature map (grey) inside its zero padding (white), and the taps a same-padded k x k kernel reads for
    the output pixel at ``position``: blue on the map, red on the padding."""
    fig, ax = _ax(ax)
    pad = dilation * (kernel_size - 1) // 2
    size = resolution + 2 * pad
    grid = np.full((size, size), 0.06)
    grid[pad:pad + resolution, pad:pad + resolution] = 0.35
    ax.imshow(grid, cmap="Greys", vmin=0, vmax=1, extent=(-pad - .5, resolution + pad - .5,
                                                         resolution + pad - .5, -pad - .5))
    off = sampling_offsets(kernel_size, dilation)
    rows, cols = off[:, 0] + position[0], off[:, 1] + position[1]
    inside = (rows >= 0) & (rows < resolution) & (cols >= 0) & (cols < resolution)
    cell = ax.get_window_extent().width * 72 / fig.dpi / size    # points per map pixel
    s = (0.55 * cell) ** 2
    ax.scatter(cols[inside], rows[inside], s=s, marker="s", color=PALETTE[0], label="tap on the map")
    ax.scatter(cols[~inside], rows[~inside], s=s, marker="x", color=PALETTE[3], label="tap on zero padding")
    ax.add_patch(plt.Rectangle((-.5, -.5), resolution, resolution, fill=False, color="k", lw=1))
    ax.xaxis.set_major_locator(plt.MaxNLocator(5, integer=True))
    ax.yaxis.set_major_locator(plt.MaxNLocator(5, integer=True))
    ax.grid(False)
    ax.set_xlabel("input column")
    ax.set_ylabel("input row")
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    ax.set_title(title or f"{kernel_size}x{kernel_size} at output {tuple(position)} of a {resolution}x{resolution} map:\n"
                          f"{inside.mean():.0%} of its taps on the map")
    return fig


def annotated_heatmap(values, ax=None, title: str = "", xlabel: str = "", ylabel: str = "", cmap="viridis",
                      fmt: str = "{:g}", colorbar: bool = False, **kw):
    """``heatmap`` with each cell's value written in it (for small matrices: dilation maps, block costs)."""
    values = np.asarray(values)
    fig = heatmap(values, ax=ax, title=title, xlabel=xlabel, ylabel=ylabel, cmap=cmap, colorbar=colorbar, **kw)
    ax = ax or fig.axes[0]
    lo, hi = float(values.min()), float(values.max())
    for (r, c), v in np.ndenumerate(values):
        light = hi > lo and (v - lo) / (hi - lo) < 0.5
        ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=8 if values.shape[0] > 6 else 10,
                color="white" if light else "black")
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]))
    return fig


def compact_text(fig, title: float = 9, label: float = 9, ticks: float = 8):
    """Set the font sizes (points) of every axes' title, axis labels and tick labels of ``fig``: for panels of a
    figure at most 6.8 in wide, where the theme's sizes crowd them. Legends and annotations keep their own. Returns
    ``fig``."""
    for ax in fig.axes:
        ax.title.set_fontsize(title)
        ax.xaxis.label.set_fontsize(label)
        ax.yaxis.label.set_fontsize(label)
        ax.tick_params(labelsize=ticks)
    return fig


def dilation_search(reference, found, errors, candidates, D_max: int, reference_title: str = "reference pattern"):
    """One layer's dilation search (EDO) at a glance: a reference pattern and the one found (channels per dilation,
    top), and every candidate dilation's L1 error for every output channel, each channel's column divided by its
    largest error (bottom). ``errors`` is (len(candidates), O)."""
    fig = plt.figure(figsize=(6.8, 5.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.05])
    ax1, ax2 = top.subplots(1, 2)
    dilation_grid(reference, D_max, ax=ax1, title=reference_title)
    dilation_grid(found, D_max, ax=ax2, title="found by the search")
    ax = bottom.subplots()
    e = np.asarray(errors, dtype=float)
    heatmap(e / e.max(axis=0, keepdims=True), ax=ax, title="L1 error per candidate (each column / its largest)",
            xlabel="output channel", ylabel="candidate (d_h, d_w)", cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(candidates)), [str(tuple(c)) for c in candidates], fontsize=8)
    ax.set_xticks(range(e.shape[1]))
    ax.tick_params(axis="x", labelsize=8)
    for a in (ax1, ax2, ax):
        a.title.set_fontsize(10)
    return fig


def tap_counts(counts: dict, label: str = "reads per pixel", ncols: int = 2):
    """Small integer maps side by side, every cell labelled with its value: ``counts`` maps a panel's name to an
    (H, W) array (e.g. how many kernel taps read each input pixel). One colour scale for all panels, from 0 to the
    largest value, so the panels compare."""
    names = list(counts)
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.8, 3.4 * nrows), layout="constrained", squeeze=False)
    top = max(float(np.max(np.asarray(v))) for v in counts.values()) or 1.0
    for ax, name in zip(axes.flat, names):
        values = np.asarray(counts[name])
        ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, f"{v:g}", ha="center", va="center", fontsize=8, color="white" if v > 0.6 * top else "black")
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        ax.tick_params(labelsize=8)
        ax.grid(False)
        ax.set_title(f"{name}\n{label}: {values.min():g} to {values.max():g}", fontsize=10)
        ax.set_xlabel("input column", fontsize=9)
        ax.set_ylabel("input row", fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return fig


def padding_windows(kernel_size: int, symmetric: bool = True, ax=None, title: Optional[str] = None):
    """The (k-1) x (k-1) windows through which one output pixel of an even-kernel conv reads its input, on the
    k x k grid around that pixel (+): one window per channel quarter with C2sp's symmetric padding, one window
    for every channel with one-sided ("same": bottom and right) padding. The x marks each window's centre."""
    from .conv.c2sp import PATTERNS

    fig, ax = _ax(ax, figsize=(3.2, 3.2))
    k, e, h = kernel_size, kernel_size - 1, kernel_size // 2
    # a quarter padded t pixels on top (plus (k-3)/2 on every side) reads rows -h + (1 - t) ... : the window's
    # top-left corner on the grid of offsets; one-sided padding puts every channel at (1, 1) from the corner
    corners = [(1 - t, 1 - l) for t, b, l, r in PATTERNS] if symmetric else [(1, 1)]
    ax.imshow(np.zeros((k, k)), cmap="Greys", vmin=0, vmax=1, extent=(-h - .5, h + .5, h + .5, -h - .5))
    for p, (r0, c0) in enumerate(corners):
        inset = 0.06 + 0.07 * p
        color = PALETTE[p]
        ax.add_patch(plt.Rectangle((c0 - h - .5 + inset, r0 - h - .5 + inset), e - 2 * inset, e - 2 * inset,
                                   fill=False, lw=2.2, edgecolor=color))
        ax.plot(c0 - h + (e - 1) / 2, r0 - h + (e - 1) / 2, "x", color=color, ms=9, mew=2.5,
                label=f"quarter {p}" if symmetric else "every channel")
    ax.plot(0, 0, "+", color="k", ms=13, mew=1.5)
    ax.set_xticks(range(-h, h + 1))
    ax.set_yticks(range(-h, h + 1))
    ax.grid(False)
    ax.set_xlabel("column offset")
    ax.set_ylabel("row offset")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(title or f"{e}x{e}, {'symmetric' if symmetric else 'one-sided'} padding")
    return fig


def erf_against_plain(erf: np.ndarray, plain: np.ndarray, rf: int, label: str, plain_label: str = "plain",
                      floor: float = 1e-4, figsize=(6.8, 3.3)):
    """A module's ERF next to a plain stack's, on fixed log scales (frames of a widget compare directly).

    Left: ``erf`` on a log10 colour scale with the plain stack's theoretical receptive field (``rf`` x ``rf``,
    dashed square) drawn on it. Right: the centre rows of both maps. The right title states the share of ``erf``'s
    mass that lies outside the square (computed here)."""
    h, w = erf.shape
    c, half = h // 2, rf // 2
    outside = 1 - erf[c - half:c + half + 1, c - half:c + half + 1].sum() / erf.sum()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=figsize, layout="constrained")
    erf_log_map(erf, ax=ax1, floor=floor, title=f"{label}: log10 ERF")
    ax1.add_patch(plt.Rectangle((c - half - 0.5, c - half - 0.5), rf, rf, fill=False, color="c", lw=1.2,
                                ls="--", label=f"{plain_label}: RF {rf}x{rf}"))
    ax1.legend(fontsize=8, loc="lower left", framealpha=0.8)
    erf_profiles({plain_label: plain, label: erf}, ax=ax2, floor=floor,
                 title=f"centre row; {outside:.1%} of the ERF lies\noutside the dashed {rf}x{rf} square")
    for ax in (ax1, ax2):
        ax.title.set_fontsize(10)
        ax.xaxis.label.set_fontsize(9)
        ax.yaxis.label.set_fontsize(9)
        ax.tick_params(labelsize=8)
    ax2.legend(fontsize=8, loc="lower center", framealpha=0.9)
    return fig


def flops_vs_latency(tables: dict, names, title: str = "cost relative to the plain layer",
                     xlabel: str = "× plain layer"):
    """One panel per table (e.g. ``{"batch 1": df, "batch 64": df}``, ``measure.compare`` tables with ``MFLOPs_x``
    and ``latency_x`` columns, ratios to a plain layer): for every module in ``names`` (a row each, no labels to
    collide) its FLOP ratio (bar) and its measured latency ratio (dot) on a shared log axis, with 1 marked. Where
    the dot sits right of the bar's end, the module is slower than its FLOPs predict. Returns the figure."""
    names = list(names)
    fig, axes = plt.subplots(1, len(tables), figsize=(6.8, 0.32 * len(names) + 1.2), sharey=True,
                             sharex=True, layout="constrained", squeeze=False)
    y = np.arange(len(names))
    values = np.concatenate([t.loc[names, ["MFLOPs_x", "latency_x"]].to_numpy(float).ravel() for t in tables.values()])
    lo, hi = np.nanmin(values), np.nanmax(values)
    for ax, (label, t) in zip(axes[0], tables.items()):
        ax.barh(y, t.loc[names, "MFLOPs_x"].to_numpy(float), left=0, height=0.5, color=PALETTE[0], alpha=0.45,
                label="FLOPs")
        ax.scatter(t.loc[names, "latency_x"].to_numpy(float), y, color=PALETTE[3], s=22, zorder=3, label="latency")
        ax.axvline(1, color="0.3", lw=0.8, ls="--")
        ax.set(xscale="log", title=label, xlabel=xlabel)
        ax.set_xlim(min(0.5, lo / 1.5), hi * 1.5)
    axes[0][0].set_yticks(y, names)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=9)
    return compact_text(fig)


def flow_diagram(layers=(2, 2, 2, 2)):
    """What each option of the part "Attention across layers and scales" reads, drawn on a ResNet with ``layers``
    blocks per stage (one box per block, stages side by side), one panel per option:

    * DCANet (``attn_connect``): an arrow from every block's attention to the next block's, across stage
      boundaries; the first block has none;
    * SDA (``stage_attn``): every block's output of a stage into one selector per stage, whose output replaces the
      stage's;
    * a multi-scale head (``head``): every stage's output into the head.

    Returns the figure; each panel's arrows are ``ax.patches`` of type FancyArrowPatch, so their number can be
    checked (DCANet: blocks - 1; SDA: blocks; head: stages)."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    layers = list(layers)
    n = sum(layers)
    fig, axes = plt.subplots(3, 1, figsize=(6.8, 4.6), layout="constrained")
    xs, stage_of = [], []
    x = 0.0
    for s, depth in enumerate(layers):
        for _ in range(depth):
            xs.append(x)
            stage_of.append(s)
            x += 1.0
        x += 0.5  # a gap between stages
    width = x - 0.5

    def arrow(ax, a, b, rad=0.0, color="0.2"):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=9, lw=1.0, color=color,
                                     connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))

    def blocks(ax, y=0.0):
        for i, (bx, s) in enumerate(zip(xs, stage_of)):
            ax.add_artist(FancyBboxPatch((bx + 0.1, y - 0.3), 0.8, 0.6, boxstyle="round,pad=0.02",
                                         fc=PALETTE[s % len(PALETTE)], alpha=0.35, ec="0.3", lw=0.8))
            ax.text(bx + 0.5, y, f"{s + 1}.{i - stage_of.index(s)}", ha="center", va="center", fontsize=8)
        ax.set_xlim(-0.2, width + 0.2)
        ax.axis("off")

    titles = ["DCANet (attn_connect): each block's attention reads the previous block's",
              "SDA (stage_attn): one selector per stage weighs its blocks' outputs",
              "multi-scale head (head): the classifier reads every stage's output"]
    # DCANet
    ax = axes[0]
    blocks(ax)
    for i in range(1, n):
        arrow(ax, (xs[i - 1] + 0.6, 0.3), (xs[i] + 0.4, 0.3), rad=-0.5, color=PALETTE[3])
    ax.set_ylim(-0.5, 1.0)
    # SDA
    ax = axes[1]
    blocks(ax, y=0.6)
    for s, depth in enumerate(layers):
        members = [i for i in range(n) if stage_of[i] == s]
        cx = np.mean([xs[i] + 0.5 for i in members])
        ax.add_artist(FancyBboxPatch((cx - 0.45, -0.75), 0.9, 0.45, boxstyle="round,pad=0.02", fc="white",
                                     ec=PALETTE[3], lw=1.0))
        ax.text(cx, -0.525, "select", ha="center", va="center", fontsize=8)
        for i in members:
            arrow(ax, (xs[i] + 0.5, 0.3), (cx, -0.3), color=PALETTE[3])
    ax.set_ylim(-0.9, 1.0)
    # head
    ax = axes[2]
    blocks(ax, y=0.6)
    hx = width / 2
    ax.add_artist(FancyBboxPatch((hx - 0.8, -0.75), 1.6, 0.45, boxstyle="round,pad=0.02", fc="white",
                                 ec=PALETTE[3], lw=1.0))
    ax.text(hx, -0.525, "head → logits", ha="center", va="center", fontsize=8)
    for s in range(len(layers)):
        last = max(i for i in range(n) if stage_of[i] == s)
        arrow(ax, (xs[last] + 0.5, 0.3), (hx, -0.3), color=PALETTE[3])
    ax.set_ylim(-0.9, 1.0)
    for ax, t in zip(axes, titles):
        ax.set_title(t, fontsize=9, loc="left")
    return fig
