"""The helpers of the part pages "Blocks and ensembles" and "Attention across layers and scales" at a glance."""
import matplotlib
import pytest

import plugconv_lite as pl
from plugconv_lite.chapters import part_across, part_blocks

matplotlib.use("Agg")


def test_block_part_lists_its_modules_and_a_missing_one_is_an_error_naming_it():
    assert part_blocks.PART == ("sandglass", "genet", "gsconv", "vovgscsp", "cg")
    with pytest.raises(LookupError, match="nosuchblock"):
        part_blocks.check_available(("cg", "nosuchblock"))


def test_pair_costs_measure_each_module_against_what_it_replaces():
    df = part_blocks.pair_costs(["gsconv", "sandglass"], batch=2, device="cpu", repeats=1, rounds=1)
    assert list(df.index) == ["gsconv", "sandglass"]
    gs = pl.create("gsconv", 64, 64, 3)
    assert df.loc["gsconv", "params"] == pl.count_params(gs)
    assert df.loc["gsconv", "params_x"] == pytest.approx(pl.count_params(gs) / (64 * 64 * 9))
    assert df.loc["gsconv", "MFLOPs"] * 1e6 == pl.count_flops(gs, (2, 64, 32, 32))
    plain, sg = part_blocks._mobilenet_pair(64, 8)
    assert type(sg).__name__ == "SandglassBlock" and type(plain).__name__ == "InvertedResidual"
    assert df.loc["sandglass", "params_x"] == pytest.approx(pl.count_params(sg) / pl.count_params(plain))
    assert df.loc["gsconv", "saved_MB_replaced"] == 0 < df.loc["gsconv", "saved_MB"]  # a lone conv keeps only its input
    assert (df["ratio_low"] <= df["latency_x"]).all() and (df["latency_x"] <= df["ratio_high"]).all()


def test_faster_slower_splits_on_the_round_ratio_range():
    import pandas as pd
    df = pd.DataFrame({"ratio_low": [0.5, 1.1, 0.9], "ratio_high": [0.9, 1.5, 1.2]}, index=["a", "b", "c"])
    assert part_blocks.faster_slower(df) == {"faster": ["a"], "slower": ["b"], "noise": ["c"]}


def test_across_part_builds_each_option_and_names_a_missing_one():
    assert part_across.PART == ("resnet18", "se", "dca-se", "sda", "fpt", "afa")
    with pytest.raises(LookupError, match="nosuch"):
        part_across.build("nosuch")
    net = part_across.build("se", width=8)
    assert not net.threads_flow


def test_network_costs_are_ratios_to_the_plain_resnet():
    df = part_across.network_costs(["se"], width=8, batch=2, device="cpu", repeats=1, rounds=1)
    assert list(df.index) == ["resnet18", "se"]
    assert df.loc["resnet18", ["params_x", "GFLOPs_x", "saved_x"]].tolist() == [1.0, 1.0, 1.0]
    se = part_across.build("se", width=8)
    assert df.loc["se", "params_M"] * 1e6 == pytest.approx(pl.count_params(se))
    assert df.loc["se", "GFLOPs"] * 1e9 == pytest.approx(pl.count_flops(se, (1, 3, 32, 32)))


def test_flow_diagram_draws_one_arrow_per_connection():
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    from plugconv_lite import viz
    fig = viz.flow_diagram((2, 3, 1))
    try:
        arrows = [sum(isinstance(p, FancyArrowPatch) for p in ax.patches) for ax in fig.axes]
        assert arrows == [6 - 1, 6, 3]  # DCANet: blocks - 1 (the first has none); SDA: every block; head: stages
    finally:
        plt.close(fig)


def test_token_part_lists_its_mixers_and_a_missing_one_is_an_error_naming_it():
    from plugconv_lite.chapters import part_tokens
    assert part_tokens.PART == ("sra", "sra linear", "msda", "focal", "fcvit", "lscm", "ncb", "ntb", "coatnet")
    with pytest.raises(LookupError, match="nosuchmixer"):
        part_tokens.check_registered(("msda", "nosuchmixer"))


def test_token_costs_growth_exponent_and_reach():
    import pandas as pd

    from plugconv_lite.chapters import part_tokens
    df = part_tokens.cost_vs_size(["sra", "msda"], sizes=(4, 8), channels=16, device="cpu", repeats=1, rounds=1)
    sra = df[(df.module == "sra") & (df.side == 8)].iloc[0]
    assert sra["MFLOPs"] * 1e6 == pl.count_flops(part_tokens.build("sra", 16), (1, 16, 8, 8))
    synthetic = pd.DataFrame({"module": ["a", "a", "b", "b"], "N": [16, 64, 16, 64], "MFLOPs": [1.0, 4.0, 1.0, 16.0]})
    assert part_tokens.growth_exponent(synthetic) == pytest.approx({"a": 1.0, "b": 2.0})
    assert part_tokens.reach(part_tokens.BASELINE) == {"reached": 9, "of": 289, "radius": 1, "reach": "local"}
    msda = part_tokens.reach("msda")                 # dilations (1, 2): the 3x3 and the dilated-2 grid
    assert (msda["reached"], msda["radius"], msda["reach"]) == (17, 2, "dilated")
    assert part_tokens.reach("focal")["reach"] == "global"


def test_token_costs_measure_extra_settings_under_their_names():
    from plugconv_lite.attention.sra import SpatialReductionAttention
    from plugconv_lite.chapters import part_tokens
    df = part_tokens.cost_vs_size(["sra"], sizes=(8,), channels=16, device="cpu", repeats=1, rounds=1,
                                  extra={"sra R=2": ("sra", {"sr_ratio": 2})})
    got = df.set_index("module")["MFLOPs"] * 1e6
    assert got["sra R=2"] == pl.count_flops(SpatialReductionAttention(16, sr_ratio=2), (1, 16, 8, 8))
    assert got["sra R=2"] < got["sra"]
    with pytest.raises(ValueError, match="'sra' repeats"):
        part_tokens.cost_vs_size(["sra"], sizes=(8,), channels=16, device="cpu", extra={"sra": ("sra", {})})
