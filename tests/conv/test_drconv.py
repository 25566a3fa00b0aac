"""DRConv: each output pixel is its region's generated kernel applied there; the guide learns through the argmax."""
import pytest
import torch
import torch.nn.functional as F

from plugconv_lite.conv import DRConv2d, region_mask


def _module(C=6, O=4, k=3, stride=1, groups=1, regions=3, num_bases=2, seed=0, **kw):
    torch.manual_seed(seed)
    m = DRConv2d(C, O, k, stride=stride, groups=groups, regions=regions, num_bases=num_bases, **kw).double()
    with torch.no_grad():  # routing weights large enough that the regions' kernels differ clearly
        m.generator.weight.normal_(0, 1.0)
        m.generator.bias.normal_(0, 1.0)
        if m.bias is not None:
            m.bias.normal_()
    return m


def _official_kernels(m, x):
    """The official DRConv.forward's kernel generation, written from its equations: weight (O*C*k*k, num_W),
    x_se = 2 sigmoid(routing_fc(GAP x)) / num_W, W = x_se.reshape(-1, num_W) @ weight^T -> (B, m, O, C/g, k, k)."""
    B = x.shape[0]
    weight = m.basis.reshape(m.num_bases, -1).T                       # the official layout (O*C/g*k*k, num_W)
    x_se = 2.0 * torch.sigmoid(F.linear(x.mean(dim=(2, 3)), m.generator.weight, m.generator.bias)) / m.num_bases
    W = F.linear(x_se.reshape(-1, m.num_bases), weight)
    return W.reshape(B, m.regions, m.out_channels, *m.basis.shape[1:])


def _dense(w, groups):
    """A grouped kernel (O, C/g, k, k) as the dense (O, C, k, k) kernel with zeros outside each group."""
    O, Cg = w.shape[:2]
    dense = w.new_zeros(O, Cg * groups, *w.shape[2:])
    for o in range(O):
        i = o // (O // groups)
        dense[o, i * Cg:(i + 1) * Cg] = w[o]
    return dense


def _reference(m, x):
    """Pixel by pixel: y[b, :, p] = W[b, M[b, p]] @ unfold(x)[b, :, p] + bias, M = argmax of the guide conv."""
    B, C, H, W = x.shape
    kernels = _official_kernels(m, x)
    mask = F.conv2d(x, m.guide.weight, None, m.stride, m.padding, m.dilation).argmax(dim=1)
    U = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)           # (B, C k k, L)
    Ho, Wo = mask.shape[-2:]
    y = x.new_zeros(B, m.out_channels, Ho * Wo)
    for b in range(B):
        for p in range(Ho * Wo):
            j = mask[b].reshape(-1)[p]
            y[b, :, p] = _dense(kernels[b, j], m.groups).reshape(m.out_channels, -1) @ U[b, :, p]
    if m.bias is not None:
        y = y + m.bias.reshape(1, -1, 1)
    return y.reshape(B, m.out_channels, Ho, Wo), mask


@pytest.mark.parametrize("stride,groups,size,bias", [(1, 1, (7, 6), False), (2, 1, (9, 7), True),
                                                     (1, 2, (5, 5), True), (2, 2, (6, 9), False)])
def test_each_pixel_is_its_region_kernel_applied_there(stride, groups, size, bias):
    m = _module(stride=stride, groups=groups, bias=bias)
    x = torch.randn(3, 6, *size, dtype=torch.float64)
    expected, mask = _reference(m, x)
    assert mask.unique().numel() > 1  # several regions really are used
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(m.region_map(x), mask)


def test_regions_kernels_are_the_official_basis_mixture():
    m = _module(regions=4, num_bases=3)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(m.region_kernels(x), _official_kernels(m, x), rtol=1e-13, atol=1e-13)


def test_every_sample_equals_its_output_alone():
    m = _module(groups=2)
    x = torch.randn(4, 6, 7, 5, dtype=torch.float64)
    alone = torch.cat([m(x[b:b + 1]) for b in range(4)])
    torch.testing.assert_close(m(x), alone, rtol=1e-12, atol=1e-12)


def test_guide_gets_the_softmax_straight_through_gradient():
    """dL/dA[b, j, p] = <dL/dY[b, :, p], W_j X_p> with A = softmax(guide(x)) (the paper's backward, the official op's
    grad_Alpha), and the region kernels get the gradient of the hard mask only (the official default)."""
    m = _module()
    x = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    G = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    m(x).backward(G)
    assert m.guide.weight.grad.abs().sum() > 0

    kernels = _official_kernels(m, x)
    Yj = torch.stack([torch.stack([F.conv2d(x[b:b + 1], kernels[b, j], padding=1)[0] for j in range(3)])
                      for b in range(2)])                                      # (B, m, O, H, W)
    grad_A = torch.einsum("bohw,bjohw->bjhw", G, Yj).detach()
    # the guide's weights get dL/dA back through the softmax and the guide conv
    w = m.guide.weight.detach().clone().requires_grad_(True)
    A = F.conv2d(x, w, None, m.stride, m.padding).softmax(dim=1)
    (A * grad_A).sum().backward()
    torch.testing.assert_close(m.guide.weight.grad, w.grad, rtol=1e-10, atol=1e-12)

    hard = m.region_map(x)
    basis = m.basis.detach().clone().requires_grad_(True)
    onehot = F.one_hot(hard, 3).permute(0, 3, 1, 2).double()
    a = 2 * torch.sigmoid(m.generator(x.mean(dim=(2, 3)))).detach() / m.num_bases
    K = torch.einsum("bjs,s...->bj...", a.reshape(2, 3, 2), basis.reshape(2, 4, 6, 3, 3))
    Y = torch.stack([torch.stack([F.conv2d(x[b:b + 1], K[b, j], padding=1)[0] for j in range(3)]) for b in range(2)])
    ((Y * onehot.unsqueeze(2)).sum(1) * G).sum().backward()
    torch.testing.assert_close(m.basis.grad, basis.grad, rtol=1e-10, atol=1e-12)


def test_region_mask_is_exactly_one_hot_forward():
    Fg = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    M = region_mask(Fg)
    assert torch.equal(M, F.one_hot(Fg.argmax(1), 5).permute(0, 3, 1, 2).double())


def test_load_conv_weights_computes_the_plain_conv_whatever_the_mask():
    m = _module(groups=2, bias=True, num_bases=4)
    w, b = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    m.load_conv_weights(w, b)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    assert m.region_map(x).unique().numel() > 1
    torch.testing.assert_close(m(x), F.conv2d(x, w, b, padding=1, groups=2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [dict(regions=0), dict(regions=2.5), dict(num_bases=0), dict(num_bases="4")])
def test_bad_hyperparameters_raise_naming_them(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DRConv2d(8, 8, 3, **bad)


def test_a_network_with_drconv_converts_to_channels_last():
    """The trainer converts the model with .to(memory_format=torch.channels_last), which refuses 5-D parameters."""
    model = torch.nn.Sequential(DRConv2d(4, 8, 3), torch.nn.BatchNorm2d(8)).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 6, 6).to(memory_format=torch.channels_last)
    assert model(x).shape == (2, 8, 6, 6)
