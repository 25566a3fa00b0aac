"""DCD: the decomposed computation equals the dense dynamic kernel, samples are independent, the official equations."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plugconv_lite.conv.dcd import DCDConv2d, hsigmoid2


def _randomized(m: DCDConv2d, seed: int = 0) -> DCDConv2d:
    """Generic values everywhere: BatchNorm affines and running statistics off their (1, 0) initial values, and a
    dynamic branch whose gates are neither saturated nor constant."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(1.5 * torch.randn(p.shape, generator=g, dtype=p.dtype) / p[0].numel() ** 0.5)
        for bn in (m.bn1, m.bn2):
            if bn is not None:
                bn.running_mean.copy_(0.3 * torch.randn(bn.running_mean.shape, generator=g, dtype=p.dtype))
                bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g, dtype=p.dtype))
    return m


GEOMETRIES = [  # C, O, k, stride, padding, dilation, bias, H, W
    (16, 32, 3, 1, None, 1, False, 9, 7),
    (16, 24, 3, 2, None, 1, True, 9, 8),
    (8, 8, 5, 1, None, 2, False, 11, 10),
    (8, 12, 3, 2, 0, 1, False, 9, 9),        # padding below "same": the 1x1 path crops
    (8, 12, 3, 1, 2, 1, True, 6, 7),         # padding above "same": the 1x1 path pads
    (8, 8, 2, 1, None, 1, False, 7, 6),      # even kernel: the centre tap is (1, 1)
    (12, 16, 1, 2, None, 1, False, 7, 7),
]


