import pytest
import torch
import torch.nn.functional as F

from plugconv_lite.attention import CBAM
from plugconv_lite.measure import count_params
from contract import bn_eval, randomise_norms

CIFAR_WIDTHS = [16, 32, 64, 128, 256, 512]


def _mlp(m, z):
    return F.linear(torch.relu(F.linear(z, m.fc0.weight, m.fc0.bias)), m.fc1.weight, m.fc1.bias)


def _official_equations(m: CBAM, x: torch.Tensor) -> torch.Tensor:
    """MODULES.md's CBAM as released (Jongchan/attention-module), eval mode: the channel gate from avg- and
    max-pooled descriptors through one MLP, then the spatial gate on [max_c; mean_c] (the code's order: the
    conv's input channels swapped relative to ours), BN after the 7 x 7 conv."""
    a = torch.sigmoid(_mlp(m, F.avg_pool2d(x, x.shape[2:]).flatten(1)) +
                      _mlp(m, F.max_pool2d(x, x.shape[2:]).flatten(1)))
    x = x * a[:, :, None, None]
    s = torch.cat((x.max(dim=1, keepdim=True)[0], x.mean(dim=1, keepdim=True)), dim=1)
    w = m.conv.weight[:, [1, 0]]  # the official conv weight as it would be stored for [max; mean]
    return x * torch.sigmoid(bn_eval(F.conv2d(s, w, padding=3), m.norm))


@pytest.mark.parametrize("C,hw", [(16, (7, 5)), (64, (8, 8)), (48, (1, 1)), (32, (13, 3))])
def test_forward_equals_the_official_equations(rng, C, hw):
    m = randomise_norms(CBAM(C, hidden=max(1, C // 16)), rng).double()
    x = torch.randn(2, C, *hw, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_equations(m, x), rtol=1e-10, atol=1e-12)


def _gates(m, x):
    z = torch.stack((x.mean(dim=(2, 3)), x.amax(dim=(2, 3))))
    Mc = torch.sigmoid(_mlp(m, z).sum(0))[:, :, None, None]
    return Mc, lambda t: torch.sigmoid(m.norm(m.conv(torch.cat((t.mean(1, keepdim=True),
                                                                 t.amax(1, keepdim=True)), 1))))


@pytest.mark.parametrize("order", ["channel-spatial", "spatial-channel", "parallel"])
def test_each_order_applies_the_gates_as_named(rng, order):
    m = randomise_norms(CBAM(32, order=order), rng)
    x = torch.randn(2, 32, 6, 5, generator=rng)
    Mc, Ms = _gates(m, x)
    if order == "channel-spatial":
        expected = (x * Mc) * Ms(x * Mc)
    elif order == "parallel":
        expected = x * Mc * Ms(x)
    else:
        x1 = x * Ms(x)
        expected = x1 * _gates(m, x1)[0]
    torch.testing.assert_close(m(x), expected)


def test_orders_compute_different_functions(rng):
    x = torch.randn(2, 16, 6, 6, generator=rng)
    torch.manual_seed(0)
    seq = randomise_norms(CBAM(16), torch.Generator().manual_seed(1))
    par = randomise_norms(CBAM(16, order="parallel"), torch.Generator().manual_seed(1))
    par.load_state_dict(seq.state_dict())
    assert (seq(x) - par(x)).abs().max() > 1e-3


def test_channel_gate_sees_both_descriptors(rng):
    """Raising one pixel changes the max descriptor but (almost) not the mean: the gate must react."""
    m = CBAM(16).eval()
    x = torch.randn(1, 16, 8, 8, generator=rng)
    y = x.clone()
    y[0, 3, 4, 4] += 50.0
    assert (m.channel_attention(x) - m.channel_attention(y)).abs().max() > 1e-3


@pytest.mark.parametrize("C", CIFAR_WIDTHS)
def test_bottleneck_never_0_or_1_units_on_cifar_widths(C):
    """The official C // 16 gives 1 unit at 16 channels (0 below); the library's default gives >= 8."""
    m = CBAM(C)
    assert m.hidden >= min(C, 8) and m.hidden == max(8, round(C / 16 / 8) * 8)
    assert count_params(m) == 2 * C * m.hidden + m.hidden + C + 2 * 49 + 2  # MLP, 7x7 conv (no bias), BN


def test_paper_form_without_norm_has_a_conv_bias(rng):
    m = CBAM(16, norm_layer=None)
    x = torch.randn(2, 16, 5, 5, generator=rng)
    s = torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), 1)
    expected = torch.sigmoid(F.conv2d(s, m.conv.weight, m.conv.bias, padding=3))
    torch.testing.assert_close(m.spatial_attention(x), expected)
    assert count_params(m) == count_params(CBAM(16)) - 2 + 1  # BN's two affine numbers out, one conv bias in


def test_spatial_bn_keeps_the_official_slow_running_average(rng):
    """momentum 0.01: one training step moves the running mean 1% of the way to the batch mean."""
    m = CBAM(16).train()
    x = torch.randn(4, 16, 6, 6, generator=rng)
    x1 = x * m.channel_attention(x)
    batch_mean = m.conv(torch.cat((x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)), 1)).mean()
    m(x)
    torch.testing.assert_close(m.norm.running_mean, 0.01 * batch_mean.detach().reshape(1))


@pytest.mark.parametrize("kw,match", [(dict(order="sequential"), "order='sequential' must be one of"),
                                      (dict(spatial_kernel=4), "spatial_kernel=4 must be odd"),
                                      (dict(reduction=0.5), "reduction=0.5 must be >= 1"),
                                      (dict(hidden=0), "hidden=0 must be >= 1"),
                                      (dict(divisor=0), "divisor=0 must be >= 1")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        CBAM(64, **kw)


def test_born_in_the_requested_dtype():
    m = CBAM(16, dtype=torch.float64)
    assert {p.dtype for p in m.parameters()} | {b.dtype for b in m.buffers() if b.is_floating_point()} \
        == {torch.float64}


@pytest.mark.parametrize("kw,match", [(dict(act_layer=torch.nn.ReLU()), "act_layer=.* must be a module class"),
                                      (dict(gate_layer="sigmoid"), "gate_layer='sigmoid' must be a module class"),
                                      (dict(norm_layer=torch.nn.BatchNorm1d), "norm_layer=BatchNorm1d must build")])
def test_bad_layers_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        CBAM(16, **kw)


def test_spatial_gate_starts_at_one_half_as_the_official_resnet_initialises_it(rng):
    """The official ResNet sets the spatial BN's weight and bias to 0: M_s = sigmoid(0) everywhere, in training and
    evaluation, until the BN's scale moves."""
    m = CBAM(32)
    x = torch.randn(2, 32, 6, 7, generator=rng)
    for mode in (True, False):
        m.train(mode)
        assert torch.equal(m.spatial_attention(x), torch.full((2, 1, 6, 7), 0.5))
    assert torch.equal(m.fc0.bias, torch.zeros(m.hidden)) and torch.equal(m.fc1.bias, torch.zeros(32))
