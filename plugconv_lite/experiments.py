"""Each chapter's experiment: named model variants trained on one recipe, recorded in the results store.

``run_chapter("se")`` trains every variant of the SE chapter (the baseline included) for every seed of the active
profile and returns a table. A finished run is loaded from the store instead of trained again, and an interrupted
one resumes from its checkpoint, so the full-profile command can simply be re-run until it has finished:

    PLUGCONV_PROFILE=full python -m plugconv_lite run se
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from . import results as store_mod
from .data import DataIntegrityError, Dataset, cache_dir, cifar100_available, load_cifar100, synthetic_cifar100
from .measure import count_flops, count_params, latency
from .models import build as build_backbone
from .profiles import Profile, banner, profile as get_profile
from .train import train


@dataclass(frozen=True)
class Variant:
    """A named model configuration: keyword arguments for the backbone builder (``conv=``, ``attn=``, ``block=``,
    their ``*_kw``, ``conv_where=``), plus ``width_mult`` to widen the profile's base width (equal-budget
    comparisons). Everything must be JSON-serialisable: it is hashed into the record's config."""
    name: str
    model_kw: dict = field(default_factory=dict)
    backbone: Optional[str] = None
    note: str = ""

    def build(self, profile: Profile, num_classes: int = 100) -> nn.Module:
        kw = dict(self.model_kw)
        backbone = self.backbone or profile.backbone
        width_mult = kw.pop("width_mult", 1.0)
        if backbone == "mobilenetv2":
            kw["width_mult"] = width_mult
        elif backbone == profile.backbone:
            kw["width"] = max(1, round(profile.width * width_mult))
        return build_backbone(backbone, num_classes=num_classes, **kw)


BASELINE = Variant("baseline", note="the plain backbone")
EXPERIMENTS: dict[str, list[Variant]] = {}


def register_experiment(chapter: str, variants: Sequence[Variant]) -> None:
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names of chapter {chapter!r} must be unique: {names}")
    EXPERIMENTS[chapter] = list(variants)


register_experiment("baseline", [BASELINE])
register_experiment("se", [BASELINE, Variant("se", {"attn": "se"}, note="SE (reduction 16) on every residual branch")])
register_experiment("pyconv", [BASELINE, Variant(
    "pyconv", {"conv": "pyconv"},
    note="PyConv on every 3x3 conv of the blocks, pyramid per stage: kernels 3-9 / 3-7 / 3-5 / 3 at 32 / 16 / 8 / 4 px")])
register_experiment("psconv", [BASELINE, Variant(
    "psconv", {"conv": "psconv", "conv_kw": {"parts": 4, "d": 2}},
    note="PSConv (P=4 parts, d=2: dilations 1, 2, 4) on every 3x3 conv of the blocks")])


# ----------------------------------------------------------------------------------------------------------------

def code_sha() -> str:
    """Hash of the library's source: smoke records in the cache are reused only while the code is unchanged."""
    h = hashlib.sha1()
    for p in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _git() -> dict:
    root = store_mod.repo_root()
    if root is None:
        return {}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty} if commit else {}
    except (OSError, subprocess.SubprocessError):
        return {}


def hardware(device: torch.device) -> dict:
    info = {"device_type": device.type, "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["device_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2 ** 30, 1)
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return info


def get_data(profile: Profile) -> Dataset:
    """CIFAR-100 (downloaded if needed); synthetic data only where the profile allows it, announced loudly."""
    try:
        return load_cifar100(download=True)
    except (DataIntegrityError, OSError) as err:
        if not profile.allow_synthetic:
            raise DataIntegrityError(f"the {profile.name} profile needs CIFAR-100: {err}") from err
        print(f"CIFAR-100 unavailable ({err}); the smoke profile falls back to synthetic data.")
        return synthetic_cifar100(train=profile.train_images or 5000, test=profile.test_images or 1000)


