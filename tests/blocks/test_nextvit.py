"""Next-ViT's NCB and NTB blocks (plugconv_lite/blocks/nextvit.py)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugconv_lite as pl
from plugconv_lite.blocks.nextvit import NCB, NTB, EMHSA, _divisible


def _randomised(m):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, t in m.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5 if "running_var" in k
                        else torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.2)
    return m.eval()


def test_make_divisible_is_the_official_rule():
    assert [_divisible(v, 32) for v in (24, 48, 96, 192, 384, 100, 3 * 64)] == [32, 64, 96, 192, 384, 96, 192]


def test_ncb_heads_are_independent_groups_of_head_dim_channels():
    """MHCA's grouped 3x3: an output channel of head h reads only the input channels of head h."""
    m = _randomised(NCB(64, 64, head_dim=16).double())
    conv = m.mhca[0]
    x = torch.randn(1, 64, 6, 6, dtype=torch.float64, requires_grad=True)
    conv(x)[0, 20].sum().backward()                             # channel 20: head 1 (channels 16..31)
    touched = x.grad[0].abs().sum((1, 2)) > 0
    assert touched.nonzero().flatten().tolist() == list(range(16, 32))


def test_ncb_is_two_residuals_mhca_then_mlp():
    m = _randomised(NCB(32, 64, stride=2).double())
    x = torch.randn(2, 32, 9, 7, dtype=torch.float64)
    z = m.patch_embed(x)
    assert z.shape == (2, 64, 5, 4)                              # ceil-mode pooling: the conv's output size
    z = z + m.mhca(z)
    torch.testing.assert_close(m(x), z + m.mlp(m.norm(z)), rtol=0, atol=0)


def test_ntb_splits_channels_attention_first_then_mhca():
    m = _randomised(NTB(256, 256).double())
    assert (m.attn_channels, m.conv_channels) == (192, 64)
    with torch.no_grad():
        m.mlp[-1].weight.zero_(), m.mlp[-1].bias.zero_()          # y = the concatenation
    x = torch.randn(2, 256, 4, 4, dtype=torch.float64)
    y = m(x)
    B, C, H, W = 2, 192, 4, 4
    z = m.patch_embed(x)
    z = z + m.e_mhsa(m.norm1(z).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, H, W)
    o = m.projection(z)
    torch.testing.assert_close(y[:, :192], z, rtol=0, atol=1e-12)
    torch.testing.assert_close(y[:, 192:], o + m.mhca(o), rtol=0, atol=1e-12)


def test_emhsa_reduction_pools_runs_of_consecutive_tokens_not_squares():
    """The official spatial reduction: AvgPool1d over the raster-order sequence, runs of R^2 tokens along a row."""
    e = EMHSA(32, head_dim=32, sr_ratio=2).double().eval()
    t = torch.randn(1, 64, 32, dtype=torch.float64)             # an 8 x 8 map's tokens
    strips = t.reshape(1, 16, 4, 32).mean(2)                    # tokens 0-3, 4-7, ...: half rows of the 8 x 8 map
    expected = F.batch_norm(strips.transpose(1, 2), e.norm.running_mean, e.norm.running_var, e.norm.weight,
                            e.norm.bias, False, 0.0, e.norm.eps).transpose(1, 2)
    torch.testing.assert_close(e.keys_from(t), expected)


def test_emhsa_is_softmax_attention_over_all_keys():
    e = _randomised(EMHSA(64, head_dim=32).double())
    t = torch.randn(2, 10, 64, dtype=torch.float64)
    q, k, v = (f(t).reshape(2, 10, 2, 32).transpose(1, 2) for f in (e.q, e.k, e.v))
    a = torch.softmax(q @ k.transpose(-1, -2) / 32 ** 0.5, dim=-1)
    expected = e.proj((a @ v).transpose(1, 2).reshape(2, 10, 64))
    torch.testing.assert_close(e(t), expected, rtol=0, atol=1e-12)


def test_ntb_reaches_the_whole_map_and_ncb_only_its_neighbourhood():
    x = torch.randn(1, 64, 9, 9, dtype=torch.float64, requires_grad=True)
    ntb = _randomised(NTB(64, 64).double())
    ntb(x)[0, :, 0, 0].sum().backward()
    assert (x.grad[0].abs().sum(0) > 0).all()
    x.grad = None
    ncb = _randomised(NCB(64, 64).double())
    ncb(x)[0, :, 0, 0].sum().backward()
    reach = x.grad[0].abs().sum(0) > 0
    assert reach[:2, :2].all() and not reach[2:].any() and not reach[:, 2:].any()   # one 3x3 conv: radius 1


def test_ntb_split_is_the_official_make_divisible_of_int_mix_c_by_32_whatever_head_dim():
    """The official C_1 = _make_divisible(int(mix C), 32): a multiple of 32 even with narrower heads, and the int()
    first (it decides the 0.9 rule near a rounding boundary)."""
    assert (lambda m: (m.attn_channels, m.conv_channels))(NTB(112, 112, head_dim=16)) == (96, 16)  # by 16: 80
    assert NTB(64, 64, mix_ratio=0.561).attn_channels == 32          # int(35.9) = 35 -> 32; 35.9 itself -> 64
    assert NTB(256, 256, head_dim=8).attn_channels == 192
    assert NTB(16, 16).attn_channels == 16                             # narrower than 32: one head, C_1 = C


