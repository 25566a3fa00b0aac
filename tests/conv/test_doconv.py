import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from contract import check_compile_and_export, check_conv_shapes, check_gradients
from plugconv_lite.conv import DOConv2d
from plugconv_lite.measure import count_flops, count_params
from plugconv_lite.train import param_groups


def _randomise(m: DOConv2d, g: torch.Generator, std: float = 0.3) -> DOConv2d:
    """A trained-looking DO-Conv: D far from zero, W and bias random."""
    with torch.no_grad():
        m.D.copy_(torch.randn(m.D.shape, generator=g) * std)
        m.W.copy_(torch.randn(m.W.shape, generator=g) * 0.2)
        if m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return m


def _loop_kernel(m: DOConv2d) -> torch.Tensor:
    """W'[o, j, m] = sum_s (D + I)[i, m, s] W[o, j, s] with i the input channel that slot j of output o reads."""
    O, Cg, g = m.out_channels, m.in_channels // m.groups, m.groups
    Og = O // g
    D = (m.D + m.D_diag).detach()
    K = torch.zeros(O, Cg, D.shape[1])
    for o in range(O):
        for j in range(Cg):
            i = (o // Og) * Cg + j
            K[o, j] = D[i] @ m.W[o, j].detach()
    return K.reshape(O, Cg, *m.kernel_size)


def _official_kernel(m: DOConv2d) -> torch.Tensor:
    """The official code's composition: W reshaped (not regrouped) to (O/g, C, D_mul)."""
    O, C, g = m.out_channels, m.in_channels, m.groups
    W = m.W.reshape(O // g, C, m.D_mul)
    return torch.einsum("ims,ois->oim", m.D + m.D_diag, W).reshape(O, C // g, *m.kernel_size)


@pytest.mark.parametrize("c_in,c_out,groups", [(8, 16, 1), (8, 8, 2), (8, 8, 8), (4, 8, 4)])
def test_fresh_doconv_equals_plain_conv_with_the_same_W(rng, c_in, c_out, groups):
    m = DOConv2d(c_in, c_out, 3, groups=groups, bias=True)
    assert torch.equal(m.D, torch.zeros_like(m.D))
    x = torch.randn(2, c_in, 9, 7, generator=rng)
    plain = F.conv2d(x, m.W.reshape(c_out, c_in // groups, 3, 3), m.bias, padding=1, groups=groups)
    torch.testing.assert_close(m(x), plain, atol=1e-6, rtol=0)


def test_fresh_doconv_with_larger_D_mul_sums_the_identity_tiles(rng):
    m = DOConv2d(4, 6, 3, D_mul=2 * 9 + 4)
    expected = (m.W[..., :9] + m.W[..., 9:18]).reshape(6, 4, 3, 3)  # the 4 extra columns contribute nothing at init
    torch.testing.assert_close(m.kernel(), expected)
    assert torch.equal(m.D_diag[0, :, 18:], torch.zeros(9, 4))


def test_D_is_trainable_and_the_identity_is_a_frozen_buffer():
    m = DOConv2d(4, 4, 3, D_mul=12)
    params = dict(m.named_parameters())
    assert set(params) == {"W", "D"} and params["D"].requires_grad
    assert "D_diag" in dict(m.named_buffers()) and "D_diag" not in m.state_dict()
    assert torch.equal(m.D_diag[2, :, :9], torch.eye(9))
    assert m.to(torch.float64).D_diag.dtype == torch.float64


@pytest.mark.parametrize("c_in,c_out,groups,D_mul,k", [(6, 4, 1, 9, 3), (8, 12, 2, 11, 3), (8, 8, 4, 9, 3),
                                                       (4, 4, 4, 9, 3), (4, 8, 4, 18, 3), (6, 6, 3, 25, 5),
                                                       (4, 6, 2, 3, (1, 3))])
def test_forward_matches_the_per_input_channel_loop(rng, c_in, c_out, groups, D_mul, k):
    m = _randomise(DOConv2d(c_in, c_out, k, groups=groups, D_mul=D_mul), rng)
    K = _loop_kernel(m)
    torch.testing.assert_close(m.kernel(), K, atol=1e-5, rtol=1e-5)
    x = torch.randn(2, c_in, 8, 9, generator=rng)
    torch.testing.assert_close(m(x), F.conv2d(x, K, None, 1, m.padding, 1, groups), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, bias=True), dict(dilation=2, D_mul=15), dict(groups=4),
                                dict(groups=2, stride=2, padding=0, bias=True)])
def test_fold_is_exact(rng, kw):
    m = _randomise(DOConv2d(8, 16, 3, **kw), rng).train()
    folded = m.fold()
    assert type(folded) is nn.Conv2d and count_params(folded) == count_params(nn.Conv2d(
        8, 16, 3, bias=m.use_bias, groups=m.groups))
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(folded, attr) == getattr(m, attr)
    x = torch.randn(3, 8, 11, 10, generator=rng)
    torch.testing.assert_close(folded(x), m(x), atol=1e-5, rtol=1e-5)


def test_fold_is_exact_after_training(rng):
    m = DOConv2d(8, 8, 3, groups=2, D_mul=12, bias=True)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    target = nn.Conv2d(8, 8, 3, padding=1)
    for _ in range(20):
        x = torch.randn(4, 8, 6, 6, generator=rng)
        loss = (m(x) - target(x).detach()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m.D.abs().max() > 1e-3  # D moved away from zero
    x = torch.randn(2, 8, 9, 9, generator=rng)
    torch.testing.assert_close(m.fold()(x), m(x), atol=1e-5, rtol=1e-5)


def test_pl_fold_folds_a_whole_resnet(rng):
    torch.manual_seed(0)
    net = pl.resnet18(width=16, conv="doconv", conv_kw={"D_mul": 12})
    for m in net.modules():
        if isinstance(m, DOConv2d):
            _randomise(m, rng, std=0.1)
    net.eval()
    x = torch.randn(2, 3, 32, 32, generator=rng)
    folded = pl.fold(copy.deepcopy(net))
    assert not any(isinstance(m, DOConv2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-5)
    plain = pl.resnet18(width=16)
    assert count_params(folded) == count_params(plain) < count_params(net)
    assert count_flops(folded) == count_flops(plain)


def test_fold_then_fuse_bn_matches_the_eval_network(rng):
    torch.manual_seed(0)
    net = pl.resnet18(width=8, conv="doconv")
    for m in net.modules():
        if isinstance(m, DOConv2d):
            _randomise(m, rng, std=0.1)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial BN running statistics
            net(torch.randn(8, 3, 32, 32, generator=rng))
    net.eval()
    fused = pl.fold(copy.deepcopy(net), bn=True)
    assert not any(isinstance(m, (DOConv2d, nn.BatchNorm2d)) for m in fused.modules())
    x = torch.randn(2, 3, 32, 32, generator=rng)
    torch.testing.assert_close(fused(x), net(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("c,groups", [(8, 2), (8, 4), (6, 3)])
def test_grouped_kernel_entries_touching_channel_i_are_produced_by_D_i(rng, c, groups):
    """Changing D_i changes exactly the kernel entries that read input channel i, and no others."""
    m = _randomise(DOConv2d(c, c, 3, groups=groups), rng)
    Cg = Og = c // groups
    base = m.kernel().detach()
    for i in range(c):
        p = copy.deepcopy(m)
        with torch.no_grad():
            p.D[i] += torch.randn(p.D[i].shape, generator=rng)
        changed = (p.kernel().detach() - base).abs().amax(dim=(2, 3)) > 0  # (O, C/g): which (o, slot) moved
        expected = torch.zeros(c, Cg, dtype=torch.bool)
        for o in range(c):
            j = i - (o // Og) * Cg  # the slot of output o that reads input channel i, if o's group holds i
            if 0 <= j < Cg:
                expected[o, j] = True
        assert torch.equal(changed, expected), i


def test_official_reshape_departs_from_per_channel_D_only_for_intermediate_groups(rng):
    for groups, same in [(1, True), (4, True), (2, False)]:
        m = _randomise(DOConv2d(4, 4, 3, groups=groups), rng)
        assert torch.allclose(_official_kernel(m), m.kernel(), atol=1e-6) is same, groups
    # the worked example: O = C = 4, g = 2; output 1, slot 0 reads input channel 0 but the official code uses D_2
    m = DOConv2d(4, 4, 3, groups=2)
    with torch.no_grad():
        m.D[2] += 1.0
    assert not torch.equal(_official_kernel(m)[1, 0], (m.W[1, 0] @ torch.eye(9)).reshape(3, 3))
    assert torch.equal(m.kernel()[1, 0], m.W[1, 0].reshape(3, 3))  # ours: D_2 does not touch input channel 0


def test_1x1_degenerates_to_a_plain_conv(rng):
    m = DOConv2d(8, 16, 1, D_mul=5, bias=True)
    assert m.D is None and m.D_diag is None and m.D_mul == 1
    assert count_params(m) == count_params(nn.Conv2d(8, 16, 1))
    x = torch.randn(2, 8, 5, 5, generator=rng)
    torch.testing.assert_close(m(x), F.conv2d(x, m.W.reshape(16, 8, 1, 1), m.bias))
    torch.testing.assert_close(m.fold()(x), m(x))


@pytest.mark.parametrize("c_in,c_out,k,D_mul,groups,h,stride", [(16, 32, 3, 9, 1, 8, 1), (64, 64, 3, 18, 1, 8, 2),
                                                                (32, 32, 3, 12, 32, 7, 1), (16, 24, 5, 30, 4, 9, 1)])
def test_params_and_flops_formulas(c_in, c_out, k, D_mul, groups, h, stride):
    m = DOConv2d(c_in, c_out, k, stride=stride, groups=groups, D_mul=D_mul)
    MN, Cg = k * k, c_in // groups
    h_out = (h - 1) // stride + 1
    assert count_params(m) == c_out * Cg * D_mul + c_in * MN * D_mul
    assert count_params(m.fold()) == c_out * Cg * MN
    conv_flops = 2 * h_out * h_out * c_out * Cg * MN
    assert count_flops(m, (1, c_in, h, h)) == conv_flops + 2 * c_out * Cg * MN * D_mul  # + the einsum, per forward
    assert count_flops(m.fold(), (1, c_in, h, h)) == conv_flops


def test_shapes_for_grouped_and_depthwise():
    check_conv_shapes(lambda *a, **kw: DOConv2d(*a, groups=16, **kw), c_in=16, c_out=32)
    check_conv_shapes(lambda *a, **kw: DOConv2d(*a, groups=4, D_mul=20, **kw), c_in=16, c_out=32)


def test_gradients_and_compile_for_depthwise(rng):
    m = DOConv2d(8, 8, 3, groups=8, D_mul=12, bias=True)
    check_gradients(m, torch.randn(2, 8, 6, 6, generator=rng))
    check_compile_and_export(_randomise(m, rng), torch.randn(2, 8, 6, 6, generator=rng))


def test_weight_decay_reaches_W_and_D_not_the_identity():
    net = nn.Sequential(DOConv2d(4, 4, 3, bias=True))
    decay, no_decay = param_groups(net, 5e-4)
    assert {id(p) for p in decay["params"]} == {id(net[0].W), id(net[0].D)}
    assert [id(p) for p in no_decay["params"]] == [id(net[0].bias)]


def test_weight_init_fan_out_uses_the_backbones_rule():
    torch.manual_seed(0)
    m = DOConv2d(64, 128, 3, weight_init="fan_out")
    std = (2 / (128 * 9)) ** 0.5  # fan_out = O * D_mul with D_mul = M*N: the plain conv's fan-out
    assert abs(m.W.std().item() / std - 1) < 0.05
    assert "weight_init='fan_out'" in repr(m)


@pytest.mark.parametrize("kw,match", [(dict(D_mul=8), r"D_mul=8 must be >= M\*N=9"),
                                      (dict(D_mul=0), "D_mul=0 must be >= 1"),
                                      (dict(D_mul=9.0), "D_mul=9.0 must be an integer"),
                                      (dict(kernel_size=5, D_mul=24), r"D_mul=24 must be >= M\*N=25"),
                                      (dict(weight_init="xavier"), "weight_init='xavier' must be one of"),
                                      (dict(groups=3), "groups=3 must divide in_channels=16")])
def test_bad_hyperparameters_raise(kw, match):
    args = dict(in_channels=16, out_channels=32, kernel_size=3) | kw
    with pytest.raises(ValueError, match=match):
        DOConv2d(**args)
