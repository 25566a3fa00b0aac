import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.heads import AFAHead, afa_fuse
from plugconv_lite.measure import count_params
from contract import randomise_norms

CHANNELS = [8, 16, 32, 64]


def _stages(B=2, hw=16, channels=CHANNELS, g=None, dtype=torch.float64):
    return [torch.randn(B, c, hw >> i, hw >> i, generator=g, dtype=dtype) for i, c in enumerate(channels)]


class _Const(nn.Module):
    """An attention forced to a constant value, with the shape the real one returns."""

    def __init__(self, value, spatial: bool):
        super().__init__()
        self.value, self.spatial = value, spatial

    def forward(self, t):
        shape = (t.shape[0], 1, *t.shape[2:]) if self.spatial else (*t.shape[:2], 1, 1)
        return torch.full(shape, self.value, dtype=t.dtype)


def _bn(t, bn, training):
    if training:
        dims = [0] + list(range(2, t.dim()))
        mean, var = t.mean(dims, keepdim=True), t.var(dims, unbiased=False, keepdim=True)
    else:
        mean, var = bn.running_mean[:, None, None], bn.running_var[:, None, None]
    return (t - mean) / torch.sqrt(var + bn.eps) * bn.weight[:, None, None] + bn.bias[:, None, None]


def _official_equations(m: AFAHead, stages, training: bool):
    """MODULES.md section 33 / the official AFAIDAUp node, written out independently of the module's forward:
    proj = 1x1 conv + BN + ReLU, up = depthwise transposed conv (kernel 2u, stride u, padding u/2),
    SA = sigmoid(1x1(relu(BN(3x3(relu(BN(3x3(x)))))))), CA = sigmoid(MLP(GAP f) + MLP(GMP f)) (BN per descriptor),
    x <- s (1 - c) x + (1 - s) c f for each deeper level in turn; then GAP and the linear classifier."""
    feats = []
    for k, level in enumerate(m.levels):
        t, p = stages[level - 1], m.proj[k]
        if isinstance(p, nn.Sequential):
            t = torch.relu(_bn(F.conv2d(t, p[0].weight), p[1], training))
        if isinstance(m.up[k], nn.ConvTranspose2d):
            u = m.up[k].stride[0]
            t = F.conv_transpose2d(t, m.up[k].weight, stride=u, padding=u // 2, groups=m.width)
        feats.append(t)
    x = feats[0]
    for k in range(1, len(feats)):
        sa, ca, f = m.sa[k - 1], m.ca[k - 1], feats[k]
        h = torch.relu(_bn(F.conv2d(x, sa.conv1.weight, padding=1), sa.bn1, training))
        h = torch.relu(_bn(F.conv2d(h, sa.conv2.weight, padding=1), sa.bn2, training))
        s = torch.sigmoid(F.conv2d(h, sa.conv3.weight))

        def mlp(z):
            return F.conv2d(torch.relu(_bn(F.conv2d(z, ca.fc1.weight), ca.bn, training)), ca.fc2.weight)
        c = torch.sigmoid(mlp(f.mean((2, 3), keepdim=True)) + mlp(f.amax((2, 3), keepdim=True)))
        x = s * (1 - c) * x + (1 - s) * c * f
    return F.linear(x.mean((2, 3)), m.fc.weight, m.fc.bias)


@pytest.mark.parametrize("levels", [(3, 4), (2, 3, 4), (1, 4)])
@pytest.mark.parametrize("training", [False, True])
def test_forward_equals_the_official_equations(rng, levels, training):
    m = randomise_norms(AFAHead(CHANNELS, 5, levels=levels, sa_reduction=1), rng).double().train(training)
    X = _stages(B=3, g=rng)
    torch.testing.assert_close(m(X), _official_equations(m, X, training), rtol=1e-10, atol=1e-12)


def test_fusion_with_forced_attentions_reduces_to_the_formula(rng):
    """s = 1: out = (1 - c) x (the deep level is shut out); s = 0: out = c f; with s and c forced to constants the
    head's fused map is s (1 - c) x + (1 - s) c f, x the shallow level and f the upsampled deep one."""
    m = AFAHead(CHANNELS, 5).double().eval()
    X = _stages(g=rng)
    x = X[2]                                                  # layer3 has the common width: no projection
    f = m.up[1](m.proj[1](X[3]))
    c = m.ca[0](f)
    m.sa[0] = _Const(1.0, spatial=True)
    torch.testing.assert_close(m.features(X), (1 - c) * x, rtol=0, atol=0)
    m.sa[0] = _Const(0.0, spatial=True)
    torch.testing.assert_close(m.features(X), c * f, rtol=0, atol=0)
    for s_val, c_val in [(0.3, 0.8), (0.5, 0.5), (1.0, 0.0)]:
        m.sa[0], m.ca[0] = _Const(s_val, True), _Const(c_val, False)
        torch.testing.assert_close(m.features(X), s_val * (1 - c_val) * x + (1 - s_val) * c_val * f)


def test_fusion_weights_do_not_sum_to_one():
    """The MODULES.md pitfall: s(1 - c) + (1 - s)c = s + c - 2sc, which is 1 only at (s, c) = (1, 0) or (0, 1);
    fusing x = f = 1 returns that sum, so the result is not a convex combination (e.g. 1/2 at s = c = 1/2)."""
    s = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None]
    c = torch.linspace(0, 1, 11, dtype=torch.float64)[None, :]
    one = torch.ones(11, 11, dtype=torch.float64)
    total = afa_fuse(one, one, s, c)
    torch.testing.assert_close(total, s + c - 2 * s * c)
    assert total[5, 5].item() == 0.5 and total.min().item() == 0.0
    is_one = (total - 1).abs() < 1e-12
    assert is_one.sum().item() == 2 and is_one[10, 0] and is_one[0, 10]


