"""DPNet's lightweight self-correlation module (plugconv_lite/attention/lscm.py)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from contract import randomise_parameters
from plugconv_lite.attention.lscm import LSCM, pool_to




def reference(m, x):
    """Written out with explicit loops over the pooled positions: the correlations as sums."""
    B, C, H, W = x.shape
    c, P = m.hidden, m.pool_size
    conv = lambda layer, t: F.conv2d(t, layer.weight, layer.bias)
    if m.variant == "pyramid2":
        p = conv(m.proj, F.adaptive_avg_pool2d(x, P))
        v_c, q_c, q_s = p[:, :c], p[:, c], p[:, c + 1:]
        v_s = conv(m.value_s, x)
    else:
        p = conv(m.proj, x)
        v_c, q_c, v_s = p[:, :c], p[:, c], p[:, c + 1:2 * c + 1]
        q_s = F.adaptive_avg_pool2d(p[:, 2 * c + 1:], P)
    z = (v_c * q_c[:, None]).sum(dim=(2, 3))                          # (B, c): correlation with the one query
    w_c = torch.sigmoid(F.layer_norm(z @ m.ch_wz.weight[:, :, 0, 0].T + m.ch_wz.bias, (C,), m.ln.weight,
                                     m.ln.bias, m.ln.eps))[:, :, None, None]
    corr = torch.stack([(q_s[:, :, i // P, i % P, None, None] * v_s).sum(1) for i in range(P * P)], dim=1)
    w_s = torch.sigmoid(conv(m.sp_wz, corr))
    return w_c * x + w_s * x


@pytest.mark.parametrize("variant", ["pyramid2", "avgpool"])
@pytest.mark.parametrize("size, P", [((8, 8), 4), ((9, 7), 3), ((4, 4), 4)])
def test_forward_equals_the_written_out_correlations(variant, size, P):
    m = randomise_parameters(LSCM(32, channel_down=4, pool_size=P, variant=variant, dtype=torch.float64))
    x = torch.randn(2, 32, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["pyramid2", "avgpool"])
def test_output_is_x_reweighted_by_a_channel_weight_plus_a_spatial_weight(variant):
    """The defining structure: y = (w_c + w_s) x with w_c (B, C, 1, 1) and w_s (B, 1, H, W) both in (0, 1), so
    y / x is the sum of a per-channel and a per-position number: no identity term, no softmax."""
    m = randomise_parameters(LSCM(16, channel_down=2, variant=variant, dtype=torch.float64))
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    w_c, w_s = m.weights(x)
    assert w_c.shape == (2, 16, 1, 1) and w_s.shape == (2, 1, 6, 6)
    assert ((w_c > 0) & (w_c < 1)).all() and ((w_s > 0) & (w_s < 1)).all()
    torch.testing.assert_close(m(x), (w_c + w_s) * x)
    ratio = m(x) / x                                                   # rank-1 structure: channel + position
    centred = (ratio - ratio.mean(1, keepdim=True) - ratio.mean((2, 3), keepdim=True)
               + ratio.mean((1, 2, 3), keepdim=True))
    assert centred.abs().max() < 1e-9


def test_weights_reach_the_whole_map():
    """The spatial weight at one position depends on every position (through the pooled query), and the channel
    weight on all of them (through the correlation over the map)."""
    m = randomise_parameters(LSCM(16, channel_down=2, dtype=torch.float64))
    x = torch.randn(1, 16, 8, 8, dtype=torch.float64, requires_grad=True)
    _, w_s = m.weights(x)
    w_s[0, 0, 0, 0].backward()
    assert (x.grad[0].abs().sum(0) > 0).all()


def test_pool_to_is_the_adaptive_pool():
    x = torch.randn(2, 3, 12, 8)
    for P in (1, 2, 4, 3, 5):
        torch.testing.assert_close(pool_to(x, P), F.adaptive_avg_pool2d(x, P))


def test_cost_is_linear_in_the_number_of_positions():
    f = [pl.count_flops(LSCM(32), (1, 32, s, s)) for s in (8, 16, 32)]
    assert f[2] - f[1] == 4 * (f[1] - f[0])


@pytest.mark.parametrize("kw, match", [(dict(channel_down=64), "channel_down=64 leaves no channel"),
                                       (dict(pool_size=0), "pool_size"), (dict(variant="lccm"), "variant='lccm'")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        LSCM(32, **kw)


def test_chapter_flops_reference_equals_the_network_difference():
    """Chapter 36's exercise reference counts each LSCM at its own map; it must equal what LSCM adds to the network."""
    from plugconv_lite.chapters.lscm import _lscm_resnet_flops
    from plugconv_lite.exercises import resnet18_overhead
    for variant in ("pyramid2", "avgpool"):
        kw = dict(channel_down=3, pool_size=5, variant=variant)
        assert _lscm_resnet_flops(6, **kw) == resnet18_overhead("flops", 6, attn="lscm", attn_kw=kw)
