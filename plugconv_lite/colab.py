"""Colab: the notebooks' first cell, the set-up it calls, and what a chapter's run costs there.

Every notebook of the book starts with ``first_cell(url)`` (tagged ``remove-cell``: the site does not show it). On
Colab it clones the repository into /content/plugconv-lite, or leaves an existing clone for ``setup`` to update, puts
the clone on ``sys.path`` and calls ``setup()``, which

- pulls an existing clone (results committed since the last visit reach the reader) and says which it did;
- installs only the library's requirements that the runtime lacks, and never torch or ipywidgets: Colab's torch is
  its own CUDA build, and its widget front end is built for the ipywidgets it ships (a 7.x line for years). pip runs
  with both pinned, so it cannot change them as a side effect;
- enables Colab's custom widget manager (``explore`` links its sliders through the kernel where the browser cannot:
  see ``widgets.linking``);
- says in one line whether the runtime must restart, and why, and prints what it did and how long it took.

Elsewhere the cell does nothing. ``PLUGCONV_REPO`` and ``PLUGCONV_CHECKOUT`` override the repository URL and the
clone's folder (the tests clone a local repository).

``expected_time(chapter, profile)`` is what a chapter's experiment costs with a profile, from the training
throughput measured in the results store; ``announce`` prints it with the runtime and the profile when a run starts
on Colab.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from .profiles import on_colab  # noqa: F401  (part of this module's interface)

CHECKOUT = "/content/plugconv-lite"
FIRST_CELL_TAGS = ["remove-cell"]
# Colab decides what these are; pip must not replace them (see the module docstring)
KEEP = {"torch": "Colab's own CUDA build", "ipywidgets": "the version Colab's widget front end is built for"}

_FIRST_CELL = """\
# Colab only: clone or update the repository, then set it up (safe to rerun). Elsewhere: nothing.
import os, sys, time
if "google.colab" in sys.modules:
    started = time.time()
    url = os.environ.get("PLUGCONV_REPO", "{url}")
    root = os.environ.get("PLUGCONV_CHECKOUT", "{checkout}")
    cloned = not os.path.isdir(root)
    if cloned:
        !git clone -q --depth 1 {{url}} {{root}}
    if root not in sys.path:
        sys.path.insert(0, root)
    import plugconv_lite.colab
    plugconv_lite.colab.setup(root, cloned=cloned, started=started)"""

_custom_widget_manager = False


def first_cell(url: str) -> str:
    """The source of every notebook's first cell, for the repository at ``url`` (_config.yml's repository.url)."""
    return _FIRST_CELL.format(url=url, checkout=CHECKOUT)


def custom_widget_manager_enabled() -> bool:
    """Whether Colab's custom widget manager is on: ``setup`` enabled it, or Colab says so (a private attribute of
    google.colab.output._widgets, read only as a hint)."""
    hint = sys.modules.get("google.colab.output._widgets")
    return _custom_widget_manager or bool(getattr(hint, "_installed_url", None))


# -- requirements --------------------------------------------------------------------------------------------------

def requirements(root) -> list[str]:
    """The library's dependencies as pyproject.toml (under ``root``) declares them."""
    text = (Path(root) / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python < 3.11: the dependency list is a plain array of strings
        import re
        block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M)
        return re.findall(r"[\"']([^\"']+)[\"']", block.group(1)) if block else []
    return list(tomllib.loads(text)["project"].get("dependencies", []))


def installed_version(distribution: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def plan(reqs, installed: Callable[[str], Optional[str]] = installed_version) -> tuple[list[str], list[str]]:
    """What to install for the requirement strings ``reqs``: (requirements to pass to pip, notes).

    Missing distributions and ones outside their range are installed, except those in ``KEEP``: a kept one outside
    its range gets a note instead (the library may not work with it), never a reinstall."""
    from packaging.requirements import Requirement

    install, notes = [], []
    for line in reqs:
        req = Requirement(line)
        have = installed(req.name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        if have is not None and req.name in KEEP:
            notes.append(f"{req.name} {have} is outside {req.specifier} and is kept ({KEEP[req.name]}): "
                         "parts of the library may not work")
            continue
        install.append(str(req))
    return install, notes


def _loaded(distribution: str) -> bool:
    """Whether this process has already imported a module of ``distribution``."""
    try:
        from importlib.metadata import packages_distributions
        modules = [m for m, dists in packages_distributions().items()
                   if distribution.lower() in (d.lower() for d in dists)]
    except ImportError:  # Python < 3.10
        modules = []
    modules = modules or [distribution.replace("-", "_")]
    return any(m in sys.modules for m in modules)


def _pip_install(reqs: list[str]) -> subprocess.CompletedProcess:
    pins = [f"{name}=={v}" for name in KEEP if (v := installed_version(name))]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(pins) + "\n")
    try:
        return subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", f.name, *reqs],
                              capture_output=True, text=True)
    finally:
        os.unlink(f.name)


