"""The campaign: what it plans, how it estimates, that it keeps to its budget, packs as it goes and resumes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_records import pack as make_pack
from fake_records import record

from plugconv_lite import campaign, experiments, results
from plugconv_lite.campaign import Estimator, Job, Scheduler
from plugconv_lite.profiles import PROFILES

ROOT = Path(__file__).resolve().parent.parent
FULL = PROFILES["full"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGCONV_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("PLUGCONV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "results"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


class FakeProc:
    """A job that ends ``duration`` seconds (of the fake clock) after it started, calling ``on_exit`` then."""

    def __init__(self, clock, duration, rc=0, on_exit=None):
        self.clock, self.end, self.rc, self.on_exit = clock, clock() + duration, rc, on_exit
        self.terminated = False

    def poll(self):
        if self.clock() < self.end:
            return None
        if self.on_exit is not None:
            self.on_exit()
            self.on_exit = None
        return self.rc

    def terminate(self):
        self.terminated, self.rc, self.on_exit = True, -15, None
        self.end = self.clock()

    def wait(self, timeout=None):
        return self.rc

    def kill(self):
        self.terminate()


def _run(jobs, *, budget, concurrency, estimate, duration, rc=lambda j: 0):
    clock, spans, procs = Clock(), {}, {}

    def launch(job):
        spans[job.key] = [clock(), None]
        procs[job.key] = FakeProc(clock, duration(job), rc(job))
        return procs[job.key]

    def finish(job, code, took):
        spans[job.key][1] = clock()
        return code == 0

    lines = []
    sched = Scheduler(jobs, budget_s=budget, concurrency=concurrency, estimate=estimate, launch=launch,
                      finish=finish, clock=clock, sleep=clock.sleep, log=lines.append).run()
    return sched, spans, procs, lines


def _overlap(spans):
    """Most jobs running at one time."""
    events = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values() if b is not None])
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def test_scheduler_runs_in_order_within_the_concurrency_and_never_starts_what_cannot_finish():
    jobs = [Job("run", f"j{i}", variant="v", seed=i) for i in range(5)]
    sched, spans, _, lines = _run(jobs, budget=250, concurrency=2, estimate=lambda j: 100, duration=lambda j: 90)
    assert sched.done == ["j0", "j1", "j2", "j3"] and sched.skipped == ["j4"]
    assert _overlap(spans) == 2
    assert spans["j2"][0] == pytest.approx(90, abs=1)  # started as soon as a slot freed
    assert all(end <= 250 for _, end in spans.values())
    assert not any("j4" in line and "start" in line for line in lines)


def test_exclusive_job_runs_alone_last_in_the_time_reserved_for_it():
    runs = [Job("run", f"r{i}", variant="v", seed=i) for i in range(3)]
    lat = Job("latency", "latency", tier=3)
    sched, spans, _, _ = _run(runs + [lat], budget=250, concurrency=1,
                              estimate=lambda j: 40 if j.exclusive else 100,
                              duration=lambda j: 30 if j.exclusive else 90)
    # r0 at 0 and r1 at 90 fit with 40 s reserved for the latency job; r2 at 180 would not
    assert sched.done == ["r0", "r1", "latency"] and sched.skipped == ["r2"]
    assert spans["latency"][0] >= spans["r1"][1]
    two = [Job("run", f"s{i}", variant="v", seed=i) for i in range(4)]
    sched, spans, _, _ = _run(two + [lat], budget=1000, concurrency=2, estimate=lambda j: 100,
                              duration=lambda j: 90)
    others = [s for k, s in spans.items() if k != "latency"]
    assert all(b <= spans["latency"][0] or a >= spans["latency"][1] for a, b in others)  # nothing beside it


def test_runs_whose_preparation_failed_are_skipped():
    prep = Job("prepare", "p", variant="icconv")
    jobs = [prep, Job("run", "a", variant="icconv", seed=0, needs="p"), Job("run", "b", variant="se", seed=0)]
    sched, spans, _, lines = _run(jobs, budget=1000, concurrency=2, estimate=lambda j: 10, duration=lambda j: 5,
                                  rc=lambda j: 1 if j.kind == "prepare" else 0)
    assert sched.failed == ["p"] and sched.done == ["b"] and "a" in sched.skipped and "a" not in spans
    assert any("skip" in line and "its preparation did not succeed" in line for line in lines)
    jobs = [prep, Job("run", "a", variant="icconv", seed=0, needs="p")]
    sched, spans, _, _ = _run(jobs, budget=1000, concurrency=2, estimate=lambda j: 10, duration=lambda j: 5)
    assert sched.done == ["p", "a"] and spans["a"][0] >= spans["p"][1]  # waited for its preparation


def test_a_job_still_running_when_the_budget_ends_is_stopped():
    sched, spans, procs, _ = _run([Job("run", "slow", variant="v", seed=0)], budget=100, concurrency=1,
                                  estimate=lambda j: 10, duration=lambda j: 1000)
    assert sched.stopped == ["slow"] and procs["slow"].terminated and not sched.done


def test_scheduler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="concurrency=0 must be >= 1"):
        Scheduler([], budget_s=10, concurrency=0, estimate=None, launch=None, finish=None)
    with pytest.raises(ValueError, match="budget_s=0.0 must be > 0"):
        Scheduler([], budget_s=0, concurrency=1, estimate=None, launch=None, finish=None)


def test_estimates_come_from_measurements_scaled_to_the_concurrency(store):
    base, se = Job("run", "b", variant="baseline", seed=0), Job("run", "s", variant="se", seed=0)
    est = Estimator(FULL, 4)
    assert est.raw(base) == campaign.DEFAULT_RUN_S["full"]
    assert Estimator(FULL, 8).raw(base) == 2 * campaign.DEFAULT_RUN_S["full"]
    assert est(base) == pytest.approx(campaign.SAFETY * est.raw(base) + campaign.MARGIN_S)
    rec = record("baseline", 0)
    rec["campaign"] = {"process_wall_s": 100.0, "concurrency": 2}
    assert Estimator(FULL, 4, [rec]).raw(base) == 200.0  # twice the runs sharing the GPU: at most twice as long
    assert Estimator(FULL, 1, [rec]).raw(base) == 100.0  # fewer: no longer than measured
    est = Estimator(FULL, 2, [rec])
    assert est.raw(se) == campaign.UNMEASURED_FACTOR * 100.0
    by_flops = Estimator(FULL, 2, [rec], flops_ratio={"se": 1.01, "c2sp": 0.5})
    assert by_flops.raw(se) == pytest.approx(campaign.FLOPS_FACTOR * 1.01 * 100.0)
    assert by_flops.raw(Job("run", "c", variant="c2sp", seed=0)) == campaign.FLOPS_FACTOR * 100.0  # never below
    est.observe(se, 50.0)
    assert est.raw(se) == 50.0
    assert est.raw(Job("prepare", "resnet18__edo__x", variant="icconv")) == 2 * campaign.UNMEASURED_FACTOR * 100.0
    bench = {"modes": {"compiled": {"compile_s": 60.0, "levels": {"4": {"aggregate_images_per_s": 40_000.0}}}}}
    images = FULL.epochs * 50_000
    assert Estimator(FULL, 4, bench=bench).raw(base) == pytest.approx(images / 10_000 + 60 + campaign.OVERHEAD_S)
    lat = Job("latency", "latency")
    assert Estimator(FULL, 4).raw(lat, variants=10) == campaign.LATENCY_S[0] + 10 * campaign.LATENCY_S[1]


def test_choose_takes_the_concurrency_and_mode_that_finish_most_runs():
    assert campaign.choose(None, FULL) == (campaign.DEFAULT_CONCURRENCY, None)
    levels = {"1": 10_000.0, "2": 30_000.0, "4": 30_500.0, "8": 15_000.0}  # more than 4 at once thrashes
    bench = {"modes": {"eager": {"compile_s": 1.0, "levels": {
        n: {"aggregate_images_per_s": a} for n, a in levels.items()}}}}
    assert campaign.choose(bench, FULL) == (4, False)
    bench["modes"]["compiled"] = {"compile_s": 30.0, "levels": {
        n: {"aggregate_images_per_s": 2 * a} for n, a in levels.items()}}
    assert campaign.choose(bench, FULL) == (4, True)  # twice the rate pays for 30 s of compilation
    bench["modes"]["compiled"]["compile_s"] = 3000.0
    assert campaign.choose(bench, FULL) == (4, False)  # an hour of compiling does not


def test_plan_puts_baseline_seeds_first_then_one_seed_of_each_variant_then_the_rest(store):
    jobs = campaign.plan("full")
    runs = [j for j in jobs if j.kind == "run"]
    unique = [v for v, _ in campaign.unique_variants()]
    variants = {v.name for v in unique}
    n_base = 3 * sum(v.name == "baseline" for v in unique)  # one baseline per backbone (MobileNetV2's: sandglass)
    assert [(j.variant, j.seed) for j in runs[:n_base]] == [("baseline", s) for _ in range(n_base // 3)
                                                             for s in (0, 1, 2)]
    shared = {c for c, vs in experiments.EXPERIMENTS.items() if experiments.BASELINE in vs}
    assert set(runs[0].chapters) == shared  # the shared ResNet baseline runs once
    first = runs[n_base:n_base + len(unique) - n_base // 3]
    assert {j.variant for j in first} == variants - {"baseline"} and {j.seed for j in first} == {0}
    assert [j.seed for j in runs[n_base + len(first):]] == sorted(j.seed for j in runs[n_base + len(first):])
    assert len(runs) == 3 * len(unique)
    assert len({j.key for j in jobs}) == len(jobs) and jobs[-1].kind == "latency"
    prepared = [v.name for vs in experiments.EXPERIMENTS.values() for v in vs if v.prepare]
    for name in prepared:  # the preparation comes right before the first run that needs it
        i = next(i for i, j in enumerate(jobs) if j.variant == name and j.kind == "run")
        assert jobs[i - 1].kind == "prepare" and jobs[i].needs == jobs[i - 1].key


def test_plan_skips_what_the_store_or_the_pack_holds(store):
    rec = record("baseline", 0)
    results.write(rec, results.entry_path("records", rec, store))
    se0 = record("se", 0, model_kw={"attn": "se"})
    jobs = campaign.plan("full", chapters=["se"], done=[results.entry_name("records", se0)], latency=False)
    assert [(j.variant, j.seed, j.tier) for j in jobs] == [("baseline", 1, 0), ("baseline", 2, 0), ("se", 1, 2),
                                                           ("se", 2, 2)]
    assert jobs[2].key == results.entry_name("records", record("se", 1, model_kw={"attn": "se"}))


def test_a_prepared_variant_is_keyed_by_its_artefact_once_it_exists(store, tmp_path):
    v = next(v for vs in experiments.EXPERIMENTS.values() for v in vs if v.prepare)
    chapter = next(c for c, vs in experiments.EXPERIMENTS.items() if v in vs)
    jobs = campaign.plan("full", chapters=[chapter], variants=[v.name], latency=False)
    assert jobs[0].kind == "prepare" and all(j.needs == jobs[0].key for j in jobs[1:])
    pconf = experiments.prepare_config(v, FULL, 100, 50_000, 10_000)
    art = {"kind": "prepare", "prepare": v.prepare, "profile": "full", "backbone": "resnet18",
           "config_hash": results.config_hash(pconf), "config": pconf, "output": {"model_kw": {"conv_kw": {}}}}
    work = tmp_path / "work"
    results.write(art, results.entry_path("artefacts", art, work))
    assert jobs[0].key == results.entry_path("artefacts", art, work).stem
    jobs = campaign.plan("full", chapters=[chapter], variants=[v.name], extra_stores=[work], latency=False)
    config = experiments.run_config(v, FULL, experiments.merge_kw(v.model_kw, {"conv_kw": {}}), 100, 50_000,
                                    10_000, art)
    assert [j.kind for j in jobs] == ["run"] * 3 and not jobs[0].needs
    assert jobs[0].key == f"resnet18__{v.name}__{results.config_hash(config)}__seed0"


def _fake_campaign(tmp_path, clock, durations, interrupt_at=None, **kw):
    """run_campaign with jobs that 'finish' (writing their own pack, as campaign-run does) on the fake clock."""
    launched = []

    def launch(job, command, env, log_path):
        assert command[1:4] == ["-m", "plugconv_lite", "campaign-run"] and "--out" in command
        launched.append(job.key)
        packs = Path(command[command.index("--out") + 1])

        def write():
            kw_ = {"attn": "se"} if job.variant == "se" else None
            results.write_pack(make_pack([record(job.variant, job.seed, 70.0 + job.seed, model_kw=kw_)]),
                               packs / f"{job.key}.json.gz")
        return FakeProc(clock, durations, on_exit=write)

    def sleep(s):
        clock.sleep(s)
        if interrupt_at is not None and clock() >= interrupt_at:
            raise KeyboardInterrupt

    return campaign.run_campaign(budget_s=10_000, out=tmp_path / "out", profile="full", chapters=["se"],
                                 work=tmp_path / "work", launch=launch, clock=clock, sleep=sleep,
                                 log=lambda s: None, latency=False, **kw), launched


def test_campaign_packs_after_every_job_loses_only_those_in_flight_and_resumes(store, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _fake_campaign(tmp_path, Clock(), 100, interrupt_at=150, concurrency=2)
    pack = results.read_pack(tmp_path / "out" / campaign.PACK_NAME)
    assert [(r["variant"], r["seed"]) for r in pack["records"]] == [("baseline", 0), ("baseline", 1)]
    assert pack["summary"]["stopped"] and pack["records"][0]["campaign"]["concurrency"] == 2
    assert pack["records"][0]["campaign"]["process_wall_s"] == pytest.approx(100, abs=2)
    pack, launched = _fake_campaign(tmp_path, Clock(), 100, concurrency=2)
    assert ("baseline", 0) not in [(k.split("__")[1], k[-1]) for k in launched]  # not run again
    assert sorted((r["variant"], r["seed"]) for r in pack["records"]) == [(v, s) for v in ("baseline", "se")
                                                                         for s in range(3)]
    assert pack["summary"]["runs_finished"] == 4 and pack["summary"]["aggregate_train_images_per_s"] > 0
    report = results.import_packs([tmp_path / "out" / campaign.PACK_NAME])
    assert len(report["imported"]) == 6 and not report["refused"]


def test_list_prints_one_self_contained_command_per_job_that_can_run_now(store, capsys):
    lines = campaign.list_commands(out=Path("/tmp/x"), profile="full")
    jobs = campaign.plan("full")
    assert len(lines) == sum(1 for j in jobs if not j.needs)
    assert all(line.startswith(f"cd {ROOT} && ") and " campaign-run " in line and "--out /tmp/x" in line
               for line in lines)
    assert sum("--kind prepare" in line for line in lines) == sum(j.kind == "prepare" for j in jobs)
    assert "wait for a preparation step" in capsys.readouterr().err


def test_overrides_only_change_a_smoke_profile():
    assert campaign.apply_overrides(PROFILES["smoke"], ["width=4", "train_images=200"]).width == 4
    with pytest.raises(ValueError, match="only allowed with the smoke profile"):
        campaign.apply_overrides(FULL, ["width=4"])
    with pytest.raises(ValueError, match="must be key=value"):
        campaign.apply_overrides(PROFILES["smoke"], ["nope=1"])


def test_campaign_end_to_end_in_processes_without_torchinfo_or_ipywidgets(tmp_path, cifar_root):
    """Two smoke runs at once in worker processes, the latency job after them, packed; the GPU machine has neither
    torchinfo nor ipywidgets, so here they are made unimportable: training must not need them."""
    shadow = tmp_path / "shadow"
    (shadow / "ipywidgets").mkdir(parents=True)
    (shadow / "torchinfo.py").write_text("raise ImportError('torchinfo is not on the GPU machine')\n")
    (shadow / "ipywidgets" / "__init__.py").write_text("raise ImportError('ipywidgets is not on the GPU machine')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), str(ROOT)]), PLUGCONV_CACHE=str(tmp_path / "c"),
               PLUGCONV_DATA=str(cifar_root), PLUGCONV_RESULTS=str(tmp_path / "results"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "plugconv_lite", "campaign", "--profile", "smoke", "--chapters", "se",
           "--seeds", "0", "--concurrency", "2", "--budget", "300", "--out", str(out), "--work", str(tmp_path / "w")]
    for o in ("width=4", "train_images=200", "test_images=100", "batch_size=50"):
        cmd += ["--override", o]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pack = results.read_pack(out / campaign.PACK_NAME)
    assert sorted(r["variant"] for r in pack["records"]) == ["baseline", "se"]
    for r in pack["records"]:
        assert r["campaign"]["concurrency"] == 2 and r["cost"]["latency_ms"] is None  # shared: not timed
        assert r["code"]["files"] and r["throughput"]["train_images_per_s"] > 0
    assert sorted(e["variant"] for e in pack["latency"]) == ["baseline", "se"]
    assert all(e["cost"]["latency_ms"] > 0 for e in pack["latency"])
    assert (out / "campaign.log").read_text().count("done") == 3
    report = results.import_packs([out / campaign.PACK_NAME], store=tmp_path / "results", dry_run=True)
    assert not report["imported"] and all("smoke-profile" in why for _, why in report["refused"])


def test_campaign_keys_are_the_files_experiment_writes(tmp_path, store):
    """An equal-budget control included: its matched width is part of the config, so both must resolve it."""
    from plugconv_lite.data import synthetic_cifar100

    prof = campaign.apply_overrides(PROFILES["smoke"], ["width=16", "train_images=100", "test_images=100",
                                                       "batch_size=50"])
    ds = synthetic_cifar100(train=100, test=100, quiet=True)
    control = experiments.Variant("plain", budget_of=experiments.Variant("wide", {"width_mult": 1.5}))
    rec = experiments.experiment(control, prof, 0, data=ds, store=tmp_path, progress=False, checkpoint=False,
                                 measure_latency=False)
    assert rec["config"]["model_kw"]["width"] == 24  # matched to the 1.5x wider network's parameters
    assert campaign.resolve(control, prof, "synthetic", [tmp_path])["record"](0) == results.entry_name("records", rec)


def test_without_git_the_commit_comes_from_the_devdata_manifest(monkeypatch):
    from plugconv_lite import devdata
    monkeypatch.setattr(experiments, "_git", lambda: {})  # a device receives the tree without .git
    monkeypatch.setattr(devdata, "read_manifest", lambda folder=None: {"git": {"commit": "abc123", "dirty": False}})
    assert campaign.source_commit() == {"commit": "abc123", "dirty": False}
    monkeypatch.setattr(devdata, "read_manifest", lambda folder=None: None)
    assert campaign.source_commit() == {}


def test_flops_ratios_are_relative_to_the_baseline():
    prof = PROFILES["smoke"]
    ratios = campaign.flops_ratios(prof, ["se", "c2sp_wide"])
    assert ratios["baseline"] == 1.0 and 1.0 < ratios["se"] < 1.05  # SE adds little arithmetic
    assert set(ratios) == {"baseline", "se", "c2sp_wide"}
