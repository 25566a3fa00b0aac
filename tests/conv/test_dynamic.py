"""CondConv (``condconv``) and DY-CNN (``dyconv``): a per-sample mixture of K expert kernels, computed as one
convolution with the aggregated kernel."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.conv import CondConv2d, DynamicConv2d
from plugconv_lite.measure import count_flops, count_params

MODULES = [CondConv2d, DynamicConv2d]


def _make(cls, c_in, c_out, stride=1, groups=1, bias=True, K=4, **kw):
    torch.manual_seed(0)
    m = cls(c_in, c_out, 3, stride, groups=groups, bias=bias, num_experts=K, **kw).double()
    if isinstance(m, DynamicConv2d):
        m.set_progress(0.05)  # T = 15.5: neither uniform nor the T = 1 corner
    with torch.no_grad():  # biases away from zero so that a wrong bias path shows
        for p in m.parameters():
            if p.dim() == 1 or p is m.bias:
                p.normal_()
    return m


def _official_equations(m, x):
    """The papers' equations written out sample by sample, expert by expert (MODULES.md 13 and 13b):
    CondConv (TF condconv_layers + EfficientNet-CondConv routing): r = sigmoid(W_r GAP(x) + b_r);
    DY-CNN (paper, as the unofficial kaijieshi7 code): pi = softmax(W_2 relu(W_1 GAP(x)) + b_2) / T).
    y_b = conv(x_b, sum_k r_k W_k) + sum_k r_k b_k."""
    out = []
    for xb in x:
        g = xb.mean(dim=(1, 2))  # GAP, (C,)
        if isinstance(m, CondConv2d):
            r = torch.sigmoid(m.route.weight @ g + m.route.bias)
        else:
            z = m.fc2.weight @ torch.relu(m.fc1.weight @ g) + m.fc2.bias
            r = torch.exp(z / m.T - (z / m.T).max())
            r = r / r.sum()
        W = sum(r[k] * m.weight[k] for k in range(m.num_experts))
        b = None if m.bias is None else sum(r[k] * m.bias[k] for k in range(m.num_experts))
        out.append(F.conv2d(xb[None], W, b, m.stride, m.padding, m.dilation, m.groups))
    return torch.cat(out)


@pytest.mark.parametrize("cls", MODULES)
@pytest.mark.parametrize("c_in,c_out,stride,groups,hw", [(8, 12, 1, 1, (7, 9)), (16, 16, 2, 2, (9, 6)),
                                                         (6, 9, 2, 3, (5, 5))])
def test_forward_equals_the_official_equations(cls, c_in, c_out, stride, groups, hw):
    m = _make(cls, c_in, c_out, stride, groups)
    x = torch.randn(3, c_in, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_equations(m, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", MODULES)
@pytest.mark.parametrize("stride,groups,bias", [(1, 1, True), (2, 2, False)])
def test_conv_with_the_aggregated_kernel_equals_the_weighted_sum_of_the_experts_convs(cls, stride, groups, bias):
    """Linearity: conv(x, sum_k r_k W_k) + sum_k r_k b_k = sum_k r_k (conv(x, W_k) + b_k), sample by sample."""
    m = _make(cls, 8, 12, stride, groups, bias)
    x = torch.randn(4, 8, 9, 7, dtype=torch.float64)
    r = m.routing(x)
    experts = torch.stack([F.conv2d(x, m.weight[k], None if m.bias is None else m.bias[k], m.stride, m.padding,
                                    m.dilation, m.groups) for k in range(m.num_experts)], 1)  # (B, K, O, H', W')
    mixed = (r[:, :, None, None, None] * experts).sum(1)
    torch.testing.assert_close(m(x), mixed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", MODULES)
@pytest.mark.parametrize("train", [True, False])
def test_every_sample_equals_its_output_computed_alone(cls, train):
    m = _make(cls, 8, 8, 2, 2).train(train)
    x = torch.randn(5, 8, 9, 7, dtype=torch.float64)
    y = m(x)
    for i in range(len(x)):
        torch.testing.assert_close(y[i:i + 1], m(x[i:i + 1]), rtol=1e-12, atol=1e-12)


def test_condconv_routing_is_independent_sigmoids_not_normalised():
    m = _make(CondConv2d, 8, 8, K=6)
    x = torch.randn(16, 8, 5, 5, dtype=torch.float64)
    r = m.routing(x)
    assert r.shape == (16, 6) and bool(((r > 0) & (r < 1)).all())
    torch.testing.assert_close(r, torch.sigmoid(m.route(x.mean(dim=(2, 3)))))
    assert (r.sum(1) - 1).abs().max() > 0.1  # not a convex combination: the kernel's scale follows sum_k r_k
    # each weight depends on its own logit only (a sigmoid per expert, no competition between experts)
    with torch.no_grad():
        m.route.bias[0] += 5.0
    r2 = m.routing(x)
    torch.testing.assert_close(r2[:, 1:], r[:, 1:], rtol=0, atol=0)


def test_dyconv_attention_rows_sum_to_one_and_the_temperature_divides_the_logits():
    m = _make(DynamicConv2d, 8, 8, K=5)
    x = torch.randn(16, 8, 5, 5, dtype=torch.float64)
    for p in (0.0, 0.05, 1.0):
        m.set_progress(p)
        pi = m.routing(x)
        torch.testing.assert_close(pi.sum(1), torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-14)
        torch.testing.assert_close(pi, torch.softmax(m.logits(x) / m.temperature_at(p), 1), rtol=0, atol=1e-15)


def test_dyconv_temperature_schedule_at_start_end_of_annealing_and_end():
    m = DynamicConv2d(16, 16, temperature=30, anneal=0.1)
    assert float(m.T) == 30.0  # a fresh module is at p = 0
    expected = {0.0: 30.0, 0.05: 15.5, 0.1: 1.0, 0.5: 1.0, 1.0: 1.0}
    for p, T in expected.items():
        m.set_progress(p)
        assert float(m.T) == pytest.approx(T)
    no_anneal = DynamicConv2d(16, 16, anneal=0.0)
    assert float(no_anneal.T) == 1.0  # anneal = 0 trains at T = 1 from the start
    # the trainer reaches it: pl.registry collects set_progress through the model
    model = nn.Sequential(DynamicConv2d(16, 16), nn.ReLU(), DynamicConv2d(16, 16, temperature=10, anneal=0.5))
    pl.set_progress(model, 0.25)
    assert [float(model[0].T), float(model[2].T)] == pytest.approx([1.0, 5.5])


def test_high_temperature_makes_the_attention_near_uniform():
    """At T = T_0 = 30 every expert gets about 1/K of every sample (so each one is trained); at T = 1 the same
    logits give peaked attention."""
    m = _make(DynamicConv2d, 16, 16, K=4)
    with torch.no_grad():
        m.fc2.weight.mul_(10)
    x = torch.randn(32, 16, 6, 6, dtype=torch.float64)
    m.set_progress(0.0)
    spread_hot = (m.routing(x) - 0.25).abs().max()
    m.set_progress(1.0)
    spread_cold = (m.routing(x) - 0.25).abs().max()
    assert spread_hot < 0.1 < spread_cold


def test_each_expert_is_initialised_as_its_own_conv():
    """Kaiming (fan-out) per expert: std sqrt(2 / (O k^2)) for every expert, not one fan over the (K, O, ...) stack
    (which would give sqrt(2 / (K C k^2)))."""
    torch.manual_seed(0)
    for cls in MODULES:
        m = cls(64, 128, 3, num_experts=4)
        std = m.weight.reshape(4, -1).std(1)
        torch.testing.assert_close(std, torch.full((4,), math.sqrt(2 / (128 * 9))), rtol=0.03, atol=0)


@pytest.mark.parametrize("c_in,c_out,K,groups,bias", [(16, 32, 4, 1, False), (12, 8, 3, 2, True), (64, 64, 8, 1, False)])
def test_parameter_formulas(c_in, c_out, K, groups, bias):
    conv = c_out * (c_in // groups) * 9 + (c_out if bias else 0)
    assert count_params(CondConv2d(c_in, c_out, 3, groups=groups, bias=bias, num_experts=K)) == K * conv + c_in * K + K
    h = max(8, round(c_in / 4 / 8) * 8)  # make_divisible(C / 4, 8)
    m = DynamicConv2d(c_in, c_out, 3, groups=groups, bias=bias, num_experts=K)
    assert m.hidden == h
    assert count_params(m) == K * conv + c_in * h + h * K + K


@pytest.mark.parametrize("stride", [1, 2])
def test_flop_formula_counts_routing_and_aggregation(stride):
    """FLOPs (batch 1) = the conv with the aggregated kernel + the aggregation r @ W (2 K O C k^2) + the routing
    matmuls; the GAP and the softmax/sigmoid are not counted by torch's flop counter."""
    C, O, K, H = 16, 24, 4, 12
    Ho = (H + 2 - 3) // stride + 1
    conv = 2 * O * C * 9 * Ho * Ho
    agg = 2 * K * O * C * 9
    assert count_flops(CondConv2d(C, O, 3, stride, num_experts=K), (1, C, H, H)) == conv + agg + 2 * C * K
    m = DynamicConv2d(C, O, 3, stride, num_experts=K)
    assert count_flops(m, (1, C, H, H)) == conv + agg + 2 * C * m.hidden + 2 * m.hidden * K


