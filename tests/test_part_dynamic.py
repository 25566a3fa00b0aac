"""The helpers of the part page "Dynamic convolutions at a glance" (plugconv_lite/chapters/part_dynamic.py)."""
import math

import pytest

import plugconv_lite as pl
from plugconv_lite.chapters import part_dynamic as part


def test_the_part_lists_its_eight_modules_and_a_missing_one_is_an_error_naming_it():
    assert part.DYNAMIC == ("condconv", "dyconv", "weightnet", "dgc", "drconv", "dcd", "odconv", "dcdc")
    with pytest.raises(LookupError, match="nosuchconv"):
        part.check_registered(("dcdc", "nosuchconv"))
    assert part.check_registered(("dcdc",)) == ("dcdc",)


def test_layer_costs_measure_against_the_plain_conv():
    table = part.layer_costs(["dcdc"], channels=16, size=8, batch=2, device="cpu", repeats=2, rounds=1)
    assert list(table.index) == ["conv2d", "dcdc"]
    m = part.build("dcdc", 16)
    assert float(m.T) == 1.0                                    # set to the end of its schedule
    assert table.loc["dcdc", "params"] == pl.count_params(m)
    assert table.loc["dcdc", "MFLOPs"] * 1e6 == pl.count_flops(m, (2, 16, 8, 8))
    assert table.loc["conv2d", "params_x"] == 1.0 and table.loc["dcdc", "params_x"] > 1
    assert table.loc["dcdc", "MFLOPs_x"] == pytest.approx(table.loc["dcdc", "MFLOPs"] / table.loc["conv2d", "MFLOPs"])
    assert math.isnan(table.loc["dcdc", "peak_MB"]) and (table["latency_ms"] > 0).all()
    # a plain conv keeps only its input and weight (not counted); DCDC keeps its kernels and branch activations
    assert table.loc["dcdc", "saved_MB"] > table.loc["conv2d", "saved_MB"] == 0


def test_flops_vs_latency_draws_each_modules_ratios_in_every_panel():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from plugconv_lite import viz

    t1 = pd.DataFrame({"MFLOPs_x": [1.0, 0.25, 8.0], "latency_x": [1.3, 1.5, 12.0]}, index=["a", "b", "c"])
    t64 = t1 * 2
    import matplotlib.pyplot as plt

    fig = viz.flops_vs_latency({"batch 1": t1, "batch 64": t64}, ["c", "a"])
    try:
        assert [ax.get_title() for ax in fig.axes] == ["batch 1", "batch 64"]
        for ax, t in zip(fig.axes, (t1, t64)):
            widths = [p.get_width() for p in ax.patches]
            assert widths == [t.loc["c", "MFLOPs_x"], t.loc["a", "MFLOPs_x"]]  # one bar per module, in order
            dots = ax.collections[0].get_offsets()
            assert list(dots[:, 0]) == [t.loc["c", "latency_x"], t.loc["a", "latency_x"]]
    finally:
        plt.close(fig)  # a figure left open fails test_widgets' check that explore closes its frames
