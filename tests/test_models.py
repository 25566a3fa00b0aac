import pytest
import torch
import torch.nn as nn

import plugconv_lite as pl
from plugconv_lite.attention import SEModule
from plugconv_lite.measure import count_params
from plugconv_lite.models.plugs import PlugSite


@pytest.mark.parametrize("builder,params", [(pl.resnet18, 11_220_132), (pl.resnet20, 278_324),
                                            (pl.resnet56, 861_620), (pl.mobilenetv2, 2_351_972)])
def test_backbone_shapes_and_sizes(builder, params):
    model = builder(num_classes=100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert count_params(model) == params


def test_resnet18_stem_is_3x3_stride1_without_maxpool():
    model = pl.resnet18()
    stem = model.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)


def test_conv_plug_replaces_only_block_kxk_convs():
    seen = []

    def factory(c_in, c_out, k, stride=1, padding=None, dilation=1, groups=1, bias=False):
        seen.append((c_in, c_out, k, stride))
        return pl.create("conv2d", c_in, c_out, k, stride, padding, dilation, groups, bias)

    pl.resnet18(width=8, conv=factory)
    assert len(seen) == 16 and all(k == 3 for _, _, k, _ in seen)
    assert sum(s == 2 for *_, s in seen) == 3  # the first conv of stages 2-4


def test_conv_kw_callable_sees_resolution_of_each_site():
    sites = []
    pl.resnet18(width=8, conv="conv2d", conv_kw=lambda site: sites.append(site) or {})
    assert [s.resolution for s in sites if s.role == "conv1"] == [32, 32, 32, 16, 16, 8, 8, 4]
    assert [s.out_resolution for s in sites if s.role == "conv1"] == [32, 32, 16, 16, 8, 8, 4, 4]


def test_from_site_is_used_when_a_factory_defines_it():
    class SiteConv(nn.Conv2d):
        built = []

        @classmethod
        def from_site(cls, site, **kw):
            cls.built.append(site.name)
            return cls(site.in_channels, site.out_channels, 3, site.stride, 1, bias=False)

    pl.resnet20(conv=SiteConv)
    assert SiteConv.built[:2] == ["layer1.0.conv1", "layer1.0.conv2"] and len(SiteConv.built) == 18


def test_attention_sits_after_last_bn_before_addition():
    model = pl.resnet18(width=8, attn="se")
    block = model.layer1[0]
    assert isinstance(block.attn, SEModule)
    order = []
    for name in ("bn2", "attn"):
        getattr(block, name).register_forward_hook(lambda m, a, o, name=name: order.append(name))
    seen = {}
    block.attn.register_forward_hook(lambda m, a, o: seen.update(inp=a[0], out=o))
    block.bn2.register_forward_hook(lambda m, a, o: seen.update(bn2=o))
    x = torch.randn(2, 8, 8, 8)
    y = block.eval()(x)
    assert order == ["bn2", "attn"] and seen["inp"] is seen["bn2"]
    torch.testing.assert_close(y, torch.relu(seen["out"] + x))


def test_block_plug_replaces_every_block():
    made = []

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride=1, tag=None):
            super().__init__()
            made.append((c_in, c_out, stride, tag))
            self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1)

        def forward(self, x):
            return self.conv(x)

    model = pl.resnet18(width=8, block=Block, block_kw={"tag": "t"})
    assert len(made) == 8 and made[2] == (8, 16, 2, "t")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_mobilenetv2_conv_plug_gets_the_depthwise_convs():
    groups = []
    pl.mobilenetv2(conv="conv2d", conv_kw=lambda s: groups.append((s.role, s.groups, s.in_channels)) or {})
    dws = [g for g in groups if g[0] == "dw"]
    assert len(dws) == 17 and all(g == c for _, g, c in dws)
    assert all(role == "dw" for role, *_ in groups if role != "expand" and role != "project")


def test_mobilenetv2_block_plug_receives_expand_ratio():
    ratios = []

    def block(c_in, c_out, stride=1, expand_ratio=6):
        ratios.append(expand_ratio)
        return nn.Conv2d(c_in, c_out, 3, stride, 1)

    pl.mobilenetv2(block=block)
    assert ratios[0] == 1 and set(ratios[1:]) == {6}


