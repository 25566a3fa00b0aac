import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.blocks import Res2NetBlock
from plugconv_lite.measure import count_params
from contract import bn_eval, randomise_norms


def _reference(m: Res2NetBlock, x: torch.Tensor) -> torch.Tensor:
    """MODULES.md's Bottle2neck written out with F.conv2d (the official loop, identity split last)."""
    s, w, st = m.scale, m.width, m.stride
    xs = torch.relu(bn_eval(F.conv2d(x, m.conv1.weight), m.bn1)).split(w, dim=1)
    n = 1 if s == 1 else s - 1
    ys = []
    for i in range(n):
        sp = xs[i] if (i == 0 or m.stype == "stage") else sp + xs[i]  # noqa: F821 (sp from the previous step)
        sp = torch.relu(bn_eval(F.conv2d(sp, m.convs[i].weight, stride=st, padding=1), m.bns[i]))
        ys.append(sp)
    if s > 1:
        ys.append(xs[n] if m.stype == "normal" else F.avg_pool2d(xs[n], 3, st, 1))
    out = bn_eval(F.conv2d(torch.cat(ys, 1), m.conv3.weight), m.bn3)
    short = x if isinstance(m.shortcut, nn.Identity) else bn_eval(F.conv2d(x, m.shortcut[0].weight, stride=st),
                                                                  m.shortcut[1])
    return torch.relu(out + short)


@pytest.mark.parametrize("c_in,c_out,stride,scale,stype", [(32, 32, 1, 4, "normal"), (16, 32, 2, 4, "stage"),
                                                           (32, 32, 1, 5, "stage"), (24, 24, 1, 2, "normal"),
                                                           (16, 16, 1, 1, "normal"), (8, 16, 2, 1, "stage")])
def test_forward_equals_the_official_loop(rng, c_in, c_out, stride, scale, stype):
    m = randomise_norms(Res2NetBlock(c_in, c_out, stride, scale=scale, width=5, stype=stype), rng)
    x = torch.randn(2, c_in, 9, 7, generator=rng)
    torch.testing.assert_close(m(x), _reference(m, x), atol=1e-5, rtol=1e-4)


