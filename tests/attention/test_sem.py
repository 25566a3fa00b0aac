import math

import pytest
import torch
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.attention import SEMModule
from plugconv_lite.attention.sem import eca_kernel_size
from plugconv_lite.measure import count_params


def _official_equations(m: SEMModule, u: torch.Tensor) -> torch.Tensor:
    """Qrange-group/SEM models/sem.py Bottleneck.forward after bn3 (without the residual), written out: switch
    weights sigmoid(switch_fc(z)); each operator's output multiplied by its weight BEFORE its sigmoid; IE is
    z * w1 + b1 (the code's names for our ie_gamma, ie_beta)."""
    z = u.mean((2, 3))
    w = torch.sigmoid(z @ m.switch.weight.T + m.switch.bias)
    out1 = (torch.relu(z @ m.fc1.weight.T + m.fc1.bias) @ m.fc2.weight.T + m.fc2.bias) * w[:, :1]
    out2 = F.conv1d(z[:, None, :], m.conv.weight, padding=m.kernel_size // 2)[:, 0] * w[:, 1:2]
    out3 = (z * m.ie_gamma + m.ie_beta) * w[:, 2:3]
    A = torch.sigmoid(out1) * torch.sigmoid(out2) * torch.sigmoid(out3)
    return A[:, :, None, None] * u


def _randomise_ie(m, g):
    with torch.no_grad():
        m.ie_gamma.copy_(torch.randn(m.channels, generator=g, dtype=m.ie_gamma.dtype))
        m.ie_beta.copy_(torch.randn(m.channels, generator=g, dtype=m.ie_beta.dtype))
    return m


@pytest.mark.parametrize("C,hw", [(64, (8, 8)), (256, (4, 4)), (16, (5, 7))])
def test_forward_equals_the_official_equations(rng, C, hw):
    m = _randomise_ie(SEMModule(C, hidden=round(C / 16) or 1).double(), rng)
    u = torch.randn(3, C, *hw, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(u), _official_equations(m, u), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("C,k", [(16, 3), (32, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_kernel_follows_the_official_rule(C, k):
    t = int(abs((math.log(C, 2) + 1) / 2))
    assert eca_kernel_size(C) == k == (t if t % 2 else t + 1)
    assert SEMModule(C).kernel_size == k


def test_a_switch_weight_of_zero_halves_instead_of_switching_off(rng):
    """w_i -> 0 turns operator i into the constant gate sigmoid(0) = 1/2: with all three switched 'off' the
    branch is multiplied by (1/2)^3 = 1/8, whatever the input."""
    m = _randomise_ie(SEMModule(32), rng)
    with torch.no_grad():
        m.switch.weight.zero_()
        m.switch.bias.fill_(-1e4)   # sigmoid(-1e4) = 0 in float32
    u = torch.randn(2, 32, 5, 5, generator=rng)
    torch.testing.assert_close(m(u), u / 8)


def test_gate_at_initialisation_is_about_a_tenth(rng):
    """e_3 = -1 at initialisation, e_1 and e_2 are small and w is near 1/2, so A is near
    sigmoid(0) * sigmoid(0) * sigmoid(-1/2) = 0.0946 (MODULES.md section 34)."""
    torch.manual_seed(0)
    m = SEMModule(64)
    u = 0.1 * torch.randn(8, 64, 6, 6, generator=rng)
    A = m.excitation(u)
    expected = 0.25 * torch.sigmoid(torch.tensor(-0.5))
    assert abs(A.mean().item() - expected.item()) < 0.01
    assert 0 < A.min() and A.max() < 0.2  # the residual branch starts scaled by about a tenth


def test_gate_depends_only_on_global_statistics(rng):
    m = _randomise_ie(SEMModule(32), rng)
    u = torch.randn(2, 32, 6, 6, generator=rng)
    perm = torch.randperm(36, generator=rng)
    shuffle = lambda t: t.flatten(2)[:, :, perm].reshape_as(t)  # noqa: E731
    torch.testing.assert_close(m(shuffle(u)), shuffle(m(u)))


def test_switch_weights_are_per_sample(rng):
    m = SEMModule(16)
    u = torch.randn(4, 16, 5, 5, generator=rng)
    w = m.switch_weights(u.mean((2, 3)))
    assert w.shape == (4, 3) and not torch.allclose(w[0], w[1])
    for b in range(4):
        torch.testing.assert_close(m(u[b:b + 1]), m(u)[b:b + 1])


@pytest.mark.parametrize("C", [16, 32, 64, 128, 256, 512])
def test_width_rule_never_gives_an_empty_or_one_unit_bottleneck(C):
    m = SEMModule(C)
    assert m.hidden >= 8 and m.hidden % 8 == 0
    assert count_params(m) == (C * 3 + 3) + (2 * C * m.hidden + m.hidden + C) + m.kernel_size + 2 * C


def test_official_width_is_round_half_even():
    """The official round(planes / 4) with C = 4 planes: round(C / 16) with Python's round-half-even, which gives
    1 unit at 16 channels, 2 at both 24 and 40 channels, and 0 at 8 channels."""
    assert [round(C / 16) for C in (8, 16, 24, 40, 64)] == [0, 1, 2, 2, 4]
    assert [SEMModule(C).hidden for C in (8, 16, 24, 40, 64)] == [8, 8, 8, 8, 8]


def test_sem_plugs_into_every_basic_block():
    """The official code builds SEM only into its Bottleneck (its BasicBlock has none, and a BasicBlock network
    crashes on the 'info' argument); here it goes into every BasicBlock of ResNet-18."""
    model = pl.resnet18(width=16, attn="sem")
    assert sum(isinstance(m, SEMModule) for m in model.modules()) == 8


@pytest.mark.parametrize("kw,match", [(dict(reduction=0.5), "reduction=0.5 must be >= 1"),
                                      (dict(hidden=0), "hidden=0 must be >= 1"),
                                      (dict(kernel_size=4), "kernel_size=4 must be odd"),
                                      (dict(divisor=0), "divisor=0 must be >= 1")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        SEMModule(32, **kw)
