import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.conv import PyConv2d
from plugconv_lite.conv.pyconv import pyramid_levels, tap_coverage
from plugconv_lite.measure import count_flops, count_params


def dense_equivalent(m: PyConv2d) -> torch.Tensor:
    """One dense (O, C_in, K, K) kernel, K = the largest k_l, holding every level: each level's grouped kernel is
    expanded to all input channels (zeros outside its group) and centred in the K x K window."""
    K = max(m.kernels)
    blocks = []
    for level, k, G in zip(m.levels, m.kernels, m.level_groups):
        O_l, cpg = level.weight.shape[:2]
        W = torch.zeros(O_l, m.in_channels, K, K)
        off = (K - k) // 2
        for o in range(O_l):
            g = o // (O_l // G)
            W[o, g * cpg:(g + 1) * cpg, off:off + k, off:off + k] = level.weight[o]
        blocks.append(W)
    return torch.cat(blocks)


@pytest.mark.parametrize("kw", [dict(kernels=(3, 5, 7, 9), groups=(1, 4, 8, 16), splits=(16, 16, 16, 16)),
                                dict(kernels=(3, 5, 7), groups=(1, 4, 8), splits=(16, 16, 32)),
                                dict(kernels=(1, 3, 5), groups=(2, 1, 16), splits=(8, 24, 32)),
                                dict(resolution=8)])
@pytest.mark.parametrize("stride", [1, 2])
def test_forward_equals_one_dense_conv_with_centred_kernels(kw, stride, rng):
    m = PyConv2d(32, 64, 3, stride=stride, **kw).eval()
    x = torch.randn(2, 32, 11, 7, generator=rng)
    K = max(m.kernels)
    expected = F.conv2d(x, dense_equivalent(m), stride=stride, padding=K // 2)
    torch.testing.assert_close(m(x), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("c_in,kw", [(64, dict(resolution=32)), (64, dict(resolution=16)), (128, dict(resolution=8)),
                                     (16, dict(resolution=32)), (24, dict(kernels=(3, 5), groups=(3, 4), splits=(12, 8)))])
def test_params_and_flops_follow_the_formula(c_in, kw):
    m = PyConv2d(c_in, 64 if "splits" not in kw else 20, 3, **kw)
    per_pixel = sum(c_in * O_l * k * k // G for O_l, k, G in zip(m.splits, m.kernels, m.level_groups))
    assert count_params(m) == per_pixel
    assert count_flops(m, (1, c_in, 10, 10)) == 2 * 100 * per_pixel


@pytest.mark.parametrize("resolution,levels", [(1, 1), (4, 1), (7, 1), (8, 2), (14, 2), (16, 3), (28, 3), (32, 4),
                                               (56, 4), (224, 4), (None, 4)])
def test_pyramid_levels_follow_the_map_size(resolution, levels):
    assert pyramid_levels(resolution) == levels


def test_rule_reproduces_the_official_imagenet_pyramid():
    """PyConvResNet: stage maps 56/28/14/7 get kernels [3,5,7,9]/[3,5,7]/[3,5]/[3] and groups [1,4,8,16]/... ."""
    for res, kernels, groups in [(56, (3, 5, 7, 9), (1, 4, 8, 16)), (28, (3, 5, 7), (1, 4, 8)), (14, (3, 5), (1, 4)),
                                 (7, (3,), (1,))]:
        m = PyConv2d(256, 256, resolution=res)
        assert m.kernels == kernels and m.level_groups == groups


@pytest.mark.parametrize("resolution", range(1, 129))
def test_no_extra_level_is_mostly_padding(resolution):
    """Every level beyond the base 3x3 keeps at least 70% of its taps on the map (the base 3x3 is the plain conv's)."""
    m = PyConv2d(64, 64, resolution=resolution)
    for k in m.kernels[1:]:
        assert tap_coverage(k, resolution) >= 0.7, (resolution, k)


@pytest.mark.parametrize("k,r,d", [(3, 4, 1), (5, 8, 1), (9, 8, 1), (9, 32, 1), (3, 1, 1), (7, 5, 1), (3, 8, 2)])
def test_tap_coverage_counts_in_map_taps(k, r, d):
    ones = torch.ones(1, 1, r, r)
    in_map = F.conv2d(ones, torch.ones(1, 1, k, k), padding=d * (k - 1) // 2, dilation=d)
    assert tap_coverage(k, r, d) == pytest.approx(in_map.mean().item() / (k * k))


@pytest.mark.parametrize("width", [16, 64])
def test_resnet18_gets_a_valid_pyramid_per_stage(width):
    model = pl.resnet18(width=width, conv="pyconv")
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, PyConv2d):
            found.setdefault(name.split(".")[0], set()).add(m.kernels)
            for level, G in zip(m.levels, m.level_groups):
                assert m.in_channels % G == 0 and level.out_channels % G == 0
    assert found == {"layer1": {(3, 5, 7, 9)}, "layer2": {(3, 5, 7)}, "layer3": {(3, 5)}, "layer4": {(3,)}}
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_default_groups_shrink_to_fit_narrow_levels():
    """At width 16 the first stage's levels have 4 output channels: 8 or 16 groups cannot divide them."""
    m = PyConv2d(16, 16, resolution=32)
    assert m.splits == (4, 4, 4, 4) and m.level_groups == (1, 4, 4, 4)
    assert PyConv2d(64, 64, resolution=32).level_groups == (1, 4, 8, 16)


def test_explicit_arguments_are_kept():
    m = PyConv2d(32, 48, kernels=(3, 7), groups=(2, 8), splits=(16, 32))
    assert m.kernels == (3, 7) and m.level_groups == (2, 8) and m.splits == (16, 32)
    assert [tuple(lv.weight.shape) for lv in m.levels] == [(16, 16, 3, 3), (32, 4, 7, 7)]
    assert "kernels=(3, 7)" in repr(m)


def test_conv_kw_overrides_the_site_pyramid():
    model = pl.resnet18(width=16, conv="pyconv", conv_kw={"kernels": (3, 5), "groups": (1, 2)})
    kernels = {m.kernels for m in model.modules() if isinstance(m, PyConv2d)}
    assert kernels == {(3, 5)}


def test_swap_convs_passes_the_map_size():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1))
    net, names = pl.swap_convs(net, "pyconv", input_size=(1, 3, 32, 32))
    assert names == ["0", "2", "4"]
    assert [len(net[i].kernels) for i in (0, 2, 4)] == [4, 3, 2]   # output maps 32, 16, 8
    assert net[0].level_groups == (1, 1, 1, 1)                        # 3 input channels: no grouping fits
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 32, 8, 8)


