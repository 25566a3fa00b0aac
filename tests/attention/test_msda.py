"""DilateFormer's multi-scale dilated attention (plugconv_lite/attention/msda.py)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from contract import randomise_parameters
from plugconv_lite.attention.msda import MultiScaleDilatedAttention, neighbours




def reference(m, x):
    """The official formulation, written out with nn.Unfold: per group, per head, per position a softmax over the
    k*k unfolded (zero-padded) keys."""
    B, C, H, W = x.shape
    t = F.layer_norm(x.permute(0, 2, 3, 1), (C,), m.norm.weight, m.norm.bias, m.norm.eps).permute(0, 3, 1, 2)
    q, k, v = F.conv2d(t, m.qkv.weight, m.qkv.bias).chunk(3, dim=1)
    n, d, kk = len(m.dilation), m.head_dim, m.kernel_size ** 2
    cg = C // n
    outs = []
    for g, r in enumerate(m.dilation):
        sl = slice(g * cg, (g + 1) * cg)
        unfold = nn.Unfold(m.kernel_size, r, r * (m.kernel_size - 1) // 2, 1)
        qg = q[:, sl].reshape(B, cg // d, d, 1, H * W).permute(0, 1, 4, 3, 2)          # B, h, N, 1, d
        kg = unfold(k[:, sl]).reshape(B, cg // d, d, kk, H * W).permute(0, 1, 4, 2, 3)  # B, h, N, d, kk
        vg = unfold(v[:, sl]).reshape(B, cg // d, d, kk, H * W).permute(0, 1, 4, 3, 2)  # B, h, N, kk, d
        a = ((qg @ kg) / math.sqrt(d)).softmax(-1)
        outs.append((a @ vg).transpose(1, 2).reshape(B, H, W, cg))
    o = torch.cat(outs, dim=-1) @ m.proj.weight.T + m.proj.bias
    return x + o.permute(0, 3, 1, 2)


@pytest.mark.parametrize("kw, size", [(dict(), (8, 8)), (dict(num_heads=4, dilation=(1, 2)), (7, 5)),
                                      (dict(num_heads=3, dilation=(1, 2, 3)), (9, 6)),
                                      (dict(kernel_size=5, dilation=(1, 3)), (6, 11))])
def test_forward_equals_the_unfold_formulation(kw, size):
    C = 48 if kw.get("num_heads") == 3 else 32
    m = randomise_parameters(MultiScaleDilatedAttention(C, qkv_bias=True, dtype=torch.float64, **kw))
    x = torch.randn(2, C, *size, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k, rates", [(3, (1, 2)), (3, (1, 2, 3)), (5, (1, 2))])
def test_receptive_field_is_strictly_local_with_radius_r_k_minus_1_over_2(k, rates):
    """The defining property: the output at a position depends on the inputs within radius r (k - 1) / 2 of it in
    the group at dilation r, so the layer's reach is the largest rate's radius, and nothing beyond it."""
    C = 8 * len(rates)
    m = randomise_parameters(MultiScaleDilatedAttention(C, num_heads=len(rates), kernel_size=k, dilation=rates,
                                                dtype=torch.float64))
    size, c = 21, 10
    x = torch.randn(1, C, size, size, dtype=torch.float64, requires_grad=True)
    m(x)[0, :, c, c].sum().backward()
    reach = x.grad[0].abs().sum(0) > 0
    radius = max(rates) * (k - 1) // 2
    ys, xs = torch.nonzero(reach, as_tuple=True)
    assert (ys - c).abs().max() == radius and (xs - c).abs().max() == radius
    # and only the dilated grid of some rate is reached (plus the query position itself)
    allowed = torch.zeros(size, size, dtype=torch.bool)
    for r in rates:
        for i in range(k):
            for j in range(k):
                allowed[c + r * (i - k // 2), c + r * (j - k // 2)] = True
    assert (reach <= allowed).all() and reach[allowed].all()


def test_border_queries_give_weight_to_zero_padded_keys_unless_masked():
    m = randomise_parameters(MultiScaleDilatedAttention(16, dilation=(1, 2), dtype=torch.float64))
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    a = m.attention(x)[1]                                       # the dilation-2 group: (1, 1, 9, 6, 6)
    torch.testing.assert_close(a.sum(2), torch.ones(1, 1, 6, 6, dtype=torch.float64))
    inside = neighbours(torch.ones(1, 1, 6, 6, dtype=torch.float64), 3, 2)
    assert (a[inside.expand_as(a) == 0] > 0).all()              # padded keys hold weight (the official code)
    m.mask_border = True
    a = m.attention(x)[1]
    assert (a[inside.expand_as(a) == 0] == 0).all()
    torch.testing.assert_close(a.sum(2), torch.ones(1, 1, 6, 6, dtype=torch.float64))


def test_neighbours_order_is_the_unfold_order():
    t = torch.randn(2, 3, 5, 4)
    n = neighbours(t, 3, 2)
    u = F.unfold(t, 3, dilation=2, padding=2).reshape(2, 3, 9, 5, 4)
    torch.testing.assert_close(n, u, rtol=0, atol=0)


def test_channel_groups_follow_the_rates_in_order():
    """Group g (channels g C/n ... (g+1) C/n of q, k, v) attends at dilation g: zeroing the value projection of
    group 0 changes only what that group contributes before proj."""
    m = randomise_parameters(MultiScaleDilatedAttention(16, dilation=(1, 2), dtype=torch.float64))
    nn.init.eye_(m.proj.weight.data), nn.init.zeros_(m.proj.bias.data)
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    y = m(x) - x
    with torch.no_grad():
        m.qkv.weight[32:40] = 0                                  # v's first group (channels 0-7 of v)
        if m.qkv.bias is not None:
            m.qkv.bias[32:40] = 0
    y0 = m(x) - x
    assert (y0[:, :8] == 0).all() and torch.equal(y0[:, 8:], y[:, 8:])


@pytest.mark.parametrize("kw, match", [(dict(num_heads=3), "num_heads=3 must be a multiple of the number of dilations"),
                                       (dict(num_heads=6, dilation=(1, 2, 3)), "num_heads=6 must divide channels=32"),
                                       (dict(kernel_size=4), "kernel_size=4 must be odd"),
                                       (dict(dilation=()), "dilation=\\(\\) must be a non-empty"),
                                       (dict(dilation=2), "dilation=2 must be a non-empty"),
                                       (dict(dilation=(1, 0)), "dilation\\[1\\]")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        MultiScaleDilatedAttention(32, **kw)


def test_the_input_is_not_written_to():
    """The official forward writes into a view of its input; this module leaves the caller's tensor alone."""
    m = randomise_parameters(MultiScaleDilatedAttention(16))
    x = torch.randn(1, 16, 5, 5)
    before = x.clone()
    m(x)
    assert torch.equal(x, before)


def test_cost_is_linear_in_the_number_of_positions():
    f = [pl.count_flops(MultiScaleDilatedAttention(16), (1, 16, s, s)) for s in (8, 16, 32)]
    assert (f[2] - f[1]) == 4 * (f[1] - f[0])
