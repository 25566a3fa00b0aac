import math

import pytest
import torch
import torch.nn as nn

import plugconv_lite as pl
from plugconv_lite.measure import count_flops, latency


@pytest.mark.parametrize("c_in,c_out,k,groups,stride,h", [(16, 32, 3, 1, 1, 8), (32, 32, 3, 32, 2, 9),
                                                         (12, 24, 5, 4, 1, 7)])
def test_conv_flops_are_twice_the_macs(c_in, c_out, k, groups, stride, h):
    conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
    out = (h + 2 * (k // 2) - k) // stride + 1
    assert count_flops(conv, (1, c_in, h, h)) == 2 * c_out * out * out * (c_in // groups) * k * k
    assert pl.count_params(conv) == c_out * c_in // groups * k * k


def test_einsum_flops_are_counted():
    class Einsum(nn.Module):
        def forward(self, x):
            return torch.einsum("bij,bjk->bik", x, x)

    assert count_flops(Einsum(), (2, 4, 4)) == 2 * 2 * 4 * 4 * 4


@pytest.mark.parametrize("shapes", [((2, 1, 16, 32),) * 3, ((2, 1, 16, 8), (2, 1, 16, 8), (2, 1, 16, 32))])
def test_scaled_dot_product_attention_flops_are_counted_on_every_path(shapes):
    """Equal head widths take the CPU's fused flash kernel (which torch's counter alone counts as 0 FLOPs), unequal
    ones the decomposed math path: both count the two matrix products, 2 x MACs."""
    class Attention(nn.Module):
        def forward(self, x):
            q, k, v = (x[..., :s[-1]] for s in shapes)
            return nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0)

    (B, h, L, E), _, (*_, Ev) = shapes
    assert count_flops(Attention(), (B, h, L, 32)) == 2 * B * h * L * L * (E + Ev)


def test_saved_activations_count_what_backward_keeps_once():
    from plugconv_lite.measure import saved_activation_mb
    # Linear saves its input and weight (not counted); ReLU saves its output: 4 x 16 floats. BN's statistics stay.
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.BatchNorm1d(16)).eval()
    before = m[2].running_mean.clone()
    mb = saved_activation_mb(m, (4, 8))
    assert torch.equal(m[2].running_mean, before) and not m.training
    # ReLU's output is also what BN saves as its input: one storage, counted once; BN also saves the batch's mean
    # and inverse std (2 x 16 floats) and its running statistics (buffers: not counted)
    assert mb * 2 ** 20 == 4 * 16 * 4 + 2 * 16 * 4


def test_saved_activations_of_explicit_attention_grow_with_the_square_of_the_positions():
    from plugconv_lite.attention import PositionAttention
    from plugconv_lite.measure import saved_activation_mb
    m = PositionAttention(16, fused=False)
    mb = {s: saved_activation_mb(m, (1, 16, s, s)) for s in (8, 16)}
    n8, n16 = 64, 256
    # the N x N softmax output (float32) is kept, plus terms linear in N
    assert mb[16] - mb[8] >= 4 * (n16 ** 2 - n8 ** 2) / 2 ** 20


def test_params_exclude_buffers_and_can_exclude_frozen():
    m = nn.Linear(3, 4)
    m.register_buffer("frozen", torch.ones(100))
    m.bias.requires_grad_(False)
    assert pl.count_params(m) == 16 and pl.count_params(m, trainable_only=True) == 12


def test_latency_median_and_iqr():
    med, iqr, samples = latency(nn.Conv2d(3, 8, 3), (1, 3, 16, 16), warmup=2, repeats=9)
    assert len(samples) == 9 and med > 0 and iqr >= 0 and samples.min() <= med <= samples.max()


def test_measure_and_compare():
    m = pl.measure(pl.resnet20(), timing=False)
    assert m.params == 278_324 and math.isnan(m.latency_ms) and math.isnan(m.peak_memory_mb)
    df = pl.compare({"r20": pl.resnet20(), "r20-se": pl.resnet20(attn="se")}, repeats=5)
    assert list(df.index) == ["r20", "r20-se"]
    assert df.loc["r20", "params_ratio"] == 1.0 and df.loc["r20-se", "params_ratio"] > 1.0
    assert (df["latency_ms"] > 0).all() and df.loc["r20", "MFLOPs"] == df.loc["r20", "flops"] / 1e6
    with pytest.raises(ValueError, match="baseline='x'"):
        pl.compare({"a": nn.Identity()}, baseline="x")


def test_summary_mentions_layers():
    s = pl.summary(pl.resnet20(), depth=2)
    assert "BasicBlock" in s and "Total params: 278,324" in s


def test_compare_reports_per_round_latency_ratios():
    df = pl.compare({"a": nn.Conv2d(3, 8, 3), "b": nn.Conv2d(3, 8, 3)}, input_size=(1, 3, 8, 8), repeats=6, rounds=3)
    assert df.attrs == {"baseline": "a", "rounds": 3}
    assert (df.loc["a", ["latency_ms_ratio", "ratio_low", "ratio_high"]] == 1.0).all()
    assert df.loc["b", "ratio_low"] <= df.loc["b", "latency_ms_ratio"] <= df.loc["b", "ratio_high"]


def test_latency_statement_calls_an_interval_containing_one_noise():
    import pandas as pd
    df = pd.DataFrame({"device": ["cpu"] * 3, "batch_size": [16] * 3, "latency_ms_ratio": [1.0, 1.05, 1.8],
                       "ratio_low": [1.0, 0.9, 1.6], "ratio_high": [1.0, 1.3, 2.1]}, index=["base", "same", "slow"])
    df.attrs.update(baseline="base", rounds=7)
    assert "no latency difference beyond the timing noise" in pl.latency_statement(df, "same")
    assert pl.latency_statement(df, "slow").startswith("slow takes x1.80 the latency of base (cpu, batch 16;")


def test_per_sample_loop_equals_the_module_and_costs_one_call_per_sample():
    from plugconv_lite.measure import PerSampleLoop

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.calls = nn.Conv2d(3, 4, 3, padding=1), 0

        def forward(self, x):
            self.calls += 1
            return self.conv(x)

    m = Counting()
    loop = PerSampleLoop(m)
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(loop(x), m(x))
    assert m.calls == 5 + 1
    assert pl.count_params(loop) == pl.count_params(m)  # shares the module's parameters


def test_saved_activations_of_a_model_that_cannot_train_on_the_input_raise_or_give_nan():
    """A BatchNorm on pooled features cannot train at batch 1: ValueError by default, NaN when asked, and the
    model's mode and BN statistics are restored either way."""
    from plugconv_lite.measure import saved_activation_mb
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4)).eval()
    before = [b.clone() for b in m.buffers()]
    with pytest.raises(ValueError):
        saved_activation_mb(m, (1, 3, 8, 8))
    assert math.isnan(saved_activation_mb(m, (1, 3, 8, 8), nan_if_untrainable=True))
    assert not m.training and all(torch.equal(a, b) for a, b in zip(before, m.buffers()))
    assert saved_activation_mb(m, (2, 3, 8, 8), nan_if_untrainable=True) > 0
