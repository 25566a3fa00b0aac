import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.conv import SCConv2d
from plugconv_lite.measure import count_flops, count_params
from contract import bn_eval, randomise_norms


def _official_equations(m: SCConv2d, x: torch.Tensor) -> torch.Tensor:
    """MODULES.md's SCConv, written out with F.conv2d; valid when r divides H and W (as in the official code)."""
    C_1, r, s, p = m.C_1, m.pooling_r, m.stride, m.padding
    X_1, X_2 = x[:, :C_1], x[:, C_1:]
    k2 = bn_eval(F.conv2d(F.avg_pool2d(X_1, r, r), m.K2[0].weight, padding=1), m.K2[1])
    gate = torch.sigmoid(X_1 + F.interpolate(k2, size=X_1.shape[-2:]))  # nearest, F.interpolate's default
    k3 = bn_eval(F.conv2d(X_1, m.K3[0].weight, padding=1), m.K3[1])
    Y_1 = F.conv2d(k3 * gate, m.K4.weight, stride=s, padding=p)
    Y_2 = F.conv2d(X_2, m.K1.weight, stride=s, padding=p)
    return torch.cat((Y_1, Y_2), 1)


@pytest.mark.parametrize("c_in,c_out,stride,r,hw", [(16, 16, 1, 4, (8, 12)), (16, 16, 2, 4, (16, 8)),
                                                    (8, 12, 1, 2, (6, 10)), (10, 6, 2, 1, (5, 7))])
