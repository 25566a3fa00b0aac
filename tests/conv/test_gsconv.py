import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.conv import GSConv2d, interleave_halves
from plugconv_lite.measure import count_params
from contract import bn_eval, check_conv_shapes, randomise_norms


def _official_shuffle(x2: torch.Tensor) -> torch.Tensor:
    """The shuffle of the official models_inPaper.py GSConv, written out: (B, 2, C/2, H, W), swap axes 1 and 2."""
    B, C, H, W = x2.shape
    return x2.reshape(B, 2, C // 2, H, W).permute(0, 2, 1, 3, 4).reshape(B, C, H, W)


def _cba(x, seq, stride=1, padding=0, dilation=1, groups=1, act=True):
    """The official Conv unit (conv without bias, BN, Mish) with F.conv2d and BN written out (eval mode)."""
    y = bn_eval(F.conv2d(x, seq[0].weight, None, stride, padding, dilation, groups), seq[1])
    return F.mish(y) if act else y


def official_gsconv(m: GSConv2d, x: torch.Tensor) -> torch.Tensor:
    """MODULES.md section 28: x1 = Conv(c1, c_, k, s); x2 = cat(x1, DWConv5x5(x1)); channel shuffle with 2 groups."""
    act = not isinstance(m.cv1[2], nn.Identity)
    x1 = _cba(x, m.cv1, m.stride, m.padding, m.dilation, m.groups, act)
    c_ = x1.shape[1]
    x2 = torch.cat((x1, _cba(x1, m.cv2, 1, m.dw_kernel_size // 2, 1, c_, act)), 1)
    return _official_shuffle(x2)


def test_shuffle_interleaves_the_dense_and_the_depthwise_half(rng):
    m = randomise_norms(GSConv2d(8, 12, 3), rng)
    x = torch.randn(2, 8, 7, 9, generator=rng)
    dense = m.cv1(x)
    depthwise = m.cv2(dense)
    y = m(x)
    assert torch.equal(y[:, 0::2], dense)      # output channel 2i: dense channel i
    assert torch.equal(y[:, 1::2], depthwise)  # output channel 2i + 1: depthwise channel i


def test_interleave_is_the_official_two_group_shuffle(rng):
    a, b = torch.randn(3, 5, 4, 6, generator=rng), torch.randn(3, 5, 4, 6, generator=rng)
    assert torch.equal(interleave_halves(a, b), _official_shuffle(torch.cat((a, b), 1)))
    # channels-last input: reshape (not view) gives the same values
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (a, b)]
    assert torch.equal(interleave_halves(*cl), interleave_halves(a, b))


@pytest.mark.parametrize("c_in,c_out,k,stride,dilation,groups,act", [
    (16, 32, 3, 1, 1, 1, True), (16, 24, 3, 2, 1, 1, True), (8, 16, 1, 1, 1, 1, False), (12, 20, 5, 2, 1, 2, True),
    (16, 16, 3, 1, 2, 4, True)])
def test_forward_equals_the_official_equations(rng, c_in, c_out, k, stride, dilation, groups, act):
    m = GSConv2d(c_in, c_out, k, stride, dilation=dilation, groups=groups, act_layer=nn.Mish if act else None)
    m = randomise_norms(m.double(), rng)
    x = torch.randn(2, c_in, 9, 7, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), official_gsconv(m, x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("groups", [1, 2])
def test_output_shape_matches_nn_conv2d_on_odd_sizes_and_stride_2(k, groups):
    check_conv_shapes(lambda *a, **kw: GSConv2d(*a, groups=groups, **kw), c_in=16, c_out=32, k=k,
                      sizes=[(1, 1), (7, 9), (8, 8), (15, 13)])


def test_about_half_the_parameters_of_the_dense_conv():
    C, O, k = 64, 64, 3
    m = GSConv2d(C, O, k)
    # dense half k^2 C O/2, depthwise 5x5 on O/2 channels, two BNs of O/2 channels (weight and bias)
    assert count_params(m) == k * k * C * O // 2 + 25 * O // 2 + 2 * 2 * (O // 2)
    assert count_params(m) < 0.55 * count_params(nn.Conv2d(C, O, k, bias=False))


def test_bias_is_added_after_the_shuffle(rng):
    m = GSConv2d(8, 12, 3, bias=True).eval()
    x = torch.randn(2, 8, 5, 5, generator=rng)
    with torch.no_grad():
        m.bias.copy_(torch.arange(12.0))
    y0 = interleave_halves(m.cv1(x), m.cv2(m.cv1(x)))
    torch.testing.assert_close(m(x) - y0, torch.arange(12.0).reshape(1, 12, 1, 1).expand_as(y0))


def test_registered_as_a_conv():
    assert isinstance(pl.create("gsconv", 16, 32, 3), GSConv2d)


@pytest.mark.parametrize("bad,match", [
    (dict(out_channels=31), "out_channels=31 must be even"),
    (dict(in_channels=8, out_channels=4, groups=4), "groups=4 must divide out_channels // 2=2"),
    (dict(dw_kernel_size=4), "dw_kernel_size=4 must be odd"),
    (dict(dw_kernel_size=0), "dw_kernel_size"),
    (dict(act_layer=nn.ReLU()), "act_layer"),
    (dict(norm_layer=nn.BatchNorm1d), "norm_layer"),
    (dict(kernel_size=0), "kernel_size"),
])
def test_bad_hyperparameters_raise_naming_the_parameter(bad, match):
    args = dict(in_channels=16, out_channels=32, kernel_size=3) | bad
    with pytest.raises(ValueError, match=match):
        GSConv2d(**args)
