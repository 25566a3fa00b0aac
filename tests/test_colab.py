"""Colab: the set-up's install plan, the profile a runtime gets, what a run costs, and a simulated Colab session.

The simulation (``test_a_chapter_opens_on_simulated_colab``) runs a chapter's first cells in a real IPython kernel
with a stand-in ``google.colab`` module, a real ipywidgets 7.7.1 (the line Colab ships; .ci/setup installs it into
.cache/ipywidgets7) and a repository cloned from a local path, never the network. What only a real Colab session can
confirm is listed in the README's Colab section.
"""
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from plugconv_lite import colab, experiments, profiles

ROOT = Path(__file__).resolve().parent.parent
COLAB_LIKE = {"torch": "2.8.0+cu126", "numpy": "2.0.2", "pandas": "2.2.2", "matplotlib": "3.10.0",
              "seaborn": "0.13.2", "tqdm": "4.67.1", "ipywidgets": "7.7.1", "torchinfo": None}


# -- what setup() installs ------------------------------------------------------------------------------------------

def test_requirements_are_read_from_pyproject_with_or_without_tomllib(monkeypatch):
    reqs = colab.requirements(ROOT)
    assert "torchinfo>=1.8" in reqs and any(r.startswith("ipywidgets") for r in reqs)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # Python < 3.11
    assert colab.requirements(ROOT) == reqs


def test_the_library_accepts_the_ipywidgets_colab_ships_and_the_book_pins_8():
    from packaging.requirements import Requirement

    library = next(Requirement(r) for r in colab.requirements(ROOT) if r.startswith("ipywidgets"))
    book = next(Requirement(line.split("#")[0]) for line in (ROOT / "requirements.txt").read_text().splitlines()
                if line.startswith("ipywidgets"))
    assert library.specifier.contains("7.7.1") and library.specifier.contains("8.1.5")
    assert not book.specifier.contains("7.7.1") and book.specifier.contains("8.1.5")  # the site needs Stack


def test_plan_installs_only_what_is_missing_or_out_of_range_never_torch_or_ipywidgets():
    reqs = colab.requirements(ROOT)
    install, notes = colab.plan(reqs, COLAB_LIKE.get)
    assert install == ["torchinfo>=1.8"] and notes == []
    old = dict(COLAB_LIKE, torch="2.1.0", ipywidgets="6.0.0", pandas="1.5.3")
    install, notes = colab.plan(reqs, old.get)
    assert sorted(install) == ["pandas>=2.0", "torchinfo>=1.8"]
    assert [n.split()[0] for n in notes] == ["torch", "ipywidgets"] and all("is kept" in n for n in notes)


# -- the profile a Colab runtime gets ---------------------------------------------------------------------------------

@pytest.fixture
def on_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.delenv("PLUGCONV_PROFILE", raising=False)


def _gpu(monkeypatch, name="Tesla T4", gib=15):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: types.SimpleNamespace(total_memory=gib * 2 ** 30))


def test_a_colab_gpu_gets_the_colab_profile_whatever_its_memory(on_colab, monkeypatch):
    _gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", 80)
    assert profiles.detect() == "colab" and profiles.profile().name == "colab"
    del sys.modules["google.colab"]
    assert profiles.detect() == "full"  # the same GPU elsewhere
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profiles.detect() == "smoke"