# -- the set-up ----------------------------------------------------------------------------------------------------

def _git(root, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=300)


def _update(root: Path, cloned: bool) -> tuple[str, list[str]]:
    """Pull an existing clone; returns (what happened, reasons to restart)."""
    head = _git(root, "rev-parse", "--short", "HEAD").stdout.strip() or "?"
    if cloned:
        return f"cloned into {root} (commit {head})", []
    pulled = _git(root, "pull", "-q", "--ff-only")
    new = _git(root, "rev-parse", "--short", "HEAD").stdout.strip() or "?"
    if pulled.returncode != 0:
        why = (pulled.stderr.strip().splitlines() or ["git pull failed"])[-1]
        return f"already in {root}, not updated ({why}); using commit {head}", []
    if new == head:
        return f"already in {root}; pulled: no new commits (commit {head})", []
    changed = _git(root, "diff", "--name-only", head, new).stdout.split()
    library = [p for p in changed if p.startswith("plugconv_lite/") or p == "pyproject.toml"]
    restart = [f"the pull changed {len(library)} library file(s) after this kernel imported the library"] if library \
        else []
    return f"already in {root}; pulled {head} -> {new} ({len(changed)} file(s) changed)", restart


def _gpu() -> Optional[str]:
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _why(prof) -> str:
    """Why ``prof`` is the active profile: the environment variable, the hardware, or an explicit request."""
    from .profiles import detect
    if os.environ.get("PLUGCONV_PROFILE") == prof.name:
        return "from PLUGCONV_PROFILE"
    return "chosen for this runtime" if detect() == prof.name else "as requested"


def _runtime_line(prof) -> str:
    gpu = _gpu()
    if gpu is None and prof.name == "smoke":
        return (f"CPU-only runtime: the smoke profile runs ({_why(prof)}), a tiny run that proves the code path "
                "works, not evidence; for the colab profile pick a GPU (Runtime > Change runtime type) and run again.")
    where = f"{gpu} GPU" if gpu else "CPU-only runtime"
    return f"{where}: the {prof.name} profile runs ({_why(prof)})."


def setup(root=CHECKOUT, *, cloned: bool = False, started: Optional[float] = None) -> dict:
    """Make a Colab runtime ready for the book (see the module docstring); returns what it did.

    ``root`` is the clone, ``cloned`` whether the first cell cloned it just now (else it is pulled), ``started``
    the ``time.time()`` at which the cell started (default: now)."""
    global _custom_widget_manager
    started = time.time() if started is None else started
    root = Path(root)
    if not (root / "plugconv_lite").is_dir():
        raise ValueError(f"root={str(root)!r} must be a clone of the plugconv-lite repository (no plugconv_lite/ there)")
    repo, restart = _update(root, cloned)

    install, notes = plan(requirements(root))
    if install:
        done = _pip_install(install)
        if done.returncode != 0:
            err = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            notes.append(f"pip could not install {', '.join(install)} ({err})")
        else:
            from packaging.requirements import Requirement
            restart += [f"{r} was installed over a version this kernel had imported" for r in install
                        if _loaded(Requirement(r).name)]
    kept = ", ".join(f"{n} {installed_version(n)}" for n in KEEP if installed_version(n))
    packages = (f"installed {', '.join(install)}" if install else "nothing to install") + f"; kept {kept}"

    try:
        from google.colab import output
        output.enable_custom_widget_manager()
        _custom_widget_manager = True
        manager = "Colab's custom widget manager enabled"
    except (ImportError, AttributeError) as err:
        manager = f"Colab's custom widget manager unavailable ({err})"
    from .widgets import linking
    mode, why = linking()
    widgets = f"{manager}; sliders linked {'in the browser' if mode == 'browser' else 'through the kernel'}: {why}"

    # child processes (!python -m plugconv_lite ...) import the clone too
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(root) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, paths)])

    from .profiles import profile
    restart_line = (f"Restart needed (Runtime > Restart session, then run this cell again): {'; '.join(restart)}."
                    if restart else "No runtime restart needed: nothing this kernel had already imported was changed.")
    seconds = time.time() - started
    lines = [f"plugconv-lite set up for Colab in {seconds:.1f} s:", f"  repository: {repo}",
             f"  packages:   {packages}", *(f"  note:       {n}" for n in notes), f"  widgets:    {widgets}",
             f"  runtime:    {_runtime_line(profile())}", restart_line]
    print("\n".join(lines))
    return {"repository": repo, "installed": install, "notes": notes, "widgets": mode, "restart": restart,
            "seconds": seconds}