@pytest.mark.parametrize("levels,u", [((3, 4), 2), ((2, 4), 4), ((1, 4), 8)])
def test_transposed_conv_starts_as_bilinear_upsampling(levels, u):
    """At initialisation the depthwise transposed conv is bilinear interpolation (align_corners=False) on every pixel
    at least u/2 from the border; on that border ring it sees the zero padding, so a constant map fades there."""
    m = AFAHead(CHANNELS, 5, levels=levels).double()
    up = m.up[1]
    assert isinstance(up, nn.ConvTranspose2d) and up.stride == (u, u) and up.kernel_size == (2 * u, 2 * u)
    t = torch.randn(2, m.width, 6, 5, dtype=torch.float64)
    y = up(t)
    ref = F.interpolate(t, scale_factor=u, mode="bilinear", align_corners=False)
    b = u // 2
    torch.testing.assert_close(y[..., b:-b, b:-b], ref[..., b:-b, b:-b], rtol=1e-12, atol=1e-12)
    ones = up(torch.ones(1, m.width, 4, 4, dtype=torch.float64))
    assert (ones[..., 0, b:-b] < 1 - 1e-3).all() and (ones[..., b:-b, b:-b] - 1).abs().max() < 1e-12


def test_parameter_count_matches_the_derivation():
    """proj: C_4 C + 2C; up: (2u)^2 C; SA: 9Ch + 9h^2 + h + 4h; CA: 2Cr + 2r; fc: C K + K (layer3 has width C)."""
    m = AFAHead([64, 128, 256, 512], 100, levels=(3, 4))
    C, h, r, K = 256, 64, 16, 100
    assert (m.width, m.sa_hidden, m.ca_hidden) == (C, h, r)
    expected = (512 * C + 2 * C) + 16 * C + (9 * C * h + 9 * h * h + h + 4 * h) + (2 * C * r + 2 * r) + (C * K + K)
    assert count_params(m) == expected
    official_width = AFAHead([64, 128, 256, 512], 100, sa_reduction=1)
    assert official_width.sa_hidden == C and count_params(official_width) - count_params(m) == \
        9 * C * C + 9 * C * C + C + 4 * C - (9 * C * h + 9 * h * h + h + 4 * h)


@pytest.mark.parametrize("hw", [32, 28, 20])
def test_network_with_afa_head_on_odd_stage_sizes(hw):
    """28 -> layer3 7x7, layer4 4x4: the upsampled 8x8 map is cropped to the shallow level's 7x7."""
    net = pl.resnet18(width=8, num_classes=7, head="afa", head_kw={"levels": (2, 3, 4)})
    assert net(torch.randn(2, 3, hw, hw)).shape == (2, 7)


def test_channel_attention_without_norm_accepts_batch_one():
    """The CA MLP's BN sees one value per channel and sample: a training batch of one raises in BN;
    ca_norm_layer=None removes it (the first 1x1 conv gets a bias)."""
    stages = _stages(B=1, dtype=torch.float32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        AFAHead(CHANNELS, 5).train()(stages)
    m = AFAHead(CHANNELS, 5, ca_norm_layer=None).train()
    assert m(stages).shape == (1, 5) and m.ca[0].fc1.bias is not None


@pytest.mark.parametrize("bad,match", [
    (dict(levels=(4,)), "levels"), (dict(levels=(4, 3)), "levels"), (dict(levels=(3, 5)), "levels"),
    (dict(levels=(3, 3, 4)), "levels"), (dict(levels="34"), "levels"), (dict(width=0), "width"),
    (dict(sa_reduction=0.5), "sa_reduction"), (dict(sa_hidden=0), "sa_hidden"), (dict(sa_kernel=2), "sa_kernel"),
    (dict(ca_reduction=0), "ca_reduction"), (dict(ca_hidden=0), "ca_hidden"),
    (dict(norm_layer=nn.BatchNorm1d), "norm_layer"), (dict(ca_norm_layer=nn.LayerNorm), "ca_norm_layer"),
    (dict(channels=(8, 16.5)), "channels"), (dict(num_classes=-1), "num_classes")])
def test_bad_hyperparameters_raise_naming_the_parameter(bad, match):
    with pytest.raises(ValueError, match=match):
        AFAHead(**(dict(channels=CHANNELS, num_classes=5) | bad))


def test_wrong_number_of_stage_outputs_raises():
    with pytest.raises(ValueError, match="stages"):
        AFAHead(CHANNELS, 5)(_stages()[:3])


def test_front_to_back_weights_follow_the_official_loop(rng):
    """The official final_feature_fusion loop: after computing level i's attention, every earlier level's
    attention is multiplied by (1 - a_i); written here as that loop."""
    from plugconv_lite.heads.afa import front_to_back_weights
    a = [torch.rand(2, 1, 3, 3, generator=rng, dtype=torch.float64) for _ in range(4)]
    official = {}
    for i, a_i in enumerate(a):
        official[i] = a_i
        for j in range(i):
            official[j] = official[j] * (1 - a_i)
    ours = front_to_back_weights(a)
    for j in range(4):
        torch.testing.assert_close(ours[j], official[j], rtol=0, atol=0)
    torch.testing.assert_close(sum(ours), 1 - torch.prod(1 - torch.stack(a), dim=0))