def test_announce_on_a_cpu_runtime_is_one_smoke_line(on_colab, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = colab.announce("se", profiles.profile())
    assert capsys.readouterr().out == line + "\n" and "\n" not in line
    assert line.startswith("CPU-only runtime: the smoke profile runs (chosen for this runtime)")
    assert "Change runtime type" in line and "Expected time" not in line


def test_announce_on_a_gpu_runtime_gives_the_expected_time_and_a_shorter_run(on_colab, monkeypatch, tmp_path):
    _gpu(monkeypatch)
    monkeypatch.setenv("PLUGCONV_RESULTS", str(tmp_path))
    line = colab.announce("se", profiles.profile())
    assert line.startswith("Tesla T4 GPU: the colab profile runs (chosen for this runtime). Expected time with the "
                           "colab profile: unmeasured")
    assert "os.environ['PLUGCONV_PROFILE'] = 'smoke'" in line
    monkeypatch.setenv("PLUGCONV_PROFILE", "smoke")  # the override works on Colab as elsewhere
    assert colab.announce("se", profiles.profile()) == "Tesla T4 GPU: the smoke profile runs (from PLUGCONV_PROFILE)."
    assert colab.announce("se", profiles.profile("full")).startswith("Tesla T4 GPU: the full profile runs (as requested)")


def test_announce_says_nothing_off_colab(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert colab.announce("se", profiles.profile("smoke")) is None and capsys.readouterr().out == ""


def test_run_chapter_announces_before_it_loads_data(monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def announce(chapter, prof):
        seen.append((chapter, prof.name))
        raise Stop

    monkeypatch.setattr(colab, "announce", announce)
    monkeypatch.setattr(experiments, "get_data", lambda prof: pytest.fail("data loaded before the announcement"))
    with pytest.raises(Stop):
        experiments.run_chapter("se", "smoke")
    assert seen == [("se", "smoke")]


# -- what a run costs -------------------------------------------------------------------------------------------------

def _record(store, variant, chapters, images_per_s=2500.0, wall=120.0, train=100.0, device="Tesla T4",
            date="2026-01-01T00:00:00+00:00", profile="colab", **extra):
    path = store / "cifar100" / profile / f"resnet18__{variant}__abc__seed0__{date[:10]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**extra,
        "profile": profile, "backbone": "resnet18", "variant": variant, "chapters": chapters, "seed": 0,
        "throughput": {"train_images_per_s": images_per_s}, "wall_time_s": wall, "train_time_s": train,
        "hardware": {"device": device}, "data": {"train_images": 50000}, "date": date}))


def test_expected_time_is_unmeasured_without_records(tmp_path):
    line = colab.expected_time("se", "colab", store=tmp_path)
    assert line == ("Expected time with the colab profile: unmeasured (no colab-profile record of this chapter in "
                    "results/ yet); 2 run(s): 2 variant(s) x 1 seed(s) x 15 epoch(s).")


def test_expected_time_comes_from_the_measured_throughput(tmp_path):
    # 15 epochs x 50,000 images / 2,500 images/s = 300 s of training, x 1.2 (wall / train time) = 6 min per run
    _record(tmp_path, "baseline", ["pyconv"])  # a baseline measured for another chapter is the same network
    line = colab.expected_time("se", "colab", store=tmp_path)
    assert line.startswith("Expected time with the colab profile: more than 6 min (2 run(s)")
    assert line.endswith("measured on Tesla T4 (results/); unmeasured: se).")
    _record(tmp_path, "se", ["se"], images_per_s=625.0, date="2025-01-01T00:00:00+00:00")  # older: not used
    _record(tmp_path, "se", ["se"], images_per_s=1250.0, date="2026-02-01T00:00:00+00:00")  # 12 min
    _record(tmp_path, "se", ["other"], images_per_s=10.0, date="2026-03-01T00:00:00+00:00")  # another chapter's "se"
    assert colab.expected_time("se", "colab", store=tmp_path) == (
        "Expected time with the colab profile: about 18 min (2 run(s): 2 variant(s) x 1 seed(s) x 15 epoch(s); "
        "from the training throughput measured on Tesla T4 (results/)).")
    # the full profile: 30 epochs x 3 seeds, from full-profile records only
    assert "unmeasured" in colab.expected_time("se", "full", store=tmp_path)
    _record(tmp_path, "baseline", [], profile="full", device="NVIDIA H100")
    _record(tmp_path, "se", ["se"], profile="full", device="NVIDIA H100", campaign={"concurrency": 4})
    assert colab.expected_time("se", "full", store=tmp_path) == (
        "Expected time with the full profile: about 1 h 12 min (6 run(s): 2 variant(s) x 3 seed(s) x 30 epoch(s); "
        "from the training throughput measured on NVIDIA H100, 4 runs sharing it (results/)).")


