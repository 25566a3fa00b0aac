"""CoAtNet's transformer block with relative position bias (plugconv_lite/blocks/coatnet.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

import plugconv_lite as pl
from contract import randomise_parameters
from plugconv_lite.blocks.coatnet import CoAtNetBlock, RelativeAttention, relative_index
from plugconv_lite.models.plugs import PlugSite




def test_bias_depends_only_on_the_offset_translation_equivariance():
    """The defining property: B[i, j] = B[i + t, j + t] for every shift t keeping both inside the map, and a
    different offset can have a different bias."""
    a = randomise_parameters(RelativeAttention(8, 8, head_dim=4, window=6).double())
    H = W = 6
    B = a.bias(H, W).reshape(2, H, W, H, W)
    for (y1, x1, y2, x2) in [(0, 0, 3, 2), (1, 4, 5, 0), (2, 2, 2, 2)]:
        for ty, tx in [(1, 0), (0, 1), (-1, 1)]:
            if all(0 <= v < 6 for v in (y1 + ty, y2 + ty, x1 + tx, x2 + tx)):
                torch.testing.assert_close(B[:, y1, x1, y2, x2], B[:, y1 + ty, x1 + tx, y2 + ty, x2 + tx])
    assert not torch.allclose(B[:, 0, 0, 0, 1], B[:, 0, 0, 1, 0])


def test_attention_pattern_moves_with_the_query_when_only_the_bias_acts():
    """With q = k = 0 the attention is softmax(B): shifting the query shifts its attention pattern with it. The
    normaliser differs (each query has other keys inside the map), so compare the weights within a window both
    queries see whole, renormalised: their ratios are exp of bias differences, which depend on offsets only."""
    a = randomise_parameters(RelativeAttention(8, 8, head_dim=8, window=9).double())
    with torch.no_grad():
        a.qkv.weight[:16].zero_(), a.qkv.bias[:16].zero_()
    A = a.attention(torch.randn(1, 81, 8, dtype=torch.float64), 9, 9).reshape(9, 9, 9, 9)
    a1, a2 = A[4, 4, 2:7, 2:7], A[5, 3, 3:8, 1:6]
    torch.testing.assert_close(a1 / a1.sum(), a2 / a2.sum())
    assert not torch.allclose(a1, a2)        # the raw weights differ: the softmax sees different border keys


def test_bias_is_added_to_the_logits_before_the_softmax():
    a = randomise_parameters(RelativeAttention(16, 16, head_dim=8, window=4).double())
    t = torch.randn(2, 12, 16, dtype=torch.float64)
    q, k, v = a.qkv(t).reshape(2, 12, 3, 2, 8).permute(2, 0, 3, 1, 4)
    A = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + a.bias(3, 4), dim=-1)
    torch.testing.assert_close(a.attention(t, 3, 4), A)
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 2, 12, dtype=torch.float64))
    expected = a.proj((A @ v).transpose(1, 2).reshape(2, 12, 16))
    torch.testing.assert_close(a(t, 3, 4), expected, rtol=0, atol=1e-12)


def test_relative_index_clamps_offsets_beyond_the_window():
    idx = relative_index(1, 5, window=2)                     # offsets -4..4 along x, table of 3 x 3
    assert idx.max() < 9 and idx[0, 4] == idx[0, 1] == 1 * 3 + 0 and idx[4, 0] == idx[4, 3] == 1 * 3 + 2


def test_block_is_pre_norm_attention_then_ffn_with_the_pooled_projection_shortcut():
    m = randomise_parameters(CoAtNetBlock(16, 32, stride=2, head_dim=8, window=4).double())
    x = torch.randn(2, 16, 7, 8, dtype=torch.float64)
    t = F.max_pool2d(F.layer_norm(x.permute(0, 2, 3, 1), (16,), m.norm1.weight, m.norm1.bias).permute(0, 3, 1, 2),
                     2, ceil_mode=True)
    y = m.shortcut(F.max_pool2d(x, 2, ceil_mode=True))
    y = y + m.attn(t.flatten(2).transpose(1, 2), 4, 4).transpose(1, 2).reshape(2, 32, 4, 4)
    z = y + m.ffn(m.norm2(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    torch.testing.assert_close(m(x), z, rtol=0, atol=1e-12)


def test_global_reach():
    m = randomise_parameters(CoAtNetBlock(16, 16, head_dim=8).double())
    x = torch.randn(1, 16, 8, 8, dtype=torch.float64, requires_grad=True)
    m(x)[0, :, 0, 0].sum().backward()
    assert (x.grad[0].abs().sum(0) > 0).all()


def test_from_site_sets_the_window_to_the_map_and_gives_c_c_t_t_on_resnet18():
    site = PlugSite("layer3.0", "block", 128, 256, 3, 2, stage=2, block=0, resolution=16)
    assert CoAtNetBlock.from_site(site).attn.window == 8
    assert CoAtNetBlock.from_site(site.child(stage=1)) is None
    net = pl.resnet18(width=16, block="coatnet")
    kinds = [type(getattr(net, f"layer{i}")[j]).__name__ for i in range(1, 5) for j in range(2)]
    assert kinds == ["BasicBlock"] * 4 + ["CoAtNetBlock"] * 4
    assert [getattr(net, f"layer{i}")[1].attn.window for i in (3, 4)] == [8, 4]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("kw, match", [(dict(stride=3), "stride=3 must be 1 or 2"),
                                       (dict(head_dim=24), "head_dim=24 must divide out_channels=64"),
                                       (dict(window=0), "window"), (dict(mlp_ratio=0), "mlp_ratio")])
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        CoAtNetBlock(32, 64, **kw)


def test_forward_passes_a_mask_the_fused_cpu_kernel_accepts():
    """The bias goes to SDPA as a (1, heads, N, N) float mask: torch's fused CPU kernel refuses a 3-D mask (the
    call then falls back to the math path), so with only that kernel allowed a 3-D mask fails. (It also refuses a
    mask that needs a gradient, so the fused path is inference's: under no_grad.)"""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.randn(1, 2, 16, 8)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, q, q, attn_mask=torch.randn(1, 2, 16, 16))
    except RuntimeError:
        pytest.skip("this torch build has no fused CPU attention kernel with a float mask")
    a = randomise_parameters(RelativeAttention(16, 16, head_dim=8, window=4))
    t = torch.randn(2, 16, 16)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
        out = a(t, 4, 4)
    q, k, v = a._qkv(t)
    A = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + a.bias(4, 4), dim=-1)
    torch.testing.assert_close(out, a.proj((A @ v).transpose(1, 2).reshape(2, 16, 16)), rtol=1e-4, atol=1e-5)
