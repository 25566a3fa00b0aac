"""FPT head (plugconv_lite/heads/fpt.py): the three transformers' defining properties, the official equations, the
pyramid's wiring and bad hyperparameters."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.heads.fpt import FPTHead, GroundingTransformer, RenderingTransformer, SelfTransformer


def _randomise_bn(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=g, dtype=bn.weight.dtype) + 0.5)
                bn.bias.copy_(torch.randn(bn.bias.shape, generator=g, dtype=bn.bias.dtype))
                bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g, dtype=bn.bias.dtype))
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g, dtype=bn.bias.dtype) + 0.5)
    return m


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


# --- the official equations, written independently (eval mode, float64) ---------------------------------------------

def _official_st(m, x):
    """SelfTrans + MixtureOfSoftMax (self_trans.py): explicit maps, mixed, then one product with v."""
    B, C, H, W = x.shape
    n = m.n_mix
    xp = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    q = F.conv2d(x, m.W_qk.weight, m.W_qk.bias).reshape(B, C, -1)
    k = F.conv2d(xp, m.W_qk.weight, m.W_qk.bias).reshape(B, C, -1)
    v = F.conv2d(xp, m.W_v.weight, m.W_v.bias).reshape(B, C, -1)
    pi = torch.softmax(m.w_mix @ q.mean(2, keepdim=True), dim=1).reshape(B * n, 1, 1)
    qm = q.reshape(B * n, C // n, -1).transpose(1, 2)
    attn = torch.softmax(torch.bmm(qm, k.reshape(B * n, C // n, -1)) / C ** 0.5, dim=2)
    attn = (attn * pi).reshape(B, n, qm.shape[1], -1).sum(1)
    y = torch.bmm(attn, v.transpose(1, 2)).transpose(1, 2).reshape(B, C, H, W)
    return _bn(F.conv2d(y, m.W_o.weight), m.bn) + x


def _official_gt(m, fine, coarse):
    """GroundTrans, mode 'dot' (grounding_trans.py): f = theta^T phi / N_coarse, no softmax."""
    B, _, H, W = fine.shape
    th = F.conv2d(fine, m.theta.weight, m.theta.bias).reshape(B, m.inter_channels, -1).transpose(1, 2)
    ph = F.conv2d(coarse, m.phi.weight, m.phi.bias).reshape(B, m.inter_channels, -1)
    g = F.conv2d(coarse, m.g.weight, m.g.bias).reshape(B, m.inter_channels, -1).transpose(1, 2)
    f = th @ ph
    y = (f / f.shape[-1]) @ g
    return _bn(F.conv2d(y.transpose(1, 2).reshape(B, -1, H, W), m.W_z.weight, m.W_z.bias), m.bn)


def _official_rt(m, coarse, fine):
    """RenderTrans, upsample=False (rendering_trans.py), with the stride of the gap."""
    w = torch.relu(_bn(F.conv2d(F.adaptive_avg_pool2d(fine, 1), m.W_w.weight), m.bn_w))
    q = _bn(F.conv2d(coarse, m.W_q.weight, padding=1), m.bn_q)
    s = _bn(F.conv2d(fine, m.W_s.weight, stride=2 ** m.gap, padding=1), m.bn_s)
    return torch.relu(s + q * w)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("n_mix", [1, 2, 4])
def test_self_transformer_equals_official_equations(fused, n_mix):
    torch.manual_seed(0)
    m = _randomise_bn(SelfTransformer(16, n_mix=n_mix, fused=fused)).double().eval()
    x = torch.randn(2, 16, 8, 6, dtype=torch.float64)
    if n_mix == 1:  # the official code has no mixture weights then: pi = 1
        m.w_mix = nn.Parameter(torch.zeros(1, 16, dtype=torch.float64))
    torch.testing.assert_close(m(x), _official_st(m, x), rtol=1e-12, atol=1e-12)


def test_grounding_transformer_equals_official_equations_in_both_product_orders():
    torch.manual_seed(0)
    m = _randomise_bn(GroundingTransformer(16)).double().eval()
    for fine, coarse in [((2, 16, 8, 8), (2, 16, 4, 4)), ((2, 16, 16, 16), (2, 16, 2, 2)),
                         ((1, 16, 2, 2), (1, 16, 1, 1))]:
        f, c = torch.randn(fine, dtype=torch.float64), torch.randn(coarse, dtype=torch.float64)
        torch.testing.assert_close(m(f, c), _official_gt(m, f, c), rtol=1e-12, atol=1e-12)
    # both orders are taken somewhere in the cases above
    assert GroundingTransformer._reassociate(64, 16, 8) and not GroundingTransformer._reassociate(256, 4, 8)


@pytest.mark.parametrize("gap", [1, 2])
def test_rendering_transformer_equals_official_equations(gap):
    torch.manual_seed(0)
    m = _randomise_bn(RenderingTransformer(8, gap=gap)).double().eval()
    fine = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    coarse = torch.randn(2, 8, 16 >> gap, 16 >> gap, dtype=torch.float64)
    torch.testing.assert_close(m(coarse, fine), _official_rt(m, coarse, fine), rtol=1e-12, atol=1e-12)


# --- defining properties ---------------------------------------------------------------------------------------------

def test_grounding_transformer_starts_at_exactly_zero_and_the_head_ignores_it_at_init():
    torch.manual_seed(0)
    gt = GroundingTransformer(16).train()
    assert gt(torch.randn(2, 16, 8, 8), torch.randn(2, 16, 4, 4)).abs().max().item() == 0.0
    head = FPTHead([8, 16, 32, 64], 10, d=16).eval()
    stages = [torch.randn(2, c, 32 >> i, 32 >> i) for i, c in enumerate([8, 16, 32, 64])]
    before = head(stages)
    with torch.no_grad():  # whatever GT's convs hold, a zero-initialised W_z BN keeps its output at 0
        for gt in head.gt.values():
            for conv in (gt.theta, gt.phi, gt.g, gt.W_z):
                conv.weight.normal_()
    torch.testing.assert_close(head(stages), before, rtol=0, atol=0)


def test_mixture_weights_are_a_distribution_per_image():
    torch.manual_seed(0)
    st = SelfTransformer(24, n_mix=3)
    with torch.no_grad():
        st.w_mix.mul_(10)
    pi = st.mixture_weights(torch.randn(5, 24, 49))
    assert pi.shape == (5, 3) and (pi > 0).all()
    torch.testing.assert_close(pi.sum(1), torch.ones(5))
    assert (pi.max(0).values - pi.min(0).values).max() > 1e-3  # depends on the image


@pytest.mark.parametrize("gap,size", [(1, 16), (2, 16), (1, 7), (2, 9)])
def test_rendering_transformer_output_matches_the_coarse_level(gap, size):
    """The coarse level is the fine one after `gap` stride-2 3x3 convs (the backbone's downsampling); RT's output
    has its shape, odd sizes included."""
    rt = RenderingTransformer(8, gap=gap).eval()
    fine = torch.randn(2, 8, size, size)
    coarse = fine
    for _ in range(gap):
        coarse = nn.Conv2d(8, 8, 3, 2, 1)(coarse)
    assert rt(coarse, fine).shape == coarse.shape
    assert rt.W_s.stride == (2 ** gap, 2 ** gap)


def test_self_transformer_output_position_depends_on_every_input_position():
    torch.manual_seed(0)
    st = SelfTransformer(8, n_mix=2).eval()
    x = torch.randn(1, 8, 7, 6, requires_grad=True)
    st(x)[0, :, 0, 0].sum().backward()   # one output position: the top-left corner
    assert (x.grad.abs().sum(1)[0] > 0).all()


def test_head_levels_and_its_wiring():
    head = FPTHead([8, 16, 32, 64], 10, d=16)
    assert head.levels == (2, 3, 4)
    assert sorted(head.rt) == ["3_2", "4_2", "4_3"] and sorted(head.gt) == ["2_3", "2_4", "3_4"]
    assert [head.rt[k].gap for k in ("3_2", "4_2", "4_3")] == [1, 2, 1]
    assert head.fuse[0][0].in_channels == 4 * 16 and head.fc.in_features == 3 * 16
    two = FPTHead([8, 16, 32, 64], 10, d=16, levels=(3, 4))
    assert sorted(two.rt) == ["4_3"] and sorted(two.gt) == ["3_4"] and two.fuse[0][0].in_channels == 3 * 16
    assert FPTHead([8, 16, 32], 10, d=16).levels == (1, 2, 3)


def test_head_reads_only_its_levels():
    torch.manual_seed(0)
    head = FPTHead([8, 16, 32, 64], 10, d=16, levels=(3, 4)).eval()
    stages = [torch.randn(2, c, 32 >> i, 32 >> i, requires_grad=True) for i, c in enumerate([8, 16, 32, 64])]
    head(stages).sum().backward()
    assert stages[0].grad is None and stages[1].grad is None
    assert stages[2].grad.abs().sum() > 0 and stages[3].grad.abs().sum() > 0


def test_resnet18_with_the_fpt_head():
    net = pl.resnet18(width=8, num_classes=10, head="fpt", head_kw={"d": 16})
    assert net.fc is None and isinstance(net.head, FPTHead)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# --- bad hyperparameters ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(d=0), "d=0"), (dict(n_mix=3), "n_mix=3 must divide d=16"), (dict(n_mix=0), "n_mix=0"),
    (dict(levels=(4, 3)), "levels=\\(4, 3\\) must be strictly increasing"), (dict(levels=(2, 5)), "levels\\[1\\]=5"),
    (dict(levels=()), "levels=\\(\\) must be a non-empty"), (dict(levels="23"), "levels='23'"),
    (dict(channels=[8, 16, 0, 64]), "channels\\[2\\]=0"), (dict(gt_channels=0), "inter_channels=0"),
])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        FPTHead(**(dict(channels=[8, 16, 32, 64], num_classes=10, d=16) | kw))


def test_transformer_bad_arguments_raise():
    with pytest.raises(ValueError, match="gap=0"):
        RenderingTransformer(8, gap=0)
    with pytest.raises(ValueError, match="fused='yes'"):
        SelfTransformer(8, fused="yes")