def test_expected_time_counts_an_unmeasured_preparation_step(tmp_path):
    _record(tmp_path, "icconv", ["icconv"])
    line = colab.expected_time("icconv", "colab", store=tmp_path)  # one run measured; the EDO search is not
    assert line.startswith("Expected time with the colab profile: more than 6 min") and line.endswith(
        "unmeasured: baseline, icconv's edo step).")
    with pytest.raises(ValueError, match="chapter='nope' must be one of"):
        colab.expected_time("nope")


# -- a simulated Colab session ----------------------------------------------------------------------------------------

def _ipywidgets7() -> Path:
    path = Path(os.environ.get("PLUGCONV_IPYWIDGETS7", ROOT / ".cache" / "ipywidgets7"))
    if not (path / "ipywidgets" / "__init__.py").is_file():
        pytest.fail(f"ipywidgets 7 (Colab's line) is not installed in {path}: run `bash .ci/setup`, or "
                    f"`pip install --no-deps --target {path} ipywidgets==7.7.1 ipython_genutils==0.2.0`")
    return path


STAND_IN = '''"""A stand-in for google.colab.output: records what the notebook asks of it."""
CALLS = []


def enable_custom_widget_manager(*args, **kwargs):
    CALLS.append("enable_custom_widget_manager")
'''


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args], cwd=cwd,
                   check=True, capture_output=True)


def _origin(tmp: Path) -> Path:
    """A local repository holding this working tree's library, configuration and results (what a clone needs)."""
    origin = tmp / "origin"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "plugconv_lite", origin / "plugconv_lite", ignore=ignore)
    shutil.copytree(ROOT / "results", origin / "results", ignore=ignore)
    shutil.copytree(ROOT / "chapters", origin / "chapters", ignore=ignore)
    for name in ("pyproject.toml", "_config.yml", "README.md"):
        shutil.copy(ROOT / name, origin / name)
    _git(origin, "init", "-q", "-b", "main")
    _git(origin, "add", "-A")
    _git(origin, "commit", "-q", "-m", "snapshot")
    return origin


