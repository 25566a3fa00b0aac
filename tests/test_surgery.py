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


# --- surgery never changes what the network means --------------------------------------------------------------------

def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_swap_convs_keeps_the_padding_mode(mode, rng):
    original = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, padding_mode=mode))
    x = torch.randn(2, 8, 7, 6, generator=rng)
    expected = original(x)
    model, _ = pl.swap_convs(copy.deepcopy(original), "conv2d", keep_weights=True)
    assert model[0].padding_mode == mode
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    model, _ = pl.swap_convs(copy.deepcopy(original), "doconv", keep_weights=True)
    assert model[0].padding_mode == mode and "padding_mode" in repr(model[0])
    torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model[0].fold()(x), expected, rtol=1e-6, atol=1e-6)


def test_swap_convs_refuses_a_padding_mode_the_replacement_cannot_honour():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"))
    before = _state(model)
    with pytest.raises(ValueError, match="conv '1' has padding_mode='reflect', which 'scconv' cannot honour"):
        pl.swap_convs(model, "scconv")
    assert all(type(m) is nn.Conv2d for m in model) and _same_state(model, before)


def test_add_attention_probe_pass_restores_every_module_mode():
    model = vgg_like().train()
    model[4].eval()  # a frozen BN inside a training model
    before = _state(model)
    pl.add_attention(model, "se", where=lambda n, m: isinstance(m, nn.ReLU))  # ReLUs: channels from a probe pass
    assert model.training and not model[4].training
    assert all(m.training for i, m in enumerate(model) if i != 4)
    assert all(model[i][1].training for i in (2, 5, 8, 11, 14))  # the new SE modules follow their ReLU
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the probe updated no statistic


def test_swap_convs_into_a_float64_eval_model(rng):
    model = vgg_like().double().eval()
    x = torch.randn(2, 3, 16, 16, generator=rng, dtype=torch.float64)
    pl.swap_convs(model, "scconv", input_size=(1, 3, 16, 16))
    stats = [t.clone() for n, t in model.named_buffers() if "running" in n]
    assert model(x).dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(stats, [t for n, t in model.named_buffers() if "running" in n]))
    assert not any(m.training for m in model.modules())


def test_swap_convs_is_atomic():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, padding=2, dilation=2))
    before = _state(model)
    with pytest.raises(ValueError, match="conv '2': dilation=.* must be 1 for SPD-Conv"):
        pl.swap_convs(model, "spdconv", where=lambda n, m: True)
    assert type(model[0]) is nn.Conv2d and _same_state(model, before)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.Conv2d(8, 8, 4, padding="same"))
    with pytest.raises(ValueError, match="conv '1' has padding='same' .* pads unevenly"):
        pl.swap_convs(model, "conv2d", where=lambda n, m: True)
    assert type(model[0]) is nn.Conv2d


def test_swap_convs_translates_symmetric_same_and_valid_padding(rng):
    model = nn.Sequential(nn.Conv2d(3, 8, 5, padding="same", dilation=2), nn.Conv2d(8, 8, 3, padding="valid"))
    x = torch.randn(1, 3, 12, 12, generator=rng)
    expected = model(x)
    pl.swap_convs(model, "conv2d", keep_weights=True)
    assert model[0].padding == (4, 4) and model[1].padding == (0, 0)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_add_attention_is_atomic():
    def wide_only(channels):
        if channels < 8:
            raise ValueError(f"channels={channels} must be >= 8")
        return SEModule(channels)

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1), nn.ReLU())
    with pytest.raises(ValueError, match="module '2': channels=4 must be >= 8"):
        pl.add_attention(model, wide_only, where=lambda n, m: isinstance(m, nn.Conv2d))
    assert all(not isinstance(m, nn.Sequential) for m in model)  # the first conv was not wrapped either


def test_add_attention_refuses_a_container_and_its_child():
    model = nn.Sequential()
    model.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    model.head = nn.Conv2d(8, 4, 1)
    with pytest.raises(ValueError, match="selected both 'features' and a module inside it, 'features.0'"):
        pl.add_attention(model, "se", where=["features", "features.0"])
    assert type(model.features[0]) is nn.Conv2d and type(model.features) is nn.Sequential
    assert isinstance(model.features[1], nn.ReLU)


