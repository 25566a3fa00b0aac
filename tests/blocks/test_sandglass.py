import math

import pytest
import torch
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite._validate import make_divisible
from plugconv_lite.blocks import SandglassBlock, sandglass_hidden
from contract import bn_eval, randomise_norms


def _official_equations(m: SandglassBlock, x: torch.Tensor) -> torch.Tensor:
    """MODULES.md section 9's SGBlock (the full sandglass) written out with F.conv2d: dw(1)-BN-ReLU6, pw-BN,
    pw-BN-ReLU6, dw(stride)-BN, then x added to the first C // identity_div channels."""
    c_in, c_out = m.in_channels, m.out_channels
    h = F.relu6(bn_eval(F.conv2d(x, m.dw1.weight, padding=1, groups=c_in), m.bn1))
    h = bn_eval(F.conv2d(h, m.reduce.weight), m.bn2)
    h = F.relu6(bn_eval(F.conv2d(h, m.expand.weight), m.bn3))
    out = bn_eval(F.conv2d(h, m.dw2.weight, stride=m.stride, padding=1, groups=c_out), m.bn4)
    if m.stride == 1 and c_in == c_out and m.identity_multiplier > 0:
        k = round(m.identity_multiplier * c_out)  # the cases below have alpha * C integral
        out = out.clone()
        out[:, :k] += x[:, :k]
    return out


@pytest.mark.parametrize("c_in,c_out,stride,alpha", [(64, 64, 1, 1.0), (64, 64, 1, 0.5), (24, 24, 1, 0.25),
                                                      (32, 96, 2, 1.0), (16, 32, 1, 1.0), (48, 48, 2, 1.0)])
def test_forward_equals_the_official_equations(rng, c_in, c_out, stride, alpha):
    m = randomise_norms(SandglassBlock(c_in, c_out, stride, identity_multiplier=alpha).double(), rng)
    x = torch.randn(2, c_in, 9, 7, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_equations(m, x), atol=1e-10, rtol=1e-10)


def _zero_residual(m: SandglassBlock) -> SandglassBlock:
    """The last BN set to output zero, so the block's output is its shortcut alone."""
    with torch.no_grad():
        m.bn4.weight.zero_()
        m.bn4.bias.zero_()
    return m.eval()


@pytest.mark.parametrize("c_in,c_out,stride", [(32, 32, 1), (32, 32, 2), (32, 64, 1), (32, 64, 2), (64, 32, 1),
                                               (16, 16, 1)])
def test_shortcut_exists_exactly_when_stride_1_and_in_equals_out(rng, c_in, c_out, stride):
    m = _zero_residual(SandglassBlock(c_in, c_out, stride))
    x = torch.randn(2, c_in, 8, 8, generator=rng)
    out = m(x)
    expected = stride == 1 and c_in == c_out
    assert m.use_shortcut == expected
    if expected:
        torch.testing.assert_close(out, x)
    else:
        assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("channels,alpha,k", [(24, 1.0, 24), (24, 0.5, 12), (24, 0.25, 6), (9, 1 / 3, 3),
                                              (7, 0.5, 3), (24, 0.0, 0)])
def test_identity_multiplier_adds_the_input_to_exactly_that_fraction(rng, channels, alpha, k):
    """out - F(x) is x on the first floor(alpha * C) channels and exactly 0 on the rest."""
    m = randomise_norms(SandglassBlock(channels, channels, identity_multiplier=alpha), rng)
    assert m.identity_channels == k
    x = torch.randn(2, channels, 6, 6, generator=rng)
    added = m(x) - m.residual(x)
    torch.testing.assert_close(added[:, :k], x[:, :k])
    assert torch.count_nonzero(added[:, k:]) == 0


def test_middle_is_linear_no_activation_between_reduce_and_expand(rng):
    """What the reduce conv's BN emits reaches the expand conv unchanged, negative values included (a ReLU/ReLU6
    there would clip them); after the expand conv the activation does clip."""
    m = randomise_norms(SandglassBlock(64, 64), rng)
    seen = {}
    m.bn2.register_forward_hook(lambda mod, i, o: seen.__setitem__("bn2", o.clone()))  # an in-place act would
    # change o itself
    m.expand.register_forward_pre_hook(lambda mod, i: seen.__setitem__("expand_in", i[0].clone()))
    m.dw2.register_forward_pre_hook(lambda mod, i: seen.__setitem__("dw2_in", i[0]))
    m(torch.randn(4, 64, 8, 8, generator=rng))
    assert (seen["bn2"] < 0).any()
    torch.testing.assert_close(seen["expand_in"], seen["bn2"], atol=0, rtol=0)
    assert seen["dw2_in"].min() >= 0 and seen["dw2_in"].max() <= 6


