"""Explorers that work on the static site (no kernel) and in any kernel (Jupyter, Colab).

``explore(render, reduction=[2, 4, 8, 16], kernel=[3, 5])`` calls ``render(reduction=r, kernel=k)`` for every
combination, keeps each returned figure as a PNG frame, and shows one slider per hyperparameter. The sliders are
linked to the same precomputed frames in one of two ways (``linking()`` says which one applies here):

- **in the browser** (ipywidgets 8): nested ``Stack`` widgets driven by ``jslink``, so moving a slider swaps the
  frame client-side. The page needs the widget JavaScript (vendored into book/_static) but no Python kernel: this is
  what the static site shows.
- **through the kernel** (ipywidgets 7, the line Colab ships, has no ``Stack``; Colab's own widget manager cannot
  run ``jslink``): each slider's ``observe`` callback puts the chosen frame into one ``Image``. It needs the kernel
  that drew the frames, and nothing else.

Frames are drawn at the size they are shown: figsize x ``dpi`` pixels, at most ``max_width`` pixels wide (the
book's content column), displayed at their natural size, with no text smaller than ``min_text_px``. Spaces too large
to precompute can be explored with ``live=True`` (``ipywidgets.interactive``, which needs a running kernel).
"""
from __future__ import annotations

import io
import itertools
import math
import struct
import warnings
from typing import Any, Callable, Optional, Sequence

MAX_FRAMES = 64
DPI = 100
COLUMN_PX = 688   # the content column of the built book in a 1280-px window (Jupyter Book 1.x theme, measured)
MIN_TEXT_PX = 10  # the smallest legible text on screen: 7.2 pt at 100 dpi


def linking() -> tuple[str, str]:
    """How ``explore`` links sliders to frames in this process: ``("browser" | "kernel", why)``."""
    import ipywidgets as W

    if not hasattr(W, "Stack"):
        return "kernel", f"ipywidgets {W.__version__} has no Stack widget (it came with 8.0)"
    from .colab import custom_widget_manager_enabled, on_colab

    if on_colab() and not custom_widget_manager_enabled():
        return "kernel", ("Colab's own widget manager cannot run jslink, and its custom widget manager is not enabled "
                          "(plugconv_lite.colab.setup() enables it)")
    return "browser", f"ipywidgets {W.__version__}: nested Stacks linked in the browser (jslink)"


def _name(render) -> str:
    name = getattr(render, "__qualname__", None) or type(render).__name__
    return name if name != "<lambda>" else f"the lambda defined in {getattr(render, '__module__', '?')}"


def enforce_min_text(fig, min_pt: float) -> int:
    """Raise every piece of text in ``fig`` smaller than ``min_pt`` points to ``min_pt``; returns how many changed.

    Tick labels are raised through ``tick_params`` (so ticks made at draw time inherit the size), everything else
    (titles, labels, legends, annotations, colorbars) through its ``Text`` artist."""
    from matplotlib.text import Text

    changed = 0
    for ax in fig.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            for which, ticks in (("major", axis.get_major_ticks()), ("minor", axis.get_minor_ticks())):
                if ticks and ticks[0].label1.get_fontsize() < min_pt:
                    ax.tick_params(axis=name, which=which, labelsize=min_pt)
                    changed += 1
    for text in fig.findobj(Text):
        if text.get_text() and text.get_fontsize() < min_pt:
            text.set_fontsize(min_pt)
            changed += 1
    return changed


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels of PNG bytes, read from the IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        raise ValueError("not PNG bytes: a frame must be a matplotlib Figure, PNG bytes or a PIL image")
    return struct.unpack(">II", png[16:24])