@pytest.mark.parametrize("h,w", [(3, 3), (6, 9), (17, 8)])
@pytest.mark.parametrize("stride", [1, 2])
def test_explicit_padding_keeps_the_replaced_convs_shape(h, w, stride):
    ref = nn.Conv2d(8, 16, 3, stride, padding=0)
    m = PyConv2d(8, 16, 3, stride, padding=0, kernels=(3, 5, 7), groups=(1, 2, 4), splits=(4, 4, 8))
    x = torch.randn(1, 8, h, w)
    assert m(x).shape == ref(x).shape


@pytest.mark.parametrize("kw,match", [
    (dict(groups=(1, 4, 8, 16)), r"groups\[2\]=8 must divide the level's out channels splits\[2\]=4"),
    (dict(kernels=(3, 5), groups=(1, 3)), r"groups\[1\]=3 must divide in_channels=16"),
    (dict(kernels=(3, 5), splits=(8, 4)), r"splits=\(8, 4\) must sum to out_channels=16"),
    (dict(kernels=(3, 5), splits=(16,)), r"splits \(length 1\) and kernels \(length 2\)"),
    (dict(kernels=(3, 4)), r"kernels\[1\]=4 must be odd"),
    (dict(kernels=()), r"kernels=\(\) must be a non-empty sequence"),
    (dict(kernels=(3, 5), resolution=8), r"resolution=8 picks the pyramid"),
    (dict(groups=2), r"groups=2: PyConv2d takes one group count per level"),
    (dict(resolution=0), r"resolution=0 must be >= 1"),
    (dict(kernels=(3, 5), groups=(1,)), r"groups \(length 1\) and kernels \(length 2\)"),
    (dict(kernel_size=4), r"kernel_size=4 must be odd"),
    (dict(padding=0, kernels=(1, 3)), r"padding=\(0, 0\) is too small for kernels\[0\]=1"),
])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        PyConv2d(16, 16, **kw)


@pytest.mark.parametrize("channels_last", [False, True])
def test_output_keeps_the_input_layout_and_values(channels_last, rng):
    m = PyConv2d(16, 16, resolution=32)
    x = torch.randn(2, 16, 8, 8, generator=rng)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = m(x.contiguous(memory_format=fmt))
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, torch.cat([lv(x) for lv in m.levels], 1))
