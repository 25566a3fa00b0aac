"""The helpers of the part page "Attention at a glance" (plugconv_lite/chapters/part_attention.py)."""
import math

import pytest
import torch
import torch.nn as nn

import plugconv_lite as pl
from plugconv_lite.chapters import part_attention as part


def test_gains_of_the_identity_are_one_and_of_a_channel_scale_are_that_scale(rng):
    x = torch.randn(2, 4, 5, 5, generator=rng)
    spatial, channel = part.gains(nn.Identity(), x)
    torch.testing.assert_close(spatial, torch.ones(2, 5, 5))
    torch.testing.assert_close(channel, torch.ones(2, 4))

    class Scale(nn.Module):
        def forward(self, t):
            return t * torch.tensor([0.5, 1.0, 2.0, 3.0])[None, :, None, None]

    _, channel = part.gains(Scale(), x)
    torch.testing.assert_close(channel, torch.tensor([[0.5, 1.0, 2.0, 3.0]] * 2))


def test_layer_costs_measure_every_module_at_one_layer():
    table = part.layer_costs(["se", "pam"], channels=16, size=8, batch=2, device="cpu", repeats=2, rounds=1)
    assert list(table.index) == ["se", "pam"]
    assert table.loc["se", "params"] == pl.count_params(pl.create("se", 16))
    assert table.loc["pam", "MFLOPs"] * 1e6 == pl.count_flops(pl.create("pam", 16), (2, 16, 8, 8))
    assert math.isnan(table.loc["se", "peak_MB"]) and (table["latency_ms"] > 0).all()
    assert table.loc["pam", "saved_MB"] > table.loc["se", "saved_MB"]


def test_probe_trains_the_stem_and_each_module_and_keeps_the_stem_frozen():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    before = pl.create("cam", 64).gamma.detach().clone()
    stem, modules, info = part.probe(["cam", "se"], x, y, num_classes=10, stem_steps=3, steps=3, batch=16)
    assert set(modules) == {"cam", "se"} and not any(m.training for m in modules.values())
    assert not torch.equal(modules["cam"].gamma.detach(), before)       # the zero-initialised gate moved
    assert not any(p.requires_grad for p in stem.parameters())
    assert all(math.isfinite(v["loss"]) for v in info.values())


def test_the_part_lists_its_own_modules_and_a_missing_one_is_an_error_naming_it():
    """A fixed list: the token mixers of a later part keep the attention contract but are not this part's."""
    assert part.PART == ("a2n", "cam", "cat", "cbam", "danet", "eca", "gc", "pam", "se", "sem", "ulsam")
    assert not {"sra", "msda", "focal", "fcvit", "lscm"} & set(part.PART)
    with pytest.raises(LookupError, match="nosuchattention"):
        part.check_registered(("se", "nosuchattention"))
