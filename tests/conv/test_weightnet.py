"""WeightNet: the grouped FC generates each sample's kernel; special cases SE-style (M = G = 1) and CondConv
(M = K, G = 1, tied rows); the official layout (a grouped 1x1 conv) written out independently."""
import pytest
import torch
import torch.nn.functional as F

from contract import check_compile_and_export, check_conv_shapes, check_gradients
from plugconv_lite.conv import WeightNet2d
from plugconv_lite.measure import count_flops, count_params

D = torch.float64


def _randomise(m: WeightNet2d, g: torch.Generator, std: float = 0.3) -> WeightNet2d:
    """A trained-looking WeightNet: activations spread over (0, 1), generator weights random."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return m


def _explicit_kernel(m: WeightNet2d, x: torch.Tensor) -> torch.Tensor:
    """The paper's generator written as loops: sample b, filter o, slice s = group G o + s of the grouped FC."""
    B, O, M, G, n = x.shape[0], m.out_channels, m.M, m.G, m.filter_size
    per = M // G
    Wr, br, W1, b1 = m.reduce.weight, m.reduce.bias, m.fc1.weight, m.fc1.bias
    W2 = m.W_2.detach()
    K = torch.zeros(B, O, n, dtype=x.dtype)
    for b in range(B):
        z = Wr @ x[b].mean(dim=(1, 2)) + br
        a = torch.sigmoid(W1 @ z + b1)
        for o in range(O):
            for s in range(G):
                j = G * o + s                            # group j reads a[j M/G : (j+1) M/G]
                rows = slice(j * (n // G), (j + 1) * (n // G))  # and writes rows j n/G ... of the (O n) output
                K[b, o, s * (n // G):(s + 1) * (n // G)] = W2[rows] @ a[j * per:(j + 1) * per]
    return K.reshape(B, O, m.in_channels // m.groups, *m.kernel_size).detach()


@pytest.mark.parametrize("C,O,k,groups,M,G", [(8, 12, 3, 1, 2, 2), (8, 8, 3, 2, 4, 2), (6, 4, 1, 1, 3, 1),
                                               (4, 6, 5, 1, 4, 4), (8, 8, 3, 8, 1, 1)])
def test_grouped_fc_generates_each_samples_kernel_as_the_explicit_construction(rng, C, O, k, groups, M, G):
    m = _randomise(WeightNet2d(C, O, k, groups=groups, M=M, G=G, min_channels=4, dtype=D), rng)
    x = torch.randn(3, C, 7, 6, generator=rng, dtype=D)
    K = _explicit_kernel(m, x)
    torch.testing.assert_close(m.kernel(x), K, rtol=0, atol=1e-12)
    y = torch.cat([F.conv2d(x[b:b + 1], K[b], None, 1, k // 2, 1, groups) for b in range(3)])
    torch.testing.assert_close(m(x), y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride,groups,dilation,channels_last,bias", [(1, 1, 1, False, False), (2, 1, 1, True, True),
                                                                       (1, 2, 2, False, True), (2, 4, 1, True, False)])
def test_every_samples_output_equals_its_output_alone(rng, stride, groups, dilation, channels_last, bias):
    m = _randomise(WeightNet2d(8, 8, 3, stride, dilation=dilation, groups=groups, bias=bias, dtype=D), rng)
    x = torch.randn(5, 8, 9, 7, generator=rng, dtype=D)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = m(x)
    for b in range(5):  # batch 1 takes the plain-conv path
        torch.testing.assert_close(y[b:b + 1], m(x[b:b + 1]), rtol=0, atol=1e-12)


def _official_equations(m: WeightNet2d, x: torch.Tensor) -> torch.Tensor:
    """The official layer's computation (megvii-model/WeightNet weightnet.py, with the block's reduce conv):
    1x1 convs on the pooled (B, C, 1, 1) map, the second with G*O groups and O*C*k*k outputs, the kernel reshaped
    (O, C, k, k) per sample and applied as one conv with groups = B."""
    B, C, H, W = x.shape
    O, k = m.out_channels, m.kernel_size[0]
    x_gap = m.reduce(x.mean(dim=(2, 3))).reshape(B, -1, 1, 1)
    x_w = torch.sigmoid(F.conv2d(x_gap, m.fc1.weight[:, :, None, None], m.fc1.bias))
    fc2 = m.W_2.reshape(m.G * O, m.filter_size // m.G, m.M // m.G, 1, 1).reshape(O * C * k * k, m.M // m.G, 1, 1)
    x_w = F.conv2d(x_w, fc2, groups=m.G * O)
    y = F.conv2d(x.reshape(1, B * C, H, W), x_w.reshape(B * O, C, k, k), stride=m.stride, padding=k // 2, groups=B)
    return y.reshape(B, O, *y.shape[-2:])


@pytest.mark.parametrize("C,O,k,stride,M,G", [(64, 64, 3, 1, 2, 2), (32, 48, 3, 2, 4, 2), (24, 16, 1, 1, 2, 2)])
def test_equals_the_official_equations(rng, C, O, k, stride, M, G):
    m = _randomise(WeightNet2d(C, O, k, stride, M=M, G=G, dtype=D), rng)
    x = torch.randn(3, C, 10, 9, generator=rng, dtype=D)
    torch.testing.assert_close(m(x), _official_equations(m, x), rtol=0, atol=1e-10)


def test_M1_G1_is_an_output_channel_gate_and_SE_without_its_relu(rng):
    """M = G = 1: y = a * conv(x, W_2). An SE-style gate sigma(W_b delta(W_a GAP(x))) computed from the conv's input
    maps onto it exactly when delta is the identity (W_r = W_a, W_1 = W_b); with SE's ReLU it does not."""
    C, O, r = 32, 16, 8
    m = _randomise(WeightNet2d(C, O, 3, M=1, G=1, reduction=r, min_channels=1, dtype=D), rng)
    x = torch.randn(4, C, 8, 8, generator=rng, dtype=D)
    W = m.W_2.reshape(O, C, 3, 3)
    a = torch.sigmoid(m.fc1(m.reduce(x.mean(dim=(2, 3)))))
    torch.testing.assert_close(m(x), a[:, :, None, None] * F.conv2d(x, W, padding=1), rtol=0, atol=1e-12)
    W_a, b_a = torch.randn(C // r, C, generator=rng, dtype=D), torch.randn(C // r, generator=rng, dtype=D)
    W_b, b_b = torch.randn(O, C // r, generator=rng, dtype=D), torch.randn(O, generator=rng, dtype=D)
    with torch.no_grad():
        m.reduce.weight.copy_(W_a), m.reduce.bias.copy_(b_a), m.fc1.weight.copy_(W_b), m.fc1.bias.copy_(b_b)
    z = x.mean(dim=(2, 3)) @ W_a.T + b_a
    for delta, exact in [(lambda t: t, True), (torch.relu, False)]:
        se = torch.sigmoid(delta(z) @ W_b.T + b_b)[:, :, None, None] * F.conv2d(x, W, padding=1)
        assert torch.allclose(m(x), se, rtol=0, atol=1e-12) == exact


@pytest.mark.parametrize("K", [1, 3, 4])
def test_condconv_is_M_equals_K_G_1_with_tied_rows(rng, K):
    """CondConv: W(x) = sum_k sigmoid(R GAP(x) + c)_k W_k. Put R in W_r's first K rows, let activation m of every
    filter read routing unit m (W_1 = tiled identity, b_1 = 0) and column m of W_2 hold expert m: exact."""
    C, O, k = 16, 8, 3
    m = WeightNet2d(C, O, k, M=K, G=1, min_channels=4, dtype=D)
    R, c = torch.randn(K, C, generator=rng, dtype=D), torch.randn(K, generator=rng, dtype=D)
    experts = torch.randn(K, O, C, k, k, generator=rng, dtype=D)
    with torch.no_grad():
        m.reduce.weight.zero_(), m.reduce.bias.zero_()
        m.reduce.weight[:K], m.reduce.bias[:K] = R, c
        m.fc1.weight.copy_(torch.eye(K, m.gap_channels, dtype=D).repeat(O, 1)), m.fc1.bias.zero_()
        m.W_2.copy_(experts.permute(1, 2, 3, 4, 0).reshape(O * C * k * k, K))
    x = torch.randn(3, C, 6, 7, generator=rng, dtype=D)
    alpha = torch.sigmoid(x.mean(dim=(2, 3)) @ R.T + c)                        # (B, K)
    kernels = torch.einsum("bk,koihw->boihw", alpha, experts)
    y = torch.cat([F.conv2d(x[b:b + 1], kernels[b], padding=1) for b in range(3)])
    torch.testing.assert_close(m(x), y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("C,O,k,groups,M,G,bias", [(64, 64, 3, 1, 2, 2, False), (64, 128, 3, 1, 4, 1, True),
                                                    (32, 32, 3, 32, 1, 1, False), (256, 64, 1, 1, 2, 2, False)])
def test_parameter_count_formula(C, O, k, groups, M, G, bias):
    m = WeightNet2d(C, O, k, groups=groups, M=M, G=G, bias=bias)
    C_gap, n = max(16, C // 16), C // groups * k * k
    expected = (C * C_gap + C_gap) + (C_gap * M * O + M * O) + M * O * n // G + (O if bias else 0)
    assert count_params(m) == expected


@pytest.mark.parametrize("M,G,stride", [(2, 2, 1), (1, 1, 1), (4, 2, 2), (8, 1, 1)])
def test_flop_count_includes_the_generator_for_every_M_over_G(M, G, stride):
    """2 x MACs of the two FCs, the grouped FC (M O n / G per sample, also when M/G = 1) and the convolution."""
    B, C, O, H = 3, 32, 16, 8
    m = WeightNet2d(C, O, 3, stride, M=M, G=G)
    C_gap, n, Hp = 16, C * 9, (H - 1) // stride + 1
    expected = 2 * B * (C * C_gap + C_gap * M * O + M * O * n // G + O * n * Hp * Hp)
    assert count_flops(m, (B, C, H, H)) == expected


@pytest.mark.parametrize("weight_init,M,G", [("default", 2, 2), ("fan_out", 2, 2), ("fan_out", 8, 2),
                                             ("default", 1, 1)])
def test_generated_kernel_starts_at_the_plain_conv_scale(weight_init, M, G):
    """The kernel of a fresh module has the standard deviation the init rule gives a plain conv (+-15%)."""
    torch.manual_seed(0)
    C = O = 64
    m = WeightNet2d(C, O, 3, M=M, G=G, weight_init=weight_init)
    std = m.kernel(torch.randn(8, C, 8, 8)).std().item()
    plain = (1 / (3 * C * 9)) ** 0.5 if weight_init == "default" else (2 / (O * 9)) ** 0.5
    assert std == pytest.approx(plain, rel=0.15)


def test_shapes_odd_sizes_stride_2_and_grouped():
    check_conv_shapes(WeightNet2d, c_in=16, c_out=32)
    check_conv_shapes(lambda *a, **kw: WeightNet2d(*a, groups=4, M=4, G=2, **kw), c_in=16, c_out=32)
    check_conv_shapes(lambda *a, **kw: WeightNet2d(*a, M=1, G=1, **kw), c_in=16, c_out=32, k=5)


def test_gradients_reach_every_generator_weight_and_compile(rng):
    m = _randomise(WeightNet2d(8, 8, 3, bias=True), rng, std=0.2)
    check_gradients(m, torch.randn(2, 8, 6, 6, generator=rng))
    check_compile_and_export(m, torch.randn(2, 8, 6, 6, generator=rng))


@pytest.mark.parametrize("kwargs,name", [
    (dict(M=0), "M"), (dict(M=2.0), "M"), (dict(G=0), "G"),
    (dict(M=2, G=4), "G=4 must divide M=2"),
    (dict(in_channels=3, kernel_size=1, M=2, G=2), "G=2 must divide the weights of one filter"),
    (dict(reduction=0), "reduction"), (dict(min_channels=0), "min_channels"),
    (dict(weight_init="xavier"), "weight_init")])
def test_bad_hyperparameters_raise_naming_the_parameter(kwargs, name):
    args = dict(in_channels=16, out_channels=16, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        WeightNet2d(**args)


def test_extra_repr_names_the_knobs():
    r = repr(WeightNet2d(64, 32, 3, M=4, G=2))
    assert "M=4, G=2, gap_channels=16" in r


def test_the_librarys_condconv_loads_into_M_equals_K_G_1(rng):
    """CondConv2d (condconv) transplanted: route -> W_r's first K rows, tied W_1, experts -> W_2's columns."""
    from plugconv_lite.conv import CondConv2d
    C, O, K = 16, 8, 4
    cc = _randomise(CondConv2d(C, O, 3, 2, num_experts=K, dtype=D), rng)
    m = WeightNet2d(C, O, 3, 2, M=K, G=1, dtype=D)
    with torch.no_grad():
        m.reduce.weight.zero_(), m.reduce.bias.zero_()
        m.reduce.weight[:K], m.reduce.bias[:K] = cc.route.weight, cc.route.bias
        m.fc1.weight.copy_(torch.eye(K, m.gap_channels, dtype=D).repeat(O, 1)), m.fc1.bias.zero_()
        m.W_2.copy_(cc.weight.T)  # experts stored (K, O n): W_2 is their transpose
    x = torch.randn(3, C, 9, 7, generator=rng, dtype=D)
    torch.testing.assert_close(m(x), cc(x), rtol=0, atol=1e-12)