# -- what a run costs ----------------------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def expected_time(chapter: str, profile="colab", store=None) -> str:
    """One line: how long ``chapter``'s experiment takes with ``profile``, from the results store.

    Each variant's time is its profile's epochs x training images over the training throughput of its latest record
    of that profile (scaled by the record's wall time over its training time, for evaluation and set-up), times the
    profile's seeds, plus its preparation step's recorded time. Variants without a record are "unmeasured"."""
    from . import experiments, results
    from .profiles import profile as get_profile

    if chapter not in experiments.EXPERIMENTS:
        raise ValueError(f"chapter={chapter!r} must be one of {sorted(experiments.EXPERIMENTS)}")
    prof = get_profile(profile)
    variants = experiments.EXPERIMENTS[chapter]
    seeds = len(prof.seeds)
    records = results.load(store, profile=prof.name)
    plan_ = (f"{len(variants) * seeds} run(s): {len(variants)} variant(s) x {seeds} seed(s) x {prof.epochs} "
             f"epoch(s)")
    seconds, devices, unmeasured, sharing = 0.0, set(), [], 1
    for v in variants:
        backbone = v.backbone or prof.backbone
        mine = [r for r in records if r.get("variant") == v.name and r.get("backbone") == backbone
                and (v.name == experiments.BASELINE.name or chapter in r.get("chapters", []))
                and r.get("throughput", {}).get("train_images_per_s") and r.get("train_time_s")]
        if not mine:
            unmeasured.append(v.name)
            continue
        r = max(mine, key=lambda rec: rec.get("date", ""))
        images = prof.train_images or r["data"]["train_images"]
        overhead = max(1.0, r["wall_time_s"] / r["train_time_s"])
        seconds += prof.epochs * images / r["throughput"]["train_images_per_s"] * overhead * seeds
        devices.add(r["hardware"].get("device", "an unrecorded device"))
        sharing = max(sharing, (r.get("campaign") or {}).get("concurrency") or 1)
        if v.prepare:
            steps = experiments.prepared_artefacts(v.prepare, prof.name, store)
            if steps:
                seconds += steps[-1]["wall_time_s"]
            else:
                unmeasured.append(f"{v.name}'s {v.prepare} step")
    head = f"Expected time with the {prof.name} profile"
    if not devices:
        return f"{head}: unmeasured (no {prof.name}-profile record of this chapter in results/ yet); {plan_}."
    # a run measured while sharing its GPU with others (a campaign) was slower than one alone: an upper bound
    shared = f", {sharing} runs sharing it" if sharing > 1 else ""
    source = f"from the training throughput measured on {', '.join(sorted(devices))}{shared} (results/)"
    if unmeasured:
        return f"{head}: more than {_duration(seconds)} ({plan_}; {source}; unmeasured: {', '.join(unmeasured)})."
    return f"{head}: about {_duration(seconds)} ({plan_}; {source})."


def announce(chapter: str, prof) -> Optional[str]:
    """On Colab, print one line as a chapter's run starts: the runtime, the profile and why, and (on a GPU) the
    expected time and how to run a shorter check. Elsewhere nothing. Returns the line (None off Colab)."""
    if not on_colab():
        return None
    line = _runtime_line(prof)
    if prof.name != "smoke":
        line += (f" {expected_time(chapter, prof)} A short check instead: os.environ['PLUGCONV_PROFILE'] = 'smoke', "
                 "then run the cell again.")
    print(line)
    return line