def test_depthwise_at_both_wide_ends_and_the_stride_on_the_last():
    m = SandglassBlock(32, 64, stride=2)
    assert (m.dw1.groups, m.dw1.in_channels, m.dw1.stride) == (32, 32, (1, 1))
    assert (m.dw2.groups, m.dw2.in_channels, m.dw2.stride) == (64, 64, (2, 2))
    assert (m.reduce.in_channels, m.reduce.out_channels, m.expand.out_channels) == (32, 16, 64)


@pytest.mark.parametrize("c_in,c_out,t,hidden", [
    (64, 64, 6, 16),     # 64 // 6 = 10 < 64 / 6: the floor make_divisible(ceil(64 / 6) = 11, 16) = 16
    (96, 96, 6, 16), (144, 144, 6, 24), (192, 192, 6, 32), (384, 384, 6, 64), (960, 960, 6, 160),
    (32, 96, 2, 16),     # MobileNeXt's first block: 32 // 2 = 16 = 96 / 6
    (16, 16, 6, 16),     # CIFAR's narrowest width: 16 units, not 16 // 6 = 2
    (24, 24, 6, 16),     # the official rule gives 24 // 6 = 4 (not below 24 / 6); the book's floor 16
    (16, 16, 2, 16),     # the official rule gives 16 // 2 = 8; the floor min(16, C_in) = 16: no reduction
    (576, 960, 6, 160),  # 96 < 960 / 6: raised to 160
    (384, 384, 2, 192), (384, 384, 4, 96),  # t is a REDUCTION ratio: larger t, narrower middle
])
def test_hidden_width_rule(c_in, c_out, t, hidden):
    assert sandglass_hidden(c_in, c_out, t) == hidden
    assert SandglassBlock(c_in, c_out, t=t).hidden_channels == hidden


def test_hidden_width_floor_keeps_cifar_layers_at_16_units_and_leaves_imagenet_widths_alone():
    """hidden >= max(C_in // t, ceil(C_out / 6), min(16, C_in)) at every CIFAR width; the official rule alone gives
    4 units at 24 channels and t = 6. At MobileNeXt's widths (>= 96 channels, t in 2..6) the floor never acts."""
    for c in (16, 24, 32, 64, 96, 160, 320):
        for t in (2, 4, 6, 8):
            hidden = sandglass_hidden(c, c, t)
            assert hidden >= max(c // t, math.ceil(c / 6), 16)
    assert sandglass_hidden(24, 24, 6) == 16
    for c in (96, 144, 192, 288, 384, 576, 960, 1280):
        for t in (2, 3, 4, 6):
            official = c // t if c // t >= c / 6 else make_divisible(math.ceil(c / 6), 16)
            assert sandglass_hidden(c, c, t) == official


@pytest.mark.parametrize("kw,name", [({"t": 0.5}, "t"), ({"identity_multiplier": 1.5}, "identity_multiplier"),
                                     ({"identity_multiplier": -0.1}, "identity_multiplier"), ({"stride": 3}, "stride"),
                                     ({"hidden_channels": 0}, "hidden_channels"), ({"divisor": 0}, "divisor"),
                                     ({"in_channels": 0}, "in_channels"), ({"t": float("nan")}, "t")])
def test_bad_hyperparameters_raise_value_error_naming_the_parameter(kw, name):
    args = {"in_channels": 32, "out_channels": 32, **kw}
    with pytest.raises(ValueError, match=name):
        SandglassBlock(**args)


def test_plugs_into_mobilenetv2_with_the_same_shortcut_rule():
    torch.manual_seed(0)
    plain = pl.mobilenetv2(width_mult=0.5)
    net = pl.build_model("mobilenetv2", width_mult=0.5, block="sandglass", block_kw={"identity_multiplier": 0.5})
    assert all(isinstance(b, SandglassBlock) for b in net.blocks)
    assert [b.use_shortcut for b in net.blocks] == [b.use_residual for b in plain.blocks]
    assert all(b.identity_multiplier == 0.5 and b.t == 6 for b in net.blocks)  # MobileNetV2's expand_ratio dropped
    assert pl.build_model("mobilenetv2", block="sandglass", block_kw={"t": 2}).blocks[-2].t == 2
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)
