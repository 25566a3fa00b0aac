"""Training throughput on this machine: images/s of one run, and the aggregate of N runs sharing the GPU.

    python -m plugconv_lite bench --concurrency 1 2 4 8 --seconds 8 --out bench.json

Each run is a worker process training the variant (default: the baseline) with the profile's recipe through
``train.train`` itself, on random CIFAR-shaped data of the real sizes (throughput does not depend on the pixels), so
what is measured is exactly the campaign's training loop, evaluation passes included. Workers warm up first (the
first compiles with an empty cache: its time to the first step is ``compile_s``; the others start after it and
find the compiled kernels cached: ``compile_warm_s``), then the parent lets the first N of them train together for
``--seconds`` and sums their rates, for each N. Modes: ``compiled`` (torch.compile) and ``eager``. The file it
writes is what ``campaign --bench`` reads to pick the concurrency and whether to compile (``campaign.choose``).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

PREFIX = "BENCH "  # protocol lines on a worker's stdout (anything else it prints is passed through)


class _Quit(Exception):
    pass


def random_dataset(num_classes: int, train: int, test: int, seed: int = 0):
    """Uniform random uint8 images and labels of CIFAR's shape (a throughput stand-in, never trained for real)."""
    import torch

    from .data import Dataset
    g = torch.Generator().manual_seed(seed)
    return Dataset(torch.randint(0, 256, (train, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, num_classes, (train,), generator=g),
                   torch.randint(0, 256, (test, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, num_classes, (test,), generator=g),
                   [f"class_{i}" for i in range(num_classes)], "random")


def worker(profile, chapter: str = "baseline", variant: str = "baseline", compile: bool = True,
           warmup_steps: int = 20, device=None, stdin=None, stdout=None) -> None:
    """A bench worker: trains until told to quit; after ``warmup_steps`` says it is ready, then obeys ``run S``
    (train S seconds, report images and seconds) and ``quit`` lines on ``stdin``."""
    import torch

    from .campaign import _find_variant, data_sizes
    from .train import resolve_device, train

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    device = resolve_device(device)
    prof = profile.with_(compile=compile, epochs=10 ** 6)  # trains until told to stop
    classes, n_train, n_test = data_sizes(profile)
    data = random_dataset(classes, n_train, n_test)
    torch.manual_seed(0)
    model = _find_variant(chapter, variant).build(prof, classes)
    state = {"phase": "warmup", "first": None}
    t_start = time.perf_counter()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def say(**msg):
        stdout.write(PREFIX + json.dumps(msg) + "\n")
        stdout.flush()

    def obey(step: int) -> None:
        words = stdin.readline().split()
        if not words or words[0] == "quit":
            raise _Quit
        if words[0] != "run" or len(words) != 2:
            raise ValueError(f"bench worker: unknown command {words!r}")
        sync()
        state.update(phase="run", until=time.perf_counter() + float(words[1]), t=time.perf_counter(), step=step)

    def on_step(step: int) -> None:
        if state["first"] is None:
            sync()
            state.update(first=time.perf_counter() - t_start, step0=step)
        if state["phase"] == "warmup":
            if step - state["step0"] + 1 >= warmup_steps:
                sync()
                say(event="ready", first_step_s=state["first"], warmup_s=time.perf_counter() - t_start,
                    pid=os.getpid())
                obey(step)
        elif time.perf_counter() >= state["until"]:
            sync()
            seconds = time.perf_counter() - state["t"]
            say(event="result", images=(step - state["step"]) * prof.batch_size, seconds=seconds)
            obey(step)

    try:
        train(model, data, prof, seed=0, device=device, progress=False, on_step=on_step)
    except _Quit:
        pass


class _Worker:
    """A worker process and a thread that queues its protocol messages."""

    def __init__(self, command: list[str], env: dict, cwd: Path, log: Callable):
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=cwd, bufsize=1)
        self.messages: queue.Queue = queue.Queue()
        self.tail: list[str] = []

        def read():
            for line in self.proc.stdout:
                if line.startswith(PREFIX):
                    self.messages.put(json.loads(line[len(PREFIX):]))
                else:
                    self.tail = (self.tail + [line.rstrip()])[-30:]
            self.messages.put(None)

        threading.Thread(target=read, daemon=True).start()

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict:
        try:
            msg = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"bench worker {self.proc.pid} sent no {event!r} within {timeout:.0f} s") from None
        if msg is None or msg.get("event") != event:
            raise RuntimeError(f"bench worker {self.proc.pid} ended before {event!r}:\n" + "\n".join(self.tail))
        return msg

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def bench(concurrency: Sequence[int] = (1, 2, 4, 8), seconds: float = 8.0, modes: Sequence[str] = ("compiled", "eager"),
          profile="full", chapter: str = "baseline", variant: str = "baseline", overrides: Sequence[str] = (),
          warmup_steps: int = 20, out: Optional[Path] = None, startup_timeout: float = 900.0,
          log: Callable = print) -> dict:
    """Measure training images/s for each mode and each concurrency; returns (and writes to ``out``) the results."""
    from ._validate import check_float, check_int
    from .campaign import _package_root, apply_overrides, gpu_name, worker_env
    from .profiles import profile as get_profile

    levels = sorted({check_int("concurrency", n, min_value=1) for n in concurrency})
    seconds = check_float("seconds", seconds, min_value=0.0, min_inclusive=False)
    for m in modes:
        if m not in ("compiled", "eager"):
            raise ValueError(f"modes={list(modes)}: each must be 'compiled' or 'eager'")
    prof = apply_overrides(get_profile(profile), overrides)
    gpu = gpu_name()
    if gpu is None and "compiled" in modes:
        log("bench: no GPU, so no torch.compile (the trainer compiles on CUDA only): measuring eager only")
        modes = [m for m in modes if m != "compiled"] or ["eager"]
    import torch
    result = {"device": gpu or "CPU", "profile": prof.name, "chapter": chapter, "variant": variant,
              "batch_size": prof.batch_size, "seconds": seconds, "warmup_steps": warmup_steps,
              "torch": torch.__version__, "cpu_count": os.cpu_count(), "modes": {},
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    env = worker_env(max(levels))

    def spawn(compiled: bool) -> _Worker:
        cmd = [sys.executable, "-m", "plugconv_lite", "bench-worker", "--profile", prof.name, "--chapter", chapter,
               "--variant", variant, "--compile", "on" if compiled else "off", "--warmup-steps", str(warmup_steps)]
        for o in overrides:
            cmd += ["--override", o]
        return _Worker(cmd, env, _package_root(), log)

    for mode in modes:
        workers: list[_Worker] = []
        try:
            t0 = time.perf_counter()
            workers.append(spawn(mode == "compiled"))
            cold = workers[0].expect("ready", startup_timeout)
            workers += [spawn(mode == "compiled") for _ in range(max(levels) - 1)]
            warm = [w.expect("ready", startup_timeout) for w in workers[1:]]
            res = {"compile_s": cold["first_step_s"], "compile_warm_s": max((w["first_step_s"] for w in warm),
                                                                            default=None),
                   "warmup_wall_s": time.perf_counter() - t0, "levels": {}}
            log(f"bench {mode}: first step {cold['first_step_s']:.1f} s with an empty compile cache"
                + (f", {res['compile_warm_s']:.1f} s with it filled" if warm else ""))
            for n in levels:
                for w in workers[:n]:
                    w.send(f"run {seconds}")
                got = [w.expect("result", seconds + 600) for w in workers[:n]]
                rates = [g["images"] / g["seconds"] for g in got]
                res["levels"][str(n)] = {"images_per_s": rates, "aggregate_images_per_s": sum(rates)}
                log(f"bench {mode}: {n} at once: {sum(rates):>10,.0f} images/s in all, "
                    f"{sum(rates) / n:>10,.0f} per run")
            result["modes"][mode] = res
        except RuntimeError as err:  # e.g. torch.compile failing there: keep the other mode's numbers
            result.setdefault("errors", {})[mode] = str(err)[-2000:]
            log(f"bench {mode}: FAILED: {err}")
        finally:
            for w in workers:
                w.close()
    if not result["modes"]:
        raise RuntimeError(f"bench: every mode failed: {result.get('errors')}")
    from .campaign import choose, data_sizes
    n, compiled = choose(result, prof)
    result["best"] = {"concurrency": n, "compiled": compiled}
    log(f"bench: most runs per hour with {n} at once, {'compiled' if compiled else 'eager'} "
        f"(a {prof.name}-profile run = {prof.epochs} epochs of {data_sizes(prof)[1]:,} images)")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, out)
    return result


