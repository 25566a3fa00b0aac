"""ODConv (Li, Zhou, Yao, ICLR 2022): four attentions from one squeeze, a per-sample kernel, an annealed temperature."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.conv import ODConv2d
from plugconv_lite.measure import count_flops, count_params
from contract import bn_eval, check_conv_shapes, randomise_norms


def _randomise(m: ODConv2d, g: torch.Generator) -> ODConv2d:
    """Non-zero attention biases and BN statistics, so a reference that drops one of them fails; eval mode."""
    with torch.no_grad():
        for fc in (m.channel_fc, m.filter_fc, m.spatial_fc, m.kernel_fc):
            if fc is not None:
                fc.bias.copy_(torch.randn(fc.bias.shape, generator=g, dtype=fc.bias.dtype))
    return randomise_norms(m, g)


def _official_attentions(m: ODConv2d, x: torch.Tensor):
    """MODULES.md's attention branch written out (eval-mode BN): z = relu(BN(W_z GAP(x))), each head's logits / T,
    sigmoid for a_c, a_f, a_s, softmax over the K kernels for a_w. Returned in the shapes of the kernel space:
    a_c (B, 1, C), a_f (B, O, 1), a_s (B, kh, kw), a_w (B, K); a head the layer does not have is 1."""
    B, T = x.shape[0], float(m.T)
    (kh, kw), K = m.kernel_size, m.kernel_num
    z = x.mean(dim=(2, 3))                                       # (B, C)
    z = F.relu(bn_eval((z @ m.fc.weight[:, :, 0, 0].T)[:, :, None, None], m.norm)[:, :, 0, 0])  # (B, A)

    def logits(fc):
        return (z @ fc.weight[:, :, 0, 0].T + fc.bias) / T

    ones = x.new_ones(())
    a_c = torch.sigmoid(logits(m.channel_fc))[:, None, :]
    a_f = ones.expand(B, m.out_channels, 1) if m.filter_fc is None else torch.sigmoid(logits(m.filter_fc))[:, :, None]
    a_s = ones.expand(B, kh, kw) if m.spatial_fc is None else torch.sigmoid(logits(m.spatial_fc)).reshape(B, kh, kw)
    a_w = ones.expand(B, 1) if K == 1 else torch.softmax(logits(m.kernel_fc), dim=1)
    return a_c, a_f, a_s, a_w


def _explicit_output(m: ODConv2d, x: torch.Tensor) -> torch.Tensor:
    """Each sample's kernel built entry by entry, W_b[o, i] = sum_k a_w,b,k a_f,b,o a_c,b,(group(o), i) a_s,b W_k[o, i],
    then one ordinary convolution per sample."""
    a_c, a_f, a_s, a_w = _official_attentions(m, x)
    a_w = a_w.reshape(*a_w.shape, 1, 1)
    O, Cg, g = m.out_channels, m.in_channels // m.groups, m.groups
    out = []
    for b in range(x.shape[0]):
        W = torch.zeros_like(m.kernels[0])
        for o in range(O):
            group = o // (O // g)
            for i in range(Cg):
                W[o, i] = a_f[b, o, 0] * a_c[b, 0, group * Cg + i] * a_s[b] * (a_w[b] * m.kernels[:, o, i]).sum(0)
        y = F.conv2d(x[b:b + 1], W, m.bias, m.stride, m.padding, m.dilation, g)
        out.append(y)
    return torch.cat(out)


CASES = [dict(c_in=8, c_out=12, k=3, K=4, groups=1, stride=1, dilation=1),
         dict(c_in=8, c_out=12, k=3, K=1, groups=1, stride=2, dilation=1),
         dict(c_in=8, c_out=8, k=3, K=4, groups=8, stride=1, dilation=2),   # depthwise: no filter attention
         dict(c_in=8, c_out=12, k=1, K=4, groups=2, stride=1, dilation=1),  # 1x1: no spatial attention
         dict(c_in=6, c_out=4, k=1, K=1, groups=1, stride=2, dilation=1),   # static kernel path
         dict(c_in=12, c_out=6, k=(3, 5), K=2, groups=3, stride=2, dilation=1)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [False, True])
@torch.no_grad()
def test_output_equals_the_explicit_per_sample_kernel(rng, case, bias):
    m = ODConv2d(case["c_in"], case["c_out"], case["k"], case["stride"], dilation=case["dilation"],
                 groups=case["groups"], bias=bias, kernel_num=case["K"], temperature=7.0).double()
    m = _randomise(m, rng)
    x = torch.randn(3, case["c_in"], 9, 7, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _explicit_output(m, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_kernel_is_what_each_sample_is_convolved_with(rng, case):
    m = _randomise(ODConv2d(case["c_in"], case["c_out"], case["k"], case["stride"], dilation=case["dilation"],
                            groups=case["groups"], kernel_num=case["K"]).double(), rng)
    x = torch.randn(3, case["c_in"], 8, 8, generator=rng, dtype=torch.float64)
    W = m.kernel(x)
    y = torch.cat([F.conv2d(x[b:b + 1], W[b], None, m.stride, m.padding, m.dilation, m.groups) for b in range(3)])
    torch.testing.assert_close(m(x), y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm_layer,training", [(nn.BatchNorm2d, False), (None, True), (None, False)])
def test_every_sample_output_equals_its_output_alone(rng, norm_layer, training):
    """The batch folded into the groups of one conv must not mix samples. (A training-mode BatchNorm in the attention
    branch does couple the samples through its batch statistics, as in the official code: not tested here.)"""
    m = _randomise(ODConv2d(16, 24, 3, norm_layer=norm_layer, kernel_num=4, temperature=3.0).double(), rng)
    m.train(training)
    x = torch.randn(5, 16, 9, 7, generator=rng, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = m(x)
    for b in range(5):
        torch.testing.assert_close(y[b:b + 1], m(x[b:b + 1]), rtol=0, atol=1e-12)


def test_the_four_attentions_have_their_shapes_and_ranges(rng):
    B, C, O, k, K = 4, 32, 48, 3, 4
    m = _randomise(ODConv2d(C, O, k, kernel_num=K), rng)
    a_c, a_f, a_s, a_w = m.attention(torch.randn(B, C, 10, 10, generator=rng))
    assert a_c.shape == (B, C) and a_f.shape == (B, O) and a_s.shape == (B, k * k) and a_w.shape == (B, K)
    for a in (a_c, a_f, a_s, a_w):  # every attention is a weight in (0, 1), and differs between the samples
        assert bool(((a > 0) & (a < 1)).all())
        assert (a - a[:1]).abs().amax() > 1e-3
    torch.testing.assert_close(a_w.sum(dim=1), torch.ones(B))  # kernel attention: softmax over the K kernels
    assert (a_c.sum(dim=1) - C).abs().amax() > 1e-2  # the sigmoid attentions are not normalised


def test_attention_heads_are_dropped_where_the_dimension_is_one():
    x = torch.randn(2, 16, 5, 5)
    a_c, a_f, a_s, a_w = ODConv2d(16, 16, 3, groups=16, kernel_num=1).attention(x)
    assert a_c.shape == (2, 16) and a_f is None and a_s.shape == (2, 9) and a_w is None  # depthwise, K = 1
    a_c, a_f, a_s, a_w = ODConv2d(16, 8, 1, kernel_num=4).attention(x)
    assert a_f.shape == (2, 8) and a_s is None and a_w.shape == (2, 4)  # 1x1: no spatial attention


def test_attention_branch_width_follows_the_official_rule():
    """A = max(int(C r), 16): 16 units for every CIFAR ResNet-18 width up to 256, C/16 beyond."""
    assert [ODConv2d(c, c).attention_channels for c in (16, 64, 256, 512)] == [16, 16, 16, 32]
    assert ODConv2d(64, 64, reduction=0.5).attention_channels == 32
    assert ODConv2d(64, 64, min_channels=4).attention_channels == 4


@pytest.mark.parametrize("C,O,k,K,groups", [(64, 64, 3, 4, 1), (64, 64, 3, 1, 1), (32, 64, 1, 4, 2),
                                            (32, 32, 3, 4, 32)])
def test_params_and_flops_formulas(C, O, k, K, groups):
    """Parameters: K kernels + W_z (no bias) + BN + the heads (with bias). FLOPs (batch 1, H = W = 8): the conv,
    the squeeze and head 1x1 convs, and the kernel aggregation sum_k a_w,k W_k (a matmul, counted when K > 1)."""
    m = ODConv2d(C, O, k, groups=groups, kernel_num=K)
    A, Cg, t = m.attention_channels, C // groups, k * k
    heads = [C] + ([] if C == groups == O else [O]) + ([] if t == 1 else [t]) + ([] if K == 1 else [K])
    assert count_params(m) == K * O * Cg * t + C * A + 2 * A + sum((A + 1) * n for n in heads)
    conv = 2 * 8 * 8 * O * Cg * t
    attention = 2 * C * A + sum(2 * A * n for n in heads)
    aggregation = 0 if K == 1 else 2 * K * O * Cg * t
    assert count_flops(m, (1, C, 8, 8)) == conv + attention + aggregation


def test_one_kernel_is_odconv_1x_and_four_identical_kernels_compute_the_same(rng):
    """ODConv (4x) with four copies of one kernel equals ODConv (1x) with that kernel: the kernel attention is a
    softmax (its weights sum to 1) and the other three attentions are shared by the kernels."""
    one = _randomise(ODConv2d(16, 24, 3, kernel_num=1, temperature=5.0).double(), rng)
    four = ODConv2d(16, 24, 3, kernel_num=4, temperature=5.0).double().eval()
    four.load_state_dict({**one.state_dict(), "weight": one.weight.expand(4, -1).clone(),
                          **{f"kernel_fc.{n}": p for n, p in four.kernel_fc.state_dict().items()}})
    x = torch.randn(3, 16, 8, 8, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(four(x), one(x), rtol=0, atol=1e-12)
    assert count_params(four) - count_params(one) == 3 * 24 * 16 * 9 + (16 + 1) * 4  # 3 kernels + the K head
    with torch.no_grad():  # and with distinct kernels the 4x layer is not the 1x layer
        four.weight[1:].normal_(generator=rng)
    assert (four(x) - one(x)).abs().amax() > 1e-3


def _official_get_temperature(iteration, epoch, iter_per_epoch, temp_epoch=10, temp_init=30.0):
    """The official utils/misc.py schedule, written out from its definition (linear in the iteration count)."""
    total = iter_per_epoch * temp_epoch
    return 1.0 + max(0.0, (temp_init - 1.0) * (total - (iteration + epoch * iter_per_epoch)) / total)


def test_temperature_schedule_at_start_end_of_annealing_and_end():
    m = ODConv2d(16, 16)
    assert float(m.T) == 30.0  # a fresh module is at p = 0
    for p, T in [(0.0, 30.0), (0.05, 15.5), (0.1, 1.0), (0.5, 1.0), (1.0, 1.0)]:
        m.set_progress(p)
        assert float(m.T) == pytest.approx(T)
    # the official recipe: 100 epochs, temperature annealed over the first 10, evaluated per iteration
    n = 50
    for epoch, it in [(0, 0), (0, 17), (3, 25), (9, 49), (10, 0), (40, 3)]:
        m.set_progress((epoch * n + it) / (100 * n))
        assert float(m.T) == pytest.approx(_official_get_temperature(it, epoch, n), rel=1e-6)


def test_temperature_divides_all_four_logits(rng):
    """At T = 30 the sigmoid attentions sit near 1/2 and the kernel attention near 1/K; at T = 1 they spread."""
    m = _randomise(ODConv2d(32, 32, 3, kernel_num=4), rng)
    x = torch.randn(8, 32, 6, 6, generator=rng)
    hot = m.attention(x)
    m.set_progress(1.0)
    cold = m.attention(x)
    ref = _official_attentions(m, x)
    for a, r in zip(cold, ref):
        torch.testing.assert_close(a, r.reshape(a.shape))
    for h, c, centre in zip(hot, cold, (0.5, 0.5, 0.5, 0.25)):
        assert (h - centre).abs().amax() < (c - centre).abs().amax() / 5
    # and the ratio of logits is exactly T: logit(a_c) at T = 30 is logit(a_c) at T = 1 divided by 30
    torch.testing.assert_close(torch.logit(hot[0].double()), torch.logit(cold[0].double()) / 30, rtol=1e-4, atol=1e-6)


def test_trainer_progress_reaches_the_temperature():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    pl.swap_convs(model, "odconv")
    pl.set_progress(model, 0.05)  # what the trainer calls before every step
    assert [float(m.T) for m in model.modules() if isinstance(m, ODConv2d)] == [15.5, 15.5]


def test_training_on_a_batch_of_one_raises_unless_the_norm_is_dropped():
    m = ODConv2d(8, 8).train()
    with pytest.raises(ValueError, match="batch of 1"):
        m(torch.randn(1, 8, 5, 5))
    assert m.eval()(torch.randn(1, 8, 5, 5)).shape == (1, 8, 5, 5)
    assert ODConv2d(8, 8, norm_layer=None).train()(torch.randn(1, 8, 5, 5)).shape == (1, 8, 5, 5)


def test_shapes_for_grouped_and_depthwise_with_one_kernel():
    check_conv_shapes(lambda *a, **kw: ODConv2d(*a, groups=4, **kw), c_in=16, c_out=32)
    check_conv_shapes(lambda *a, **kw: ODConv2d(*a, groups=16, kernel_num=1, **kw), c_in=16, c_out=16)


def test_kernels_start_like_the_backbone_convs():
    """Each of the K kernels is Kaiming-normal with fan-out O k^2 (std sqrt(2 / (O k^2))), as the official code."""
    torch.manual_seed(0)
    m = ODConv2d(128, 128, 3, kernel_num=4)
    for k in range(4):
        assert m.kernels[k].std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.03)
    assert all(float(fc.bias.detach().abs().max()) == 0 for fc in (m.channel_fc, m.filter_fc, m.spatial_fc, m.kernel_fc))


@pytest.mark.parametrize("kw,match", [(dict(kernel_num=0), "kernel_num"), (dict(kernel_num=2.0), "kernel_num"),
                                      (dict(reduction=0.0), "reduction"), (dict(reduction=1.5), "reduction"),
                                      (dict(min_channels=0), "min_channels"), (dict(temperature=0.5), "temperature"),
                                      (dict(anneal=1.5), "anneal"), (dict(norm_layer=nn.BatchNorm1d), "norm_layer"),
                                      (dict(weight_init="xavier"), "weight_init"), (dict(groups=3), "groups")])
def test_bad_hyperparameters_raise_naming_the_parameter(kw, match):
    with pytest.raises(ValueError, match=match):
        ODConv2d(12, 16, **kw)


def test_progress_outside_zero_one_raises():
    with pytest.raises(ValueError, match="p="):
        ODConv2d(8, 8).set_progress(1.2)


def test_a_model_holding_it_converts_to_channels_last():
    """The trainer calls model.to(memory_format=torch.channels_last): every parameter must be at most 4-D."""
    model = nn.Sequential(ODConv2d(8, 8, kernel_num=4), nn.BatchNorm2d(8))
    model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    assert model.train()(x).shape == (2, 8, 6, 6)
    assert model[0].kernels.shape == (4, 8, 8, 3, 3)


def test_extra_repr_shows_kernels_and_schedule():
    r = repr(ODConv2d(16, 32, kernel_num=4))
    assert "kernel_num=4" in r and "attention_channels=16" in r and "temperature=30->1" in r
