"""Selective depth attention (sda, a stage attention): its defining properties, the official equations, the network."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.attention import SelectiveDepthAttention
from plugconv_lite.measure import count_params
from plugconv_lite.models.flow import Flow


def _randomised(m: SelectiveDepthAttention, g: torch.Generator) -> SelectiveDepthAttention:
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        m.bn.running_mean.copy_(torch.randn(m.hidden, generator=g, dtype=m.bn.running_mean.dtype) * 0.1)
        m.bn.running_var.copy_(torch.rand(m.hidden, generator=g, dtype=m.bn.running_var.dtype) + 0.5)
    return m


def _blocks(g, n, B=3, C=16, H=5, W=7, dtype=torch.float64):
    return [torch.randn(B, C, H, W, generator=g, dtype=dtype) for _ in range(n)]


def _official_equations(m: SelectiveDepthAttention, zs: list) -> torch.Tensor:
    """resnet_at.py's BasicStage after its blocks: Z stacked on dim 1, F = sum, u = GAP(F), v = relu(BN(conv(u))),
    one (d -> C, bias) conv per block, softmax over dim 1 (depth), O = relu(sum(Z * a)). Written from the equations,
    eval-mode BN by hand, with n separate per-block weights cut from ours."""
    C, n = m.channels, m.depth
    Z = torch.stack(zs, dim=1)                                       # (B, n, C, H, W)
    u = Z.sum(dim=1).mean(dim=(2, 3))                                # (B, C)
    t = u @ m.fc.weight[:, :, 0, 0].T                                # (B, d)
    t = (t - m.bn.running_mean) / torch.sqrt(m.bn.running_var + m.bn.eps) * m.bn.weight + m.bn.bias
    v = torch.relu(t)
    W, b = m.fcs.weight[:, :, 0, 0], m.fcs.bias
    logits = torch.stack([v @ W[i * C:(i + 1) * C].T + b[i * C:(i + 1) * C] for i in range(n)], dim=1)  # (B,n,C)
    a = torch.softmax(logits, dim=1)[..., None, None]
    return torch.relu((Z * a).sum(dim=1))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_forward_equals_the_official_equations(rng, n):
    m = _randomised(SelectiveDepthAttention(16, n, min_hidden=8), rng).double().eval()
    zs = _blocks(rng, n)
    torch.testing.assert_close(m(zs), _official_equations(m, zs), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [2, 4])
def test_weights_over_depth_sum_to_one_per_sample_and_channel(rng, n):
    m = _randomised(SelectiveDepthAttention(16, n, min_hidden=8), rng).double().eval()
    a = m.depth_weights(_blocks(rng, n))
    assert a.shape == (3, n, 16, 1, 1) and (a > 0).all()
    torch.testing.assert_close(a.sum(dim=1), torch.ones(3, 16, 1, 1, dtype=a.dtype), rtol=0, atol=1e-12)


def test_selection_is_per_sample(rng):
    """Two samples in one batch get different weights over depth; each sample's weights do not depend on the other
    sample (eval mode), so the selection is the sample's own."""
    m = _randomised(SelectiveDepthAttention(16, 3, min_hidden=8), rng).double().eval()
    zs = _blocks(rng, 3, B=2)
    a = m.depth_weights(zs)
    assert (a[0] - a[1]).abs().max() > 1e-3
    alone = m.depth_weights([z[1:] for z in zs])
    torch.testing.assert_close(alone[0], a[1], rtol=0, atol=1e-12)


def test_equal_logits_give_the_relu_of_the_mean_of_the_blocks(rng):
    m = _randomised(SelectiveDepthAttention(16, 3, min_hidden=8), rng).double().eval()
    with torch.no_grad():
        m.fcs.weight.zero_()
        m.fcs.bias.zero_()
    zs = _blocks(rng, 3)
    torch.testing.assert_close(m(zs), F.relu(sum(zs) / 3), rtol=0, atol=1e-12)


def test_depth_one_is_the_relu_of_the_block():
    """With one block the softmax over depth is 1: SDA returns what the plain stage returns."""
    z = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(SelectiveDepthAttention(8, 1).eval()([z]), F.relu(z), rtol=0, atol=0)


@pytest.mark.parametrize("C, r, L, d", [(64, 16, 64, 64), (512, 16, 64, 64), (2048, 16, 64, 128), (100, 16, 1, 6),
                                        (64, 16, 8, 8), (48, 5, 1, 9)])
def test_hidden_width_is_the_official_rule(C, r, L, d):
    """d = max(int(C / r), L): int() truncates (100 / 16 -> 6, 48 / 5 -> 9)."""
    m = SelectiveDepthAttention(C, 2, reduction=r, min_hidden=L)
    assert m.hidden == d and m.fc.out_channels == d


@pytest.mark.parametrize("C, n", [(64, 2), (128, 3)])
def test_parameter_count(C, n):
    d = 64
    assert count_params(SelectiveDepthAttention(C, n)) == C * d + 2 * d + n * (d * C + C)


def test_network_stage_output_is_sda_of_its_blocks_and_feeds_the_next_stage(rng):
    """In pl.resnet18(stage_attn="sda") each block passes relu(Z_i) to the next (the official trunk), the stage output
    is SDA over the Z_i, and the next stage starts from it."""
    torch.manual_seed(0)
    net = pl.resnet18(width=8, stage_attn="sda").double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=rng)
    flow = Flow(keep_blocks=True)
    net.features(x, flow)
    h = net.stem(x)
    for i in range(4):
        zs = []
        for block in getattr(net, f"layer{i + 1}"):
            f = Flow(keep_blocks=True)
            h = block(h, f)
            zs.append(f.blocks[0])
            torch.testing.assert_close(h, F.relu(f.blocks[0]), rtol=0, atol=0)  # the trunk: relu of the sum
        h = net.stage_attn[i](zs)
        torch.testing.assert_close(flow.stages[i], h, rtol=0, atol=0)


def test_every_stage_gets_its_width_and_depth():
    net = pl.resnet18(width=16, stage_attn="sda", stage_attn_kw={"min_hidden": 4})
    assert [(m.channels, m.depth, m.hidden) for m in net.stage_attn] == [(16, 2, 4), (32, 2, 4), (64, 2, 4),
                                                                         (128, 2, 8)]


def test_wrong_number_of_blocks_raises():
    with pytest.raises(ValueError, match="depth=3"):
        SelectiveDepthAttention(8, 3)([torch.randn(2, 8, 4, 4)] * 2)
    with pytest.raises(ValueError, match="channels=8"):
        SelectiveDepthAttention(8, 2)([torch.randn(2, 4, 4, 4)] * 2)


@pytest.mark.parametrize("kw, match", [
    (dict(channels=0), "channels=0"), (dict(depth=0), "depth=0"), (dict(depth=2.5), "depth=2.5"),
    (dict(reduction=0.5), "reduction=0.5"), (dict(min_hidden=0), "min_hidden=0"),
    (dict(act_layer=nn.ReLU()), "act_layer"), (dict(norm_layer="bn"), "norm_layer")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        SelectiveDepthAttention(**(dict(channels=16, depth=2) | kw))
