"""Explorers that work live (with a kernel) AND on the static site (without one).

``explore(render, reduction=[2, 4, 8, 16], kernel=[3, 5])`` calls ``render(reduction=r, kernel=k)`` for every
combination, keeps each returned figure as a PNG frame, and shows one slider per hyperparameter. The sliders are
linked to nested ``Stack`` widgets in the browser (``jslink``), so moving one swaps the frame client-side: the page
needs the widget JavaScript (vendored into book/_static) but no Python kernel. Spaces too large to precompute can
be explored with ``live=True`` (``ipywidgets.interactive``), which needs a running kernel.
"""
from __future__ import annotations

import io
import itertools
from typing import Any, Callable, Sequence

MAX_FRAMES = 64


def _png(obj, dpi: int) -> bytes:
    """A frame as PNG bytes: a matplotlib Figure (closed afterwards), PNG bytes, or a PIL image."""
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    if isinstance(obj, Figure):
        buf = io.BytesIO()
        obj.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(obj)
        return buf.getvalue()
    if hasattr(obj, "save"):  # PIL.Image
        buf = io.BytesIO()
        obj.save(buf, format="PNG")
        return buf.getvalue()
    raise ValueError(f"render returned {type(obj).__name__}; it must return a matplotlib Figure, PNG bytes or a "
                     "PIL image")


def _label(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_label(x) for x in v) + "]"
    return str(v)


def explore(render: Callable[..., Any], *, live: bool = False, dpi: int = 72, max_frames: int = MAX_FRAMES,
            description_width: str = "initial", **grid: Sequence[Any]):
    """Sliders over ``grid`` (name -> list of values) showing ``render(**values)``; returns the widget.

    Precomputes ``prod(len(values))`` frames (at most ``max_frames``) so the widget works without a kernel.
    ``live=True`` re-renders on demand instead (needs a kernel; for spaces too large to precompute).
    """
    import ipywidgets as W

    if not grid:
        raise ValueError("explore needs at least one hyperparameter, e.g. explore(render, reduction=[4, 8, 16])")
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
            raise ValueError(f"{name}={values!r} must be a non-empty list of values")
    names = list(grid)
    if live:
        from IPython.display import display

        def show(**kw):
            display(W.Image(value=_png(render(**kw), dpi), format="png"))

        controls = {n: W.SelectionSlider(options=[(_label(v), v) for v in grid[n]], description=n,
                                         style={"description_width": description_width}) for n in names}
        return W.interactive(show, **controls)

    n_frames = 1
    for n in names:
        n_frames *= len(grid[n])
    if n_frames > max_frames:
        raise ValueError(f"the grid has {n_frames} combinations, more than max_frames={max_frames}; shrink it, raise "
                         "max_frames, or pass live=True (live widgets need a running kernel)")
    frames = {combo: W.Image(value=_png(render(**{n: grid[n][i] for n, i in zip(names, combo)}), dpi), format="png")
              for combo in itertools.product(*(range(len(grid[n])) for n in names))}
    sliders = [W.SelectionSlider(options=[(_label(v), i) for i, v in enumerate(grid[n])], value=0, description=n,
                                 continuous_update=True, style={"description_width": description_width},
                                 layout=W.Layout(width="420px")) for n in names]

    links = []

    def nest(level: int, prefix: tuple):
        """A Stack over the values of ``names[level]``; its children are the Stacks of the next level."""
        if level == len(names):
            return frames[prefix]
        stack = W.Stack([nest(level + 1, prefix + (i,)) for i in range(len(grid[names[level]]))], selected_index=0)
        links.append(W.jslink((sliders[level], "index"), (stack, "selected_index")))
        return stack

    box = W.VBox([*sliders, nest(0, ())])
    box.add_class("plugconv-explore")
    box.links = links  # the browser-side links (part of the embedded widget state)
    return box
