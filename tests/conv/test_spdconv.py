import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from contract import SIZES, check_bf16_autocast, check_compile_and_export, check_conv_shapes, check_gradients
from plugconv_lite.conv.spdconv import SPDConv2d, depth_to_space, space_to_depth
from plugconv_lite.measure import count_flops, count_params


def official_spd(x):
    """The official code's space-to-depth (scale 2), as quoted in the module notes."""
    return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


def test_space_to_depth_matches_the_official_channel_order(rng):
    x = torch.randn(2, 5, 8, 6, generator=rng)
    torch.testing.assert_close(space_to_depth(x), official_spd(x), rtol=0, atol=0)


def test_space_to_depth_by_explicit_indexing(rng):
    """Output channel (j s_h + i) C + c at block (u, v) is input channel c at pixel (s_h u + i, s_w v + j)."""
    sh, sw, C = 3, 2, 4
    x = torch.randn(1, C, 9, 8, generator=rng)
    y = space_to_depth(x, (sh, sw))
    assert y.shape == (1, sh * sw * C, 3, 4)
    for i in range(sh):
        for j in range(sw):
            for c in range(C):
                assert torch.equal(y[0, (j * sh + i) * C + c], x[0, c, i::sh, j::sw])


def test_pixel_unshuffle_uses_another_channel_order(rng):
    x = torch.randn(1, 3, 4, 4, generator=rng)
    assert not torch.equal(space_to_depth(x), F.pixel_unshuffle(x, 2))
    assert torch.equal(space_to_depth(x).sort(1).values, F.pixel_unshuffle(x, 2).sort(1).values)  # same values


@pytest.mark.parametrize("scale", [2, 3, (2, 3)])
@pytest.mark.parametrize("hw", SIZES)
def test_round_trip_is_exact(rng, scale, hw):
    x = torch.randn(2, 3, *hw, generator=rng)
    y = space_to_depth(x, scale)
    sh, sw = (scale, scale) if isinstance(scale, int) else scale
    assert y.shape == (2, 3 * sh * sw, -(-hw[0] // sh), -(-hw[1] // sw))
    assert torch.equal(depth_to_space(y, scale, size=hw), x)


def test_odd_sizes_are_padded_at_the_bottom_right_with_zeros(rng):
    x = torch.randn(1, 1, 3, 5, generator=rng)
    y = depth_to_space(space_to_depth(x))  # no crop: the padded 4 x 6 map
    assert y.shape == (1, 1, 4, 6) and torch.equal(y[..., :3, :5], x)
    assert (y[..., 3, :] == 0).all() and (y[..., :, 5] == 0).all()


def test_depth_to_space_bad_channels_raise():
    with pytest.raises(ValueError, match="channels=6 must be a multiple of scale_h \\* scale_w = 4"):
        depth_to_space(torch.zeros(1, 6, 2, 2))


def test_forward_is_a_stride_1_conv_on_the_official_spd(rng):
    m = SPDConv2d(5, 7, 3, stride=2, bias=True)
    nn.init.normal_(m.conv.bias)
    x = torch.randn(2, 5, 10, 12, generator=rng)
    expected = F.conv2d(official_spd(x), m.conv.weight, m.conv.bias, 1, 1)
    torch.testing.assert_close(m(x), expected)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("stride", [2, 3])
def test_equals_a_strided_conv_with_an_s_times_larger_kernel(rng, k, stride):
    m = SPDConv2d(4, 6, k, stride=stride, bias=True)
    nn.init.normal_(m.conv.bias)
    x = torch.randn(2, 4, 6 * stride, 4 * stride, generator=rng)
    big = m.as_strided_conv()
    assert big.kernel_size == (stride * k, stride * k) and big.stride == (stride, stride)
    torch.testing.assert_close(big(x), m(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_output_shape_matches_strided_conv_for_every_size(k):
    check_conv_shapes(SPDConv2d, k=k, strides=(2, 3))


def test_stride_1_is_the_plain_conv(rng):
    m = SPDConv2d(4, 6, 3)
    assert m.conv.in_channels == 4
    x = torch.randn(1, 4, 7, 7, generator=rng)
    torch.testing.assert_close(m(x), F.conv2d(x, m.conv.weight, None, 1, 1))


def test_params_and_flops_are_s_squared_times_the_strided_conv():
    for k, s, h in [(3, 2, 16), (1, 2, 16), (3, 3, 9), (3, 2, 7)]:
        m = SPDConv2d(16, 32, k, stride=s)
        strided = nn.Conv2d(16, 32, k, s, k // 2, bias=False)
        assert count_params(m) == s * s * count_params(strided)
        assert count_flops(m, (1, 16, h, h)) == s * s * count_flops(strided, (1, 16, h, h))


def test_gradients_compile_export_bf16_at_stride_2(rng):
    m = SPDConv2d(16, 16, 3, stride=2)
    check_gradients(m, torch.randn(2, 16, 9, 9, generator=rng))
    check_compile_and_export(m, torch.randn(2, 16, 8, 8, generator=rng))
    check_compile_and_export(m, torch.randn(2, 16, 7, 9, generator=rng))  # odd sizes: the padding path
    check_bf16_autocast(m, torch.randn(2, 16, 8, 8, generator=rng))


def test_replaces_the_strided_convs_of_resnet18():
    model = pl.resnet18(width=8, conv="spdconv", conv_where="strided")
    spd = [n for n, m in model.named_modules() if isinstance(m, SPDConv2d)]
    assert spd == [f"layer{i}.0.{c}" for i in (2, 3, 4) for c in ("conv1", "shortcut.0")]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_chapter_experiment_has_an_equal_parameter_control():
    """SPD-Conv grows ResNet-18 by far more than 5%: the chapter's experiment must carry a plain network widened to
    its parameter count (chapter standard v2), within a few percent at the full profile's width."""
    from plugconv_lite import experiments
    variants = {v.name: v for v in experiments.EXPERIMENTS["spdconv"]}
    control, spd = variants["spdconv_budget"], variants["spdconv"]
    assert control.budget_of is spd and control.budget == "params" and not control.model_kw
    full = pl.profile("full")
    base, grown, matched = (count_params(v.build(full)) for v in (variants["baseline"], spd, control))
    assert grown / base > 1.05
    assert abs(matched / grown - 1) < 0.02


@pytest.mark.parametrize("kw,match", [
    (dict(kernel_size=2, stride=2), r"kernel_size \(h\)=2 must be odd"),
    (dict(stride=2, padding=0), r"padding=\(0, 0\) must be kernel_size // 2 = \(1, 1\)"),
    (dict(stride=2, dilation=2), r"dilation=\(2, 2\) must be 1"),
    (dict(stride=2, groups=2), "groups=2 must be 1"),
    (dict(stride=0), r"stride\[0\]=0 must be >= 1"),
])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        SPDConv2d(**(dict(in_channels=4, out_channels=8, kernel_size=3) | kw))


def test_bad_scale_raises():
    with pytest.raises(ValueError, match="scale"):
        space_to_depth(torch.zeros(1, 1, 4, 4), 0)