@pytest.mark.parametrize("C,O,k,stride,padding,dilation,bias,H,W", GEOMETRIES)
@pytest.mark.parametrize("pool_size", [1, 2])
def test_decomposed_forward_equals_the_dense_dynamic_kernel(C, O, k, stride, padding, dilation, bias, H, W,
                                                            pool_size):
    """forward (Lambda W0 x + the 1x1 path C -> L -> L -> O) == conv2d with the explicitly built W(x), float64."""
    torch.manual_seed(0)
    m = _randomized(DCDConv2d(C, O, k, stride, padding, dilation, bias=bias, pool_size=pool_size).double()).eval()
    x = torch.randn(3, C, H, W, dtype=torch.float64)
    Wx, bx = m.dense_kernel(x)
    assert Wx.shape == (3, O, C, k, k) and bx.shape == (3, O)
    y = m(x)
    assert y.shape == nn.Conv2d(C, O, k, stride, m.padding, dilation)(x.float()).shape
    for i in range(3):  # each sample through its own dense kernel, one plain conv at a time
        ref = F.conv2d(x[i:i + 1], Wx[i], bx[i], stride, m.padding, dilation)
        torch.testing.assert_close(y[i:i + 1], ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.forward_dense(x), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("training", [False, True])
def test_without_norm_and_identity_the_kernel_is_the_papers_lambda_w0_plus_p_phi_qt(training):
    """norm=False, identity=False: W(x) = Lambda(x) W0 + P Phi(x) Q^T (at the centre tap), built here from the
    attention outputs alone; in training mode too (no batch statistics)."""
    torch.manual_seed(0)
    m = _randomized(DCDConv2d(16, 24, 3, norm=False, identity=False).double()).train(training)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    Lam, Phi = m.attention(x)
    P, Qt = m.P[:, :, 0, 0], m.Q[:, :, 0, 0]
    expected = Lam[:, :, None, None, None] * m.W0.expand(2, *m.W0.shape)
    expected = expected.clone()
    expected[:, :, :, 1, 1] += P @ Phi @ Qt
    Wx, bx = m.dense_kernel(x)
    torch.testing.assert_close(Wx, expected, rtol=1e-12, atol=1e-12)
    assert bx.abs().max() == 0
    torch.testing.assert_close(m(x), m.forward_dense(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("norm", [True, False])
def test_each_samples_output_equals_its_output_alone(norm):
    torch.manual_seed(0)
    m = _randomized(DCDConv2d(16, 32, 3, stride=2, norm=norm).double())
    m.train(not norm)  # the BatchNorms couple the samples in training mode only (as the official code's)
    x = torch.randn(5, 16, 9, 9, dtype=torch.float64)
    y = m(x)
    for i in range(5):
        torch.testing.assert_close(y[i:i + 1], m(x[i:i + 1]), rtol=1e-12, atol=1e-12)


def test_training_mode_batchnorm_couples_the_samples_and_dense_kernel_says_so():
    torch.manual_seed(0)
    m = _randomized(DCDConv2d(8, 8, 3).double()).train()
    x = torch.randn(3, 8, 6, 6, dtype=torch.float64)
    assert not torch.allclose(m(x)[:1], m(x[:1]))
    with pytest.raises(ValueError, match="eval"):
        m.dense_kernel(x)


def _official_equations(m: DCDConv2d, x: torch.Tensor) -> torch.Tensor:
    """The official conv_basic_dy / conv_dy forward (liyunsheng13/dcd, models/imagenet/resnet_dcd.py), written from
    its equations with this module's tensors: Lambda * conv(x, W0) + P(BN2(Phi BN1(Q x)) + BN1(Q x))."""
    B, C = x.shape[:2]
    y = F.adaptive_avg_pool2d(x, m.pool_size).reshape(B, C * m.pool_size ** 2)
    y = y @ m.fc.weight.T
    y = y * (F.relu6(y @ m.se.weight.T + 3) / 3)
    phi = (y @ m.fc_phi.weight.T).reshape(B, m.latent, m.latent)
    scale = F.relu6(y @ m.fc_scale.weight.T + 3) / 3
    r = F.conv2d(x, m.W0, None, m.stride, 1) * scale[:, :, None, None]
    out = m.bn1(F.conv2d(x, m.Q, None, m.stride))
    h, w = out.shape[-2:]
    out = out.reshape(B, m.latent, h * w)
    out = m.bn2(torch.matmul(phi, out)) + out
    return F.conv2d(out.reshape(B, m.latent, h, w), m.P) + r


@pytest.mark.parametrize("pool_size,stride,training", [(2, 1, True), (2, 2, False), (1, 2, True), (1, 1, False)])
def test_matches_the_official_equations(pool_size, stride, training):
    torch.manual_seed(0)
    m = _randomized(DCDConv2d(16, 32, 3, stride, pool_size=pool_size).double()).train(training)
    x = torch.randn(4, 16, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_equations(m, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("C,pool_size,L,S", [(64, 2, 16, 16), (128, 2, 22, 32), (256, 2, 32, 64), (512, 2, 45, 128),
                                             (64, 1, 8, 4), (3, 2, 3, 4)])
def test_latent_and_squeeze_widths_follow_the_official_rule(C, pool_size, L, S):
    """L = floor(sqrt(p^2 C)), S = max(max(p^2 C, L^2) // 16, 4) (official conv_basic_dy)."""
    m = DCDConv2d(C, C, 3, pool_size=pool_size)
    assert (m.latent, m.squeeze) == (L, S)
    assert m.Q.shape == (L, C, 1, 1) and m.P.shape == (C, L, 1, 1) and m.fc_phi.out_features == L * L


def test_scale_gate_is_one_at_zero_and_bounded_by_two():
    z = torch.linspace(-6, 6, 101)
    g = hsigmoid2(z)
    assert hsigmoid2(torch.zeros(1)).item() == 1.0
    assert g.min() == 0 and g.max() == 2


def test_load_conv_weights_computes_the_plain_conv_exactly():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, 2, 1, bias=True).double()
    m = _randomized(DCDConv2d(8, 12, 3, 2, bias=True).double()).eval().load_conv_weights(conv.weight, conv.bias)
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), conv(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad,match", [(dict(groups=2), "groups"), (dict(latent=0), "latent"),
                                       (dict(pool_size=0), "pool_size"), (dict(reduction=0), "reduction"),
                                       (dict(min_squeeze=0), "min_squeeze"), (dict(norm="yes"), "norm"),
                                       (dict(identity=1), "identity"), (dict(weight_init="xavier"), "weight_init"),
                                       (dict(latent=2.5), "latent")])
def test_bad_hyperparameters_raise_naming_the_parameter(bad, match):
    with pytest.raises(ValueError, match=match):
        DCDConv2d(16, 16, 3, **bad)
