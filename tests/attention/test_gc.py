import pytest
import torch
import torch.nn.functional as F

from plugconv_lite.attention import GlobalContextBlock
from plugconv_lite.measure import count_params


def _randomised(m: GlobalContextBlock, g: torch.Generator) -> GlobalContextBlock:
    """Every parameter random (the zero-initialised last layers too), so every term of the equation shows."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def _official_equations(m: GlobalContextBlock, x: torch.Tensor) -> torch.Tensor:
    """MODULES.md's GC block (xvjiarui/GCNet context_block.py): softmax attention pooling, then per fusion
    W2 relu(LN(W1 c)) added, or sigmoid of it multiplied (mul first when both)."""
    B, C, H, W = x.shape
    a = torch.softmax(torch.einsum("c,bchw->bhw", m.w_k, x).reshape(B, H * W), dim=1)
    c = (x.reshape(B, C, H * W) * a[:, None]).sum(-1)

    def t(seq):
        h = F.linear(c, seq[0].weight, seq[0].bias)
        h = (h - h.mean(1, keepdim=True)) / torch.sqrt(h.var(1, unbiased=False, keepdim=True) + seq[1].eps)
        return F.linear(torch.relu(h * seq[1].weight + seq[1].bias), seq[3].weight, seq[3].bias)[:, :, None, None]

    y = x
    if m.channel_mul is not None:
        y = y * torch.sigmoid(t(m.channel_mul))
    if m.channel_add is not None:
        y = y + t(m.channel_add)
    return y


@pytest.mark.parametrize("fusion", ["add", "mul", "both"])
@pytest.mark.parametrize("fused", [True, False])
def test_forward_equals_the_official_equations(rng, fusion, fused):
    m = _randomised(GlobalContextBlock(32, fusion=fusion, fused=fused, dtype=torch.float64), rng)
    x = torch.randn(3, 32, 7, 5, generator=rng, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_equations(m, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hw", [(1, 1), (4, 4), (9, 7)])
def test_pooling_weights_sum_to_one_over_positions(rng, hw):
    m = _randomised(GlobalContextBlock(16), rng)
    a = m.attention(torch.randn(3, 16, *hw, generator=rng))
    assert a.shape == (3, *hw) and (a >= 0).all()
    torch.testing.assert_close(a.sum(dim=(1, 2)), torch.ones(3))


@pytest.mark.parametrize("fused", [True, False])
def test_context_is_the_softmax_weighted_mean_not_the_unnormalised_sum(rng, fused):
    """A known re-implementation pools with the raw logits (no softmax). Ours pools with weights that sum to 1:
    the context of a spatially constant map is that constant, whatever w_k is; the unnormalised pooling's would be
    H W (w_k . v) v."""
    m = _randomised(GlobalContextBlock(16, fused=fused, dtype=torch.float64), rng)
    v = torch.randn(2, 16, 1, 1, generator=rng, dtype=torch.float64)
    x = v.expand(2, 16, 6, 5).contiguous()
    torch.testing.assert_close(m.context(x), v[:, :, 0, 0])
    x = torch.randn(2, 16, 6, 5, generator=rng, dtype=torch.float64)
    logits = torch.einsum("c,bchw->bhw", m.w_k, x).flatten(1)
    unnormalised = (x.flatten(2) * logits[:, None]).sum(-1)
    softmax_pooled = (x.flatten(2) * logits.softmax(-1)[:, None]).sum(-1)
    torch.testing.assert_close(m.context(x), softmax_pooled)
    assert (m.context(x) - unnormalised).abs().max() > 1e-2


def test_identity_at_initialisation(rng):
    x = torch.randn(2, 64, 8, 8, generator=rng)
    assert torch.equal(GlobalContextBlock(64)(x), x)
    torch.testing.assert_close(GlobalContextBlock(64, fusion="mul")(x), 0.5 * x)  # sigmoid(0) = 1/2
    assert not torch.equal(GlobalContextBlock(64, zero_init_last=False)(x), x)


def test_fused_and_explicit_paths_agree(rng):
    a = _randomised(GlobalContextBlock(32, fusion="both"), rng)
    b = GlobalContextBlock(32, fusion="both", fused=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 32, 9, 9, generator=rng)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)


def test_avg_pooling_is_global_average(rng):
    m = GlobalContextBlock(16, pooling="avg")
    x = torch.randn(2, 16, 5, 3, generator=rng)
    torch.testing.assert_close(m.context(x), x.mean(dim=(2, 3)))
    assert m.w_k is None
    with pytest.raises(ValueError, match="pooling='avg' has no attention weights"):
        m.attention(x)


def test_layernorm_bottleneck_works_per_sample_in_training(rng):
    """LN normalises each sample's hidden vector on its own: in training mode a sample's output is the same alone
    as in a batch (a BN on the 1 x 1 context would mix the batch, and fail on a batch of one)."""
    m = _randomised(GlobalContextBlock(32, fusion="both"), rng).train()
    x = torch.randn(4, 32, 5, 5, generator=rng)
    torch.testing.assert_close(m(x)[1:2], m(x[1:2]))


@pytest.mark.parametrize("C", [16, 32, 64, 128, 256, 512])
def test_bottleneck_never_0_or_1_units_on_cifar_widths(C):
    """The official int(C / 16) is 1 at 16 channels (0 below); the library's default gives >= 8."""
    m = GlobalContextBlock(C)
    assert m.hidden >= 8
    assert count_params(m) == C + (C * m.hidden + m.hidden) + 2 * m.hidden + (m.hidden * C + C)


@pytest.mark.parametrize("kw,match", [(dict(fusion="channel_add"), "fusion='channel_add' must be one of"),
                                      (dict(pooling="max"), "pooling='max' must be one of"),
                                      (dict(reduction=0), "reduction=0.0 must be >= 1"),
                                      (dict(hidden=0), "hidden=0 must be >= 1")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        GlobalContextBlock(64, **kw)


def test_bad_act_layer_raises():
    with pytest.raises(ValueError, match="act_layer='relu' must be a module class"):
        GlobalContextBlock(64, act_layer="relu")
