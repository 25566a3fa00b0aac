"""Full-profile campaigns: the runs the results store is missing, in priority order, several at once on one GPU,
within a time budget, packed into one file that ``import-results`` verifies and merges.

    python -m plugconv_lite campaign --budget 480 --out DIR [--concurrency N] [--profile full]
    python -m plugconv_lite campaign --list --out DIR        # one command per missing run, for a job scheduler
    python -m plugconv_lite import-results DIR/plugconv-campaign.json.gz

Priority: the baseline's seeds; then one seed of every variant of every chapter (a variant shared by chapters runs
once); then the remaining seeds, seed by seed. A variant with a preparation step (IC-Conv's EDO search) waits for
its preparation job. Each job is a separate process (``campaign-run``, the command ``--list`` prints), so a crash
or an out-of-memory error ends one run, not the campaign; with the GPU shared, each run measures its training
throughput but not its latency, which a last job measures for every variant with the GPU to itself.

The budget is a promise: a job starts only if its estimated time fits in what is left (with the latency job's
time reserved), and a job still running when the budget ends is stopped. Estimates come from measured times:
this campaign's finished jobs, the records already in the store (their process wall time and the concurrency
they ran at), a benchmark file (``bench``), else a conservative default. After every finished job the pack is
rewritten atomically, so an interrupted campaign loses at most the jobs in flight; re-running with the same
``--out`` continues it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from . import results as store_mod
from ._validate import check_float, check_int

PACK_NAME = "plugconv-campaign.json.gz"
DEFAULT_CONCURRENCY = 4        # without a benchmark: a ResNet-18 at 32x32 leaves a large GPU mostly idle
UNMEASURED_FACTOR = 2.0        # a variant never timed, its FLOPs unknown: twice the baseline's time
FLOPS_FACTOR = 1.3             # a variant never timed: 1.3 x the baseline's time x max(1, its FLOPs / baseline's)
OVERHEAD_S = 30.0              # per process: imports, loading and checking the data, FLOPs, writing the record
SAFETY, MARGIN_S = 1.2, 10.0   # estimate = SAFETY * measured + MARGIN_S
DEFAULT_RUN_S = {"full": 300.0, "colab": 900.0, "smoke": 60.0}  # per run at concurrency <= 4, nothing measured
LATENCY_S = (20.0, 2.0)        # latency job: fixed + per variant, until measured


# ---------------------------------------------------------------------------------------------------------------
# What to run


@dataclass(frozen=True)
class Job:
    """One process of a campaign. ``kind``: "prepare" (a variant's preparation step), "run" (one seed of one
    variant) or "latency" (every variant's inference latency, with the GPU to itself). ``key`` names the job's
    output (a record's or artefact's file stem); ``needs`` is the key of the job that must succeed first."""
    kind: str
    key: str
    chapter: str = ""
    variant: str = ""
    seed: Optional[int] = None
    tier: int = 0
    needs: Optional[str] = None
    chapters: tuple = ()

    @property
    def exclusive(self) -> bool:
        return self.kind == "latency"

    def describe(self) -> str:
        if self.kind == "latency":
            return "latency of every variant (GPU to itself)"
        what = f"{self.variant} ({', '.join(self.chapters) or self.chapter})"
        return f"prepare {what}" if self.kind == "prepare" else f"{what} seed {self.seed}"


def _experiments():
    from . import experiments  # the chapters register their variants on import
    return experiments


def data_sizes(profile, source: str = "cifar100") -> tuple[int, int, int]:
    """(classes, train images, test images) the profile trains on, without loading the data: CIFAR-100 has 100
    classes, 50,000 + 10,000 images; a profile's class-balanced subset keeps n // 100 images per class."""
    classes, train, test = 100, 50_000, 10_000
    if source != "cifar100":  # the smoke profile's synthetic stand-in has exactly the sizes it asks for
        train, test = profile.train_images or 5000, profile.test_images or 1000

    def subset(n, total):
        return total if n is None or n >= total else n // classes * classes

    return classes, subset(profile.train_images, train), subset(profile.test_images, test)


def data_source(profile) -> str:
    from .data import cifar100_available
    return "cifar100" if (cifar100_available() or not profile.allow_synthetic) else "synthetic"


def unique_variants(chapters: Optional[Sequence[str]] = None, variants: Optional[Sequence[str]] = None):
    """[(variant, chapters holding it)], each variant once (the baseline is in every chapter), baseline first.
    Variants that differ only in their ``note`` (a chapter's wording of a shared reference row, e.g. SE in the
    attention chapters) are the same run: one job, listed under every chapter that holds it."""
    ex = _experiments()
    chosen = sorted(ex.EXPERIMENTS) if not chapters else list(chapters)
    unknown = [c for c in chosen if c not in ex.EXPERIMENTS]
    if unknown:
        raise ValueError(f"chapters={unknown} must be among {sorted(ex.EXPERIMENTS)}")
    out: list[tuple] = []
    for chapter in chosen:
        for v in ex.EXPERIMENTS[chapter]:
            if variants and v.name not in variants:
                continue
            for i, (u, chs) in enumerate(out):
                if dataclasses.replace(u, note="") == dataclasses.replace(v, note=""):
                    out[i] = (u, chs + (chapter,))
                    break
            else:
                out.append((v, (chapter,)))
    out.sort(key=lambda vc: vc[0].name != "baseline")
    return out


def _find_artefact(stores: Sequence[Path], source, prof, backbone, step, chash) -> Optional[dict]:
    for store in stores:
        path = store_mod.prepare_path(store, source, prof.name, backbone, step, chash)
        if path.exists():
            return store_mod.read(path)
    return None


def resolve(variant, prof, source: str, stores: Sequence[Path]) -> dict:
    """The keys of ``variant``'s runs: ``{"config_hash", "record" (a function seed -> file stem), "prepare_key"}``.
    For a prepared variant whose artefact is in none of ``stores``, config_hash is None and prepare_key names the
    preparation job."""
    ex = _experiments()
    classes, n_train, n_test = data_sizes(prof, source)
    backbone = variant.backbone or prof.backbone
    model_kw, artefact, prepare_key = variant.resolve_kw(prof, classes), None, None  # a control's matched width
    if variant.prepare:
        pconf = ex.prepare_config(variant, prof, classes, n_train, n_test)
        phash = store_mod.config_hash(pconf)
        prepare_key = f"{backbone}__{variant.prepare}__{phash}"
        artefact = _find_artefact(stores, source, prof, backbone, variant.prepare, phash)
        if artefact is None:
            return {"config_hash": None, "prepare_key": prepare_key, "backbone": backbone,
                    "record": lambda s: f"{backbone}__{variant.name}__after-{prepare_key}__seed{s}"}
        model_kw = ex.merge_kw(variant.model_kw, artefact["output"].get("model_kw", {}))
    chash = store_mod.config_hash(ex.run_config(variant, prof, model_kw, classes, n_train, n_test, artefact))
    return {"config_hash": chash, "prepare_key": prepare_key, "backbone": backbone, "model_kw": model_kw,
            "artefact": artefact, "record": lambda s: f"{backbone}__{variant.name}__{chash}__seed{s}"}


def plan(profile=None, *, chapters=None, variants=None, seeds=None, store: Optional[Path] = None,
         extra_stores: Sequence[Path] = (), done: Iterable[str] = (), latency: bool = True) -> list[Job]:
    """The jobs still to do, in priority order (see the module docstring). A run is done when its record is in
    ``store`` (default: where the profile's runs go: ``results/`` for colab/full) or its key is in ``done``."""
    from .profiles import profile as get_profile

    prof = get_profile(profile)
    seeds = tuple(prof.seeds if seeds is None else seeds)
    source = data_source(prof)
    store = Path(store) if store is not None else store_mod.default_store(prof.name)
    stores = [store, *map(Path, extra_stores)]
    done = set(done)
    tiers: dict[int, list[Job]] = {0: [], 1: [], 2: []}
    prepares: dict[str, Job] = {}
    measured_latency = {(r["backbone"], r["variant"], r["config_hash"]) for r in store_mod.load_latency(store, prof.name)}
    needs_latency = False
    for v, chs in unique_variants(chapters, variants):
        keys = resolve(v, prof, source, stores)
        if keys["config_hash"] is not None and (keys["backbone"], v.name, keys["config_hash"]) not in measured_latency:
            needs_latency = True
        missing = [s for s in seeds if keys["record"](s) not in done and not (
            keys["config_hash"] is not None and store_mod.record_path(
                store, source, prof.name, keys["backbone"], v.name, keys["config_hash"], s).exists())]
        if not missing:
            continue
        needs = None
        if keys["config_hash"] is None:
            needs = keys["prepare_key"]
            needs_latency = True
            if needs not in done and needs not in prepares:
                prepares[needs] = Job("prepare", needs, chs[0], v.name, None, 0, None, chs)
        first_tier = 0 if v.name == "baseline" else 1
        any_done = len(missing) < len(seeds)
        for i, s in enumerate(missing):
            tier = first_tier if first_tier == 0 else (1 if i == 0 and not any_done else 2)
            tiers[tier].append(Job("run", keys["record"](s), chs[0], v.name, s, tier, needs, chs))
    ordered = tiers[0] + tiers[1] + sorted(tiers[2], key=lambda j: j.seed)
    jobs: list[Job] = []
    for j in ordered:  # a preparation goes right before the first run that needs it
        if j.needs in prepares:
            p = prepares.pop(j.needs)
            jobs.append(Job(p.kind, p.key, p.chapter, p.variant, None, j.tier, None, p.chapters))
        jobs.append(j)
    if latency and needs_latency and "latency" not in done:
        jobs.append(Job("latency", "latency", tier=3))
    return jobs


# ---------------------------------------------------------------------------------------------------------------
# How long a job takes


class Estimator:
    """Seconds a job will take at ``concurrency`` runs at once, conservatively (SAFETY x measured + MARGIN_S).

    Sources, first found wins: this campaign's finished jobs of the variant (``observe``); records of the variant
    in the store (their process wall time, scaled by max(1, N / the concurrency they ran at): with the GPU shared
    by N runs, each takes at most N / n times as long as with n, as long as more runs do not lower the aggregate
    rate); for a never-timed variant, the baseline's estimate x FLOPS_FACTOR x max(1, its forward FLOPs over the
    baseline's) where ``flops_ratio`` knows them, else x UNMEASURED_FACTOR; the baseline from the benchmark's
    per-process rate; else DEFAULT_RUN_S (scaled by N / 4 above 4)."""

    def __init__(self, profile, concurrency: int, records: Iterable[dict] = (), artefacts: Iterable[dict] = (),
                 latency: Iterable[dict] = (), bench: Optional[dict] = None, default_run_s: Optional[float] = None,
                 compiled: Optional[bool] = None, flops_ratio: Optional[dict] = None):
        self.prof, self.n = profile, int(concurrency)
        self.flops_ratio = dict(flops_ratio or {})
        self.seconds: dict[tuple, list[float]] = {}
        for r in records:
            self._add_record(("run", r["variant"]), r, r.get("wall_time_s", 0.0) + OVERHEAD_S)
        for a in artefacts:
            self._add_record(("prepare", a.get("prepare")), a, a.get("wall_time_s", 0.0) + OVERHEAD_S)
        self.latency_per_variant = None
        for lat in latency:
            c = lat.get("campaign") or {}
            if c.get("process_wall_s") and c.get("variants"):
                self.latency_per_variant = c["process_wall_s"] / c["variants"]
        self.bench, self.compiled = bench, compiled
        base = DEFAULT_RUN_S.get(profile.name, 600.0) if default_run_s is None else float(default_run_s)
        self.default_run_s = base * max(1.0, self.n / 4)

    def _add_record(self, key, rec: dict, fallback: float) -> None:
        c = rec.get("campaign") or {}
        wall, n = c.get("process_wall_s") or fallback, c.get("concurrency") or 1
        self.seconds.setdefault(key, []).append(wall * max(1.0, self.n / n))

    def observe(self, job: Job, seconds: float) -> None:
        """A job of this campaign (at its concurrency) took ``seconds``."""
        if job.kind == "latency":
            return
        self.seconds.setdefault((job.kind, job.variant if job.kind == "run" else self._step(job)), []).append(seconds)

    @staticmethod
    def _step(job: Job) -> str:
        return job.key.split("__")[1] if "__" in job.key else job.variant

    def _bench_run_s(self) -> Optional[float]:
        """Baseline run time from the benchmark: images / per-process rate at this concurrency, + compile."""
        if not self.bench:
            return None
        mode = best_mode(self.bench, self.n, self.compiled)
        if mode is None:
            return None
        rate, compile_s = mode
        images = self.prof.epochs * data_sizes(self.prof)[1]
        return images / rate + compile_s + OVERHEAD_S

    def baseline_s(self) -> float:
        own = self.seconds.get(("run", "baseline"))
        if own:
            return max(own)
        bench = self._bench_run_s()
        return bench if bench is not None else self.default_run_s

    def raw(self, job: Job, variants: int = 0) -> float:
        if job.kind == "latency":
            per = self.latency_per_variant if self.latency_per_variant is not None else LATENCY_S[1]
            return LATENCY_S[0] + per * max(1, variants)
        key = ("run", job.variant) if job.kind == "run" else ("prepare", self._step(job))
        own = self.seconds.get(key)
        if own:
            return max(own)
        if job.kind == "prepare":  # EDO trains a supernet for a third of the budget with larger kernels
            return 2 * UNMEASURED_FACTOR * self.baseline_s()
        if job.variant == "baseline":
            return self.baseline_s()
        ratio = self.flops_ratio.get(job.variant)
        return self.baseline_s() * (UNMEASURED_FACTOR if ratio is None else FLOPS_FACTOR * max(1.0, ratio))

    def __call__(self, job: Job, variants: int = 0) -> float:
        return SAFETY * self.raw(job, variants) + MARGIN_S


def flops_ratios(prof, names: Iterable[str]) -> dict:
    """{variant: forward FLOPs / the baseline's}, counted on the CPU at a quarter of the profile's width (the ratio
    barely depends on it, the counting time does), for estimates only; a prepared variant is counted unprepared."""
    from .measure import count_flops

    names, narrow = set(names), prof.with_(width=max(8, prof.width // 4))
    flops = {}
    for v, _ in unique_variants():
        if v.name in names | {"baseline"} and v.name not in flops:
            flops[v.name] = count_flops(v.build(narrow, 100), (1, 3, 32, 32), "cpu")
    base = flops.get("baseline")
    return {n: f / base for n, f in flops.items() if base}


def best_mode(bench: dict, concurrency: int, compiled: Optional[bool] = None) -> Optional[tuple[float, float]]:
    """(per-process images/s, compile seconds) the benchmark measured at ``concurrency`` for the faster mode
    (or the mode ``compiled`` asks for); None if it did not measure that concurrency."""
    found = []
    for name, mode in bench.get("modes", {}).items():
        if compiled is not None and (name == "compiled") != compiled:
            continue
        level = mode.get("levels", {}).get(str(concurrency))
        if level:
            found.append((level["aggregate_images_per_s"] / concurrency, mode.get("compile_s") or 0.0))
    return max(found, key=lambda rc: rc[0]) if found else None


def choose(bench: Optional[dict], profile) -> tuple[int, Optional[bool]]:
    """(concurrency, compile) that finish the most runs per hour by the benchmark: N runs at once, each taking
    images / (aggregate(N) / N) + its mode's compile time. Without a benchmark: DEFAULT_CONCURRENCY and the
    profile's compile setting (None)."""
    if not bench or not bench.get("modes"):
        return DEFAULT_CONCURRENCY, None
    images = profile.epochs * data_sizes(profile)[1]
    best = None
    for name, mode in bench["modes"].items():
        for n, level in mode.get("levels", {}).items():
            n = int(n)
            run_s = images * n / level["aggregate_images_per_s"] + (mode.get("compile_s") or 0.0) + OVERHEAD_S
            runs_per_hour = 3600 * n / run_s
            if best is None or runs_per_hour > best[0] * 1.02 or (runs_per_hour >= best[0] * 0.98 and n < best[1]):
                best = (runs_per_hour, n, name == "compiled")
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------------------------
# Running jobs within the budget


class Scheduler:
    """Starts ``jobs`` in order, at most ``concurrency`` at once, each only if ``estimate(job)`` fits in the time
    left (less the time reserved for a pending exclusive job); an exclusive job runs alone. ``launch(job)`` returns
    a handle with ``poll()`` (None while running, else the exit code) and ``terminate()``; ``finish(job, rc,
    seconds)`` is called for every job that ends and says whether it produced its output. ``clock`` and ``sleep``
    are injectable (tests use a fake clock). Jobs still running when the budget ends are terminated."""

    def __init__(self, jobs: Sequence[Job], *, budget_s: float, concurrency: int, estimate: Callable[[Job], float],
                 launch: Callable, finish: Callable, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, poll_s: float = 1.0, log: Callable = print):
        self.n = check_int("concurrency", concurrency, min_value=1)
        self.budget_s = check_float("budget_s", budget_s, min_value=0.0, min_inclusive=False)
        self.jobs = list(jobs)
        self.estimate, self.launch, self.finish = estimate, launch, finish
        self.clock, self.sleep, self.poll_s, self.log = clock, sleep, poll_s, log
        self.done: list[str] = []
        self.failed: list[str] = []
        self.stopped: list[str] = []    # terminated at the end of the budget (or on interruption)
        self.skipped: list[str] = []    # never started: did not fit, or what they needed failed

    def _stamp(self) -> str:
        return f"[{self.clock() - self.start:6.0f}s]"

    def _fits(self, job: Job, pending: list, now: float) -> bool:
        """``job`` would end within the budget, leaving the pending exclusive jobs their time."""
        reserve = 0.0 if job.exclusive else sum(self.estimate(j) for j in pending if j.exclusive)
        return now + self.estimate(job) + reserve <= self.deadline

    def _ready(self, job: Job) -> bool:
        return job.needs is None or job.needs in self.done

    def run(self) -> "Scheduler":
        self.start = self.clock()
        self.deadline = self.start + self.budget_s
        pending = list(self.jobs)
        running: dict[str, tuple] = {}
        try:
            while True:
                for key, (job, handle, t0) in list(running.items()):
                    rc = handle.poll()
                    if rc is None:
                        continue
                    del running[key]
                    took = self.clock() - t0
                    ok = self.finish(job, rc, took)
                    (self.done if ok else self.failed).append(key)
                    self.log(f"{self._stamp()} {'done  ' if ok else 'FAILED'} {job.describe()} in {took:.0f} s"
                             + ("" if ok else f" (exit code {rc})"))
                for job in [j for j in pending if j.needs and (j.needs in self.failed or j.needs in self.skipped)]:
                    pending.remove(job)
                    self.skipped.append(job.key)
                    self.log(f"{self._stamp()} skip   {job.describe()}: its preparation did not succeed")
                now = self.clock()
                for job in list(pending):
                    if len(running) >= self.n or any(j.exclusive for j, _, _ in running.values()):
                        break
                    if not self._ready(job) or not self._fits(job, pending, now):
                        continue
                    if job.exclusive and (running or any(
                            not j.exclusive and self._ready(j) and self._fits(j, pending, now) for j in pending)):
                        continue  # an exclusive job starts once nothing runs and nothing else could start
                    running[job.key] = (job, self.launch(job), now)
                    pending.remove(job)
                    self.log(f"{self._stamp()} start  {job.describe()} (estimate {self.estimate(job):.0f} s, "
                             f"{self.deadline - now:.0f} s left, {len(running)} running)")
                if not running and not any(self._ready(j) and self._fits(j, pending, self.clock()) for j in pending):
                    break
                if self.clock() >= self.deadline:
                    self._stop(running, "the budget is spent")
                    break
                self.sleep(self.poll_s)
        except KeyboardInterrupt:
            self._stop(running, "interrupted")
            raise
        finally:
            self.skipped += [j.key for j in pending if j.key not in self.skipped]
        return self

    def _stop(self, running: dict, why: str) -> None:
        for key, (job, handle, _) in running.items():
            handle.terminate()
            self.stopped.append(key)
            self.log(f"{self._stamp()} stop   {job.describe()}: {why}; its run is lost")
        for _, handle, _ in running.values():
            wait = getattr(handle, "wait", None)
            if wait is not None:
                try:
                    wait(timeout=30)
                except subprocess.TimeoutExpired:
                    handle.kill()
        running.clear()


# ---------------------------------------------------------------------------------------------------------------
# The campaign: plan, launch worker processes, pack what they produce


def _package_root() -> Path:
    return Path(__file__).resolve().parent.parent


def worker_command(job: Job, *, profile: str, out: Path, work: Path, concurrency: int = 1,
                   overrides: Sequence[str] = (), compile: Optional[bool] = None, chapters=None, variants=None,
                   python: str = sys.executable) -> list[str]:
    """The ``campaign-run`` command line of ``job`` (what ``--list`` prints and the campaign launches);
    ``chapters`` and ``variants`` narrow what the latency job times."""
    cmd = [python, "-m", "plugconv_lite", "campaign-run", "--kind", job.kind, "--profile", profile,
           "--out", str(out), "--work", str(work), "--concurrency", str(concurrency)]
    if job.kind != "latency":
        cmd += ["--chapter", job.chapter, "--variant", job.variant]
    else:
        cmd += ["--chapters", *chapters] if chapters else []
        cmd += ["--variants", *variants] if variants else []
    if job.seed is not None:
        cmd += ["--seed", str(job.seed)]
    for o in overrides:
        cmd += ["--override", o]
    if compile is not None:
        cmd += ["--compile", "on" if compile else "off"]
    return cmd


def worker_env(concurrency: int) -> dict:
    """Environment of a worker: the library importable from this checkout, unbuffered logs, and the CPU split
    between the runs (each otherwise starts as many threads as there are cores)."""
    cpus = max(1, (os.cpu_count() or 1) // max(1, concurrency))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(cpus),
               TORCHINDUCTOR_COMPILE_THREADS=str(max(1, cpus)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_package_root()), os.environ.get("PYTHONPATH")) if p)
    return env


def gpu_name() -> Optional[str]:
    """The GPU's name from nvidia-smi (no CUDA context in the campaign's own process), else None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def source_commit() -> dict:
    """The commit the code came from: git where the checkout has it, else the manifest ``devdata split`` wrote
    (a device receives the working tree without ``.git``)."""
    from .experiments import _git
    git = _git()
    if git:
        return git
    from .devdata import read_manifest
    manifest = read_manifest()
    return dict((manifest or {}).get("git") or {})


def campaign_provenance(prof, concurrency: int, budget_s: Optional[float], compile: Optional[bool]) -> dict:
    import platform

    import torch
    git = source_commit()
    return {"profile": prof.name, "concurrency": concurrency, "budget_s": budget_s,
            "compile": prof.compile if compile is None else compile, "gpu": gpu_name(), "host": platform.node(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "source_commit": git.get("commit"), "source_dirty": git.get("dirty"),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


class Packer:
    """The campaign's pack file: entries from finished jobs' own packs are merged in, and the file is rewritten
    atomically after each, so it always holds every finished job."""

    def __init__(self, path: Path, provenance: dict):
        self.path = Path(path)
        if self.path.exists():
            self.pack = store_mod.read_pack(self.path)
            self.pack["provenance"].setdefault("resumed", []).append(provenance)
        else:
            self.pack = store_mod.new_pack(provenance)

    def keys(self) -> set[str]:
        """Keys of the jobs whose output the pack holds (done: not to run again)."""
        out = {store_mod.entry_name("records", r) for r in self.pack["records"]}
        out |= {store_mod.entry_name("artefacts", a) for a in self.pack["artefacts"]}
        if self.pack["latency"]:
            out.add("latency")
        return out

    def add(self, job: Job, job_pack: Optional[dict], seconds: float, concurrency: int, log_tail: str = "",
            rc: int = 0) -> bool:
        got = False
        if job_pack is not None:
            for kind in store_mod.PACK_KINDS:
                for entry in job_pack[kind]:
                    entry.setdefault("campaign", {}).update(
                        {"job": job.key, "concurrency": concurrency, "process_wall_s": seconds,
                         "source_commit": self.pack["provenance"].get("source_commit")})
                    names = {store_mod.entry_name(kind, e) for e in self.pack[kind]}
                    if store_mod.entry_name(kind, entry) not in names:
                        self.pack[kind].append(entry)
                    got = True
        if not got:
            self.pack["failures"].append({"job": job.key, "what": job.describe(), "exit_code": rc,
                                          "seconds": seconds, "log_tail": log_tail[-4000:]})
        self.save()
        return got

    def save(self, summary: Optional[dict] = None) -> None:
        if summary is not None:
            self.pack["summary"] = summary
        self.pack["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        store_mod.write_pack(self.pack, self.path)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_campaign(*, budget_s: float, out: Path, profile=None, concurrency: Optional[int] = None,
                 bench: Optional[dict] = None, compile: Optional[bool] = None, work: Optional[Path] = None,
                 chapters=None, variants=None, seeds=None, overrides: Sequence[str] = (), latency: bool = True,
                 launch: Optional[Callable] = None, clock=time.monotonic, sleep=time.sleep, poll_s: float = 0.5,
                 log: Callable = print) -> dict:
    """Run the missing jobs within ``budget_s`` seconds; returns the pack (also at ``out/plugconv-campaign.json.gz``).

    ``concurrency`` None: the benchmark's best (``choose``), else DEFAULT_CONCURRENCY. ``compile`` None: the
    benchmark's choice, else the profile's. ``work``: where workers keep their stores and logs (default
    ``<cache>/campaign/<profile>``; never under ``out``, which must stay small). ``launch(job, command, env,
    log_path)`` starts a job (default: ``subprocess.Popen``)."""
    from .data import cache_dir
    from .profiles import profile as get_profile

    t_entry = clock()  # the budget covers the planning too
    prof = apply_overrides(get_profile(profile), overrides)
    if concurrency is None or compile is None:
        n_best, c_best = choose(bench, prof)
        concurrency = n_best if concurrency is None else concurrency
        compile = c_best if compile is None else compile
    out = Path(out)
    work = Path(work) if work is not None else cache_dir() / "campaign" / prof.name
    if out.resolve() in [work.resolve(), *work.resolve().parents]:
        raise ValueError(f"work={work} must not be inside out={out}: out holds only the pack and the log")
    packer = Packer(out / PACK_NAME, campaign_provenance(prof, concurrency, budget_s, compile))
    store = store_mod.default_store(prof.name)
    work_store, packs, logs = work / "store", work / "packs", work / "logs"
    seed_artefacts(prof, work_store, packer.pack["artefacts"])
    jobs = plan(prof, chapters=chapters, variants=variants, seeds=seeds, store=store, extra_stores=[work_store],
                done=packer.keys(), latency=latency)
    estimator = Estimator(prof, concurrency, store_mod.load(store, prof.name) + packer.pack["records"],
                          packer.pack["artefacts"], store_mod.load_latency(store, prof.name) + packer.pack["latency"],
                          bench, compiled=compile, flops_ratio=flops_ratios(prof, {j.variant for j in jobs}))
    n_variants = len(unique_variants(chapters, variants))  # what the latency job times, at most
    log(f"campaign: {len(jobs)} jobs to do ({sum(j.kind == 'run' for j in jobs)} runs), {concurrency} at once, "
        f"compile {'on' if (prof.compile if compile is None else compile) else 'off'}, budget {budget_s:.0f} s; "
        f"pack: {packer.path}")

    def default_launch(job, command, env, log_path):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as f:
            return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=_package_root())

    launcher = launch or default_launch

    def start(job: Job):
        command = worker_command(job, profile=prof.name, out=packs, work=work, concurrency=concurrency,
                                 overrides=overrides, compile=compile, chapters=chapters, variants=variants)
        return launcher(job, command, worker_env(concurrency), logs / f"{job.key}.log")

    def finish(job: Job, rc: int, seconds: float) -> bool:
        path = packs / f"{job.key}.json.gz"
        job_pack = None
        if rc == 0 and path.exists():
            try:
                job_pack = store_mod.read_pack(path)
            except ValueError as err:
                log(f"unreadable job pack {path}: {err}")
        ok = packer.add(job, job_pack, seconds, concurrency, _tail(logs / f"{job.key}.log"), rc)
        if ok:
            estimator.observe(job, seconds)
            if job.kind == "prepare":  # its runs can be keyed now
                seed_artefacts(prof, work_store, job_pack["artefacts"])
        else:
            log(_tail(logs / f"{job.key}.log", 1500))
        return ok

    sched = Scheduler(jobs, budget_s=max(1e-3, budget_s - (clock() - t_entry)), concurrency=concurrency,
                      estimate=lambda j: estimator(j, n_variants), launch=start, finish=finish, clock=clock,
                      sleep=sleep, poll_s=poll_s, log=log)
    try:
        sched.run()
    finally:
        elapsed = clock() - t_entry
        recs = [r for r in packer.pack["records"] if (r.get("campaign") or {}).get("job") in sched.done]
        images = sum(sum(h["train_images"] for h in r["history"]) for r in recs)
        summary = {"elapsed_s": elapsed, "jobs_planned": len(jobs), "done": sched.done, "failed": sched.failed,
                   "stopped": sched.stopped, "not_started": sched.skipped, "runs_finished": len(recs),
                   "train_images": images, "aggregate_train_images_per_s": images / elapsed if elapsed > 0 else None}
        packer.save(summary)
        log(f"campaign: {len(recs)} runs finished, {len(sched.failed)} failed, {len(sched.stopped)} stopped, "
            f"{len(sched.skipped)} not started, in {elapsed:.0f} s"
            + (f"; {summary['aggregate_train_images_per_s']:,.0f} training images/s over the campaign" if images else "")
            + f"\npack: {packer.path}")
    return packer.pack


def seed_artefacts(prof, work_store: Path, extra: Iterable[dict] = ()) -> None:
    """Copy the profile's preparation artefacts from the committed store (and ``extra``) into ``work_store``, so a
    worker's ``experiments.prepare`` finds them instead of running the step again."""
    src = store_mod.default_store(prof.name)
    found = [store_mod.read(p) for p in sorted(src.glob(f"*/{prof.name}/prepare/*.json"))] + list(extra)
    for art in found:
        path = store_mod.entry_path("artefacts", art, work_store)
        if not path.exists():
            store_mod.write({k: v for k, v in art.items() if k != "_path"}, path)


def apply_overrides(prof, overrides: Sequence[str]):
    """``key=value`` changes to a smoke profile (tests and quick checks); refused for the other profiles, whose
    records must be comparable."""
    if not overrides:
        return prof
    if prof.name != "smoke":
        raise ValueError(f"override={list(overrides)} is only allowed with the smoke profile, not {prof.name!r}")
    changes = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep or not hasattr(prof, key):
            raise ValueError(f"override={o!r} must be key=value with key a Profile field")
        changes[key] = json.loads(value)
    return prof.with_(**changes)


# ---------------------------------------------------------------------------------------------------------------
# One job (the worker process): python -m plugconv_lite campaign-run ...


def _find_variant(chapter: str, name: str):
    ex = _experiments()
    if chapter not in ex.EXPERIMENTS:
        raise ValueError(f"chapter={chapter!r} must be one of {sorted(ex.EXPERIMENTS)}")
    for v in ex.EXPERIMENTS[chapter]:
        if v.name == name:
            return v
    raise ValueError(f"variant={name!r} must be one of {[v.name for v in ex.EXPERIMENTS[chapter]]} (chapter {chapter})")


def _clean(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "_path"}


def run_job(kind: str, *, profile, out: Path, work: Optional[Path] = None, chapter: str = "", variant: str = "",
            seed: Optional[int] = None, concurrency: int = 1, compile: Optional[bool] = None,
            overrides: Sequence[str] = (), device=None, data=None, progress: bool = True, chapters=None,
            variants=None) -> Path:
    """Do one job and write its own pack to ``out/<job key>.json.gz`` (atomically); returns that path.

    "run": train ``variant`` of ``chapter`` with ``seed`` (no checkpoints; latency only when the run has the GPU to
    itself, ``concurrency`` 1); "prepare": its preparation step; "latency": time every variant (of ``chapters``,
    ``variants``: default all) whose configuration is known (in the committed store or ``work``) and that has no
    latency record for this GPU."""
    from .data import cache_dir
    from .profiles import profile as get_profile

    ex = _experiments()
    prof = apply_overrides(get_profile(profile), overrides)
    if compile is not None:
        prof = prof.with_(compile=compile)
    work = Path(work) if work is not None else cache_dir() / "campaign" / prof.name
    store = work / "store"
    seed_artefacts(prof, store)
    pack = store_mod.new_pack({"job": kind, "profile": prof.name, "concurrency": concurrency,
                               "command": " ".join(sys.argv)})
    if kind == "latency":
        pack["latency"] = measure_latencies(prof, store, device=device, progress=progress, chapters=chapters,
                                            variants=variants)
        key = "latency"
    else:
        v = _find_variant(chapter, variant)
        chapters = tuple(c for c, vs in ex.EXPERIMENTS.items() if v in vs)
        data = data if data is not None else ex.get_data(prof)
        prepared = ex.prepare(v, prof, data=data, store=store, device=device, progress=progress)
        if prepared[1] is not None:
            pack["artefacts"].append(_clean(prepared[1]))
        if kind == "prepare":
            if prepared[1] is None:
                raise ValueError(f"variant {variant!r} has no preparation step")
            key = Path(prepared[1]["_path"]).stem
        elif kind == "run":
            if seed is None:
                raise ValueError("seed must be given for a run")
            rec = ex.experiment(v, prof, seed, chapter=chapter, data=data, store=store, device=device,
                                progress=progress, prepared=prepared, checkpoint=False,
                                measure_latency=concurrency == 1)
            rec["chapters"] = sorted(set(rec.get("chapters", [])) | set(chapters))
            if not rec.get("git"):  # a device without .git: the commit the parts were split from
                rec["git"] = {**source_commit(), "from": "devdata manifest"} if source_commit() else {}
            pack["records"].append(_clean(rec))
            key = store_mod.entry_name("records", rec)
        else:
            raise ValueError(f"kind={kind!r} must be 'run', 'prepare' or 'latency'")
    return store_mod.write_pack(pack, Path(out) / f"{key}.json.gz")


def measure_latencies(prof, work_store: Path, *, device=None, progress: bool = True, chapters=None,
                      variants=None) -> list[dict]:
    """Latency records (``experiments.deployed_latency``: bf16, channels_last, folded, batch 1 and 256) of every
    variant whose configuration is known and that has none for this GPU yet, measured one after another by this
    one process (run it with the GPU to itself)."""
    import platform

    import torch

    from . import provenance
    from .measure import count_flops, count_params
    from .train import resolve_device

    ex = _experiments()

    device = resolve_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    hw = ex.hardware(device)
    committed = store_mod.default_store(prof.name)
    source = data_source(prof)
    classes, n_train, n_test = data_sizes(prof, source)
    out = []
    t0 = time.perf_counter()
    for v, chs in unique_variants(chapters, variants):
        keys = resolve(v, prof, source, [committed, work_store])
        if keys["config_hash"] is None:
            continue
        if any(store_mod.latency_path(s, source, prof.name, keys["backbone"], v.name, keys["config_hash"],
                                      hw["device"]).exists() for s in (committed, work_store)):
            continue
        torch.manual_seed(0)
        model = v.build(prof, classes, model_kw=keys["model_kw"]).to(device)
        config = ex.run_config(v, prof, keys["model_kw"], classes, n_train, n_test, keys["artefact"])
        cost = {"params": count_params(model), "flops": count_flops(model, (1, 3, 32, 32), device)}
        cost.update(ex.deployed_latency(model, device))
        entry = {"schema": 1, "kind": "latency", "profile": prof.name, "backbone": keys["backbone"],
                 "variant": v.name, "chapters": list(chs), "config_hash": keys["config_hash"], "config": config,
                 "cost": cost, "hardware": hw, "versions": ex._versions(), "git": ex._git(),
                 "code": provenance.fingerprint(model),
                 "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "python": platform.python_version(), "data": {"source": source}}
        store_mod.write(entry, store_mod.entry_path("latency", entry, work_store))
        out.append(entry)
        if progress:
            print(f"latency {v.name}: {cost['latency_ms']:.3f} ms at batch 1, {cost['latency_b256_ms']:.3f} ms at "
                  f"batch 256 ({cost['latency_dtype']})", flush=True)
    for entry in out:
        entry.setdefault("campaign", {})["variants"] = len(out)
        entry["wall_time_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------------------------
# --list: one self-contained command per missing job, for a job scheduler


def list_commands(*, out: Path, profile=None, chapters=None, variants=None, seeds=None, python: str = sys.executable,
                  log: Callable = lambda s: print(s, file=sys.stderr)) -> list[str]:
    """Shell commands, one per job that can run now (a run whose preparation is missing waits for it: import the
    preparation's pack, then list again); each writes its own pack into ``out``. The latency job comes last: run it
    on a GPU no other job shares."""
    from .profiles import profile as get_profile

    prof = get_profile(profile)
    jobs = plan(prof, chapters=chapters, variants=variants, seeds=seeds)
    root = _package_root()
    env = f"PLUGCONV_DATA={shlex.quote(os.environ['PLUGCONV_DATA'])} " if os.environ.get("PLUGCONV_DATA") else ""
    out = Path(out).resolve()
    lines, waiting = [], [j for j in jobs if j.needs]
    for job in jobs:
        if job.needs:
            continue
        work = out / ".work" / job.key  # a job's own scratch store: jobs on different nodes share nothing
        cmd = worker_command(job, profile=prof.name, out=out, work=work, python=python)
        lines.append(f"cd {shlex.quote(str(root))} && {env}" + " ".join(shlex.quote(c) for c in cmd))
    if waiting:
        log(f"# {len(waiting)} runs wait for a preparation step listed above ("
            + ", ".join(sorted({j.variant for j in waiting})) + "): import its pack, then list again")
    log(f"# {len(lines)} commands; then: python -m plugconv_lite import-results {out}")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Command line: campaign, campaign-run (one job; what --list prints), import-results


def add_subcommands(sub) -> None:
    """Add ``campaign``, ``campaign-run`` and ``import-results`` to ``python -m plugconv_lite``."""
    from .profiles import PROFILES

    c = sub.add_parser("campaign", help="run the missing full-profile runs within a time budget, packed into one "
                                        "file; or --list one command per missing run")
    c.add_argument("--budget", type=float, help="seconds the whole campaign may take (required unless --list)")
    c.add_argument("--out", required=True, help="folder for the pack (plugconv-campaign.json.gz) and the log; with "
                                                "--list, where each listed job writes its own pack")
    c.add_argument("--concurrency", default="auto",
                   help="runs at once: a number, or 'auto' (the benchmark's best with --bench, else "
                        f"{DEFAULT_CONCURRENCY})")
    c.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the runs: 'auto' = the benchmark's choice, else the profile's")
    c.add_argument("--bench", help="a file written by `python -m plugconv_lite bench --out`")
    c.add_argument("--profile", choices=sorted(PROFILES), default="full")
    c.add_argument("--chapters", nargs="+", help="only these chapters (default: all)")
    c.add_argument("--variants", nargs="+", help="only these variants")
    c.add_argument("--seeds", type=int, nargs="+", help="default: the profile's seeds")
    c.add_argument("--work", help="workers' scratch folder (default: <cache>/campaign/<profile>)")
    c.add_argument("--no-latency", action="store_true", help="skip the final latency job")
    c.add_argument("--list", action="store_true", help="print one self-contained command per missing job instead")
    c.add_argument("--override", action="append", default=[], help=argparse_suppress())
    c.set_defaults(handler=_cli_campaign)

    r = sub.add_parser("campaign-run", help="one job of a campaign (what `campaign --list` prints)")
    r.add_argument("--kind", choices=["run", "prepare", "latency"], default="run")
    r.add_argument("--profile", choices=sorted(PROFILES), default="full")
    r.add_argument("--chapter", default="")
    r.add_argument("--variant", default="")
    r.add_argument("--seed", type=int)
    r.add_argument("--out", required=True, help="folder for this job's pack (<key>.json.gz)")
    r.add_argument("--work", help="scratch store (default: <cache>/campaign/<profile>)")
    r.add_argument("--concurrency", type=int, default=1, help="runs sharing the GPU (1: also time the latency)")
    r.add_argument("--compile", choices=["on", "off"])
    r.add_argument("--device")
    r.add_argument("--chapters", nargs="+", help="latency job: only these chapters' variants")
    r.add_argument("--variants", nargs="+", help="latency job: only these variants")
    r.add_argument("--override", action="append", default=[], help=argparse_suppress())
    r.set_defaults(handler=_cli_run)

    i = sub.add_parser("import-results", help="verify campaign packs and merge their records into results/")
    i.add_argument("paths", nargs="+", help="pack files, or folders of *.json.gz packs")
    i.add_argument("--store", help="default: the committed store (results/)")
    i.add_argument("--dry-run", action="store_true", help="verify only; write nothing")
    i.set_defaults(handler=_cli_import)


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


def _on_sigterm(signum, frame):  # `timeout` and the device tool end a command with SIGTERM: pack, then stop
    raise KeyboardInterrupt


def _cli_campaign(args) -> int:
    from .profiles import profile as get_profile

    if args.list:
        for line in list_commands(out=Path(args.out), profile=args.profile, chapters=args.chapters,
                                  variants=args.variants, seeds=args.seeds):
            print(line)
        return 0
    if args.budget is None:
        raise ValueError("--budget SECONDS is required (or --list)")
    bench = None
    if args.bench and Path(args.bench).is_file():
        bench = json.loads(Path(args.bench).read_text())
    elif args.bench:  # on a lent GPU a lost benchmark must not cost the window: run on the defaults
        print(f"campaign: no benchmark at {args.bench}; concurrency {DEFAULT_CONCURRENCY} and the profile's compile "
              "setting unless given")
    concurrency = None if args.concurrency == "auto" else check_int("concurrency", int(args.concurrency),
                                                                     min_value=1)
    compile = {"auto": None, "on": True, "off": False}[args.compile]
    if compile is None and bench is None:
        compile = get_profile(args.profile).compile
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "campaign.log", "a")

    def log(line: str) -> None:
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        pack = run_campaign(budget_s=args.budget, out=out, profile=args.profile, concurrency=concurrency,
                            bench=bench, compile=compile, work=args.work, chapters=args.chapters,
                            variants=args.variants, seeds=args.seeds, overrides=args.override,
                            latency=not args.no_latency, log=log)
    except KeyboardInterrupt:
        log("campaign: interrupted; the pack holds every job that finished")
        return 130
    finally:
        logf.close()
    return 0 if not pack["failures"] else 1


def _cli_run(args) -> int:
    path = run_job(args.kind, profile=args.profile, out=Path(args.out), work=args.work, chapter=args.chapter,
                   variant=args.variant, seed=args.seed, concurrency=args.concurrency,
                   compile=None if args.compile is None else args.compile == "on", overrides=args.override,
                   device=args.device, chapters=args.chapters, variants=args.variants)
    print(f"pack: {path}")
    return 0


def _cli_import(args) -> int:
    report = store_mod.import_packs([Path(p) for p in args.paths], store=args.store, dry_run=args.dry_run)
    for name, reason in report["refused"]:
        print(f"refused {name}: {reason}")
    verb = "would import" if args.dry_run else "imported"
    print(f"{verb} {len(report['imported'])}, already in the store {len(report['identical'])}, "
          f"refused {len(report['refused'])}")
    return 1 if report["refused"] else 0