def test_ntb_without_room_for_mhca_is_attention_and_mlp_only():
    m = NTB(32, 64)
    assert (m.attn_channels, m.conv_channels, m.mhca) == (64, 0, None)
    assert m(torch.randn(2, 32, 5, 5)).shape == (2, 64, 5, 5)


@pytest.mark.parametrize("cls, kw, match", [
    (NCB, dict(in_channels=32, out_channels=48), "head_dim=32 must divide out_channels=48"),
    (NCB, dict(in_channels=32, out_channels=64, stride=3), "stride=3 must be 1 or 2"),
    (NTB, dict(in_channels=32, out_channels=256, mix_ratio=2.0), "mix_ratio=2.0 gives 512"),
    (NTB, dict(in_channels=32, out_channels=256, head_dim=40), "head_dim=40 must divide the attention"),
    (NTB, dict(in_channels=32, out_channels=256, sr_ratio=0), "sr_ratio"),
])
def test_bad_hyperparameters_raise(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


def _kinds(net):
    return [type(b).__name__ for i in range(1, 5) for b in getattr(net, f"layer{i}")]


def test_ncb_from_site_stacks_next_vit_s_pattern_ncb_then_ntb_in_stages_3_4_from_json():
    """The Next Hybrid Strategy on ResNet-18 (a JSON block_kw, as an experiment records it): stages 1-2 keep their
    BasicBlocks, stages 3-4 are an NCB then an NTB, whose sr ratio is 1 on the 8 x 8 and 4 x 4 maps."""
    import json
    kw = json.loads(json.dumps({"block": "ncb", "block_kw": {"first_stage": 3, "ntb_every": 2}}))
    net = pl.resnet18(**kw)
    assert _kinds(net) == ["BasicBlock"] * 4 + ["NCB", "NTB"] * 2
    ntbs = [net.layer3[1], net.layer4[1]]
    assert [(m.attn_channels, m.conv_channels, m.e_mhsa.sr_ratio) for m in ntbs] == [(192, 64, 1), (384, 128, 1)]
    assert (net.layer3[0].stride, net.layer3[0].in_channels, net.layer3[0].out_channels) == (2, 128, 256)
    # without ntb_every: NCBs only, in every stage by default (a conv block: no cost that grows with the map)
    assert _kinds(pl.resnet18(width=16, block="ncb")) == ["NCB"] * 8
    # every block an NTB from stage 2, with NTB keywords passed through ntb_kw
    net = pl.resnet18(width=32, block="ncb", block_kw={"first_stage": 2, "ntb_every": 1, "ntb_kw": {"sr_ratio": 2}})
    assert _kinds(net) == ["BasicBlock"] * 2 + ["NTB"] * 6
    assert {b.e_mhsa.sr_ratio for b in net.layer2} == {2}


def test_ntb_from_site_declines_stages_1_2_and_picks_the_official_sr_ratios():
    from plugconv_lite.models.plugs import PlugSite
    site = PlugSite("s", "block", 64, 64, 3, 1, stage=1, block=1, resolution=16)
    assert NTB.from_site(site) is None and NTB.from_site(site, first_stage=2).e_mhsa.sr_ratio == 2
    # Next-ViT at 224 pixels: stages at 56, 28, 14, 7 pixels with sr 8, 4, 2, 1 (49 keys each)
    assert [NTB.from_site(site.child(stage=2, resolution=r)).e_mhsa.sr_ratio for r in (56, 28, 14, 7)] == [8, 4, 2, 1]
    # the ratio is chosen for the map after the block's stride: 16 -> 8 pixels, sr 1
    assert NTB.from_site(site.child(stage=2, stride=2, resolution=16)).e_mhsa.sr_ratio == 1
    assert NTB.from_site(site.child(stage=2), sr_ratio=4).e_mhsa.sr_ratio == 4
    assert [type(b).__name__ for b in pl.resnet18(width=32, block="ntb").layer2] == ["BasicBlock"] * 2


@pytest.mark.parametrize("block_kw, match", [
    ({"ntb_kw": {"sr_ratio": 2}}, "without ntb_every"),
    ({"ntb_every": 2, "ntb_kw": {"first_stage": 1}}, "without first_stage"),
    ({"ntb_every": 2, "ntb_kw": [1]}, "must be a dict"),
    ({"ntb_every": 0}, "ntb_every=0 must be >= 1"),
    ({"first_stage": 0}, "first_stage=0 must be >= 1"),
    ({"ntb_every": 2, "ntb_kw": {"keys": 0}}, "keys=0 must be >= 1"),
])
def test_from_site_bad_keywords_raise(block_kw, match):
    with pytest.raises(ValueError, match=match):
        pl.resnet18(width=32, block="ncb", block_kw=block_kw)


def test_ntb_every_needs_the_block_index():
    from plugconv_lite.models.plugs import PlugSite
    site = PlugSite("x", "block", 64, 64, 3, 1, resolution=8)
    with pytest.raises(ValueError, match="needs the block's index"):
        NCB.from_site(site, ntb_every=2)
