import math

import pytest
import torch
import torch.nn.functional as F

from plugconv_lite.attention import CATModule, global_entropy_pool
from plugconv_lite.measure import count_params


def _reconstruction(m: CATModule, x: torch.Tensor) -> torch.Tensor:
    """The reconstructed CAT equations (CATModule's docstring), written out with plain softmax / log."""
    def entropy(t, dim):
        p = torch.softmax(t / m.temperature, dim=dim)
        return -(p * torch.log(p)).sum(dim=dim)

    def mlp(z):
        return torch.relu(z @ m.fc1.weight.T + m.fc1.bias) @ m.fc2.weight.T + m.fc2.bias

    a, lam = torch.softmax(m.phi, 0), torch.softmax(m.theta, 0)
    B, C = x.shape[:2]
    descriptors = [x.mean((2, 3)), x.amax((2, 3)), entropy(x.reshape(B, C, -1), -1)]
    M_c = torch.sigmoid(sum(a[i] * mlp(z) for i, z in enumerate(descriptors)))[:, :, None, None]
    maps = torch.stack([x.mean(1), x.amax(1), entropy(x, 1)], 1)
    M_s = torch.sigmoid(F.conv2d(maps, m.spatial.weight, m.spatial.bias, padding=m.kernel_size // 2))
    return x * (lam[0] * M_c + lam[1] * M_s)


def _trained_like(m: CATModule, g: torch.Generator) -> CATModule:
    with torch.no_grad():
        m.phi.copy_(torch.randn(3, generator=g, dtype=m.phi.dtype))
        m.theta.copy_(torch.randn(2, generator=g, dtype=m.theta.dtype))
    return m


@pytest.mark.parametrize("C,hw,k,T", [(32, (8, 8), 7, 1.0), (16, (5, 7), 3, 0.5), (24, (1, 1), 7, 2.0)])
def test_forward_equals_the_reconstructed_equations(rng, C, hw, k, T):
    m = _trained_like(CATModule(C, kernel_size=k, temperature=T).double(), rng)
    x = torch.randn(2, C, *hw, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reconstruction(m, x), atol=1e-10, rtol=1e-10)


def test_gep_of_a_constant_channel_is_log_n(rng):
    x = torch.randn(2, 5, 1, generator=rng).expand(2, 5, 48)
    torch.testing.assert_close(global_entropy_pool(x, -1), torch.full((2, 5), math.log(48)))


def test_gep_is_the_entropy_of_the_softmax_and_lies_in_zero_log_n(rng):
    x = 3 * torch.randn(4, 16, 30, generator=rng, dtype=torch.float64)
    p = torch.softmax(x, -1)
    H = global_entropy_pool(x, -1)
    torch.testing.assert_close(H, -(p * p.log()).sum(-1))
    assert (H >= 0).all() and (H <= math.log(30) + 1e-12).all()
    peaked = torch.zeros(1, 1, 30, dtype=torch.float64)
    peaked[..., 0] = 100.0  # softmax puts almost all mass on one position
    assert global_entropy_pool(peaked, -1).item() < 1e-10


def test_gep_ignores_the_order_of_positions(rng):
    x = torch.randn(2, 8, 36, generator=rng)
    perm = torch.randperm(36, generator=rng)
    torch.testing.assert_close(global_entropy_pool(x[:, :, perm], -1), global_entropy_pool(x, -1))


@pytest.mark.parametrize("value", [0.0, 1.0, -7.5, 3e4])
def test_constant_channels_stay_finite_in_bf16(rng, value):
    """No NaN in bf16 autocast when channels are constant (a dead ReLU channel, a padded map): GEP is log n there.
    Channel 1 of sample 0 also has a single large spike, where softmax's other probabilities underflow to 0 and the
    textbook -sum p log p gives 0 * log 0 = NaN (checked below); log_softmax keeps it at 0."""
    m = CATModule(32).eval()
    x = torch.randn(2, 32, 8, 8, generator=rng)
    x[:, ::2] = value              # half the channels constant
    x[1] = value                   # one sample constant everywhere (the spatial entropy too)
    x[0, 1, 3, 3] = 3e4            # a spike
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        H = global_entropy_pool(x.bfloat16().flatten(2), -1)
        p = torch.softmax(x.bfloat16().flatten(2), -1)
    assert torch.isfinite(y.float()).all() and torch.isfinite(H.float()).all()
    torch.testing.assert_close(H.float()[:, ::2], torch.full((2, 16), math.log(64)), atol=0.02, rtol=0)
    assert H[0, 1].item() == 0.0
    assert torch.isnan(-(p * p.log()).sum(-1)[0, 1])  # the textbook formula fails exactly there


def test_gradients_are_finite_for_constant_channels():
    m = CATModule(16)
    x = torch.zeros(2, 16, 4, 4, requires_grad=True)
    m(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_colla_factors_and_pooling_weights_start_equal_and_sum_to_one(rng):
    m = CATModule(16)
    torch.testing.assert_close(m.colla_factors(), torch.tensor([0.5, 0.5]))
    _trained_like(m, rng)
    torch.testing.assert_close(m.colla_factors().sum(), torch.tensor(1.0))
    torch.testing.assert_close(torch.softmax(m.phi, 0).sum(), torch.tensor(1.0))


def test_gate_is_a_convex_mix_of_the_two_attentions(rng):
    """y / x = lambda_c M_c + lambda_s M_s lies in (0, 1); with lambda = (1, 0) the module is channel attention only:
    a gate constant over each channel's positions."""
    m = CATModule(16)
    x = torch.randn(2, 16, 6, 6, generator=rng)
    ratio = m(x) / x
    assert ((ratio > 0) & (ratio < 1)).all()
    with torch.no_grad():
        m.theta.copy_(torch.tensor([50.0, -50.0]))
    ratio = m(x) / x
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio))


def test_channel_attention_ignores_the_order_of_positions(rng):
    m = CATModule(16)
    x = torch.randn(2, 16, 6, 6, generator=rng)
    perm = torch.randperm(36, generator=rng)
    shuffled = x.flatten(2)[:, :, perm].reshape_as(x)
    torch.testing.assert_close(m.channel_attention(shuffled), m.channel_attention(x))


@pytest.mark.parametrize("C", [16, 32, 64, 128, 256, 512])
def test_width_rule_never_gives_an_empty_or_one_unit_bottleneck(C):
    m = CATModule(C)
    assert m.hidden >= 8 and m.hidden % 8 == 0
    assert count_params(m) == 2 * C * m.hidden + m.hidden + C + 3 * 49 + 1 + 3 + 2


@pytest.mark.parametrize("kw,match", [(dict(reduction=0.5), "reduction=0.5 must be >= 1"),
                                      (dict(hidden=0), "hidden=0 must be >= 1"),
                                      (dict(kernel_size=4), "kernel_size=4 must be odd"),
                                      (dict(temperature=0.0), "temperature=0.0 must be > 0"),
                                      (dict(divisor=0), "divisor=0 must be >= 1"),
                                      (dict(act_layer="relu"), "act_layer='relu' must be a module class")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        CATModule(32, **kw)
