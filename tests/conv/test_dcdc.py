"""DCDC (the book's labelled reconstruction): y = LSA(x) + GSI(x), checked against an explicit float64 reference
written from the equations (unfold for the per-position kernels, a loop over samples for the per-sample ones)."""
import math

import pytest
import torch
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.conv import DCDCConv2d


def _reference(m: DCDCConv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(LSA(x), GSI(x)) from the docstring's equations, with the module's parameters, independently of its code."""
    B, C, H, W = x.shape
    O, g, K = m.out_channels, m.groups, m.num_kernels
    (kh, kw), s, p, d = m.kernel_size, m.stride, m.padding, m.dilation
    # GSI: pi = softmax(W_z2 relu(W_z1 GAP(x)) + b_z2) / T), one conv per sample with sum_k pi_k W_k
    gap = x.mean(dim=(2, 3))
    z = F.relu(gap @ m.attn1.weight.T) @ m.attn2.weight.T + m.attn2.bias
    pi = torch.softmax(z / m.T, dim=1)
    bank = m.weight.reshape(K, O, C // g, kh, kw)
    gsi = torch.cat([F.conv2d(x[b:b + 1], sum(pi[b, k] * bank[k] for k in range(K)), None, s, p, d, g)
                     for b in range(B)])
    # LSA: windows by unfold; H from the centre tap; A = per-position weighted sum; LSA = W_v A
    Ho, Wo = gsi.shape[-2:]
    u = F.unfold(x, (kh, kw), d, p, s).reshape(B, C, kh * kw, Ho * Wo)
    centre = u[:, :, (kh * kw) // 2]                                               # (B, C, L)
    hid = F.relu(torch.einsum("rc,bcl->brl", m.gen1.weight[:, :, 0, 0], centre) + m.gen1.bias[None, :, None])
    Hk = torch.einsum("mr,brl->bml", m.gen2.weight[:, :, 0, 0], hid) + m.gen2.bias[None, :, None]
    G = m.lsa_groups
    Hk = Hk.reshape(B, G, kh * kw, Ho * Wo)
    A = torch.zeros(B, C, Ho * Wo, dtype=x.dtype)
    for c in range(C):
        A[:, c] = (u[:, c] * Hk[:, c // (C // G)]).sum(1)
    lsa = F.conv2d(A.reshape(B, C, Ho, Wo), m.mix.weight, None, 1, 0, 1, g)
    return lsa, gsi


@pytest.mark.parametrize("cfg", [dict(), dict(stride=2), dict(dilation=2, groups=2, bias=True),
                                 dict(kernel_size=5, stride=2, num_kernels=3, group_channels=4)])
def test_output_is_the_sum_of_the_local_and_the_global_branch(cfg):
    """The reconstruction's defining property: y = LSA(x) + GSI(x) (+ bias), each branch as its equation says."""
    torch.manual_seed(0)
    m = DCDCConv2d(8, 12, **cfg).double()
    m.set_progress(0.04)  # mid-annealing: T is neither T_0 nor 1
    x = torch.randn(3, 8, 9, 7, dtype=torch.float64)
    lsa, gsi = _reference(m, x)
    y = m(x)
    bias = 0 if m.bias is None else m.bias.reshape(1, -1, 1, 1)
    torch.testing.assert_close(y, lsa + gsi + bias, rtol=0, atol=1e-12)
    torch.testing.assert_close(m.lsa(x), lsa, rtol=0, atol=1e-12)
    torch.testing.assert_close(m.gsi(x), gsi, rtol=0, atol=1e-12)
    assert lsa.abs().max() > 1e-3 and gsi.abs().max() > 1e-3  # both branches contribute


def test_the_global_kernel_is_shared_over_positions_and_the_local_one_varies():
    """GSI(x) is a convolution with ONE kernel per sample (its output equals conv2d with gsi_kernel); the LSA
    kernel differs from position to position and from sample to sample."""
    torch.manual_seed(0)
    m = DCDCConv2d(16, 16).double()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    Wb = m.gsi_kernel(x)
    for b in range(2):
        torch.testing.assert_close(m.gsi(x)[b:b + 1], F.conv2d(x[b:b + 1], Wb[b], None, 1, 1), rtol=0, atol=1e-12)
    assert (Wb[0] - Wb[1]).abs().max() > 0
    Hk = m.lsa_kernel(x)
    assert Hk.shape == (2, 1, 9, 8, 8)
    assert (Hk[..., 0, 0] - Hk[..., 5, 3]).abs().max() > 1e-3 and (Hk[0] - Hk[1]).abs().max() > 1e-3


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_every_sample_output_equals_its_output_alone(training, stride):
    torch.manual_seed(0)
    m = DCDCConv2d(16, 24, stride=stride, groups=2).double().train(training)
    x = torch.randn(5, 16, 9, 9, dtype=torch.float64)
    y = m(x)
    for b in range(5):
        torch.testing.assert_close(y[b:b + 1], m(x[b:b + 1]), rtol=0, atol=1e-12)


def test_channels_last_input_and_module_give_the_same_output():
    """The trainer moves the whole model with memory_format=channels_last: every parameter must be convertible
    (a 5-D kernel bank raises there), and the output must not change."""
    torch.manual_seed(0)
    m = DCDCConv2d(16, 16, stride=2).double()
    x = torch.randn(3, 16, 9, 8, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(m(x.contiguous(memory_format=torch.channels_last)), y, rtol=0, atol=1e-12)
    net = pl.resnet18(width=16, conv="dcdc").to(memory_format=torch.channels_last)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 100)
    m = m.to(memory_format=torch.channels_last)
    torch.testing.assert_close(m(x.contiguous(memory_format=torch.channels_last)), y, rtol=0, atol=1e-12)


def test_temperature_schedule_at_start_end_of_annealing_and_end():
    m = DCDCConv2d(16, 16, temperature=30.0, anneal=0.1)
    assert float(m.T) == 30.0
    for p, T in [(0.0, 30.0), (0.05, 15.5), (0.1, 1.0), (1.0, 1.0)]:
        m.set_progress(p)
        assert float(m.T) == pytest.approx(T)
    with pytest.raises(ValueError, match="p"):
        m.set_progress(1.5)


def test_load_conv_weights_computes_the_plain_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 12, 3, 2, 1, bias=True).double()
    m = DCDCConv2d(8, 12, stride=2, bias=True).double().load_conv_weights(conv.weight, conv.bias)
    x = torch.randn(3, 8, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(m(x), conv(x), rtol=0, atol=1e-12)


def test_group_rule_and_hidden_width():
    """G = C / gcd(C, group_channels) groups share a kernel; the hidden width is make_divisible(C / 4, 8)."""
    for C, gc, G in [(64, 16, 4), (16, 16, 1), (24, 16, 3), (3, 16, 3)]:
        assert DCDCConv2d(C, 8, group_channels=gc).lsa_groups == G
        assert math.gcd(C, gc) * G == C
    assert DCDCConv2d(64, 64).hidden == 16 and DCDCConv2d(16, 16).hidden == 8


def test_registered_under_dcdc():
    assert isinstance(pl.create("dcdc", 16, 16), DCDCConv2d)


@pytest.mark.parametrize("bad", [dict(num_kernels=0), dict(reduction=0.5), dict(group_channels=0),
                                 dict(temperature=0.5), dict(anneal=1.5), dict(weight_init="xavier"),
                                 dict(num_kernels=2.5)])
def test_bad_hyperparameters_raise_value_error_naming_them(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DCDCConv2d(16, 16, **bad)
