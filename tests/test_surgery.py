"""Surgery on a network the library did not write: a small VGG-like model."""
import copy

import pytest
import torch
import torch.nn as nn

import plugconv_lite as pl
from plugconv_lite.attention import SEModule


def vgg_like():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 5, padding=2, bias=True), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def test_swap_convs_replaces_kxk_dense_convs_and_copies_their_geometry():
    made = []

    def factory(c_in, c_out, k, stride=1, padding=None, dilation=1, groups=1, bias=False):
        made.append((c_in, c_out, k, stride, padding, dilation, groups, bias))
        return nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups, bias)

    model, names = pl.swap_convs(vgg_like(), factory)
    assert names == ["0", "3", "12"]  # not the 1x1, not the grouped conv
    assert made == [(3, 16, 3, 1, 1, 1, 1, False), (16, 32, 3, 2, 1, 1, 1, False), (32, 64, 5, 1, 2, 1, 1, True)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_swap_convs_where_regex_and_names():
    _, names = pl.swap_convs(vgg_like(), "conv2d", where=r"(3|9)")
    assert names == ["3", "9"]
    _, names = pl.swap_convs(vgg_like(), "conv2d", where={"6"})
    assert names == ["6"]


def test_swap_convs_passes_input_resolution_to_sites():
    res = {}
    pl.swap_convs(vgg_like(), "conv2d", conv_kw=lambda s: res.__setitem__(s.name, s.resolution) or {},
                  input_size=(1, 3, 32, 32))
    assert res == {"0": 32, "3": 32, "12": 16}


def test_swap_convs_skips_the_insides_of_plug_modules():
    class Plugged(nn.Module):
        registry_name = "plugged-for-test"  # what @register sets on a module class

        def __init__(self):
            super().__init__()
            self.inner = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.inner(x)

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Plugged())
    _, names = pl.swap_convs(model, "conv2d")
    assert names == ["0"] and type(model[1].inner) is nn.Conv2d


def test_add_attention_after_selected_modules():
    model, names = pl.add_attention(vgg_like(), "se", where=lambda n, m: isinstance(m, nn.BatchNorm2d))
    assert names == ["1", "4", "7", "10", "13"]
    assert isinstance(model[4][1], SEModule) and model[4][1].channels == 32
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_add_attention_probes_channels_when_the_module_does_not_say():
    model, names = pl.add_attention(vgg_like(), "se", where=["2"])  # a ReLU: channels come from a probe pass
    assert model[2][1].channels == 16


def test_add_attention_requires_a_match():
    with pytest.raises(ValueError, match="selected no module"):
        pl.add_attention(vgg_like(), "se", where="nothing")


class Foldable(nn.Module):
    """A two-branch conv whose fold is the sum of the kernels (a tiny re-parameterization)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.a = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.b = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)

    def forward(self, x):
        return self.a(x) + self.b(x)

    def fold(self):
        conv = nn.Conv2d(self.a.in_channels, self.a.out_channels, 3, padding=1, bias=False)
        conv.weight.data = self.a.weight.data + self.b.weight.data
        return conv


def test_fold_replaces_foldable_modules_exactly():
    model = nn.Sequential(Foldable(3, 8), nn.ReLU(), nn.Sequential(Foldable(8, 8)))
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    pl.fold(model)
    assert type(model[0]) is nn.Conv2d and type(model[2][0]) is nn.Conv2d
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_fuse_bn_is_exact_in_eval_mode():
    model = pl.resnet20()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    pl.fuse_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)


def test_fuse_bn_refuses_when_conv_output_is_used_elsewhere():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = Leaky()
    model.bn.running_mean.fill_(0.5)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="left unfused"):
        pl.fuse_bn(model, input_size=(1, 3, 8, 8))
    assert isinstance(model.bn, nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
