import pytest
import torch

from plugconv_lite.attention import SEModule
from plugconv_lite.measure import count_params


def test_forward_equals_the_squeeze_excitation_formula(rng):
    m = SEModule(32, reduction=4)
    x = torch.randn(3, 32, 5, 7, generator=rng)
    z = x.mean(dim=(2, 3))
    s = torch.sigmoid(torch.relu(z @ m.fc1.weight.T + m.fc1.bias) @ m.fc2.weight.T + m.fc2.bias)
    torch.testing.assert_close(m(x), x * s[:, :, None, None])


def test_gate_depends_only_on_global_statistics(rng):
    """Permuting pixels permutes the output the same way: the gate sees only per-channel averages."""
    m = SEModule(16)
    x = torch.randn(2, 16, 6, 6, generator=rng)
    perm = torch.randperm(36, generator=rng)
    shuffle = lambda t: t.flatten(2)[:, :, perm].view_as(t)  # noqa: E731
    torch.testing.assert_close(m(shuffle(x)), shuffle(m(x)))


def test_gate_only_rescales_channels_down(rng):
    m = SEModule(16)
    x = torch.randn(2, 16, 4, 4, generator=rng)
    ratio = m(x) / x
    assert ((ratio > 0) & (ratio < 1)).all()
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-6)


@pytest.mark.parametrize("channels,reduction,divisor,hidden", [(512, 16, 1, 32), (64, 16, 1, 4), (64, 16, 8, 8),
                                                              (16, 16, 8, 8), (256, 16, 8, 16), (48, 4, 1, 12)])
def test_hidden_width(channels, reduction, divisor, hidden):
    m = SEModule(channels, reduction, divisor)
    assert m.hidden == hidden
    assert count_params(m) == 2 * channels * hidden + hidden + channels


def test_hidden_override():
    assert SEModule(64, hidden=5).hidden == 5


@pytest.mark.parametrize("kw,match", [(dict(reduction=0.5), "reduction=0.5 must be >= 1"),
                                      (dict(divisor=0), "divisor=0 must be >= 1"),
                                      (dict(hidden=0), "hidden=0 must be >= 1"),
                                      (dict(reduction="16"), "reduction='16' must be a real number"),
                                      (dict(reduction=float("nan")), "reduction=nan must be a finite number"),
                                      (dict(reduction=float("inf")), "reduction=inf must be a finite number"),
                                      (dict(act_layer="relu"), "act_layer='relu' must be a module class or factory"),
                                      (dict(gate_layer=torch.nn.Sigmoid()), "gate_layer=Sigmoid.. must be a module "
                                                                            "class or factory"),
                                      (dict(act_layer=None), "act_layer=None must be a module class")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        SEModule(64, **kw)


def test_injectable_activation_and_gate():
    m = SEModule(8, gate_layer=torch.nn.Hardsigmoid, act_layer=torch.nn.SiLU)
    assert isinstance(m.gate, torch.nn.Hardsigmoid) and isinstance(m.act, torch.nn.SiLU)