def test_dyconv_takes_a_plain_convs_weights_exactly_and_condconv_refuses():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, 2, 1, bias=True).double()
    m = DynamicConv2d(8, 12, 3, 2, bias=True).double().load_conv_weights(conv.weight, conv.bias)
    x = torch.randn(3, 8, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), conv(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="sum to 1"):
        CondConv2d(8, 12, 3, 2, bias=True).load_conv_weights(conv.weight.float(), conv.bias.float())


@pytest.mark.parametrize("cls,kwargs,name", [
    (CondConv2d, dict(num_experts=0), "num_experts"), (CondConv2d, dict(weight_init="xavier"), "weight_init"),
    (DynamicConv2d, dict(num_experts=1.5), "num_experts"), (DynamicConv2d, dict(reduction=0.5), "reduction"),
    (DynamicConv2d, dict(hidden=0), "hidden"), (DynamicConv2d, dict(temperature=0.5), "temperature"),
    (DynamicConv2d, dict(anneal=1.5), "anneal"), (DynamicConv2d, dict(weight_init="he"), "weight_init")])
def test_bad_hyperparameters_raise_naming_the_parameter(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(16, 16, 3, **kwargs)


def test_repr_states_the_hyperparameters():
    assert "num_experts=8" in repr(CondConv2d(16, 16))  # the CondConv-EfficientNet default
    r = repr(DynamicConv2d(64, 64))
    assert "num_experts=4" in r and "hidden=16" in r and "T=30" in r
