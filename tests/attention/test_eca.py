import math

import pytest
import torch

import plugconv_lite as pl
from plugconv_lite.attention import ECAModule, adaptive_kernel_size
from plugconv_lite.measure import count_params


def _official_equations(m: ECAModule, x: torch.Tensor) -> torch.Tensor:
    """ECA written out: s_c = sigmoid(sum_i w_i z_{c + i - (k-1)/2}), z zero outside the channel range."""
    z = x.mean(dim=(2, 3))
    B, C = z.shape
    k, w = m.kernel_size, m.conv.weight.reshape(-1)
    zp = torch.cat((z.new_zeros(B, k // 2), z, z.new_zeros(B, k // 2)), dim=1)
    s = torch.sigmoid(sum(w[i] * zp[:, i:i + C] for i in range(k)))
    return x * s[:, :, None, None]


@pytest.mark.parametrize("C,k", [(64, 3), (64, 5), (16, 7), (7, 9), (3, 5), (128, None)])
def test_forward_equals_the_official_equations(rng, C, k):
    m = ECAModule(C, kernel_size=k)
    torch.nn.init.normal_(m.conv.weight, generator=rng)
    x = torch.randn(2, C, 5, 7, generator=rng)
    torch.testing.assert_close(m(x), _official_equations(m, x))


@pytest.mark.parametrize("C,k", [(16, None), (64, None), (512, None), (64, 1), (64, 7), (256, 9)])
def test_has_exactly_k_parameters(C, k):
    m = ECAModule(C, kernel_size=k)
    assert count_params(m) == m.kernel_size == (adaptive_kernel_size(C) if k is None else k)


def _nearest_odd_ties_up(t: float) -> int:
    below = 2 * math.floor((t - 1) / 2) + 1     # the largest odd <= t
    return below if t - below < below + 2 - t else below + 2


@pytest.mark.parametrize("gamma,b", [(2, 1), (1, 0), (3, 2), (2.5, -1)])
def test_adaptive_kernel_size_is_the_nearest_odd_with_ties_up(gamma, b):
    for C in range(1, 2049):
        t = abs((math.log2(C) + b) / gamma)
        assert adaptive_kernel_size(C, gamma, b) == _nearest_odd_ties_up(t), (C, t)


def test_adaptive_kernel_sizes_on_cifar_widths():
    assert [adaptive_kernel_size(C) for C in (16, 32, 64, 128, 256, 512)] == [3, 3, 3, 5, 5, 5]


def test_default_is_the_papers_rule_and_stage_kernels_come_from_the_site():
    adaptive = pl.resnet18(attn="eca")
    fixed = pl.resnet18(attn="eca", attn_kw={"stage_kernel_sizes": [3, 5, 5, 7]})
    ks = lambda model: [m.kernel_size for m in model.modules() if isinstance(m, ECAModule)]  # noqa: E731
    assert ks(adaptive) == [3, 3, 5, 5, 5, 5, 5, 5]
    assert ks(fixed) == [3, 3, 5, 5, 5, 5, 7, 7]


def test_kernel_does_not_wrap_around_the_channel_axis(rng):
    """Zero padding at both ends: the first channel's gate ignores the last channel."""
    m = ECAModule(8, kernel_size=3)
    x = torch.randn(1, 8, 4, 4, generator=rng)
    y = x.clone()
    y[:, -1] += 10.0
    s_x, s_y = m.excitation(x), m.excitation(y)
    assert torch.equal(s_x[:, :-2], s_y[:, :-2]) and not torch.equal(s_x[:, -2:], s_y[:, -2:])


@pytest.mark.parametrize("kw,match", [(dict(kernel_size=4), "kernel_size=4 must be odd"),
                                      (dict(kernel_size=0), "kernel_size=0 must be >= 1"),
                                      (dict(gamma=0), "gamma=0.0 must be > 0"),
                                      (dict(b="1"), "b='1' must be a real number")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ECAModule(64, **kw)


def test_stage_kernel_sizes_must_cover_every_stage():
    with pytest.raises(ValueError, match="stage_kernel_sizes=.*no entry for stage 3"):
        pl.resnet18(attn="eca", attn_kw={"stage_kernel_sizes": [3, 5, 7]})
    with pytest.raises(ValueError, match="not both"):
        pl.resnet18(attn="eca", attn_kw={"stage_kernel_sizes": [3, 5, 7, 7], "kernel_size": 3})


def test_bad_gate_layer_raises():
    with pytest.raises(ValueError, match="gate_layer=.* must be a module class"):
        ECAModule(64, gate_layer=torch.nn.Sigmoid())
