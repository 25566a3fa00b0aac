import json

import pytest
import torch

from plugconv_lite import experiments, provenance, results
from plugconv_lite.data import synthetic_cifar100
from plugconv_lite.profiles import PROFILES


def _record(variant, seed, top1, profile="full", source="cifar100"):
    return {"profile": profile, "backbone": "resnet18", "variant": variant, "config_hash": f"h-{variant}",
            "seed": seed, "final": {"test_top1": top1, "test_top5": top1 + 20},
            "cost": {"params": 1_000_000, "flops": 2_000_000, "latency_ms": 1.0},
            "throughput": {"train_images_per_s": 100.0}, "wall_time_s": 60.0, "hardware": {"device": "H100"},
            "data": {"source": source}, "versions": {"torch": "2.x"}, "git": {"commit": "abcdef123"},
            "date": "2026-11-21T00:00:00+00:00", "history": []}


def test_write_is_atomic_and_readable(tmp_path):
    path = tmp_path / "a" / "b.json"
    results.write({"profile": "smoke", "x": 1}, path)
    assert results.read(path)["x"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temporary left behind


def test_committed_store_refuses_smoke_and_synthetic_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGCONV_RESULTS", str(tmp_path / "results"))
    with pytest.raises(ValueError, match="refusing to write a smoke run"):
        results.write(_record("se", 0, 1.0, profile="smoke"), tmp_path / "results" / "x.json")
    with pytest.raises(ValueError, match="on synthetic data"):
        results.write(_record("se", 0, 1.0, source="synthetic"), tmp_path / "results" / "x.json")
    results.write(_record("se", 0, 70.0), tmp_path / "results" / "cifar100" / "full" / "ok.json")


def test_table_means_stds_and_deltas():
    recs = [_record("baseline", s, t) for s, t in enumerate([70.0, 72.0, 74.0])] + \
           [_record("se", s, t) for s, t in enumerate([73.0, 73.0, 76.0])]
    df = results.table(recs).set_index("variant")
    assert df.loc["baseline", "seeds"] == 3 and df.loc["baseline", "top1_mean"] == pytest.approx(72.0)
    assert df.loc["baseline", "top1_std"] == pytest.approx(2.0)
    assert df.loc["se", "delta_top1"] == pytest.approx(2.0) and df.loc["baseline", "delta_top1"] == 0.0
    # Welch: variances 3 and 4 over 3 seeds -> df = 3.92, half-width t(0.975, 3.92) * sqrt(7/3) = 4.2754
    assert df.loc["se", "delta_low"] == pytest.approx(2.0 - 4.27544, abs=1e-4)
    assert df.loc["se", "resolvable"] == pytest.approx(4.27544, abs=1e-4)


@pytest.mark.parametrize("p, df, expected", [(0.975, 1, 12.7062047), (0.975, 2, 4.3026527), (0.975, 4, 2.7764451),
                                             (0.975, 10, 2.2281389), (0.975, 1000, 1.9623391), (0.95, 3, 2.3533634),
                                             (0.025, 5, -2.5705818)])
def test_t_quantile_matches_tables(p, df, expected):
    assert results.t_quantile(p, df) == pytest.approx(expected, abs=1e-6)


def test_welch_interval_and_its_edge_cases():
    w = results.welch([73.0, 73.0, 76.0], [70.0, 72.0, 74.0])
    assert w["delta"] == pytest.approx(2.0) and w["df"] == pytest.approx(3.92)
    assert w["low"] == pytest.approx(-2.27544, abs=1e-4) and w["high"] == pytest.approx(6.27544, abs=1e-4)
    one = results.welch([73.0], [70.0, 72.0])
    assert one["delta"] == pytest.approx(2.0) and one["low"] != one["low"]  # NaN: no interval from one seed
    same = results.welch([1.0, 1.0], [0.0, 0.0])
    assert same["low"] == same["high"] == 1.0
    with pytest.raises(ValueError, match="level"):
        results.welch([1.0, 2.0], [1.0, 2.0], level=1.5)


def test_verdict_is_decided_by_the_interval():
    base = [_record("baseline", s, t) for s, t in enumerate([70.0, 70.5, 71.0])]
    better = [_record("a", s, t) for s, t in enumerate([72.0, 72.5, 73.0])]
    noisy = [_record("b", s, t) for s, t in enumerate([68.0, 74.0, 71.5])]
    single = [_record("c", 0, 75.0)]
    tab = results.table(base + better + noisy + single)
    assert "better; the interval excludes zero" in results.verdict(tab, "a")
    assert "not resolved" in results.verdict(tab, "b")
    assert "no confidence interval" in results.verdict(tab, "c")
    worse = results.table(base + [_record("d", s, t) for s, t in enumerate([60.0, 60.5, 61.0])])
    assert "worse" in results.verdict(worse, "d")


def test_empty_table_has_columns():
    df = results.table([])
    assert len(df) == 0 and "top1_mean" in df.columns


def test_load_filters_by_profile_and_chapter(tmp_path):
    for i, (prof, chapters) in enumerate([("full", ["se"]), ("full", ["doconv"]), ("colab", ["se"])]):
        r = _record("v", i, 50.0, profile=prof) | {"chapters": chapters}
        results.write(r, tmp_path / "cifar100" / prof / f"r{i}.json")
    assert len(results.load(tmp_path)) == 3
    assert len(results.load(tmp_path, profile="full")) == 2
    assert len(results.load(tmp_path, profile="full", chapter="se")) == 1


def test_experiment_writes_a_record_and_reuses_it(tmp_path):
    prof = PROFILES["smoke"].with_(width=4, batch_size=50, train_images=200, test_images=100)
    ds = synthetic_cifar100(train=400, test=200, num_classes=10, quiet=True)
    v = experiments.Variant("se", {"attn": "se"})
    rec = experiments.experiment(v, prof, seed=0, chapter="se", data=ds, store=tmp_path, progress=False)
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1 and files[0].parent.parts[-2:] == ("synthetic", "smoke")
    assert rec["variant"] == "se" and rec["data"]["source"] == "synthetic" and rec["chapters"] == ["se"]
    assert rec["cost"]["params"] > 0 and rec["cost"]["flops"] > 0 and len(rec["history"]) == 1
    assert rec["cost"]["latency_ms"] > 0 and rec["cost"]["latency_b256_ms"] is None  # smoke: batch 1, briefly
    assert rec["cost"]["latency_dtype"] == "float32" and rec["cost"]["latency_folded"]  # bf16 on a GPU only
    assert rec["throughput"]["first_step_s"] > 0 and not rec["throughput"]["compiled"]
    assert "plugconv_lite/attention/se.py" in rec["code"]["files"] and rec["code"]["sha"]
    assert provenance.check(rec["code"]) == []
    again = experiments.experiment(v, prof, seed=0, data=ds, store=tmp_path, progress=False)
    assert again["date"] == rec["date"]  # loaded, not re-trained
    other = experiments.experiment(v, prof, seed=1, data=ds, store=tmp_path, progress=False)
    assert other["seed"] == 1 and len(list(tmp_path.rglob("*.json"))) == 2
    assert json.loads(files[0].read_text())["config_hash"] == rec["config_hash"]


def test_every_chapter_experiment_has_a_baseline_and_builds():
    prof = PROFILES["smoke"]
    for chapter, variants in experiments.EXPERIMENTS.items():
        assert variants[0].name == "baseline", chapter
        for v in variants:
            json.dumps(v.model_kw)  # hashable into the record's config
            assert v.build(prof) is not None


def test_throughput_leaves_the_first_step_out_and_reports_compile_time():
    history = [{"train_images": 1000, "train_time_s": 12.0}, {"train_images": 1000, "train_time_s": 2.0}]
    t = experiments.throughput(history, first_step_s=10.2, batch_size=100, compiled=True)
    assert t["train_images_per_s_overall"] == pytest.approx(2000 / 14)
    assert t["train_images_per_s"] == pytest.approx(1900 / 3.8)  # 19 steady steps in 3.8 s
    assert t["compile_s"] == pytest.approx(10.2 - 0.2)  # the first step less one steady step
    eager = experiments.throughput(history, first_step_s=0.3, batch_size=100, compiled=False)
    assert eager["compile_s"] is None and eager["train_images_per_s"] == pytest.approx(1900 / 13.7)


def test_deployed_latency_times_a_folded_copy_and_leaves_the_model_alone():
    import plugconv_lite as pl
    model = pl.resnet20(num_classes=10, width=8, conv="doconv")
    cost = experiments.deployed_latency(model, torch.device("cpu"))
    assert cost["latency_folded"] and cost["latency_channels_last"] and cost["latency_ms"] > 0
    assert any(type(m).__name__ == "DOConv2d" for m in model.modules())  # the trained model is not folded


def test_equal_budget_control_matches_the_target_within_one_width_step():
    spd = experiments.Variant("spd", {"conv": "spdconv", "conv_where": "strided"})
    prof = PROFILES["smoke"]
    for budget in ("params", "flops"):
        control = experiments.Variant("plain", budget_of=spd, budget=budget)
        kw = control.resolve_kw(prof)
        target = experiments.cost_of(spd.build(prof), budget)
        cost = lambda w: experiments.cost_of(experiments.BASELINE.build(prof, model_kw={"width": w}), budget)
        assert cost(kw["width"] - 1) < target < cost(kw["width"] + 1)
        assert abs(cost(kw["width"]) - target) <= min(abs(cost(kw["width"] - 1) - target),
                                                      abs(cost(kw["width"] + 1) - target))
        assert experiments.prepare(control, prof)[0] == kw  # what the record's config holds
    with pytest.raises(ValueError, match="budget_of chooses the width"):
        experiments.Variant("x", {"width_mult": 2.0}, budget_of=spd)
    with pytest.raises(ValueError, match="budget="):
        experiments.Variant("x", budget_of=spd, budget="latency")


def test_equal_budget_control_on_mobilenetv2_matches_through_width_mult():
    """MobileNetV2 takes ``width_mult``, not ``width``: the control's matched width is a multiplier, the closest to
    the target of the multipliers one search step (0.01) either side."""
    plain = experiments.Variant("baseline", backbone="mobilenetv2")
    prof = PROFILES["smoke"]
    control = experiments.Variant("sandglass_budget", {"block": "sandglass"}, backbone="mobilenetv2",
                                  budget_of=plain, budget="params")
    kw = control.resolve_kw(prof)
    assert "width" not in kw and kw["block"] == "sandglass" and kw["width_mult"] > 1  # the sandglass net widened
    target = experiments.cost_of(plain.build(prof), "params")
    cost = lambda m: experiments.cost_of(control.build(prof, model_kw={**kw, "width_mult": m}), "params")
    m = kw["width_mult"]
    assert cost(m) == experiments.cost_of(control.build(prof), "params")
    assert cost(m - 0.01) <= target <= cost(m + 0.01)
    assert abs(cost(m) - target) <= min(abs(cost(m - 0.01) - target), abs(cost(m + 0.01) - target))
    assert experiments.prepare(control, prof)[0] == kw


def test_mobilenetv2_is_narrowed_on_the_smoke_profile_as_the_resnet():
    """width_mult is relative to the profile's width / 64: the full network on the full profile, a quarter of it on
    the smoke profile (whose ResNet-18 has width 16)."""
    plain = experiments.Variant("baseline", backbone="mobilenetv2")
    half = experiments.Variant("half", {"width_mult": 0.5}, backbone="mobilenetv2")
    assert plain.build(PROFILES["full"]).stem[0].out_channels == 32
    assert plain.build(PROFILES["smoke"]).stem[0].out_channels == 8      # make_divisible(32 / 4, 8)
    assert half.build(PROFILES["full"]).blocks[-1].body[-1].num_features == 160   # 320 / 2
    assert half.build(PROFILES["smoke"]).blocks[-1].body[-1].num_features == 40    # 320 / 8


def test_shapes_only_counts_like_a_real_network_and_falls_back_to_the_cpu():
    def build_and_count():
        m = experiments.Variant("danet", {"attn": "danet"}).build(PROFILES["smoke"])
        return m.fc.weight.device.type, experiments.count_params(m), experiments.count_flops(m)

    device, params, flops = experiments.shapes_only(build_and_count)
    real = experiments.Variant("danet", {"attn": "danet"}).build(PROFILES["smoke"])
    assert device == "meta" and (params, flops) == (experiments.count_params(real), experiments.count_flops(real))

    def needs_values():
        if torch.zeros(1).item() != 0:  # .item() has no value on the meta device
            raise AssertionError
        return torch.zeros(1).device.type

    assert experiments.shapes_only(needs_values) == "cpu"


def test_matched_width_finds_the_closest_integer():
    assert experiments.matched_width(lambda w: w * w, 50, start=16) == 7
    assert experiments.matched_width(lambda w: w * w, 1, start=16) == 1
    assert experiments.matched_width(lambda w: 10 * w, 1000, start=4) == 100


def test_data_line_is_one_line_without_paths():
    prof = PROFILES["smoke"]
    ds = synthetic_cifar100(train=400, test=200, quiet=True)
    line = experiments.data_line(ds, prof)
    assert "\n" not in line and "/" not in line and "400 training" in line


def test_chapter_verdict_names_the_backbone_of_the_chapters_baseline(monkeypatch):
    """The sandglass chapter's ratios are relative to MobileNetV2, not to the ResNet-18 the other chapters use."""
    import IPython.display
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj.data))
    experiments.chapter_verdict("sandglass")
    experiments.chapter_verdict("se")
    assert shown[0].startswith("**Cost** (MobileNetV2 at width_mult 1, one 32×32 image")
    assert shown[1].startswith("**Cost** (ResNet-18 at width 64, one 32×32 image")
