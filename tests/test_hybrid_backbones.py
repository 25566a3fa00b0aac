"""The reading page's sketches (plugconv_lite.chapters.hybrid_backbones): their cost formulas, window partitions and
the defining properties the page states."""
import pytest
import torch

from plugconv_lite.chapters import hybrid_backbones as hb
from plugconv_lite.measure import count_flops


@pytest.mark.parametrize("side,window,dilated", [(8, 4, False), (12, 3, True), (16, 4, True), (8, 8, False)])
def test_hlg_flop_formula_matches_the_counter(side, window, dilated):
    m = hb.HLGSketch(32, window, heads=2, dilated=dilated)
    assert count_flops(m, (1, 32, side, side)) == hb.hlg_flops(side, 32, window)


@pytest.mark.parametrize("side,parts", [(4, 1), (8, 8), (12, 5)])
def test_vip_flop_formula_matches_the_counter(side, parts):
    assert count_flops(hb.ViPSketch(32, parts), (1, 32, side, side)) == hb.vip_flops(side, 32, parts)


@pytest.mark.parametrize("dilated", [False, True])
def test_windows_are_undone_by_unwindows(dilated):
    t = torch.randn(2, 12, 6, 3)
    assert torch.equal(hb.unwindows(hb.windows(t, 3, dilated), 12, 6, dilated), t)


def test_window_contents():
    t = torch.arange(64.).reshape(1, 8, 8, 1)
    plain, dilated = hb.windows(t, 4)[0, :, :, 0], hb.windows(t, 4, dilated=True)[0, :, :, 0]
    assert plain[1].tolist() == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31]  # top-right block
    # rows 0, 2, ..; columns 1, 3, ..
    assert dilated[1].tolist() == [1, 3, 5, 7, 17, 19, 21, 23, 33, 35, 37, 39, 49, 51, 53, 55]


def test_window_must_divide_the_map():
    with pytest.raises(ValueError, match="window k=3"):
        hb.windows(torch.zeros(1, 8, 8, 2), 3)


def _randomised(m):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m.double().eval()


def test_hlg_reads_another_window_as_a_set():
    """Without a position bias, the query at (0, 0) reads window (1, 1) only through the mean of that window's
    local-attention outputs: shuffling the window's tokens leaves it unchanged; moving a token to another window
    does not. Every position is reached (global)."""
    m = _randomised(hb.HLGSketch(8, window=4, heads=2))
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64)
    y = m(x)[0, :, 0, 0]
    shuffled = x.clone()
    block = shuffled[0, :, 4:, 4:].reshape(8, 16)
    shuffled[0, :, 4:, 4:] = block[:, torch.randperm(16, generator=torch.Generator().manual_seed(0))].reshape(8, 4, 4)
    swapped = x.clone()
    swapped[0, :, 5, 5], swapped[0, :, 5, 1] = x[0, :, 5, 1], x[0, :, 5, 5]   # windows (1, 1) and (1, 0)
    assert torch.allclose(m(shuffled)[0, :, 0, 0], y, atol=1e-12)
    assert not torch.allclose(m(swapped)[0, :, 0, 0], y, atol=1e-6)
    from plugconv_lite.chapters.part_tokens import reach_map
    assert bool((reach_map(m, side=8, channels=8) > 0).all())


def test_vip_with_one_part_adds_the_same_vector_everywhere():
    """Softmax over a single key is 1: with M = 1 the part -> whole step is query-irrelevant (a broadcast)."""
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    one = _randomised(hb.ViPSketch(8, parts=1))
    upd = (one(x) - x).flatten(2)
    assert torch.allclose(upd, upd[..., :1].expand_as(upd), atol=1e-12)
    many = _randomised(hb.ViPSketch(8, parts=4))
    upd = (many(x) - x).flatten(2)
    assert not torch.allclose(upd, upd[..., :1].expand_as(upd), atol=1e-6)


def test_best_window_balances_local_and_global_products():
    N = 4096
    cost = {k: N * k * k + N * N / k ** 2 for k in (2, 4, 8, 16, 32)}
    assert min(cost, key=cost.get) == hb.best_window(N) == 8
    assert cost[8] == pytest.approx(2 * N ** 1.5)
