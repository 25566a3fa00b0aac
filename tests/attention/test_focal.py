"""FocalNet's focal modulation (plugconv_lite/attention/focal.py)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from contract import randomise_parameters
from plugconv_lite.attention.focal import FocalModulation




def reference(m, x):
    """The official order of operations, on (B, H, W, C) tokens with linear layers."""
    B, C, H, W = x.shape
    t = F.layer_norm(x.permute(0, 2, 3, 1), (C,), m.norm.weight, m.norm.bias, m.norm.eps)
    y = (t @ m.f.weight[:, :, 0, 0].T + m.f.bias).permute(0, 3, 1, 2)
    q, ctx, gates = y[:, :C], y[:, C:2 * C], y[:, 2 * C:]
    agg = 0
    for l, conv in enumerate(m.focal_layers):
        ctx = F.gelu(F.conv2d(ctx, conv.weight, padding=conv.padding, groups=C))
        agg = agg + ctx * gates[:, l:l + 1]
    agg = agg + F.gelu(ctx.mean((2, 3), keepdim=True)) * gates[:, -1:]
    if m.normalize_modulator:
        agg = agg / (m.focal_level + 1)
    out = (q * F.conv2d(agg, m.h.weight, m.h.bias)).permute(0, 2, 3, 1)
    if m.post_ln is not None:
        out = F.layer_norm(out, (C,), m.post_ln.weight, m.post_ln.bias, m.post_ln.eps)
    out = out @ m.proj.weight[:, :, 0, 0].T + m.proj.bias
    return x + out.permute(0, 3, 1, 2)


@pytest.mark.parametrize("kw, size", [(dict(), (8, 8)), (dict(focal_level=3, normalize_modulator=True), (9, 6)),
                                      (dict(focal_level=1, focal_window=7, post_ln=True), (5, 7))])
def test_forward_equals_the_official_order_of_operations(kw, size):
    m = randomise_parameters(FocalModulation(16, dtype=torch.float64, **kw))
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x), rtol=0, atol=1e-12)


def test_levels_are_hierarchical_with_growing_receptive_fields():
    """z_l sees 1 + sum_{i<=l}(k_i - 1) pixels a side: the receptive field of the stacked depthwise convs, measured
    by the gradient of one position of each level."""
    m = randomise_parameters(FocalModulation(4, focal_level=3, dtype=torch.float64))
    assert m.kernel_sizes == [3, 5, 7] and m.receptive_fields() == [3, 7, 13]
    x = torch.randn(1, 4, 21, 21, dtype=torch.float64, requires_grad=True)
    _, _, levels = m.contexts(x)
    for z, rf in zip(levels[:-1], m.receptive_fields()):
        (g,) = torch.autograd.grad(z[0, :, 10, 10].sum(), x, retain_graph=True)
        ys, xs = torch.nonzero(g[0].abs().sum(0), as_tuple=True)
        assert ys.max() - ys.min() + 1 == rf and xs.max() - xs.min() + 1 == rf


def test_global_level_reaches_every_position():
    m = randomise_parameters(FocalModulation(4, dtype=torch.float64))
    x = torch.randn(1, 4, 12, 12, dtype=torch.float64, requires_grad=True)
    _, _, levels = m.contexts(x)
    levels[-1][0, :, 0, 0].sum().backward()
    assert (x.grad[0].abs().sum(0) > 0).all()


def test_gates_are_raw_not_softmaxed_and_the_modulator_is_linear_in_them():
    """Doubling every gate doubles the modulator minus h's bias: the gates enter linearly, without a softmax."""
    m = randomise_parameters(FocalModulation(8, dtype=torch.float64))
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    _, gates, levels = m.contexts(x)
    assert (gates < 0).any() and not torch.allclose(gates.sum(1), torch.ones_like(gates[:, 0]))
    b = m.h.bias[None, :, None, None]
    torch.testing.assert_close(m._modulator(2 * gates, levels) - b, 2 * (m._modulator(gates, levels) - b))


def test_query_is_modulated_element_wise():
    """With proj = identity and no bias, the output minus x is q * modulator position by position."""
    m = randomise_parameters(FocalModulation(8, dtype=torch.float64))
    with torch.no_grad():
        m.proj.weight.copy_(torch.eye(8, dtype=torch.float64)[:, :, None, None]), m.proj.bias.zero_()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    q, _, _ = m.contexts(x)
    torch.testing.assert_close(m(x) - x, q * m.modulator(x))


def test_cost_is_linear_in_the_number_of_positions():
    f = [pl.count_flops(FocalModulation(16), (1, 16, s, s)) for s in (8, 16, 32)]
    assert f[2] - f[1] == 4 * (f[1] - f[0])


@pytest.mark.parametrize("kw, match", [(dict(focal_window=4), "focal_window=4 must be odd"),
                                       (dict(focal_factor=1), "focal_factor=1 must be even"),
                                       (dict(focal_level=0), "focal_level"), (dict(focal_window=0), "focal_window")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        FocalModulation(16, **kw)


def test_a_pixel_beyond_every_local_level_reaches_a_position_only_through_its_global_gate():
    """Changing one pixel outside every local level's square leaves the local levels at p bit for bit unchanged,
    and the gated sum at p changes by exactly g_glob(p) * (change of z_glob): one global vector per image, the
    same at every position, weighted by each position's own gate."""
    m = randomise_parameters(FocalModulation(6, focal_level=2, dtype=torch.float64))   # reach 3, 7: radius 3
    x = torch.randn(2, 6, 11, 11, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :, 0, 10] += torch.randn(6, dtype=torch.float64)   # not a shift shared by all channels: LN removes it
    p = (7, 3)                                               # Chebyshev distance 7 from the changed pixel
    (_, g, lv), (_, g2, lv2) = m.contexts(x), m.contexts(x2)
    for z, z2 in zip(lv[:-1], lv2[:-1]):
        assert torch.equal(z[..., p[0], p[1]], z2[..., p[0], p[1]])
    assert torch.equal(g[..., p[0], p[1]], g2[..., p[0], p[1]])
    agg = lambda gates, levels: sum(z * gates[:, l:l + 1] for l, z in enumerate(levels))[..., p[0], p[1]]
    expected = g[:, -1, p[0], p[1], None] * (lv2[-1] - lv[-1])[:, :, 0, 0]
    assert expected.abs().max() > 1e-6
    torch.testing.assert_close(agg(g2, lv2) - agg(g, lv), expected, rtol=0, atol=1e-12)
