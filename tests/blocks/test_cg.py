import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.blocks import ContextGuidedBlock
from contract import bn_eval, randomise_norms


def _randomise(m: ContextGuidedBlock, g: torch.Generator) -> ContextGuidedBlock:
    """Random BN statistics, PReLU slopes (some negative) and FC biases, so a reference must apply each of them."""
    with torch.no_grad():
        for p in (m.act_in.weight, m.act.weight, m.f_glo.fc1.bias, m.f_glo.fc2.bias):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return randomise_norms(m, g)


def _official_equations(m: ContextGuidedBlock, x: torch.Tensor) -> torch.Tensor:
    """MODULES.md section 29 written out with functional ops (eval mode): ContextGuidedBlock (1x1 reduce to C/2,
    global residual when add) and ContextGuidedBlock_Down (3x3/2 conv, 1x1 reduce of the 2C joint feature)."""
    down = m.stride > 1
    t = F.conv2d(x, m.conv_in.weight, stride=m.stride, padding=1 if down else 0)
    t = F.prelu(bn_eval(t, m.bn_in), m.act_in.weight)
    n, d = t.shape[1], m.dilation
    loc = F.conv2d(t, m.f_loc.weight, padding=1, groups=n)
    sur = F.conv2d(t, m.f_sur.weight, padding=d, dilation=d, groups=n)
    j = F.prelu(bn_eval(torch.cat([loc, sur], 1), m.bn), m.act.weight)
    if down:
        j = F.conv2d(j, m.reduce.weight)
    fc1, fc2 = m.f_glo.fc1, m.f_glo.fc2
    s = torch.sigmoid(F.linear(torch.relu(F.linear(j.mean((2, 3)), fc1.weight, fc1.bias)), fc2.weight, fc2.bias))
    y = j * s[:, :, None, None]
    return x + y if (not down and x.shape[1] == y.shape[1]) else y


@pytest.mark.parametrize("c_in,c_out,stride,dilation,reduction", [
    (64, 64, 1, 2, 8), (32, 32, 1, 4, 16), (24, 32, 1, 3, 4), (35, 64, 2, 2, 8), (16, 32, 2, 4, 16)])
def test_forward_equals_the_official_equations(rng, c_in, c_out, stride, dilation, reduction):
    m = _randomise(ContextGuidedBlock(c_in, c_out, stride, dilation=dilation, reduction=reduction, divisor=1), rng)
    m = m.double()
    x = torch.randn(2, c_in, 11, 9, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_equations(m, x), atol=1e-12, rtol=1e-10)


def test_official_widths_and_parameter_count():
    """divisor=1 gives the official FGlo width C // r; the count is the official block's (CGNet stage-2 CG block:
    1x1 64->32, two 3x3 depthwise on 32, BN+PReLU 32 and 64, FCs 64->8->64 with biases)."""
    m = ContextGuidedBlock(64, 64, dilation=2, reduction=8, divisor=1)
    assert (m.n, m.f_glo.hidden) == (32, 8)
    expected = 64 * 32 + 3 * 32 + 2 * 9 * 32 + 3 * 64 + (64 * 8 + 8) + (8 * 64 + 64)
    assert sum(p.numel() for p in m.parameters()) == expected


def _support(grad: torch.Tensor) -> list[int]:
    """Row offsets (from the centre) where the input gradient of one output pixel is non-zero."""
    rows = grad.abs().sum(dim=(0, 1, 3)) > 0
    c = grad.shape[2] // 2
    return [i - c for i in rows.nonzero().flatten().tolist()]


@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
def test_surrounding_context_receptive_field_is_dilation_times_k_minus_1_plus_1(rng, dilation):
    """An impulse response through the block input: f_sur at the centre pixel depends on the input rows
    -d, 0, +d only (span d(k - 1) + 1 with k = 3, holes in between), f_loc on rows -1, 0, +1."""
    m = _randomise(ContextGuidedBlock(16, 16, dilation=dilation), rng)
    x = torch.randn(1, 16, 15, 15, generator=rng, requires_grad=True)
    loc, sur = m.branches(x)
    (g_sur,) = torch.autograd.grad(sur[..., 7, 7].sum(), x, retain_graph=True)
    (g_loc,) = torch.autograd.grad(loc[..., 7, 7].sum(), x)
    rows = _support(g_sur)
    assert rows == [-dilation, 0, dilation]
    assert rows[-1] - rows[0] + 1 == dilation * (3 - 1) + 1
    assert _support(g_loc) == [-1, 0, 1]
    assert _support(g_sur.transpose(2, 3)) == [-dilation, 0, dilation]  # the same along the columns


