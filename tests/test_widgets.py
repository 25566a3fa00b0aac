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
