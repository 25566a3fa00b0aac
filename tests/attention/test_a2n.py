import pytest
import torch
import torch.nn.functional as F

from plugconv_lite.attention import A2NModule
from plugconv_lite.measure import count_params
from contract import bn_eval, randomise_norms


def _official_aab(m: A2NModule, x: torch.Tensor) -> torch.Tensor:
    """haoyuc/A2N code/model/aan.py AAB.forward, written out with F.conv2d (no normalisation in the official
    block; ``m.norm`` is applied where ours has it, so the same function checks both)."""
    lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    h = lrelu(F.conv2d(x, m.conv_first.weight))
    y = h.mean((2, 3))
    y = torch.relu(y @ m.adm[0].weight.T) @ m.adm[2].weight.T
    ax = torch.softmax(y / m.t, dim=1)
    a = torch.sigmoid(F.conv2d(lrelu(F.conv2d(h, m.k1.weight, padding=1)), m.k2.weight, m.k2.bias))
    att = F.conv2d(F.conv2d(h, m.k3.weight, padding=1) * a, m.k4.weight, padding=1)
    k = m.non_attention_kernel
    non = F.conv2d(h, m.non_attention.weight, padding=k // 2)
    z = lrelu(att * ax[:, 0, None, None, None] + non * ax[:, 1, None, None, None])
    out = F.conv2d(z, m.conv_last.weight)
    if isinstance(m.norm, torch.nn.BatchNorm2d):
        out = bn_eval(out, m.norm)
    return out + x


@pytest.mark.parametrize("C,k,hw", [(16, 3, (6, 7)), (40, 3, (5, 5)), (16, 1, (4, 9))])
def test_full_width_without_norm_equals_the_official_aab(rng, C, k, hw):
    m = A2NModule(C, mid_channels=C, hidden=C // 4, norm_layer=None, non_attention_kernel=k).double()
    x = torch.randn(3, C, *hw, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_aab(m, x), atol=1e-12, rtol=1e-12)


def test_default_module_is_the_aab_on_a_narrow_inner_path_with_a_norm(rng):
    m = randomise_norms(A2NModule(64), rng).double()
    assert m.mid_channels == 16 and m.conv_first.weight.shape == (16, 64, 1, 1)
    x = torch.randn(2, 64, 5, 5, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_aab(m, x), atol=1e-12, rtol=1e-12)


def test_branch_weights_are_a_per_sample_distribution_scaled_by_t(rng):
    m = A2NModule(32, t=30.0)
    h = torch.randn(5, m.mid_channels, 4, 4, generator=rng)
    pi = m.branch_weights(h)
    assert pi.shape == (5, 2) and (pi > 0).all()
    torch.testing.assert_close(pi.sum(1), torch.ones(5))
    logits = m.adm(h.mean((2, 3)))
    torch.testing.assert_close(pi, torch.softmax(logits / 30.0, 1))
    assert not torch.allclose(pi[0], pi[1])      # per sample
    assert (pi - 0.5).abs().max() < 0.05          # t = 30: near-uniform at initialisation


def test_each_sample_is_mixed_on_its_own(rng):
    """The branch weights are per sample: in eval mode a sample's output does not depend on the batch."""
    m = randomise_norms(A2NModule(16), rng)
    x = torch.randn(4, 16, 6, 6, generator=rng)
    y = m(x)
    for b in range(4):
        torch.testing.assert_close(m(x[b:b + 1]), y[b:b + 1], atol=1e-6, rtol=1e-5)


def test_extreme_branch_weights_select_one_branch(rng):
    """With pi = (1, 0) the output is the attention branch alone, with (0, 1) the plain conv alone."""
    m = A2NModule(16, norm_layer=None)
    x = torch.randn(2, 16, 5, 5, generator=rng)
    h = F.leaky_relu(m.conv_first(x), 0.2)
    att = m.k4(m.k3(h) * m.pixel_attention(h))
    for sign, branch in ((1.0, att), (-1.0, m.non_attention(h))):
        with torch.no_grad():
            m.adm[2].weight.zero_()
            m.adm[2].weight[0].fill_(sign * 1e6)     # logits (+/-big, 0): pi = (1, 0) or (0, 1)
            m.adm[0].weight.abs_()                   # positive hidden units, so the big logit is not clipped
        expected = x + m.conv_last(F.leaky_relu(branch, 0.2))
        torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


def test_pixel_attention_is_a_map_per_channel_and_position(rng):
    m = A2NModule(32)
    a = m.pixel_attention(torch.randn(2, m.mid_channels, 5, 6, generator=rng))
    assert a.shape == (2, m.mid_channels, 5, 6) and ((a > 0) & (a < 1)).all()


@pytest.mark.parametrize("C", [16, 32, 64, 128, 256, 512])
def test_width_rule_never_gives_an_empty_or_one_unit_path(C):
    m = A2NModule(C)
    assert 8 <= m.mid_channels <= C and m.mid_channels % 8 == 0
    assert 2 <= m.hidden <= m.mid_channels
    mid, r = m.mid_channels, m.hidden
    assert count_params(m) == 2 * C * mid + 4 * 9 * mid * mid + mid * mid + mid + mid * r + 2 * r + 2 * C


def test_a2n_m_uses_a_1x1_plain_branch():
    C = 64
    full = A2NModule(C, mid_channels=C, hidden=C // 4, norm_layer=None)
    m_variant = A2NModule(C, mid_channels=C, hidden=C // 4, norm_layer=None, non_attention_kernel=1)
    assert count_params(full) - count_params(m_variant) == 8 * C * C
    assert count_params(full) == 39 * C * C + C + C * C // 4 + 2 * C // 4   # about 39 C^2 (MODULES.md)


@pytest.mark.parametrize("kw,match", [(dict(t=0.0), "t=0.0 must be > 0"),
                                      (dict(non_attention_kernel=5), "non_attention_kernel=5 must be one of"),
                                      (dict(mid_channels=0), "mid_channels=0 must be >= 1"),
                                      (dict(hidden=0), "hidden=0 must be >= 1"),
                                      (dict(reduction=0.5), "reduction=0.5 must be >= 1"),
                                      (dict(norm_layer="bn"), "norm_layer=.bn. must be a module class"),
                                      (dict(norm_layer=torch.nn.BatchNorm1d), "norm_layer=BatchNorm1d must build")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        A2NModule(32, **kw)


def test_device_and_dtype_reach_the_norm():
    m = A2NModule(16, dtype=torch.float64)
    assert {p.dtype for p in m.parameters()} == {torch.float64}
    assert m.norm.running_mean.dtype == torch.float64