class Tied(nn.Module):
    """One conv used twice: as ``conv`` directly and as ``block.0`` (the same module object)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.block = nn.Sequential(self.conv, nn.ReLU())

    def forward(self, x):
        return self.block(self.conv(x))


def test_swap_convs_replaces_every_use_of_a_shared_conv_by_one_module(rng):
    model = Tied()
    x = torch.randn(1, 8, 6, 6, generator=rng)
    expected = model(x)
    _, names = pl.swap_convs(model, "doconv", keep_weights=True)
    assert sorted(names) == ["block.0", "conv"]
    assert model.conv is model.block[0] and type(model.conv).__name__ == "DOConv2d"
    torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)


def test_swap_convs_refuses_to_untie():
    model = Tied()
    with pytest.raises(ValueError, match=r"conv 'conv' is shared: the same module is also \['block.0'\]"):
        pl.swap_convs(model, "conv2d", where=["conv"])
    assert type(model.conv) is nn.Conv2d and model.conv is model.block[0]
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    model[1].weight = model[0].weight  # a parameter tie between two modules
    with pytest.raises(ValueError, match=r"conv '0' shares a parameter with \['1'\]"):
        pl.swap_convs(model, "conv2d")


def test_add_attention_on_a_shared_module_uses_one_attention_module():
    model = Tied()
    _, names = pl.add_attention(model, "se", where=lambda n, m: isinstance(m, nn.Conv2d))
    assert sorted(names) == ["block.0", "conv"] and model.conv is model.block[0]
    with pytest.raises(ValueError, match="is shared"):
        pl.add_attention(Tied(), "se", where=["block.0"])


def test_fold_with_bn_skips_batchnorm_without_running_statistics(rng):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        model[4].running_mean.uniform_(-1, 1)
    x = torch.randn(4, 3, 8, 8, generator=rng)
    expected = model(x)
    with pytest.warns(UserWarning, match=r"\['1'\] left unfused: BatchNorm2d\(track_running_stats=False\)"):
        pl.fold(model, bn=True, input_size=(4, 3, 8, 8))
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[4], nn.Identity)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_with_bn_keeps_float64(rng):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)).double().eval()
    x = torch.randn(2, 3, 8, 8, generator=rng, dtype=torch.float64)
    expected = model(x)
    pl.fold(model, bn=True, input_size=(1, 3, 8, 8))
    assert model[0].weight.dtype == torch.float64
    torch.testing.assert_close(model(x), expected)


def test_swap_convs_reinitialises_weights_unless_asked_to_keep_them(rng):
    x = torch.randn(2, 3, 16, 16, generator=rng)
    torch.manual_seed(0)
    model = vgg_like().eval()
    expected = model(x)
    fresh = pl.swap_convs(copy.deepcopy(model), "conv2d")[0]
    assert not torch.allclose(fresh(x), expected)  # the documented default: new weights
    kept = pl.swap_convs(copy.deepcopy(model), "conv2d", keep_weights=True)[0]
    torch.testing.assert_close(kept(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name,kw,exact", [("conv2d", {}, True), ("doconv", {}, True), ("doconv", {"D_mul": 12}, True),
                                           ("pyconv", {"kernels": [3]}, True), ("icconv", {}, True),
                                           ("spdconv", {}, False)])
def test_keep_weights_reproduces_the_pretrained_network(name, kw, exact, rng):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=True), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1)).eval()
    x = torch.randn(2, 3, 11, 9, generator=rng)
    expected = model(x)
    pl.swap_convs(model, name, where=lambda n, m: True, conv_kw=kw, keep_weights=True)
    assert type(model[0]) is not nn.Conv2d
    if exact:  # the same kernel in the same conv: bit for bit
        assert torch.equal(model(x), expected)
    else:
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kw,match", [
    ("scconv", {}, "SCConv2d cannot take a plain conv's weights"),
    ("c2sp", {}, "C2spConv2d cannot take"),
    ("pyconv", {}, r"PyConv2d with kernels=\(3, 5, 7, 9\).*kernels=\(3,\)"),
    ("psconv", {}, "blocks with dilation 2 and 4 would have to be zero outside the centre tap"),
    ("icconv", {"pattern": "uniform", "D_max": 2}, "dilated but their kernels are not zero off the centre"),
])
def test_keep_weights_refuses_where_the_replacement_cannot_represent_them(name, kw, match):
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    before = _state(model)
    with pytest.raises(ValueError, match=f"keep_weights: conv '0': .*{match}"):
        pl.swap_convs(model, name, conv_kw=kw, keep_weights=True)
    assert _same_state(model, before)


def test_keep_weights_into_psconv_holds_for_1x1_and_centre_only_kernels(rng):
    model = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.Conv2d(8, 8, 3, padding=1, bias=False))
    with torch.no_grad():  # the second conv: centre taps only, so every dilation reads the same pixel
        model[1].weight.mul_(torch.zeros(3, 3).index_put_((torch.tensor(1), torch.tensor(1)), torch.tensor(1.0)))
    x = torch.randn(2, 8, 7, 7, generator=rng)
    expected = model(x)
    pl.swap_convs(model, "psconv", where=lambda n, m: True, keep_weights=True)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_swap_convs_leaves_convs_with_their_own_forward_alone():
    class StdConv2d(nn.Conv2d):  # a weight-standardised conv: not what nn.Conv2d computes
        def forward(self, x):
            w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / self.weight.std((1, 2, 3), keepdim=True)
            return self._conv_forward(x, w, self.bias)

    model = nn.Sequential(StdConv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    _, names = pl.swap_convs(model, "conv2d")
    assert names == ["1"] and type(model[0]) is StdConv2d
    with pytest.raises(ValueError, match="conv '0' is a StdConv2d, whose forward is not nn.Conv2d's"):
        pl.swap_convs(model, "conv2d", where=["0"])
