import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.blocks import GSBottleneck, VoVGSCSP
from contract import bn_eval, randomise_norms


def _cba(x, seq, stride=1, padding=0, groups=1, act=True):
    """The official Conv unit (conv without bias, BN, Mish), eval mode, written out."""
    y = bn_eval(F.conv2d(x, seq[0].weight, None, stride, padding, 1, groups), seq[1])
    return F.mish(y) if act else y


def _gsconv(x, m, act=True):
    """Official GSConv: x1 = Conv(x); cat(x1, DW5x5(x1)); 2-group channel shuffle."""
    x1 = _cba(x, m.cv1, m.stride, m.padding, 1, act)
    x2 = torch.cat((x1, _cba(x1, m.cv2, 1, 2, x1.shape[1], act)), 1)
    B, C, H, W = x2.shape
    return x2.reshape(B, 2, C // 2, H, W).permute(0, 2, 1, 3, 4).reshape(B, C, H, W)


def _gs_bottleneck(x, b: GSBottleneck):
    """Official GSBottleneck: GSConv(c1, c2/2, 1) -> GSConv(c2/2, c2, 3, act=False), plus Conv1x1(act=False)."""
    return _gsconv(_gsconv(x, b.gs1), b.gs2, act=False) + _cba(x, b.shortcut, act=False)


def official_vovgscsp(m: VoVGSCSP, x):
    """Official VoVGSCSP: cv3(cat(cv2(x), gsb(cv1(x)))); with stride > 1 our GSConv k=3 / s downsamples first."""
    if m.stride > 1:
        x = _gsconv(x, m.down)
    y1 = _cba(x, m.cv1)
    for b in m.gsb:
        y1 = _gs_bottleneck(y1, b)
    return _cba(torch.cat((_cba(x, m.cv2), y1), 1), m.cv3)


@pytest.mark.parametrize("c_in,c_out,stride,expansion,depth", [
    (24, 32, 1, 0.5, 1), (64, 64, 1, 0.5, 1), (16, 32, 2, 0.5, 1), (32, 16, 1, 1.0, 2), (8, 24, 2, 1 / 3, 1)])
def test_forward_equals_the_official_equations(rng, c_in, c_out, stride, expansion, depth):
    m = randomise_norms(VoVGSCSP(c_in, c_out, stride, expansion=expansion, depth=depth).double(), rng)
    x = torch.randn(2, c_in, 9, 7, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), official_vovgscsp(m, x), atol=1e-12, rtol=1e-12)


def test_gs_bottleneck_is_its_shortcut_when_the_last_gsconv_is_silenced(rng):
    """The GS bottleneck is a residual unit around a 1x1 projection: with the second GSConv's BN scaled to zero
    (no activation follows it), its output is exactly the shortcut's."""
    b = randomise_norms(GSBottleneck(16, 16), rng)
    for bn in (b.gs2.cv1[1], b.gs2.cv2[1]):
        nn.init.zeros_(bn.weight)
        nn.init.zeros_(bn.bias)
    x = torch.randn(2, 16, 6, 6, generator=rng)
    assert torch.equal(b(x), b.shortcut(x))


def test_csp_projection_branch_comes_first(rng):
    """cv3 reads cat(cv2(x), GSB(cv1(x))): its first hidden input channels are the projection branch's."""
    m = randomise_norms(VoVGSCSP(16, 16), rng)
    seen = {}
    m.cv3.register_forward_pre_hook(lambda mod, inp: seen.setdefault("x", inp[0]))
    x = torch.randn(2, 16, 5, 5, generator=rng)
    m(x)
    assert torch.equal(seen["x"][:, :m.hidden], m.cv2(x))
    assert torch.equal(seen["x"][:, m.hidden:], m.gsb(m.cv1(x)))


@pytest.mark.parametrize("size", [(1, 1), (7, 9), (8, 8), (15, 13)])
@pytest.mark.parametrize("stride", [1, 2])
def test_shapes_on_odd_sizes_and_stride_2(size, stride):
    m = VoVGSCSP(16, 32, stride).eval()
    h, w = size
    assert m(torch.randn(2, 16, h, w)).shape == (2, 32, (h - 1) // stride + 1, (w - 1) // stride + 1)
    assert isinstance(m.down, nn.Identity) == (stride == 1)


def test_registered_as_a_block_that_plugs_into_resnet18():
    assert isinstance(pl.create("vovgscsp", 16, 32, stride=2), VoVGSCSP)


@pytest.mark.parametrize("bad,match", [
    (dict(out_channels=12), r"hidden=int\(out_channels \* expansion\)=int\(12 \* 0.5\)=6"),
    (dict(expansion=0.1), "expansion=0.1"),
    (dict(expansion=0), "expansion=0"),
    (dict(in_channels=15, stride=2), "in_channels=15 must be even"),
    (dict(stride=0), "stride=0"),
    (dict(depth=0), "depth=0"),
    (dict(in_channels=0), "in_channels=0"),
    (dict(dw_kernel_size=2), "dw_kernel_size=2"),
    (dict(act_layer="mish"), "act_layer"),
])
def test_bad_hyperparameters_raise_naming_the_parameter(bad, match):
    args = dict(in_channels=16, out_channels=32) | bad
    with pytest.raises(ValueError, match=match):
        VoVGSCSP(**args)


def test_bottleneck_width_must_be_a_multiple_of_4():
    with pytest.raises(ValueError, match="out_channels=6 must be a multiple of 4"):
        GSBottleneck(8, 6)
