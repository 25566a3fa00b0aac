"""Every registered module keeps its kind's contract: shapes, gradients, compile/export, bf16, bad input."""
import pytest
import torch

import plugconv_lite as pl
from contract import (check_attention_shapes, check_bf16_autocast, check_channels_last, check_compile_and_export,
                      check_conv_shapes, check_gradients, perturb_zero_init)

CONVS = pl.available("conv")
ATTENTIONS = pl.available("attention")
BLOCKS = pl.available("block")


@pytest.mark.parametrize("name", CONVS)
def test_conv_output_shape_matches_nn_conv2d(name):
    check_conv_shapes(pl.get(name).factory)


@pytest.mark.parametrize("name", CONVS)
def test_conv_gradients_reach_every_parameter(name):
    check_gradients(pl.create(name, 16, 32, 3), torch.randn(2, 16, 9, 9))


@pytest.mark.parametrize("name", CONVS)
def test_conv_accepts_channels_last(name):
    torch.manual_seed(0)
    check_channels_last(pl.create(name, 16, 32, 3, stride=2), torch.randn(2, 16, 9, 8))


@pytest.mark.parametrize("name", ATTENTIONS)
def test_attention_accepts_channels_last(name):
    check_channels_last(pl.create(name, 32), torch.randn(2, 32, 6, 6))


@pytest.mark.parametrize("name", BLOCKS)
def test_block_accepts_channels_last(name):
    torch.manual_seed(0)
    check_channels_last(pl.create(name, 32, 64, stride=2), torch.randn(2, 32, 8, 8))


@pytest.mark.parametrize("name", CONVS)
def test_conv_compile_export_bf16(name):
    m, x = pl.create(name, 16, 16, 3), torch.randn(2, 16, 8, 8)
    check_compile_and_export(m, x)
    check_bf16_autocast(m, x)


@pytest.mark.parametrize("name", CONVS)
@pytest.mark.parametrize("bad", [dict(in_channels=0), dict(out_channels=-1), dict(stride=0), dict(groups=3)])
def test_conv_bad_arguments_raise(name, bad):
    args = dict(in_channels=16, out_channels=32, kernel_size=3) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        pl.create(name, **args)


@pytest.mark.parametrize("name", ATTENTIONS)
def test_attention_keeps_shape(name):
    check_attention_shapes(pl.get(name).factory)


@pytest.mark.parametrize("name", ATTENTIONS)
def test_attention_gradients_reach_every_parameter(name):
    check_gradients(perturb_zero_init(pl.create(name, 32)), torch.randn(2, 32, 6, 6))


@pytest.mark.parametrize("name", ATTENTIONS)
def test_attention_compile_export_bf16(name):
    m, x = pl.create(name, 32), torch.randn(2, 32, 6, 6)
    check_compile_and_export(m, x)
    check_bf16_autocast(m, x)


@pytest.mark.parametrize("name", ATTENTIONS)
def test_attention_bad_channels_raise(name):
    with pytest.raises(ValueError, match="channels"):
        pl.create(name, 0)


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("stride", [1, 2])
def test_block_shapes_and_gradients(name, stride):
    m = pl.create(name, 32, 64, stride=stride)
    x = torch.randn(2, 32, 8, 8)
    assert m.eval()(x).shape == (2, 64, 8 // stride, 8 // stride)
    check_gradients(m, x)


@pytest.mark.parametrize("name", BLOCKS)
def test_block_compile_export_bf16(name):
    m, x = pl.create(name, 32, 32), torch.randn(2, 32, 8, 8)
    check_compile_and_export(m, x)
    check_bf16_autocast(m, x)


@pytest.mark.parametrize("name", BLOCKS)
def test_block_plugs_into_resnet18(name):
    model = pl.resnet18(width=16, block=name)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", CONVS)
def test_conv_plugs_into_resnet18(name):
    model = pl.resnet18(width=16, conv=name)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", ATTENTIONS)
def test_attention_plugs_into_resnet18(name):
    model = pl.resnet18(width=16, attn=name)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_every_registered_module_names_its_paper():
    for name in pl.available():
        if name != "conv2d":
            entry = pl.get(name)
            assert entry.paper and entry.year, f"{name} should cite its paper and year"