def outside(fig) -> list[str]:
    """The text of ``fig`` (as last drawn) that reaches beyond the figure's edges, where a frame clips it."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height

    def beyond(box) -> bool:
        return box is not None and (box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1)

    found, tick_labels = [], set()
    for i, ax in enumerate(fig.axes):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if not ax.axison or not axis.get_visible():  # ax.axis("off") draws no ticks
                continue
            ticks = axis.get_major_ticks() + axis.get_minor_ticks()
            tick_labels |= {id(t) for tick in ticks for t in (tick.label1, tick.label2)}
            if beyond(axis.get_tightbbox(renderer)):  # only the ticks drawn (inside the view limits) count
                found.append(f"{name} tick labels of axes {i}")
    for text in fig.findobj(Text):
        if id(text) not in tick_labels and text.get_text().strip() and text.get_visible():
            if beyond(text.get_window_extent(renderer)):
                found.append(text.get_text().replace("\n", " "))
    return found


def max_figwidth(max_width: int = COLUMN_PX, dpi: int = DPI) -> float:
    """The widest figsize (inches, to 0.1 in) whose frame fits ``max_width`` pixels at ``dpi``."""
    return math.floor(max_width / dpi * 10 + 1e-9) / 10


def frame(obj, *, dpi: int = DPI, max_width: Optional[int] = COLUMN_PX, min_text_px: float = MIN_TEXT_PX,
          name: str = "render", values: str = "", clipped: Optional[list] = None) -> bytes:
    """One frame as PNG bytes, from a matplotlib Figure (closed afterwards), PNG bytes or a PIL image.

    A Figure is saved at exactly its size: ``figsize x dpi`` pixels, its text raised to at least ``min_text_px``
    pixels. A frame wider than ``max_width`` pixels raises ``ValueError`` (the page would shrink it, and its text
    with it). Text reaching beyond the figure is clipped: it is appended to ``clipped`` when given, else warned."""
    if isinstance(obj, (bytes, bytearray)):
        png = bytes(obj)
    else:
        import matplotlib.pyplot as plt
        from matplotlib.figure import Figure

        buf = io.BytesIO()
        if isinstance(obj, Figure):
            pixels = round(obj.get_figwidth() * dpi)
            if max_width is not None and pixels > max_width:
                plt.close(obj)
                raise ValueError(_too_wide(name, values, pixels, dpi, max_width, obj.get_figwidth()))
            enforce_min_text(obj, min_text_px * 72 / dpi)
            obj.savefig(buf, format="png", dpi=dpi)
            beyond = outside(obj)
            plt.close(obj)
            if beyond and clipped is not None:
                clipped += beyond
            elif beyond:
                warnings.warn(f"{name}({values}): text beyond the figure's edges is clipped: {beyond}", stacklevel=2)
        elif hasattr(obj, "save"):  # PIL.Image
            obj.save(buf, format="PNG")
        else:
            raise ValueError(f"{name}({values}) returned {type(obj).__name__}; it must return a matplotlib Figure, "
                             "PNG bytes or a PIL image")
        png = buf.getvalue()
    if max_width is not None and png[:8] == b"\x89PNG\r\n\x1a\n":
        width = png_size(png)[0]
        if width > max_width:
            raise ValueError(_too_wide(name, values, width, dpi, max_width))
    return png


def _too_wide(name, values, width, dpi, max_width, inches=None) -> str:
    drawn = f"a {inches:g}-in figure, " if inches is not None else ""
    return (f"{name}({values}) drew a frame {width} px wide ({drawn}dpi={dpi}); the limit is max_width={max_width} "
            f"px, the book's content column, and a wider frame would be shrunk with its text. Make it narrower: "
            f"figsize width <= {max_figwidth(max_width, dpi):g} in at dpi {dpi}")


def _label(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_label(x) for x in v) + "]"
    return str(v)


def _image(W, png: bytes):
    """An Image widget shown at its natural size (the page must not scale a frame, see ``frame``)."""
    width = png_size(png)[0] if png[:8] == b"\x89PNG\r\n\x1a\n" else None
    image = W.Image(value=png, format="png")
    if width is not None:
        image.layout.width = f"{width}px"
        image.layout.max_width = "100%"  # a window narrower than the column still gets the whole frame, scaled
    return image


def explore(render: Callable[..., Any], *, live: bool = False, link: Optional[str] = None, dpi: int = DPI,
            max_width: Optional[int] = COLUMN_PX, min_text_px: float = MIN_TEXT_PX, max_frames: int = MAX_FRAMES,
            description_width: str = "initial", **grid: Sequence[Any]):
    """Sliders over ``grid`` (name -> list of values) showing ``render(**values)``; returns the widget.

    Precomputes ``prod(len(values))`` frames (at most ``max_frames``) so the widget works without a kernel on the
    static site, and links the sliders to them in the browser where the installed ipywidgets and front end can,
    else through the kernel (``link="browser"`` or ``"kernel"`` forces one; see ``linking()``). ``live=True``
    re-renders on demand instead (needs a kernel; for spaces too large to precompute).

    Frames are shown at their natural size, so draw them at the size they are read. A figure's frame is exactly
    figsize x ``dpi`` pixels and at most ``max_width`` = 688 px wide (the book's content column in a 1280-px
    window): **figsize width <= 6.8 in at dpi 100**, or ``ValueError`` naming ``render``. Text smaller than
    ``min_text_px`` = 10 px on screen (7.2 pt at dpi 100) is raised to it; text that reaches beyond the figure
    (a title wider than its panel, a legend outside the axes) is clipped, and one warning lists it.
    """
    import ipywidgets as W

    if not grid:
        raise ValueError("explore needs at least one hyperparameter, e.g. explore(render, reduction=[4, 8, 16])")
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
            raise ValueError(f"{name}={values!r} must be a non-empty list of values")
    if link not in (None, "browser", "kernel"):
        raise ValueError(f"link={link!r} must be None (chosen by linking()), 'browser' or 'kernel'")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 10:
        raise ValueError(f"dpi={dpi!r} must be an integer >= 10")
    names = list(grid)

    clipped: list[str] = []

    def draw(**kw) -> bytes:
        values = ", ".join(f"{n}={kw[n]!r}" for n in names)
        return frame(render(**kw), dpi=dpi, max_width=max_width, min_text_px=min_text_px, name=_name(render),
                     values=values, clipped=clipped)

    if live:
        from IPython.display import display

        def show(**kw):
            display(_image(W, draw(**kw)))

        controls = {n: W.SelectionSlider(options=[(_label(v), v) for v in grid[n]], description=n,
                                         style={"description_width": description_width}) for n in names}
        return W.interactive(show, **controls)

    n_frames = 1
    for n in names:
        n_frames *= len(grid[n])
    if n_frames > max_frames:
        raise ValueError(f"the grid has {n_frames} combinations, more than max_frames={max_frames}; shrink it, raise "
                         "max_frames, or pass live=True (live widgets need a running kernel)")
    mode, why = (link, "requested") if link else linking()
    if mode == "browser" and not hasattr(W, "Stack"):
        raise ValueError(f"link='browser' needs ipywidgets >= 8 (Stack); this is ipywidgets {W.__version__}: pass "
                         "link='kernel' or leave link=None")
    pngs = {combo: draw(**{n: grid[n][i] for n, i in zip(names, combo)})
            for combo in itertools.product(*(range(len(grid[n])) for n in names))}
    if clipped:
        shown_ = sorted(set(clipped))
        warnings.warn(f"{_name(render)}: {len(clipped)} piece(s) of text reach beyond the figure and are clipped in "
                      f"the frames: {shown_[:4]}{' ...' if len(shown_) > 4 else ''}; shorten them or move them inside",
                      stacklevel=2)
    sliders = [W.SelectionSlider(options=[(_label(v), i) for i, v in enumerate(grid[n])], value=0, description=n,
                                 continuous_update=True, style={"description_width": description_width},
                                 layout=W.Layout(width="420px")) for n in names]
    links = []
    if mode == "browser":
        def nest(level: int, prefix: tuple):
            """A Stack over the values of ``names[level]``; its children are the Stacks of the next level."""
            if level == len(names):
                return _image(W, pngs[prefix])
            stack = W.Stack([nest(level + 1, prefix + (i,)) for i in range(len(grid[names[level]]))],
                            selected_index=0)
            links.append(W.jslink((sliders[level], "index"), (stack, "selected_index")))
            return stack

        shown = nest(0, ())
    else:
        shown = _image(W, pngs[(0,) * len(names)])

        def update(_change=None):
            shown.value = pngs[tuple(s.index for s in sliders)]

        for s in sliders:
            s.observe(update, names="index")
    box = W.VBox([*sliders, shown])
    box.add_class("plugconv-explore")
    box.links = links     # the browser-side links (part of the embedded widget state); empty when kernel-linked
    box.frames = pngs     # slider indices -> PNG bytes, the same frames in both modes
    box.linking = (mode, why)
    return box
