"""PVT's spatial-reduction attention and PVTv2's linear variant (plugconv_lite/attention/sra.py)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from contract import randomise_parameters
from plugconv_lite.attention.sra import SpatialReductionAttention, auto_sr_ratio, default_heads
from plugconv_lite.models.plugs import PlugSite




def _randomised(m):
    return randomise_parameters(m, weight_std=0.1)


def reference(m, x):
    """The equations, written out: pre-LN tokens, keys from the reduced (or pooled) map, softmax per head."""
    B, C, H, W = x.shape
    t = F.layer_norm(x.flatten(2).transpose(1, 2), (C,), m.norm.weight, m.norm.bias, m.norm.eps)
    s = t
    if m.linear or m.sr_ratio > 1:
        mp = t.transpose(1, 2).reshape(B, C, H, W)
        if m.linear:
            mp = F.adaptive_avg_pool2d(mp, m.pool_size)
        r = F.conv2d(mp, m.sr.weight, m.sr.bias, stride=m.sr.stride)
        s = F.layer_norm(r.flatten(2).transpose(1, 2), (C,), m.norm_kv.weight, m.norm_kv.bias, m.norm_kv.eps)
        if m.linear:
            s = F.gelu(s)
    h, d = m.num_heads, C // m.num_heads
    q = (t @ m.q.weight.T + m.q.bias).reshape(B, -1, h, d).transpose(1, 2)
    kv = s @ m.kv.weight.T + m.kv.bias
    k = kv[..., :C].reshape(B, -1, h, d).transpose(1, 2)
    v = kv[..., C:].reshape(B, -1, h, d).transpose(1, 2)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    o = (a @ v).transpose(1, 2).reshape(B, H * W, C) @ m.proj.weight.T + m.proj.bias
    return x + o.transpose(1, 2).reshape(B, C, H, W)


@pytest.mark.parametrize("kw, size", [(dict(), (6, 5)), (dict(num_heads=4, sr_ratio=2), (8, 6)),
                                      (dict(num_heads=2, sr_ratio=4), (16, 8)), (dict(linear=True, pool_size=3),
                                                                                   (9, 7))])
def test_forward_equals_the_written_out_equations(kw, size):
    m = _randomised(SpatialReductionAttention(32, dtype=torch.float64, **kw))
    x = torch.randn(2, 32, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kw, keys", [(dict(), 64), (dict(sr_ratio=2), 16), (dict(sr_ratio=4), 4),
                                      (dict(linear=True), 49), (dict(linear=True, pool_size=3), 9)])
def test_attention_rows_are_distributions_over_n_over_r_squared_keys(kw, keys):
    m = _randomised(SpatialReductionAttention(16, dtype=torch.float64, **kw))
    a = m.attention(torch.randn(2, 16, 8, 8, dtype=torch.float64))
    assert a.shape == (2, 1, 64, keys)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 1, 64, dtype=torch.float64))
    assert (a > 0).all()


@pytest.mark.parametrize("kw, size", [(dict(), (6, 6)), (dict(sr_ratio=2), (8, 8)), (dict(sr_ratio=4), (7, 9)),
                                      (dict(linear=True, pool_size=2), (6, 6))])
def test_global_reach_every_position_moves_the_first_output(kw, size):
    """The defining property of attention over the whole map: output position (0, 0) depends on every input
    position, also far outside any conv's window; with R not dividing the map (7 x 9, R = 4) too, because the map is
    padded, where the official code would drop the last rows and columns from the keys."""
    m = _randomised(SpatialReductionAttention(8, dtype=torch.float64, **kw))
    x = torch.randn(1, 8, *size, dtype=torch.float64, requires_grad=True)
    m(x)[0, :, 0, 0].sum().backward()
    reach = x.grad[0].abs().sum(0)
    assert (reach > 0).all(), reach


def test_cost_grows_with_n_squared_over_r_squared_and_linearly_for_the_linear_variant():
    """FLOPs (matmuls included) as the map grows: f(N) = a N + b N^2 / R^2 for SRA (a non-zero second difference
    that shrinks R^2-fold), a N + c for the linear variant (zero second difference)."""
    def flops(m, side):
        return pl.count_flops(m, (1, 16, side, side))

    def second_difference(m):
        f1, f2, f4 = (flops(m, s) for s in (8, 16, 32))   # N, 4N, 16N
        return (f4 - f2) - 4 * (f2 - f1)

    full, reduced, linear = (SpatialReductionAttention(16, **kw) for kw in (dict(), dict(sr_ratio=2),
                                                                                 dict(linear=True)))
    assert second_difference(linear) == 0
    assert second_difference(full) > 0
    assert second_difference(full) == 4 * second_difference(reduced)


def test_ours_is_the_official_computation_where_r_divides_the_map():
    """Against a transcription of the official slicing (kv reshaped to (B, M, 2, h, d)): the same k and v."""
    m = _randomised(SpatialReductionAttention(16, num_heads=2, sr_ratio=2, dtype=torch.float64))
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    B, C, H, W = x.shape
    t = m.norm(x.flatten(2).transpose(1, 2))
    kv = m.kv(m.key_source(t, H, W)).reshape(B, -1, 2, 2, C // 2).permute(2, 0, 3, 1, 4)
    q = m.q(t).reshape(B, -1, 2, C // 2).permute(0, 2, 1, 3)
    o = ((q @ kv[0].transpose(-2, -1)) * (C // 2) ** -0.5).softmax(-1) @ kv[1]
    o = m.proj(o.transpose(1, 2).reshape(B, -1, C))
    torch.testing.assert_close(m(x), x + o.transpose(1, 2).reshape(B, C, H, W), rtol=0, atol=1e-12)


def test_heads_default_and_sr_ratio_rule():
    assert [default_heads(c) for c in (16, 64, 128, 320, 512, 96)] == [1, 1, 2, 5, 8, 1]
    assert [auto_sr_ratio(r) for r in (32, 16, 8, 4, None)] == [4, 2, 1, 1, 1]
    assert auto_sr_ratio(32, keys=16) == 8


def test_from_site_declines_stage_one_and_picks_r_from_the_map():
    site = PlugSite("layer1.0.attn", "attn", 64, 64, stage=0, block=0, resolution=32)
    assert SpatialReductionAttention.from_site(site) is None
    m = SpatialReductionAttention.from_site(site, first_stage=1)
    assert m.sr_ratio == 4
    m = SpatialReductionAttention.from_site(site.child(stage=1, resolution=16, out_channels=128))
    assert (m.sr_ratio, m.num_heads, m.channels) == (2, 2, 128)
    net = pl.resnet18(width=8, attn="sra")
    built = [n for n, mod in net.named_modules() if isinstance(mod, SpatialReductionAttention)]
    assert built == [f"layer{s}.{b}.attn" for s in (2, 3, 4) for b in (0, 1)]


@pytest.mark.parametrize("kw, match", [(dict(num_heads=3), "num_heads=3 must divide channels=32"),
                                       (dict(num_heads=0), "num_heads"), (dict(sr_ratio=0), "sr_ratio"),
                                       (dict(linear=True, sr_ratio=2), "sr_ratio=2 is unused with linear=True"),
                                       (dict(pool_size=0), "pool_size")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        SpatialReductionAttention(32, **kw)


def test_sdpa_is_what_runs():
    m = SpatialReductionAttention(16)
    calls = []
    orig = F.scaled_dot_product_attention

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)
    try:
        F.scaled_dot_product_attention = spy
        m(torch.randn(1, 16, 4, 4))
    finally:
        F.scaled_dot_product_attention = orig
    assert calls == [1]
