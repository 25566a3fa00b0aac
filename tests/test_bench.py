"""bench: the worker protocol in-process, and the parent's levels with real worker processes at tiny sizes."""
import io
import json

import pytest

from plugconv_lite import bench, campaign
from plugconv_lite.profiles import PROFILES

TINY = ["width=4", "train_images=200", "test_images=100", "batch_size=50"]


def test_worker_reports_ready_then_the_images_it_trained_in_the_time_asked():
    out = io.StringIO()
    prof = campaign.apply_overrides(PROFILES["smoke"], TINY)
    bench.worker(prof, compile=False, warmup_steps=2, stdin=io.StringIO("run 0.2\nrun 0.1\nquit\n"), stdout=out)
    msgs = [json.loads(line[len(bench.PREFIX):]) for line in out.getvalue().splitlines()]
    assert [m["event"] for m in msgs] == ["ready", "result", "result"]
    assert msgs[0]["first_step_s"] > 0 and msgs[0]["warmup_s"] >= msgs[0]["first_step_s"]
    for m, asked in zip(msgs[1:], (0.2, 0.1)):
        assert m["seconds"] >= asked and m["images"] > 0 and m["images"] % 50 == 0  # whole batches


def test_worker_rejects_an_unknown_command():
    prof = campaign.apply_overrides(PROFILES["smoke"], TINY)
    with pytest.raises(ValueError, match="unknown command"):
        bench.worker(prof, compile=False, warmup_steps=1, stdin=io.StringIO("fly 1\n"), stdout=io.StringIO())


def test_bench_measures_each_concurrency_with_worker_processes(tmp_path):
    res = bench.bench([2, 1], seconds=0.3, modes=["eager"], profile="smoke", overrides=TINY, warmup_steps=2,
                      out=tmp_path / "bench.json", startup_timeout=240, log=lambda s: None)
    levels = res["modes"]["eager"]["levels"]
    assert sorted(levels) == ["1", "2"] and len(levels["2"]["images_per_s"]) == 2
    for lvl in levels.values():
        assert lvl["aggregate_images_per_s"] == pytest.approx(sum(lvl["images_per_s"])) and sum(lvl["images_per_s"]) > 0
    assert json.loads((tmp_path / "bench.json").read_text())["best"]["concurrency"] in (1, 2)
    assert res["device"] == "CPU" and res["modes"]["eager"]["compile_s"] > 0


def test_bench_rejects_bad_arguments():
    with pytest.raises(ValueError, match="concurrency=0 must be >= 1"):
        bench.bench([0], profile="smoke")
    with pytest.raises(ValueError, match="modes"):
        bench.bench([1], modes=["fast"], profile="smoke")