def _split_dependencies(m: Res2NetBlock) -> torch.Tensor:
    """D[i, j] = True if split output y_i moves with split input x_j (conv1/bn1 replaced by identities)."""
    m.conv1, m.bn1 = nn.Identity(), nn.Identity()
    m.eval()
    s, w = m.scale, m.width
    x = (torch.rand(2, s * w, 9, 9) + 0.1).requires_grad_(True)  # positive: the ReLU after conv1 is the identity
    D = torch.zeros(s, s, dtype=torch.bool)
    for i, y in enumerate(m.splits(x * 1)):  # not the leaf itself: the ReLU after conv1 is in place
        (g,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
        D[i] = g.abs().reshape(2, s, w, 9, 9).sum(dim=(0, 2, 3, 4)) > 0
    return D


@pytest.mark.parametrize("scale", [2, 3, 4, 6, 8])
def test_normal_split_depends_on_earlier_splits_only(scale):
    D = _split_dependencies(Res2NetBlock(4 * scale, 4 * scale, scale=scale, width=4))
    expected = torch.tril(torch.ones(scale, scale, dtype=torch.bool))
    expected[-1] = False
    expected[-1, -1] = True  # the last split is passed through untouched
    assert torch.equal(D, expected), D


@pytest.mark.parametrize("scale", [2, 4, 6])
def test_stage_splits_are_independent(scale):
    D = _split_dependencies(Res2NetBlock(4 * scale, 4 * scale, scale=scale, width=4, stype="stage"))
    assert torch.equal(D, torch.eye(scale, dtype=torch.bool)), D


def _identity_convs(m: Res2NetBlock) -> Res2NetBlock:
    """Every split conv the identity kernel and every split BN the identity map (eval mode)."""
    with torch.no_grad():
        for conv, bn in zip(m.convs, m.bns):
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(m.width)
            bn.running_var.fill_(1 - bn.eps)
    m.conv1, m.bn1 = nn.Identity(), nn.Identity()
    return m.eval()


def test_identity_convs_make_the_hierarchy_a_cumulative_sum(rng):
    """With identity K_i and positive inputs, y_i = x_1 + ... + x_i for i < s and y_s = x_s."""
    m = _identity_convs(Res2NetBlock(20, 20, scale=5, width=4))
    x = torch.rand(2, 20, 6, 6, generator=rng)
    xs = x.split(4, dim=1)
    ys = m.splits(x)
    for i in range(4):
        torch.testing.assert_close(ys[i], sum(xs[: i + 1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ys[4], xs[4])


def test_stage_block_with_identity_convs_subsamples_and_pools_the_last_split(rng):
    m = _identity_convs(Res2NetBlock(16, 16, stride=2, scale=4, width=4))
    assert m.stype == "stage"
    x = torch.rand(2, 16, 7, 7, generator=rng)
    xs, ys = x.split(4, dim=1), m.splits(x)
    for i in range(3):
        torch.testing.assert_close(ys[i], xs[i][:, :, ::2, ::2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ys[3], F.avg_pool2d(xs[3], 3, 2, 1))


@pytest.mark.parametrize("scale,stype", [(2, "normal"), (4, "normal"), (6, "normal"), (4, "stage"), (1, "normal")])
def test_split_receptive_fields_match_the_gradient_support(rng, scale, stype):
    torch.manual_seed(0)
    m = Res2NetBlock(8 * scale, 8 * scale, scale=scale, width=8, stype=stype).eval()
    # a batch of 8 and 8 channels per split: no input column is cut off by ReLUs that are off for every sample
    x = torch.randn(8, 8 * scale, 21, 21, generator=rng, requires_grad=True)
    measured = []
    for y in m.splits(x):
        (g,) = torch.autograd.grad(y[:, :, 10, 10].sum(), x, retain_graph=True)
        cols = (g.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
        measured.append(int(cols.max() - cols.min() + 1))
    assert measured == Res2NetBlock.split_receptive_fields(scale, stype)


def test_split_receptive_fields_values():
    assert Res2NetBlock.split_receptive_fields(4) == [3, 5, 7, 1]
    assert Res2NetBlock.split_receptive_fields(4, "stage") == [3, 3, 3, 3]
    assert Res2NetBlock.split_receptive_fields(1) == [3]


@pytest.mark.parametrize("out,bw,expansion,width", [(256, 26, 4, 26), (512, 26, 4, 52), (2048, 26, 4, 208),
                                                    (256, 14, 4, 14), (16, 40, 1, 10), (64, 40, 1, 40),
                                                    (512, 40, 1, 320), (24, 26, 4, 2)])
def test_width_rule(out, bw, expansion, width):
    m = Res2NetBlock(out, out, base_width=bw, expansion=expansion)
    assert m.width == width and m.conv1.out_channels == width * m.scale


def test_paper_bottleneck_parameter_count():
    """expansion=4, base_width=26, scale=4 is Res2Net-50's 26w x 4s bottleneck (here: a layer1 block, 256 -> 256)."""
    m = Res2NetBlock(256, 256, scale=4, base_width=26, expansion=4)
    w, s = 26, 4
    expected = 256 * w * s + 2 * w * s + (s - 1) * (9 * w * w + 2 * w) + w * s * 256 + 2 * 256
    assert count_params(m) == expected


def test_scale_one_is_a_plain_bottleneck():
    m = Res2NetBlock(32, 32, scale=1, width=12)
    assert len(m.convs) == 1 and m.convs[0].in_channels == 12 and isinstance(m.pool, nn.Identity)


@pytest.mark.parametrize("c_in,c_out,stride,expected", [(32, 32, 1, "normal"), (32, 32, 2, "stage"),
                                                        (16, 32, 1, "stage"), (16, 32, 2, "stage")])
def test_stype_follows_the_shape_change(c_in, c_out, stride, expected):
    m = Res2NetBlock(c_in, c_out, stride)
    assert m.stype == expected
    assert isinstance(m.shortcut, nn.Identity) == (expected == "normal")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 5), (8, 8)])
def test_shapes(rng, stride, hw):
    m = Res2NetBlock(16, 24, stride, scale=3).eval()
    y = m(torch.randn(2, 16, *hw, generator=rng))
    assert y.shape == (2, 24, (hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1)


def test_gradients_reach_every_parameter_for_both_stypes(rng):
    from contract import check_gradients
    check_gradients(Res2NetBlock(16, 16, scale=4, width=3), torch.randn(2, 16, 6, 6, generator=rng))
    check_gradients(Res2NetBlock(16, 32, 2, scale=4, width=3), torch.randn(2, 16, 6, 6, generator=rng))


@pytest.mark.parametrize("width", [16, 64])
def test_plugs_into_resnet18_with_sensible_widths(width):
    model = pl.resnet18(width=width, block="res2net")
    blocks = [m for m in model.modules() if isinstance(m, Res2NetBlock)]
    assert [b.width for b in blocks[::2]] == [width * 40 // 64 * 2 ** i for i in range(4)]
    assert [b.stype for b in blocks] == ["normal", "normal"] + ["stage", "normal"] * 3
    if width == 16:
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("kw,match", [
    (dict(scale=0), "scale=0 must be >= 1"),
    (dict(scale=2.0), "scale=2.0 must be an integer"),
    (dict(base_width=0), "base_width=0 must be >= 1"),
    (dict(expansion=3), "expansion=3 must divide out_channels=32"),
    (dict(expansion=0), "expansion=0 must be >= 1"),
    (dict(width=0), "width=0 must be >= 1"),
    (dict(base_width=1), r"width=floor\(planes \* base_width / 64\)=floor\(32 \* 1 / 64\)=0 must be >= 1"),
    (dict(stype="first"), "stype='first' must be one of"),
    (dict(stype="normal", stride=2), "stype='normal' needs stride=1"),
    (dict(stride=0), "stride=0 must be >= 1"),
    (dict(in_channels=0), "in_channels=0 must be >= 1"),
])
def test_bad_hyperparameters_raise(kw, match):
    args = dict(in_channels=32, out_channels=32) | kw
    with pytest.raises(ValueError, match=match):
        Res2NetBlock(**args)


def test_bad_receptive_field_arguments_raise():
    with pytest.raises(ValueError, match="stype='x' must be one of"):
        Res2NetBlock.split_receptive_fields(4, "x")
    with pytest.raises(ValueError, match="scale=0 must be >= 1"):
        Res2NetBlock.split_receptive_fields(0)