@pytest.mark.parametrize("bad,match", [(dict(width=0), "width=0"), (dict(num_classes=0), "num_classes=0"),
                                       (dict(conv="nope"), "unknown conv module"),
                                       (dict(conv_where="sideways"), "conv_where='sideways'")])
def test_bad_model_arguments_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        pl.resnet18(**bad)


def test_build_by_name():
    from plugconv_lite.models import CifarResNet
    assert isinstance(pl.build_model("resnet20"), CifarResNet)
    with pytest.raises(ValueError, match="backbone='vgg'"):
        pl.build_model("vgg")


def test_conv_where_layer_preset_plugs_one_stage_only():
    model = pl.resnet18(width=8, conv="drconv", conv_where="layer3")
    plugged = {n for n, m in model.named_modules() if type(m).__name__ == "DRConv2d"}
    assert plugged == {f"layer3.{j}.conv{c}" for j in range(2) for c in (1, 2)}


@pytest.mark.parametrize("where,stages,count", [("stages2-4", [16, 8, 4], 12), ("stages3-4", [8, 4], 8)])
def test_later_stage_presets_plug_only_the_block_convs_of_those_stages(where, stages, count):
    sites = []
    pl.resnet18(width=8, conv="conv2d", conv_where=where,
                conv_kw=lambda site: sites.append(site) or {})
    assert len(sites) == count and all(s.kernel_size == 3 and s.role != "stem" for s in sites)
    assert sorted({s.out_resolution for s in sites}, reverse=True) == stages


def test_mixer_replaces_only_the_shape_keeping_conv_of_the_chosen_stages():
    from plugconv_lite.attention.focal import FocalModulation
    model = pl.resnet18(width=8, mixer="focal", mixer_where="stages2-4")
    mixed = {n for n, m in model.named_modules() if isinstance(m, FocalModulation)}
    assert mixed == {f"layer{i}.{j}.conv2" for i in (2, 3, 4) for j in range(2)}
    # every other k x k conv is the model's own, and the first conv still strides and widens
    assert type(model.layer1[0].conv2) is type(model.layer2[0].conv1)
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv1.out_channels == 16
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_mixer_block_computes_conv1_then_the_mixer_in_place_of_conv2():
    torch.manual_seed(0)
    model = pl.resnet18(width=8, mixer="focal", mixer_where="layer2").eval()
    block, x = model.layer2[0], torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        h = torch.relu(block.bn1(block.conv1(x)))
        expected = torch.relu(block.bn2(block.conv2(h)) + block.shortcut(x))
        torch.testing.assert_close(block(x), expected)
    # the mixer stands in for conv2 itself (no conv kept around it)
    assert type(block.conv2).__name__ == "FocalModulation"
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1
               for m in block.conv2.modules())   # its 3 x 3 convs are depthwise


def test_mixer_follows_the_mixer_s_from_site_which_may_decline():
    from plugconv_lite.attention.sra import SpatialReductionAttention
    model = pl.resnet18(width=64, mixer="sra", mixer_kw={"first_stage": 3})   # no mixer_where: every conv2 asked
    mixed = {n: m.sr_ratio for n, m in model.named_modules() if isinstance(m, SpatialReductionAttention)}
    assert set(mixed) == {f"layer{i}.{j}.conv2" for i in (3, 4) for j in range(2)}
    assert set(mixed.values()) == {1}      # auto ratio from the site's 8 x 8 and 4 x 4 maps


@pytest.mark.parametrize("bad,match", [
    (dict(mixer_kw={}), "mixer_kw / mixer_where are given without mixer"),
    (dict(mixer_where="layer2"), "without mixer"),
    (dict(mixer="se2"), "unknown attention module"),
    (dict(mixer="focal", mixer_where="sideways"), "mixer_where='sideways'"),
    (dict(mixer="sra", mixer_where="layer1"), "placed nowhere"),
    (dict(mixer="focal", ensemble=2, ensemble_from=3, mixer_where="stages3-4"), "groups 2"),
])
def test_bad_mixer_arguments_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        pl.resnet18(width=16, **bad)

