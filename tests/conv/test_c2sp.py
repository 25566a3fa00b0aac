import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from contract import check_compile_and_export, check_conv_shapes, check_gradients, reference_shape
from plugconv_lite.conv import C2spConv2d
from plugconv_lite.conv.c2sp import PATTERNS
from plugconv_lite.experiments import EXPERIMENTS
from plugconv_lite.measure import count_flops, count_params
from plugconv_lite.profiles import PROFILES


def _reference_c2sp(x, weight, groups=1):
    """The reference's recipe, channel by channel: pad channel c by the pattern of its quarter (within its conv
    group), then a 2x2 'valid' conv."""
    C = x.shape[1]
    Cg = C // groups
    padded = []
    for c in range(C):
        t, b, l, r = PATTERNS[(c % Cg) // (Cg // 4)]
        padded.append(F.pad(x[:, c:c + 1], (l, r, t, b)))
    return F.conv2d(torch.cat(padded, 1), weight, groups=groups)


@pytest.mark.parametrize("c_in,c_out,groups", [(16, 8, 1), (8, 12, 1), (16, 16, 2), (32, 8, 4)])
def test_forward_matches_the_per_channel_padding_reference(rng, c_in, c_out, groups):
    m = C2spConv2d(c_in, c_out, groups=groups)
    x = torch.randn(2, c_in, 7, 10, generator=rng)
    torch.testing.assert_close(m(x), _reference_c2sp(x, m.weight, groups), atol=1e-5, rtol=1e-5)


def test_each_quarter_is_padded_on_its_own_two_sides():
    m = C2spConv2d(8, 4)
    p = m.symmetric_pad(torch.ones(1, 8, 3, 3))  # (1, 8, 4, 4): a zero row and a zero column per channel
    for q, (t, b, l, r) in enumerate(PATTERNS):
        ch = p[0, 2 * q]
        assert ch[-1].sum() == 0 if b else ch[0].sum() == 0
        assert ch[:, -1].sum() == 0 if r else ch[:, 0].sum() == 0
        assert ch.sum() == 9
    # not one global pad: the four quarters differ
    assert len({tuple(p[0, 2 * q].flatten().tolist()) for q in range(4)}) == 4


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_output_shape_equals_the_kxk_conv_for_any_size(k, stride):
    sizes = [(1, 1), (2, 3), (7, 5), (8, 8), (17, 9), (4, 13)]
    check_conv_shapes(C2spConv2d, c_in=8, c_out=4, k=k, strides=(stride,), sizes=sizes)


@pytest.mark.parametrize("k,groups", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_equivalent_kernel_reproduces_the_stride_1_conv(rng, k, groups):
    m = C2spConv2d(16, 8, k, groups=groups, bias=True)
    x = torch.randn(2, 16, 9, 6, generator=rng)
    K = m.equivalent_kernel()
    assert K.shape == (8, 16 // groups, k, k)
    torch.testing.assert_close(F.conv2d(x, K, m.bias, padding=k // 2, groups=groups), m(x), atol=1e-5, rtol=1e-5)


def test_sampling_centres_of_the_four_quarters_cancel():
    m = C2spConv2d(4, 1)
    with torch.no_grad():
        m.weight.fill_(1.0)
    K = m.equivalent_kernel()[0]  # (4 quarters, 3, 3): where each quarter is read around the output pixel
    offsets = torch.tensor([-1.0, 0.0, 1.0])
    centres = torch.stack([(K.sum(2) * offsets).sum(1) / 4, (K.sum(1) * offsets).sum(1) / 4], 1)  # (row, col)
    assert torch.equal(centres.abs(), torch.full((4, 2), 0.5))
    assert torch.equal(centres.sum(0), torch.zeros(2))


def _centre_of_mass(img):
    h, w = img.shape
    total = img.sum()
    return ((img.sum(1) * torch.arange(h)).sum() / total).item(), ((img.sum(0) * torch.arange(w)).sum() / total).item()


def test_half_pixel_shifts_cancel_over_layers():
    """A 2x2 box filter padded 'SAME'-style (bottom/right only) drags a blob up-left by half a pixel per layer;
    with symmetric padding (averaging the four channel quarters) the blob stays centred."""
    n, size = 8, 41
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = torch.exp(-((yy - 20.0) ** 2 + (xx - 20.0) ** 2) / 8.0)
    box = torch.full((1, 1, 2, 2), 0.25)
    c2 = blob[None, None]
    for _ in range(n):
        c2 = F.conv2d(F.pad(c2, (0, 1, 0, 1)), box)
    sp = C2spConv2d(4, 4)
    with torch.no_grad():
        sp.weight.fill_(0.25 / 4)  # every output channel averages the four quarters through the box filter
        y = blob.expand(1, 4, size, size)
        for _ in range(n):
            y = sp(y)
    cy, cx = _centre_of_mass(c2[0, 0])
    assert abs(cy - (20 - n / 2)) < 1e-3 and abs(cx - (20 - n / 2)) < 1e-3
    for ch in range(4):
        cy, cx = _centre_of_mass(y[0, ch])
        assert abs(cy - 20) < 1e-3 and abs(cx - 20) < 1e-3


def test_stride_2_pools_first_and_partial_windows_average_what_they_cover(rng):
    m = C2spConv2d(8, 4, stride=2)
    s1 = C2spConv2d(8, 4)
    s1.load_state_dict(m.state_dict())
    x = torch.randn(2, 8, 7, 9, generator=rng)
    pooled = F.avg_pool2d(x, 2, 2, ceil_mode=True)
    torch.testing.assert_close(m(x), s1(pooled))
    torch.testing.assert_close(pooled[..., -1, -1], x[..., -1, -1])  # the corner window covers one pixel
    torch.testing.assert_close(pooled[..., 0, -1], x[..., :2, -1].mean(-1))


@pytest.mark.parametrize("stride", [1, 2])
def test_parameters_and_flops_are_4_9_of_the_3x3_conv(stride):
    m, c3 = C2spConv2d(64, 64, stride=stride), nn.Conv2d(64, 64, 3, stride, 1, bias=False)
    assert count_params(m) * 9 == count_params(c3) * 4
    assert count_flops(m, (1, 64, 16, 16)) * 9 == count_flops(c3, (1, 64, 16, 16)) * 4
    h_out = reference_shape(64, 16, 16, 3, stride)[1]
    assert count_flops(m, (1, 64, 16, 16)) == 2 * h_out * h_out * 64 * 64 * 4


def test_equal_budget_variant_matches_the_baseline_parameters_and_flops_at_width_16_and_64():
    variants = {v.name: v for v in EXPERIMENTS["c2sp"]}
    for prof in (PROFILES["smoke"], PROFILES["full"]):
        nets = {name: variants[name].build(prof) for name in ("baseline", "c2sp", "c2sp_wide")}
        for cost in (count_params, count_flops):
            base, slim, wide = (cost(nets[name]) for name in ("baseline", "c2sp", "c2sp_wide"))
            assert slim < 0.5 * base
            assert abs(wide / base - 1) < 0.05, (prof.width, cost.__name__, wide / base)


@pytest.mark.parametrize("k", [3, 5])
def test_the_padding_windows_figure_draws_the_module_geometry(k):
    """viz.padding_windows draws, per quarter, the window that the module's own k x k form reads."""
    import matplotlib.pyplot as plt
    from plugconv_lite import viz

    m = C2spConv2d(4, 1, k)
    with torch.no_grad():
        m.weight.fill_(1.0)
    K, h = m.equivalent_kernel()[0].detach(), k // 2
    fig = viz.padding_windows(k, symmetric=True)
    boxes = [p for p in fig.axes[0].patches if isinstance(p, plt.Rectangle)]
    assert len(boxes) == 4
    for q, box in enumerate(boxes):
        rows, cols = K[q].nonzero(as_tuple=True)
        # the drawn box (inset for legibility) lies inside exactly the reads' cells and covers their centres
        assert rows.min() - h - 0.5 < box.get_y() < rows.min() - h
        assert cols.min() - h - 0.5 < box.get_x() < cols.min() - h
        assert box.get_y() + box.get_height() > rows.max() - h and box.get_x() + box.get_width() > cols.max() - h
    one_sided = viz.padding_windows(k, symmetric=False)
    box = [p for p in one_sided.axes[0].patches if isinstance(p, plt.Rectangle)][0]
    assert box.get_y() > 1 - h - 0.5 and box.get_x() > 1 - h - 0.5  # "same": the window starts one row and column in
    plt.close("all")


def test_gradients_and_compile_grouped(rng):
    m = C2spConv2d(16, 8, groups=2, stride=2, bias=True)
    check_gradients(m, torch.randn(2, 16, 7, 7, generator=rng))
    check_compile_and_export(m, torch.randn(2, 16, 9, 9, generator=rng))


def test_plugs_into_resnet_and_swap_convs():
    net = pl.resnet20(conv="c2sp")
    assert sum(isinstance(m, C2spConv2d) for m in net.modules()) == 18
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    seq = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, 2, 1))
    _, names = pl.swap_convs(seq, "c2sp", where=lambda n, m: m.in_channels % 4 == 0)
    assert names == ["1"] and isinstance(seq[1], C2spConv2d) and seq(torch.randn(1, 3, 9, 9)).shape == (1, 16, 5, 5)


@pytest.mark.parametrize("kw,match", [(dict(in_channels=18), "in_channels=18 / groups=1 = 18 must be a multiple of 4"),
                                      (dict(in_channels=16, groups=8), "= 2 must be a multiple of 4"),
                                      (dict(kernel_size=2), "kernel_size=2 must be odd and >= 3"),
                                      (dict(kernel_size=1), "kernel_size=1 must be odd and >= 3"),
                                      (dict(dilation=2), "dilation=2 must be 1"),
                                      (dict(padding=0), r"padding=0 must be None or \(1, 1\)"),
                                      (dict(weight_init="he"), "weight_init='he' must be one of")])
def test_bad_hyperparameters_raise(kw, match):
    args = dict(in_channels=16, out_channels=32, kernel_size=3) | kw
    with pytest.raises(ValueError, match=match):
        C2spConv2d(**args)