@pytest.mark.parametrize("c_in,c_out,stride", [(32, 32, 1), (16, 32, 2)])
def test_global_refinement_scales_each_channel_by_a_value_in_0_1_from_the_pooled_joint_feature(rng, c_in, c_out,
                                                                                                stride):
    m = _randomise(ContextGuidedBlock(c_in, c_out, stride, residual=False), rng)
    x = torch.randn(3, c_in, 10, 10, generator=rng)
    j, y = m.joint(x), m(x)
    ratio = y / j
    scale = ratio[:, :, :1, :1]
    torch.testing.assert_close(ratio, scale.expand_as(ratio))      # one factor per (sample, channel)
    assert bool(((scale > 0) & (scale < 1)).all())
    fc1, fc2 = m.f_glo.fc1, m.f_glo.fc2
    from_pooled = torch.sigmoid(fc2(torch.relu(fc1(j.mean(dim=(2, 3))))))
    torch.testing.assert_close(scale.flatten(1), from_pooled)
    # a joint feature with the same spatial mean but rearranged pixels gets the same factors
    perm = torch.randperm(j.shape[2] * j.shape[3], generator=rng)
    j2 = j.flatten(2)[..., perm].reshape(j.shape)
    torch.testing.assert_close(m.f_glo.excitation(j2), m.f_glo.excitation(j))


@pytest.mark.parametrize("c_in,c_out,stride,kw,residual", [
    (32, 32, 1, {}, True),                       # official CG block, add=True (global residual)
    (32, 32, 1, {"residual": False}, False),     # add=False
    (16, 32, 1, {}, False),                      # official CG block with nIn != nOut: add=False
    (32, 32, 2, {}, False),                      # official down block: no residual
    (16, 32, 2, {}, False)])
def test_residual_exists_exactly_in_the_stride1_same_width_block(rng, c_in, c_out, stride, kw, residual):
    m = _randomise(ContextGuidedBlock(c_in, c_out, stride, **kw), rng)
    assert m.residual is residual
    with torch.no_grad():  # close the gate: f_glo's output is ~0, so what is left is the residual alone
        m.f_glo.fc2.weight.zero_()
        m.f_glo.fc2.bias.fill_(-60.0)
    x = torch.randn(2, c_in, 8, 8, generator=rng)
    y = m(x)
    if residual:
        torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    else:
        assert y.abs().max() < 1e-12


def test_resnet18_keeps_the_residual_in_every_block_but_the_first_of_stages_2_to_4():
    model = pl.resnet18(width=16, block="cg")
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, ContextGuidedBlock)}
    assert len(blocks) == 8
    assert sorted(n for n, m in blocks.items() if not m.residual) == ["layer2.0", "layer3.0", "layer4.0"]
    assert all(m.down == (m.stride == 2) for m in blocks.values())


@pytest.mark.parametrize("kw,needle", [
    ({"in_channels": 0}, "in_channels=0"), ({"out_channels": 33}, "out_channels=33 must be even"),
    ({"stride": 0}, "stride=0"), ({"dilation": 0}, "dilation=0"), ({"dilation": 1.5}, "dilation=1.5"),
    ({"reduction": 0.5}, "reduction=0.5"), ({"divisor": 0}, "divisor=0"), ({"hidden": 0}, "hidden=0"),
    ({"residual": "yes"}, "residual='yes'"), ({"stride": 2, "residual": True}, "residual=True"),
    ({"in_channels": 16, "residual": True}, "residual=True")])
def test_bad_hyperparameters_raise_value_error_naming_the_parameter(kw, needle):
    args = {"in_channels": 32, "out_channels": 32, **kw}
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        ContextGuidedBlock(**args)


def test_device_dtype_reach_every_parameter():
    m = ContextGuidedBlock(16, 32, 2, dtype=torch.float64)
    assert {p.dtype for p in m.parameters()} == {torch.float64}