class Kernel:
    def __init__(self, env, cwd):
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def run(self, code: str, timeout=300) -> str:
        """Execute ``code``; returns its stdout (and text results); fails the test on an error."""
        out, errors = [], []

        def hook(msg):
            c = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(c["text"])
            elif msg["msg_type"] in ("execute_result", "display_data"):
                out.append(c["data"].get("text/markdown", c["data"].get("text/plain", "")) + "\n")
            elif msg["msg_type"] == "error":
                errors.append(f"{c['ename']}: {c['evalue']}")
        self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        assert not errors, f"{errors}\n{''.join(out)}"
        return "".join(out)

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.mark.slow
def test_a_chapter_opens_on_simulated_colab(tmp_path):
    ipywidgets7 = _ipywidgets7()
    stand_in = tmp_path / "stand_in"
    (stand_in / "google" / "colab" / "output").mkdir(parents=True)
    (stand_in / "google" / "colab" / "__init__.py").write_text("")
    (stand_in / "google" / "colab" / "output" / "__init__.py").write_text(STAND_IN)
    origin = _origin(tmp_path)
    content = tmp_path / "content"
    content.mkdir()
    checkout = content / "plugconv-lite"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGCONV_", "PYTHON"))}
    env.update(PYTHONPATH=os.pathsep.join([str(stand_in), str(ipywidgets7)]), PLUGCONV_REPO=f"file://{origin}",
               PLUGCONV_CHECKOUT=str(checkout), PLUGCONV_CACHE=str(tmp_path / "cache"), MPLBACKEND="agg")
    nb = json.loads((ROOT / "chapters" / "01_se.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    first = cells[0]
    opening = cells[1:next(i for i, c in enumerate(cells) if "import plugconv_lite as pl" in c) + 1]
    explore_cell = next(c for c in cells if "pl.explore(" in c)
    kernel = Kernel(env, cwd=content)
    try:
        kernel.run("import google.colab.output")  # Colab's kernel imports it at start-up

        # 1. the first cell clones, installs nothing Colab has, enables the widget manager and says so
        out = kernel.run(first)
        assert f"repository: cloned into {checkout} (commit " in out, out
        assert "packages:   nothing to install; kept torch " in out and "ipywidgets 7.7.1" in out
        assert "Colab's custom widget manager enabled; sliders linked through the kernel: ipywidgets 7.7.1 has no " \
               "Stack widget" in out
        assert "runtime:    CPU-only runtime: the smoke profile runs (chosen for this runtime)" in out
        assert "No runtime restart needed" in out and "plugconv-lite set up for Colab in " in out
        assert kernel.run("print(google.colab.output.CALLS)").strip() == "['enable_custom_widget_manager']"
        assert kernel.run("import plugconv_lite; print(plugconv_lite.__file__)").startswith(str(checkout))
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout

        # 2. run twice: no second clone, no error, the clone is pulled (nothing new) and said to be
        out = kernel.run(first)
        assert f"repository: already in {checkout}; pulled: no new commits" in out and "cloned" not in out, out
        assert "No runtime restart needed" in out
        assert kernel.run(f"print(sys.path.count({str(checkout)!r}))").strip() == "1"
        assert subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout == head

        # 3. records committed since: pulled, no restart; library code changed since: a restart, and why
        (origin / "results" / "note.txt").write_text("a new record would land here\n")
        _git(origin, "add", "-A")
        _git(origin, "commit", "-q", "-m", "results")
        out = kernel.run(first)
        assert "pulled " in out and "(1 file(s) changed)" in out and "No runtime restart needed" in out, out
        with open(origin / "plugconv_lite" / "colab.py", "a") as f:
            f.write("# changed upstream\n")
        _git(origin, "commit", "-q", "-am", "library")
        out = kernel.run(first)
        assert "Restart needed (Runtime > Restart session, then run this cell again): the pull changed 1 library " \
               "file(s) after this kernel imported the library." in out, out

        # 4. the chapter's opening cells and its widget: ipywidgets 7 -> linked through the kernel, same frames
        out = "".join(kernel.run(cell) for cell in opening)
        assert "Expected time with the colab profile: unmeasured" in out or "colab_line" not in "".join(opening), out
        head, call = explore_cell.rsplit("pl.explore(", 1)
        kernel.run(f"{head}box = pl.explore({call}\nbox")
        out = kernel.run("import ipywidgets\n"
                         "print(box.linking[0], type(box.children[-1]).__name__, len(box.frames), ipywidgets.__version__)")
        assert out.strip() == "kernel Image 12 7.7.1", out
        out = kernel.run("box.children[0].index = 3; box.children[1].index = 1\n"
                         "print(box.children[-1].value == box.frames[(3, 1)] != box.frames[(0, 0)])")
        assert out.strip() == "True"

        # 5. the profile: CPU -> smoke, one line; GPU -> colab with the expected time; the override wins
        out = kernel.run("from plugconv_lite import colab, profiles\n"
                         "print(profiles.profile().name); line = colab.announce('se', profiles.profile())")
        assert out.splitlines() == ["smoke", "CPU-only runtime: the smoke profile runs (chosen for this runtime), a "
                                    "tiny run that proves the code path works, not evidence; for the colab profile "
                                    "pick a GPU (Runtime > Change runtime type) and run again."]
        store = tmp_path / "store"
        _record(store, "baseline", ["se"])
        _record(store, "se", ["se"])
        out = kernel.run(
            "import os, types, torch\n"
            f"os.environ['PLUGCONV_RESULTS'] = {str(store)!r}\n"
            "torch.cuda.is_available = lambda: True\n"
            "torch.cuda.get_device_name = lambda *a: 'Tesla T4'\n"
            "torch.cuda.get_device_properties = lambda *a: types.SimpleNamespace(total_memory=15 * 2 ** 30)\n"
            "print(profiles.profile().name); line = colab.announce('se', profiles.profile())\n"
            "os.environ['PLUGCONV_PROFILE'] = 'smoke'\n"
            "print(profiles.profile().name); line = colab.announce('se', profiles.profile())")
        lines = out.splitlines()
        assert lines[0] == "colab" and lines[1].startswith(
            "Tesla T4 GPU: the colab profile runs (chosen for this runtime). Expected time with the colab profile: "
            "about 12 min (2 run(s)"), out
        assert lines[2:] == ["smoke", "Tesla T4 GPU: the smoke profile runs (from PLUGCONV_PROFILE)."]
    finally:
        kernel.close()
