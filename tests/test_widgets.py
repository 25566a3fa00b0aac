import ipywidgets as W
import pytest

from plugconv_lite.widgets import explore


def _render(a, b):
    return f"{a}|{b}".encode()  # explore accepts PNG bytes; any bytes do for checking the mapping


def test_explore_precomputes_one_frame_per_combination_in_nested_stacks():
    box = explore(_render, a=[1, 2, 3], b=["x", "y"])
    sliders, stack = box.children[:2], box.children[2]
    assert [s.description for s in sliders] == ["a", "b"]
    assert isinstance(stack, W.Stack) and len(stack.children) == 3
    for i, a in enumerate([1, 2, 3]):
        for j, b in enumerate(["x", "y"]):
            assert stack.children[i].children[j].value == f"{a}|{b}".encode()


def test_explore_links_sliders_to_stacks_in_the_browser():
    box = explore(_render, a=[1, 2], b=[3, 4])
    sliders, outer = box.children[:2], box.children[2]
    pairs = {(id(link.source[0]), link.source[1], id(link.target[0]), link.target[1]) for link in box.links}
    assert (id(sliders[0]), "index", id(outer), "selected_index") in pairs
    for inner in outer.children:  # the second slider drives every inner stack
        assert (id(sliders[1]), "index", id(inner), "selected_index") in pairs


def test_explore_rejects_grids_too_large_to_precompute():
    with pytest.raises(ValueError, match="more than max_frames=4"):
        explore(_render, a=[1, 2, 3], b=[1, 2], max_frames=4)
    with pytest.raises(ValueError, match="non-empty list"):
        explore(_render, a=[])
    with pytest.raises(ValueError, match="at least one"):
        explore(_render)


def test_explore_renders_matplotlib_figures():
    import matplotlib.pyplot as plt

    def render(k):
        fig, ax = plt.subplots()
        ax.plot([0, k])
        return fig

    box = explore(render, k=[1, 2])
    png = box.children[1].children[0].value
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png != box.children[1].children[1].value
    assert not plt.get_fignums()  # frames are closed after rendering


def test_explore_live_mode_returns_an_interactive():
    w = explore(_render, a=[1, 2], b=[3], live=True)
    assert isinstance(w, W.interactive)


# -- frames drawn at the size they are shown ------------------------------------------------------------------------

def _figure(width, fontsize=None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, 2.5), layout="constrained")
    ax.plot([0, 1], label="a line")
    ax.set_title("title")
    if fontsize:
        ax.legend(fontsize=fontsize)
        ax.tick_params(labelsize=fontsize)
        ax.text(0.5, 0.5, "note", fontsize=fontsize)
    return fig


def test_frames_wider_than_the_column_raise_naming_the_render_function():
    def render_too_wide(k):
        return _figure(6.9 if k == 2 else 6.8)

    with pytest.raises(ValueError, match=r"render_too_wide\(k=2\) drew a frame 690 px wide \(a 6.9-in figure, "
                                         r"dpi=100\); the limit is max_width=688 px.*figsize width <= 6.8 in at dpi 100"):
        explore(render_too_wide, k=[1, 2])
    with pytest.raises(ValueError, match=r"drew a frame 700 px wide \(dpi=100\)"):  # PNG bytes are checked too
        explore(lambda k: _png_bytes(7), k=[1])
    from plugconv_lite.widgets import max_figwidth
    assert max_figwidth(688, 100) == 6.8 and max_figwidth(688, 150) == 4.5 and max_figwidth(700, 100) == 7.0


def _png_bytes(width):
    import io

    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(width, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def test_frames_are_figsize_times_dpi_and_shown_at_their_natural_size():
    from plugconv_lite.widgets import png_size

    box = explore(lambda k: _figure(6.8), k=[1, 2])
    image = box.children[1].children[0]
    assert png_size(image.value) == (680, 250)  # 6.8 x 2.5 in at 100 dpi
    assert image.layout.width == "680px"  # the page shows it pixel for pixel, never stretched


def test_text_beyond_the_figure_is_reported_once_per_widget():
    def render_long_title(k):
        fig = _figure(3)
        fig.axes[0].set_title("a title far too long for a three-inch figure, so it runs off both edges " * k)
        return fig

    with pytest.warns(UserWarning, match=r"render_long_title: 2 piece\(s\) of text reach beyond the figure.*a title "
                                         r"far too long"):
        explore(render_long_title, k=[1, 2])


def test_text_smaller_than_10_px_is_raised_to_10_px():
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from plugconv_lite.widgets import frame

    fig = _figure(5, fontsize=5)
    frame(fig, dpi=100, min_text_px=10)
    fig.canvas.draw()  # tick labels are made at draw time: they must inherit the raised size
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text() and t.get_visible()]
    assert len(sizes) > 8 and min(sizes) == pytest.approx(7.2)  # 10 px at 100 dpi = 7.2 pt
    plt.close(fig)


def test_explore_rejects_bad_link_and_dpi():
    with pytest.raises(ValueError, match="link='jslink' must be None"):
        explore(_render, a=[1], link="jslink")
    with pytest.raises(ValueError, match="dpi=0 must be an integer >= 10"):
        explore(_render, a=[1], dpi=0)


# -- the kernel-linked fallback ---------------------------------------------------------------------------------------

def test_kernel_linked_explore_shows_the_same_precomputed_frames():
    browser = explore(_render, a=[1, 2, 3], b=["x", "y"], link="browser")
    kernel = explore(_render, a=[1, 2, 3], b=["x", "y"], link="kernel")
    assert kernel.frames == browser.frames and kernel.linking == ("kernel", "requested") and not kernel.links
    a, b, image = kernel.children
    assert isinstance(image, W.Image) and image.value == b"1|x"
    b.index = 1
    assert image.value == b"1|y"
    a.index = 2
    assert image.value == b"3|y" == kernel.frames[(2, 1)]


def test_linking_uses_the_kernel_where_the_browser_cannot(monkeypatch):
    import sys
    import types

    from plugconv_lite import colab
    from plugconv_lite.widgets import linking

    assert linking()[0] == "browser"  # ipywidgets 8, not on Colab
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(colab, "_custom_widget_manager", False)
    mode, why = linking()
    assert mode == "kernel" and "custom widget manager is not enabled" in why
    assert explore(_render, a=[1, 2], b=[3]).linking[0] == "kernel"
    monkeypatch.setattr(colab, "_custom_widget_manager", True)
    assert linking()[0] == "browser"
    monkeypatch.delattr(W, "Stack")  # the ipywidgets 7 surface (a real 7.x runs in tests/test_colab.py)
    mode, why = linking()
    assert mode == "kernel" and "has no Stack" in why
    with pytest.raises(ValueError, match="link='browser' needs ipywidgets >= 8"):
        explore(_render, a=[1, 2], b=[3], link="browser")
