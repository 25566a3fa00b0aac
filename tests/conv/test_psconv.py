import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.conv import MaskedPSConv2d, PSConv2d
from plugconv_lite.measure import count_flops, count_params


def official_masks(c_out, c_in, parts, d):
    """{dilation: (O, C) bool mask} by the official rule: output part j reads input part j with dilation d, input
    part (j + P/2) % P with dilation 2d, every other input part with dilation 1 (written out with explicit loops)."""
    co, ci = c_out // parts, c_in // parts
    masks = {}
    for j in range(parts):
        for i in range(parts):
            rate = d if i == j else (2 * d if i == (j + parts // 2) % parts else 1)
            m = masks.setdefault(rate, torch.zeros(c_out, c_in, dtype=torch.bool))
            m[j * co:(j + 1) * co, i * ci:(i + 1) * ci] = True
    return masks


def reference(x, W, parts, d, stride=1, dilation=1):
    """Sum over dilation rates of a dense conv whose weight is W masked to that rate's blocks (same padding).
    When d = 1 the diagonal and background blocks share a rate; the masks then cover disjoint blocks of one conv."""
    k = W.shape[-1]
    y = 0
    for rate, mask in official_masks(W.shape[0], W.shape[1], parts, d).items():
        dl = rate * dilation
        y = y + F.conv2d(x, W * mask[:, :, None, None], stride=stride, padding=dl * (k - 1) // 2, dilation=dl)
    return y


CASES = [  # (c_in, c_out, parts, d, k, stride, dilation, (h, w))
    (8, 8, 2, 1, 3, 1, 1, (7, 5)), (8, 12, 2, 2, 3, 2, 1, (9, 11)), (16, 16, 4, 2, 3, 1, 1, (7, 7)),
    (16, 32, 4, 2, 3, 2, 1, (17, 9)), (16, 8, 4, 1, 5, 1, 1, (5, 13)), (24, 16, 4, 3, 3, 2, 1, (11, 11)),
    (16, 16, 8, 2, 3, 1, 1, (9, 7)), (32, 16, 8, 1, 3, 2, 1, (13, 5)), (12, 24, 6, 2, 3, 1, 2, (15, 9)),
    (16, 16, 4, 2, 3, 1, 1, (1, 1)), (16, 16, 4, 2, 3, 2, 1, (2, 3)),
]


@pytest.mark.parametrize("c_in,c_out,parts,d,k,stride,dilation,size", CASES)
def test_equals_the_masked_dense_reference(c_in, c_out, parts, d, k, stride, dilation, size, rng):
    """Random dense weights mapped into the module (load_dense_weight) give the reference's output, and the
    module's own random weights mapped out (dense_weight) do too."""
    m = PSConv2d(c_in, c_out, k, stride, dilation=dilation, parts=parts, d=d)
    x = torch.randn(2, c_in, *size, generator=rng)
    W = torch.randn(c_out, c_in, k, k, generator=rng)
    torch.testing.assert_close(m.load_dense_weight(W)(x), reference(x, W, parts, d, stride, dilation),
                               atol=1e-4, rtol=1e-4)
    m.reset_parameters()
    torch.testing.assert_close(m(x), reference(x, m.dense_weight(), parts, d, stride, dilation), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("parts", [2, 4, 8])
def test_dense_weight_round_trip_is_exact(parts, rng):
    m = PSConv2d(16, 24, 3, parts=parts)
    W = torch.randn(24, 16, 3, 3, generator=rng)
    assert torch.equal(m.load_dense_weight(W).dense_weight(), W)


def test_bias_is_added_once(rng):
    m = PSConv2d(8, 8, 3, bias=True, parts=4)
    nn.init.normal_(m.bias, generator=rng)
    x = torch.randn(1, 8, 5, 5, generator=rng)
    torch.testing.assert_close(m(x), reference(x, m.dense_weight(), 4, 2) + m.bias[:, None, None])


@pytest.mark.parametrize("c_in,c_out,parts,k,stride,size", [(16, 32, 4, 3, 1, 9), (16, 32, 4, 3, 2, 9),
                                                            (64, 64, 4, 3, 1, 32), (32, 16, 8, 5, 2, 11),
                                                            (8, 8, 2, 3, 1, 7)])
def test_arithmetic_and_parameters_equal_the_plain_conv(c_in, c_out, parts, k, stride, size):
    m = PSConv2d(c_in, c_out, k, stride, parts=parts)
    plain = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
    assert count_params(m) == count_params(plain)
    assert count_flops(m, (1, c_in, size, size)) == count_flops(plain, (1, c_in, size, size))
    masked = m.masked()
    assert count_flops(masked, (1, c_in, size, size)) * parts == count_flops(plain, (1, c_in, size, size)) * (parts + 2)


@pytest.mark.parametrize("parts,d", [(2, 2), (4, 2), (8, 1)])
def test_masked_official_formulation_matches_and_keeps_its_zeros(parts, d, rng):
    m = PSConv2d(16, 16, 3, parts=parts, d=d)
    masked = m.masked()
    x = torch.randn(2, 16, 8, 8, generator=rng)
    torch.testing.assert_close(masked(x), m(x), atol=1e-5, rtol=1e-4)
    opt = torch.optim.SGD(masked.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        opt.zero_grad()
        masked(x).square().mean().backward()
        opt.step()
    assert masked.conv.weight[masked.mask].abs().max() == 0


def test_dilation_map_is_the_official_cycle():
    expected = torch.tensor([[2, 1, 4, 1],
                             [1, 2, 1, 4],
                             [4, 1, 2, 1],
                             [1, 4, 1, 2]])
    assert torch.equal(PSConv2d(16, 16, parts=4, d=2).dilation_map(), expected)
    assert torch.equal(PSConv2d(4, 4, parts=2, d=3).dilation_map(), torch.tensor([[3, 6], [6, 3]]))


def test_gradients_reach_every_block(rng):
    m = PSConv2d(16, 16, 3, parts=8)
    x = torch.randn(2, 16, 6, 6, generator=rng)
    m(x).square().mean().backward()
    for w in (m.weight_d, m.weight_2d, m.weight_1):
        assert (w.grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("parts", [2, 8])
def test_compile_and_export_for_other_part_counts(parts, rng):
    from contract import check_compile_and_export
    check_compile_and_export(PSConv2d(16, 16, 3, parts=parts), torch.randn(1, 16, 7, 7, generator=rng))


def test_plugs_into_resnet18_at_both_widths():
    for width in (16, 64):
        model = pl.resnet18(width=width, conv="psconv")
        n = sum(isinstance(m, PSConv2d) for m in model.modules())
        assert n == 16
        assert count_params(model) == count_params(pl.resnet18(width=width))


@pytest.mark.parametrize("kw,match", [
    (dict(parts=3), r"parts=3 must be even"),
    (dict(parts=0), r"parts=0 must be >= 2"),
    (dict(parts=32), r"parts=32 must divide in_channels=16"),
    (dict(in_channels=12, parts=8), r"parts=8 must divide in_channels=12"),
    (dict(out_channels=20, parts=8), r"parts=8 must divide out_channels=20"),
    (dict(d=0), r"d=0 must be >= 1"),
    (dict(d=1.5), r"d=1.5 must be an integer"),
    (dict(groups=2), r"groups=2: PSConv2d supports groups=1 only"),
    (dict(kernel_size=2), r"kernel_size\[0\]=2 must be odd"),
    (dict(kernel_size=(3, 4)), r"kernel_size\[1\]=4 must be odd"),
])
def test_bad_hyperparameters_raise(kw, match):
    args = dict(in_channels=16, out_channels=16) | kw
    with pytest.raises(ValueError, match=match):
        PSConv2d(**args)


def test_load_dense_weight_checks_the_shape():
    with pytest.raises(ValueError, match=r"expected \(16, 16, 3, 3\)"):
        PSConv2d(16, 16).load_dense_weight(torch.zeros(16, 8, 3, 3))


def test_masked_is_a_masked_ps_conv():
    assert isinstance(PSConv2d(8, 8).masked(), MaskedPSConv2d)


@pytest.mark.parametrize("channels_last", [False, True])
def test_output_keeps_the_input_layout(channels_last, rng):
    m = PSConv2d(16, 16)
    x = torch.randn(2, 16, 8, 8, generator=rng)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = m(x.contiguous(memory_format=fmt))
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, reference(x, m.dense_weight(), 4, 2), atol=1e-4, rtol=1e-4)