def experiment(variant: Variant, profile=None, seed: int = 0, *, chapter: Optional[str] = None,
               data: Optional[Dataset] = None, store: Optional[Path] = None, device=None, force: bool = False,
               progress: bool = True) -> dict:
    """Train ``variant`` with ``profile`` and ``seed``, measure its cost, write and return its results record."""
    prof = get_profile(profile)
    data = (data if data is not None else get_data(prof)).subset(prof.train_images, prof.test_images, seed=0)
    backbone = variant.backbone or prof.backbone
    config = {"backbone": backbone, "variant": variant.name, "model_kw": variant.model_kw, "recipe": prof.recipe(),
              "num_classes": data.num_classes, "train_images": len(data.train_y), "test_images": len(data.test_y)}
    chash = store_mod.config_hash(config)
    store = Path(store) if store is not None else store_mod.default_store(prof.name)
    path = store_mod.record_path(store, data.source, prof.name, backbone, variant.name, chash, seed)
    code = code_sha()
    if path.exists() and not force:
        rec = store_mod.read(path)
        if prof.name in store_mod.COMMITTED_PROFILES or rec.get("code_sha") == code:
            if chapter and chapter not in rec.get("chapters", []):
                rec["chapters"] = sorted({*rec.get("chapters", []), chapter})
                store_mod.write(rec, path)
            if progress:
                print(f"{variant.name} seed {seed}: loaded from {path}")
            return rec
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    model = variant.build(prof, data.num_classes)
    checkpoint = cache_dir() / "checkpoints" / prof.name / f"{path.stem}.pt"
    if progress:
        print(f"{variant.name} seed {seed}: training {backbone} ({count_params(model) / 1e6:.2f}M params) "
              f"on {data.describe()}")
    t0 = time.perf_counter()
    history = train(model, data, prof, seed=seed, device=device, checkpoint=checkpoint, progress=progress)
    wall = time.perf_counter() - t0
    model.eval()
    lat1 = latency(model, (1, 3, 32, 32), device, warmup=10, repeats=30)
    lat256 = latency(model, (256, 3, 32, 32), device, warmup=3, repeats=10)
    final = history[-1]
    record = {
        "schema": 1, "chapters": [chapter] if chapter else [], "profile": prof.name, "backbone": backbone,
        "variant": variant.name, "note": variant.note, "seed": seed, "config_hash": chash, "config": config,
        "final": {k: final[k] for k in ("test_top1", "test_top5", "test_loss", "train_loss", "train_acc")},
        "history": history,
        "cost": {"params": count_params(model), "flops": count_flops(model, (1, 3, 32, 32), device),
                 "latency_ms": lat1[0], "latency_iqr_ms": lat1[1], "latency_b256_ms": lat256[0],
                 "latency_b256_iqr_ms": lat256[1]},
        "throughput": {"train_images_per_s": sum(h["train_images"] for h in history)
                       / sum(h["train_time_s"] for h in history)},
        "wall_time_s": wall, "train_time_s": sum(h["train_time_s"] for h in history),
        "hardware": hardware(device),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                     "python": platform.python_version(), "plugconv_lite": _version()},
        "git": _git(), "code_sha": code, "command": " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"source": data.source, "md5": data.md5, "train_images": len(data.train_y),
                 "test_images": len(data.test_y)},
    }
    store_mod.write(record, path)
    checkpoint.unlink(missing_ok=True)
    return record


def _version() -> str:
    from . import __version__
    return __version__


def run_chapter(chapter: str, profile=None, seeds: Optional[Sequence[int]] = None, variants=None,
                device=None, force: bool = False, progress: bool = True):
    """Run (or load) every variant x seed of ``chapter``; returns ``results.table`` of the records, with the records
    in ``.attrs["records"]``. Smoke-profile tables are preceded by a banner."""
    if chapter not in EXPERIMENTS:
        raise ValueError(f"chapter={chapter!r} must be one of {sorted(EXPERIMENTS)}")
    prof = get_profile(profile)
    seeds = prof.seeds if seeds is None else tuple(seeds)
    chosen = [v for v in EXPERIMENTS[chapter] if variants is None or v.name in variants]
    data = get_data(prof)
    records = [experiment(v, prof, s, chapter=chapter, data=data, device=device, force=force, progress=progress)
               for v in chosen for s in seeds]
    if banner(prof):
        print(banner(prof))
    df = store_mod.table(records)
    df.attrs["records"] = records
    return df


def full_command(chapter: str) -> str:
    return f"PLUGCONV_PROFILE=full python -m plugconv_lite run {chapter}"


def chapter_report(chapter: str, profile=None, metric_digits: int = 2) -> None:
    """What a chapter's Experiment section shows (in a notebook):

    1. the active profile's run of every variant (smoke in CI: behind its banner, never interpreted);
    2. the full-profile records of this chapter from the committed store, as mean +- std over seeds with a bar
       chart, computed verdicts and provenance; or, where none exist yet, the command that produces them.
    """
    from IPython.display import Markdown, display

    from .viz import result_bars

    prof = get_profile(profile)
    df = run_chapter(chapter, prof, progress=False)
    shown = ["variant", "seeds", "top1_mean", "top1_std", "top5_mean", "params_M", "MFLOPs", "delta_top1"]
    display(Markdown(f"**Active profile: `{prof.name}`**: {prof.description}"))
    display(df[shown].round(metric_digits))
    full = store_mod.load(profile="full", chapter=chapter)
    if not full:
        display(Markdown(
            f"**No full-profile runs of this chapter are in `results/` yet**, so this page draws no conclusion "
            f"about accuracy. To produce them on a GPU (three seeds of every variant, about "
            f"{len(EXPERIMENTS[chapter]) * 3} runs):\n\n```bash\n{full_command(chapter)}\n```"))
        return
    table = store_mod.table(full)
    display(Markdown(f"**Full profile** (`results/`; {store_mod.provenance(full)}):"))
    display(table[shown + ["latency_ms", "images_per_s"]].round(metric_digits))
    result_bars(table, title=f"{chapter}: CIFAR-100 top-1 (full profile, mean +- std over seeds)")
    import matplotlib.pyplot as plt
    plt.show()
    for v in table["variant"]:
        if v != "baseline":
            display(Markdown("- " + store_mod.verdict(table, v)))