def add_subcommands(sub) -> None:
    """Add ``bench`` (and its internal ``bench-worker``) to ``python -m plugconv_lite``."""
    import argparse

    from .profiles import PROFILES

    b = sub.add_parser("bench", help="training images/s for 1..N runs sharing the GPU (writes what campaign "
                                     "--bench reads)")
    b.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    b.add_argument("--seconds", type=float, default=8.0, help="measured seconds per concurrency level")
    b.add_argument("--compile", choices=["on", "off", "both"], default="both")
    b.add_argument("--profile", choices=sorted(PROFILES), default="full")
    b.add_argument("--chapter", default="baseline")
    b.add_argument("--variant", default="baseline")
    b.add_argument("--warmup-steps", type=int, default=20)
    b.add_argument("--out", help="write the results here (JSON)")
    b.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    b.set_defaults(handler=_cli_bench)

    w = sub.add_parser("bench-worker", help=argparse.SUPPRESS)
    w.add_argument("--profile", choices=sorted(PROFILES), default="full")
    w.add_argument("--chapter", default="baseline")
    w.add_argument("--variant", default="baseline")
    w.add_argument("--compile", choices=["on", "off"], default="on")
    w.add_argument("--warmup-steps", type=int, default=20)
    w.add_argument("--override", action="append", default=[])
    w.set_defaults(handler=_cli_worker)


def _cli_bench(args) -> int:
    modes = {"on": ["compiled"], "off": ["eager"], "both": ["compiled", "eager"]}[args.compile]
    bench(args.concurrency, args.seconds, modes, args.profile, args.chapter, args.variant, args.override,
          args.warmup_steps, args.out)
    return 0


def _cli_worker(args) -> int:
    from .campaign import apply_overrides
    from .profiles import profile as get_profile

    worker(apply_overrides(get_profile(args.profile), args.override), args.chapter, args.variant,
           args.compile == "on", args.warmup_steps)
    return 0