def test_forward_equals_the_official_equations(rng, c_in, c_out, stride, r, hw):
    m = randomise_norms(SCConv2d(c_in, c_out, 3, stride, pooling_r=r), rng)
    x = torch.randn(2, c_in, *hw, generator=rng)
    torch.testing.assert_close(m(x), _official_equations(m, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hw,r", [((1, 1), 4), ((2, 3), 4), ((5, 7), 4), ((9, 6), 2), ((3, 10), 8), ((7, 7), 3)])
def test_each_pixel_is_calibrated_by_its_own_pooling_window(rng, hw, r):
    """Sizes not divisible by r (or smaller than r): the context at (i, j) is K_2 of the pooled map at
    (i // r, j // r), and each pooled cell is the mean of the pixels of its (possibly clipped) window."""
    m = randomise_norms(SCConv2d(8, 8, pooling_r=r), rng)
    X_1 = torch.randn(2, m.C_1, *hw, generator=rng)
    H, W = hw
    Hp, Wp = -(-H // r), -(-W // r)
    T = torch.zeros(2, m.C_1, Hp, Wp)
    for a in range(Hp):
        for b in range(Wp):
            T[:, :, a, b] = X_1[:, :, a * r:(a + 1) * r, b * r:(b + 1) * r].mean(dim=(2, 3))
    ctx = m.K2(T)
    up = torch.zeros_like(X_1)
    for i in range(H):
        for j in range(W):
            up[:, :, i, j] = ctx[:, :, i // r, j // r]
    torch.testing.assert_close(m.calibration(X_1), torch.sigmoid(X_1 + up), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("c_in,c_out,k,groups", [(16, 16, 3, 1), (64, 64, 3, 1), (32, 32, 5, 2), (12, 12, 3, 3)])
def test_weights_equal_the_plain_conv_when_in_equals_out(c_in, c_out, k, groups):
    plain = count_params(nn.Conv2d(c_in, c_out, k, groups=groups, bias=False))
    assert count_params(SCConv2d(c_in, c_out, k, groups=groups, norm_layer=None)) == plain
    assert count_params(SCConv2d(c_in, c_out, k, groups=groups)) == plain + 2 * c_in  # two BNs on C/2 channels


@pytest.mark.parametrize("c_in,c_out,k,groups,bias", [(7, 5, 3, 1, False), (16, 32, 3, 1, True), (9, 4, 5, 1, False),
                                                     (12, 20, 3, 2, True)])
def test_parameter_formula_for_any_split(c_in, c_out, k, groups, bias):
    C_1, O_1 = c_in // 2, c_out // 2
    C_2, O_2 = c_in - C_1, c_out - O_1
    expected = k * k * (C_2 * O_2 + 2 * C_1 * C_1 + C_1 * O_1) // groups + 4 * C_1 + (c_out if bias else 0)
    m = SCConv2d(c_in, c_out, k, groups=groups, bias=bias)
    assert (m.C_1, m.C_2, m.O_1, m.O_2) == (C_1, C_2, O_1, O_2)
    assert count_params(m) == expected


@pytest.mark.parametrize("stride,r", [(1, 4), (2, 4), (1, 1)])
def test_flop_formula(stride, r):
    C, H, k = 16, 12, 3
    Ho = (H + 2 - 3) // stride + 1
    Hp = -(-H // r)
    expected = 2 * k * k * (C // 2) ** 2 * (2 * Ho * Ho + H * H + Hp * Hp)  # K1, K4 at the output; K3; K2 pooled
    assert count_flops(SCConv2d(C, C, k, stride, pooling_r=r), (1, C, H, H)) == expected


def test_stride_only_in_K1_and_K4():
    m = SCConv2d(16, 16, 3, stride=2)
    assert m.K1.stride == m.K4.stride == (2, 2)
    assert m.K2[0].stride == m.K3[0].stride == (1, 1)


def test_explicit_padding_applies_to_the_output_convs(rng):
    m = SCConv2d(8, 8, 3, padding=0).eval()
    x = torch.randn(1, 8, 9, 7, generator=rng)
    assert m(x).shape == nn.Conv2d(8, 8, 3, padding=0)(x).shape
    assert m.K2[0].padding == m.K3[0].padding == (1, 1)


def test_plain_half_is_an_ordinary_conv(rng):
    m = SCConv2d(10, 14, 3, stride=2).eval()
    x = torch.randn(2, 10, 9, 9, generator=rng)
    torch.testing.assert_close(m(x)[:, m.O_1:], F.conv2d(x[:, m.C_1:], m.K1.weight, stride=2, padding=1))


def _support_width(m, x, channels):
    """Width of the set of input columns that move output channels ``channels`` at the centre pixel."""
    x = x.clone().requires_grad_(True)
    y = m(x)
    y[:, channels, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
    cols = (x.grad.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
    return int(cols.max() - cols.min() + 1)


def test_self_calibrated_half_sees_beyond_the_kernel(rng):
    """The plain half reads a k x k window; the calibrated half reads K_3 then K_4 (5 wide) plus the pooled context
    (three r-wide cells around each of K_4's taps for r = 4)."""
    x = torch.randn(2, 16, 33, 33, generator=rng)
    m = SCConv2d(16, 16, 3, pooling_r=4).eval()
    assert _support_width(m, x, slice(m.O_1, None)) == 3
    assert _support_width(m, x, slice(0, m.O_1)) > 5
    no_pool = SCConv2d(16, 16, 3, pooling_r=1).eval()
    assert _support_width(no_pool, x, slice(0, no_pool.O_1)) == 5


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (3, 3), (5, 9)])
@pytest.mark.parametrize("r", [4, 8])
def test_maps_smaller_than_r_train_and_backprop(rng, hw, r):
    m = SCConv2d(8, 8, 3, stride=2, pooling_r=r).train()
    x = torch.randn(2, 8, *hw, generator=rng, requires_grad=True)
    y = m(x)
    assert y.shape == nn.Conv2d(8, 8, 3, 2, 1)(x).shape
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gradients_reach_every_parameter_without_norms(rng):
    m = SCConv2d(12, 20, 3, stride=2, groups=2, bias=True, norm_layer=None)
    x = torch.randn(2, 12, 9, 9, generator=rng, requires_grad=True)
    m(x).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_compile_and_export_on_a_size_r_does_not_divide(rng):
    from contract import check_compile_and_export
    check_compile_and_export(SCConv2d(16, 16, 3, pooling_r=4), torch.randn(2, 16, 7, 5, generator=rng))


@pytest.mark.parametrize("kw,match", [
    (dict(pooling_r=0), "pooling_r=0 must be >= 1"),
    (dict(pooling_r=2.5), "pooling_r=2.5 must be an integer"),
    (dict(pooling_r="4"), "pooling_r='4' must be an integer"),
    (dict(in_channels=1), "in_channels=1 must be >= 2"),
    (dict(out_channels=1), "out_channels=1 must be >= 2"),
    (dict(kernel_size=4), r"kernel_size=\(4, 4\) must be odd"),
    (dict(kernel_size=(3, 2)), r"kernel_size=\(3, 2\) must be odd"),
    (dict(in_channels=6, out_channels=8, groups=2), "groups=2 must divide every channel half"),
    (dict(in_channels=8, out_channels=6, groups=2), "it does not divide O_1=3"),
    (dict(norm_layer=nn.BatchNorm1d), r"norm_layer=BatchNorm1d must build a norm for \(B, C, H, W\) maps"),
    (dict(norm_layer=nn.GroupNorm), "norm_layer=GroupNorm must build a norm.*missing 1 required"),
    (dict(norm_layer="bn"), "norm_layer='bn' must be a module class or factory"),
    (dict(norm_layer=nn.BatchNorm2d(8)), "norm_layer=BatchNorm2d.* must be a module class or factory"),
])
def test_bad_hyperparameters_raise(kw, match):
    args = dict(in_channels=16, out_channels=16, kernel_size=3) | kw
    with pytest.raises(ValueError, match=match):
        SCConv2d(**args)


def test_extra_repr_names_the_split():
    s = repr(SCConv2d(7, 9, pooling_r=2))
    assert "pooling_r=2" in s and "3 self-calibrated + 4 plain" in s and "(4 + 5)" in s


def test_other_2d_norms_are_accepted(rng):
    m = SCConv2d(16, 16, 3, norm_layer=lambda c: nn.GroupNorm(4, c))
    assert isinstance(m.K2[1], nn.GroupNorm) and m(torch.randn(1, 16, 5, 5, generator=rng)).shape == (1, 16, 5, 5)


def test_batch_of_one_on_maps_no_larger_than_r_is_refused_clearly_in_training(rng):
    """ResNet-18's last stage (4 x 4 maps) at batch 1: AvgPool_4 leaves one value per channel, which K_2's BN cannot
    normalise in training. The plain network can take that step; SCConv says why it cannot."""
    x = torch.randn(1, 3, 32, 32, generator=rng)
    pl.resnet18(width=8).train()(x).sum().backward()  # the baseline can
    model = pl.resnet18(width=8, conv="scconv").train()
    with pytest.raises(ValueError, match=r"pooling_r=4\) cannot train on a batch of 1 with 4x4 maps"):
        model(x)
    assert model.eval()(x).shape == (1, 100)                       # inference at batch 1 is fine
    model.train()(torch.randn(2, 3, 32, 32, generator=rng)).sum().backward()   # and so is training at batch 2
    assert SCConv2d(8, 8, pooling_r=4, norm_layer=None).train()(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)
