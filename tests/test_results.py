import json

import pytest

from plugconv_lite import experiments, results
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
