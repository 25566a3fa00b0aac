"""Each chapter's experiment: named model variants trained on one recipe, recorded in the results store.

``run_chapter("se")`` trains every variant of the SE chapter (the baseline included) for every seed of the active
profile and returns a table. A finished run is loaded from the store instead of trained again, and an interrupted
one resumes from its checkpoint, so the full-profile command can simply be re-run until it has finished:

    PLUGCONV_PROFILE=full python -m plugconv_lite run se
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import hashlib
import io
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from . import provenance
from . import results as store_mod
from .data import DataIntegrityError, Dataset, cache_dir, cifar100_available, load_cifar100, synthetic_cifar100
from .measure import count_flops, count_params, latency
from .models import build as build_backbone
from .profiles import Profile, banner, profile as get_profile
from .surgery import fold
from .train import amp_dtype, resolve_device, train


@dataclass(frozen=True)
class Variant:
    """A named model configuration: keyword arguments for the backbone builder (``conv=``, ``attn=``, ``block=``,
    their ``*_kw``, ``conv_where=``), plus ``width_mult`` to widen the profile's base width (equal-budget
    comparisons). Everything must be JSON-serialisable: it is hashed into the record's config.

    ``prepare`` names a registered preparation step (``register_prepare``) that must run before the variant can be
    trained, such as IC-Conv's dilation search; its JSON output's ``model_kw`` is merged into ``model_kw`` (see
    ``prepare``). ``build`` without that output builds the unprepared network.

    ``budget_of`` makes an equal-budget control: this variant's network (usually the plain backbone) is trained at
    the width whose ``budget`` (``"params"`` or ``"flops"``) comes closest to ``budget_of``'s network on the same
    profile: the base ``width`` of a ResNet, the ``width_mult`` of MobileNetV2 (``WIDTH_ARGS``). The width is
    resolved per profile (``resolve_kw``) and recorded in the config."""
    name: str
    model_kw: dict = field(default_factory=dict)
    backbone: Optional[str] = None
    note: str = ""
    prepare: Optional[str] = None
    prepare_kw: dict = field(default_factory=dict)
    budget_of: Optional["Variant"] = None
    budget: str = "params"

    def __post_init__(self):
        if self.budget not in ("params", "flops"):
            raise ValueError(f"budget={self.budget!r} must be 'params' or 'flops'")
        if self.budget_of is not None and ("width" in self.model_kw or "width_mult" in self.model_kw):
            raise ValueError(f"variant {self.name!r}: budget_of chooses the width; do not also set width/width_mult")

    def build(self, profile: Profile, num_classes: int = 100, model_kw: Optional[dict] = None) -> nn.Module:
        """The variant's network; ``model_kw`` (e.g. from ``prepare``) replaces the variant's own kwargs. An
        explicit ``width`` in the kwargs wins over ``width_mult`` (which scales the profile's base width). A backbone
        whose width argument is ``width_mult`` (MobileNetV2) gets ``width_mult`` times the profile's width relative to
        the standard 64 (``STANDARD_WIDTH``): 1 on the colab and full profiles, 1/4 on the smoke profile, whose
        ResNet-18 is narrowed the same way."""
        kw = dict(self.model_kw if model_kw is None else model_kw)
        if model_kw is None and self.budget_of is not None:
            kw = self.resolve_kw(profile, num_classes)
        backbone = self.backbone or profile.backbone
        width_mult = kw.pop("width_mult", 1.0)
        if width_arg(backbone)[0] == "width_mult":
            kw["width_mult"] = width_mult * profile.width / STANDARD_WIDTH
        elif backbone == profile.backbone and "width" not in kw:
            kw["width"] = max(1, round(profile.width * width_mult))
        return build_backbone(backbone, num_classes=num_classes, **kw)

    def resolve_kw(self, profile: Profile, num_classes: int = 100) -> dict:
        """The kwargs this variant trains with on ``profile``: its own, plus the matched width of an equal-budget
        control (``width`` for a ResNet, ``width_mult`` for MobileNetV2: ``WIDTH_ARGS``)."""
        kw = dict(self.model_kw)
        if self.budget_of is None:
            return kw
        arg, step = width_arg(self.backbone or profile.backbone)

        def value(k: int):  # the search runs over integers: k steps of the backbone's width argument
            return k if step == 1 else round(k * step, 6)

        def search() -> int:  # builds a dozen networks: on the meta device (shapes_only), it costs no arithmetic
            target = cost_of(self.budget_of.build(profile, num_classes), self.budget)
            return matched_width(lambda k: cost_of(self.build(profile, num_classes, model_kw={**kw, arg: value(k)}),
                                                   self.budget), target,
                                 start=profile.width if step == 1 else round(1 / step))

        kw[arg] = value(shapes_only(search))
        return kw


# The builder argument that sets a backbone's width, and the step of the equal-budget search over it. The ResNets
# take an integer base width; MobileNetV2 takes a multiplier of its channel table (each layer's channels rounded to
# a multiple of 8, so the search in steps of 0.01 does not miss a width).
WIDTH_ARGS = {"mobilenetv2": ("width_mult", 0.01)}
# The width the profiles' widths are relative to (the standard ResNet-18's); a ``width_mult`` backbone is scaled by
# profile.width / STANDARD_WIDTH, so that the smoke profile narrows every backbone alike.
STANDARD_WIDTH = 64


def width_arg(backbone: str) -> tuple:
    """``(argument, step)``: how ``backbone``'s width is set (``WIDTH_ARGS``; ``("width", 1)`` by default)."""
    return WIDTH_ARGS.get(backbone, ("width", 1))


def cost_of(model: nn.Module, budget: str) -> int:
    """The parameters or forward FLOPs (one 32 x 32 image) of ``model``."""
    return count_params(model) if budget == "params" else count_flops(model, (1, 3, 32, 32))


def shapes_only(fn: Callable[[], object]):
    """``fn()`` with new tensors on the meta device: networks built there can be counted (``count_params``,
    ``count_flops``) without arithmetic, with the same counts. Falls back to the CPU for a module that needs real
    values to run."""
    try:
        with torch.device("meta"):
            return fn()
    except (RuntimeError, NotImplementedError):
        with torch.device("cpu"):
            return fn()


def matched_width(cost: Callable[[int], float], target: float, start: int) -> int:
    """The integer width whose ``cost(width)`` (increasing in width) is closest to ``target``."""
    lo, hi = 1, max(2, start)
    while cost(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # invariant: cost(lo) < target <= cost(hi), or lo == 1
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda w: abs(cost(w) - target))


BASELINE = Variant("baseline", note="the plain backbone")
EXPERIMENTS: dict[str, list[Variant]] = {}
PREPARES: dict[str, Callable[..., dict]] = {}


def register_experiment(chapter: str, variants: Sequence[Variant]) -> None:
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names of chapter {chapter!r} must be unique: {names}")
    for v in variants:
        if v.prepare is not None and v.prepare not in PREPARES:
            raise ValueError(f"variant {v.name!r}: prepare={v.prepare!r} must be one of {sorted(PREPARES)} "
                             "(register_prepare it first)")
    EXPERIMENTS[chapter] = list(variants)


def register_prepare(name: str, fn: Callable[..., dict]) -> None:
    """Register a preparation step: ``fn(profile, data, *, build, model_kw, seed, device, checkpoint, progress,
    **prepare_kw) -> dict`` (JSON-serialisable). ``data`` is the profile's subset (train on ``data.train_*`` only:
    the test split is for reporting), ``build(model_kw)`` builds the variant's backbone with the given kwargs, and
    the returned ``"model_kw"`` is deep-merged into the variant's kwargs; everything else returned is provenance."""
    if name in PREPARES and PREPARES[name] is not fn:
        raise ValueError(f"prepare {name!r} is already registered to {PREPARES[name]!r}")
    PREPARES[name] = fn


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
    """CIFAR-100 (downloaded if needed); a synthetic stand-in only where the profile allows it.

    Quiet: where the data came from is in the returned dataset's ``note`` (one line, no paths), which
    ``data_line`` prints once above an experiment's table."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = load_cifar100(download=True, progress=False)
        return dataclasses.replace(ds, note="CIFAR-100 (every file md5-verified)")
    except (DataIntegrityError, OSError) as err:
        if not profile.allow_synthetic:
            raise DataIntegrityError(f"the {profile.name} profile needs CIFAR-100: {err}") from err
        ds = synthetic_cifar100(train=profile.train_images or 5000, test=profile.test_images or 1000, quiet=True)
        why = ("it is not in the data folder and could not be downloaded" if not cifar100_available()
               else "the copy in the data folder failed its md5 check")
        return dataclasses.replace(ds, note=f"SYNTHETIC stand-in, not CIFAR-100: {why} "
                                            "(set PLUGCONV_DATA to a folder holding cifar-100-python/)")


def data_line(data: Dataset, profile: Profile) -> str:
    """The one line an experiment prints about its data: the source and the subset the profile trains on."""
    sub = data.subset(profile.train_images, profile.test_images, seed=0)
    note = data.note or data.source
    return (f"Data: {note}; the {profile.name} profile uses {len(sub.train_y):,} training and "
            f"{len(sub.test_y):,} test images.")


def merge_kw(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, recursively for nested dicts (``extra`` wins); neither is modified."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_kw(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


PREPARE_SEED = 0  # a preparation (e.g. a search) runs once per profile and is shared by every seed of the variant


def prepare_config(variant: Variant, profile: Profile, num_classes: int, train_images: int, test_images: int) -> dict:
    """What a preparation step's output depends on (hashed into its artefact's name)."""
    return {"prepare": variant.prepare, "prepare_kw": variant.prepare_kw,
            "backbone": variant.backbone or profile.backbone, "model_kw": variant.model_kw,
            "recipe": profile.recipe(), "seed": PREPARE_SEED, "num_classes": num_classes,
            "train_images": train_images, "test_images": test_images}


def run_config(variant: Variant, profile: Profile, model_kw: dict, num_classes: int, train_images: int,
               test_images: int, artefact: Optional[dict] = None) -> dict:
    """What a run computes (hashed into its record's name): the variant's prepared kwargs, the recipe, the data."""
    config = {"backbone": variant.backbone or profile.backbone, "variant": variant.name, "model_kw": model_kw,
              "recipe": profile.recipe(), "num_classes": num_classes, "train_images": train_images,
              "test_images": test_images}
    if artefact is not None:
        config["prepare"] = {"name": variant.prepare, "config_hash": artefact["config_hash"]}
    return config


def prepare(variant: Variant, profile=None, *, data: Optional[Dataset] = None, store: Optional[Path] = None,
            device=None, force: bool = False, progress: bool = True) -> tuple[dict, Optional[dict]]:
    """Run (or load) ``variant``'s preparation step; returns (the model kwargs to train with, the artefact or None).

    The artefact (the step's JSON output plus provenance: config, hardware, versions, git commit, date, data) is
    written atomically to ``<store>/<dataset>/<profile>/prepare/<backbone>__<step>__<config-hash>.json`` and reused
    when present (smoke artefacts only while the library's code is unchanged), like a results record. Its config
    hash covers the step, its kwargs, the variant's own kwargs, the recipe and the data, so any change re-runs it.
    Variants without ``prepare`` return their own ``model_kw`` (an equal-budget control's with its matched width)
    and None.
    """
    if variant.prepare is None:
        return variant.resolve_kw(get_profile(profile), 100 if data is None else data.num_classes), None
    if variant.prepare not in PREPARES:
        raise ValueError(f"prepare={variant.prepare!r} must be one of {sorted(PREPARES)}")
    prof = get_profile(profile)
    data = (data if data is not None else get_data(prof)).subset(prof.train_images, prof.test_images, seed=0)
    backbone = variant.backbone or prof.backbone
    config = prepare_config(variant, prof, data.num_classes, len(data.train_y), len(data.test_y))
    chash = store_mod.config_hash(config)
    store = Path(store) if store is not None else store_mod.default_store(prof.name)
    path = store_mod.prepare_path(store, data.source, prof.name, backbone, variant.prepare, chash)
    code = code_sha()
    artefact = None
    if path.exists() and not force:
        artefact = store_mod.read(path)
        if prof.name in store_mod.COMMITTED_PROFILES or artefact.get("code_sha") == code:
            if progress:
                print(f"{variant.name}: {variant.prepare} output loaded from {path}")
        else:
            artefact = None
    if artefact is None:
        dev = resolve_device(device)
        if progress:
            print(f"{variant.name}: running the preparation step {variant.prepare!r} ({prof.name} profile)")
        t0 = time.perf_counter()
        output = PREPARES[variant.prepare](
            prof, data, build=lambda kw: variant.build(prof, data.num_classes, model_kw=kw),
            model_kw=dict(variant.model_kw), seed=PREPARE_SEED, device=dev,
            checkpoint=cache_dir() / "checkpoints" / data.source / prof.name / f"{path.stem}.pt", progress=progress,
            **variant.prepare_kw)
        artefact = {
            "schema": 1, "kind": "prepare", "prepare": variant.prepare, "profile": prof.name, "backbone": backbone,
            "config_hash": chash, "config": config, "output": output, "wall_time_s": time.perf_counter() - t0,
            "hardware": hardware(dev), "versions": _versions(), "git": _git(), "code_sha": code,
            "code": provenance.fingerprint(variant.build(prof, data.num_classes), extra=[PREPARES[variant.prepare]]),
            "command": " ".join(sys.argv), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "data": {"source": data.source, "md5": data.md5, "train_images": len(data.train_y),
                     "test_images": len(data.test_y)},
        }
        store_mod.write(artefact, path)
        artefact = store_mod.read(path)  # what later runs will load: JSON types (lists, not tuples)
    artefact["_path"] = str(path)
    return merge_kw(variant.model_kw, artefact["output"].get("model_kw", {})), artefact


def prepared_artefacts(prepare_name: str, profile: Optional[str] = None, store: Optional[Path] = None,
                       dataset: str = "cifar100") -> list[dict]:
    """Stored outputs of the preparation step ``prepare_name`` (oldest first), from the committed store by default;
    ``profile`` limits them to one profile. Reading never runs a step (``prepare`` does)."""
    store = Path(store) if store is not None else store_mod.results_dir()
    found = []
    for p in sorted((store / dataset).glob(f"{profile or '*'}/prepare/*__{prepare_name}__*.json")):
        art = store_mod.read(p)
        art["_path"] = str(p)
        found.append(art)
    return sorted(found, key=lambda a: a.get("date", ""))


def deployed_latency(model: nn.Module, device: torch.device, quick: bool = False) -> dict:
    """Inference latency of ``model`` as it would be deployed, at batch 1 and 256: eval mode, re-parameterizable
    modules folded (``surgery.fold``, on a copy), channels_last, and on a GPU under bf16 autocast (fp16 where bf16
    is unsupported; fp32 on a CPU). Median and IQR in ms, with how it was measured. ``quick`` (smoke runs, whose
    numbers are never read) times batch 1 briefly and leaves batch 256 unmeasured (None): the same code path at a
    fraction of a CI page's time budget."""
    deployed = fold(copy.deepcopy(model)).to(device).eval()
    dtype = amp_dtype(device, True)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        lat1 = latency(deployed, (1, 3, 32, 32), device, warmup=3 if quick else 10, repeats=8 if quick else 30,
                       channels_last=True)
        lat256 = (None, None) if quick else latency(deployed, (256, 3, 32, 32), device, warmup=3, repeats=10,
                                                    channels_last=True)
    return {"latency_ms": lat1[0], "latency_iqr_ms": lat1[1], "latency_b256_ms": lat256[0],
            "latency_b256_iqr_ms": lat256[1], "latency_dtype": str(dtype or torch.float32).replace("torch.", ""),
            "latency_channels_last": True, "latency_folded": True, "latency_device": hardware(device)["device"]}


def experiment(variant: Variant, profile=None, seed: int = 0, *, chapter: Optional[str] = None,
               data: Optional[Dataset] = None, store: Optional[Path] = None, device=None, force: bool = False,
               progress: bool = True, prepared: Optional[tuple] = None, checkpoint: bool = True,
               measure_latency: bool = True) -> dict:
    """Train ``variant`` with ``profile`` and ``seed``, measure its cost, write and return its results record.

    A variant with a preparation step is prepared first (``prepare``; pass its result as ``prepared`` to share
    one preparation between seeds); the prepared kwargs are what the record's config holds and hashes.
    ``checkpoint=False`` trains without epoch checkpoints (a campaign's short runs on a machine that is given back
    anyway); ``measure_latency=False`` leaves the latency fields None (runs sharing a GPU with other runs cannot
    time it; a campaign measures it alone, ``campaign.measure_latencies``)."""
    prof = get_profile(profile)
    data = (data if data is not None else get_data(prof)).subset(prof.train_images, prof.test_images, seed=0)
    model_kw, artefact = prepared if prepared is not None else prepare(
        variant, prof, data=data, store=store, device=device, force=force, progress=progress)
    backbone = variant.backbone or prof.backbone
    config = run_config(variant, prof, model_kw, data.num_classes, len(data.train_y), len(data.test_y), artefact)
    chash = store_mod.config_hash(config)
    store = Path(store) if store is not None else store_mod.default_store(prof.name)
    path = store_mod.record_path(store, data.source, prof.name, backbone, variant.name, chash, seed)
    if path.exists() and not force:
        rec = store_mod.read(path)
        if prof.name in store_mod.COMMITTED_PROFILES or rec.get("code_sha") == code_sha():
            if chapter and chapter not in rec.get("chapters", []):
                rec["chapters"] = sorted({*rec.get("chapters", []), chapter})
                store_mod.write(rec, path)
            if progress:
                print(f"{variant.name} seed {seed}: loaded from {path}")
            return rec
    device = resolve_device(device)
    torch.manual_seed(seed)
    model = variant.build(prof, data.num_classes, model_kw=model_kw)
    code = provenance.fingerprint(model, extra=[PREPARES[variant.prepare]] if variant.prepare else [])
    ckpt = cache_dir() / "checkpoints" / data.source / prof.name / f"{path.stem}.pt" if checkpoint else None
    if progress:
        print(f"{variant.name} seed {seed}: training {backbone} ({count_params(model) / 1e6:.2f}M params) "
              f"on {data.describe()}")
    first: dict = {}

    def first_step(step: int) -> None:  # one sync, after the first step: torch.compile and cuDNN autotuning are here
        if not first:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first["s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    history = train(model, data, prof, seed=seed, device=device, checkpoint=ckpt, progress=progress,
                    on_step=first_step)
    wall = time.perf_counter() - t0
    model.eval()
    cost = {"params": count_params(model), "flops": count_flops(model, (1, 3, 32, 32), device)}
    cost.update(deployed_latency(model, device, quick=prof.name == "smoke") if measure_latency else dict.fromkeys(
        ("latency_ms", "latency_iqr_ms", "latency_b256_ms", "latency_b256_iqr_ms")))
    final = history[-1]
    record = {
        "schema": 1, "chapters": [chapter] if chapter else [], "profile": prof.name, "backbone": backbone,
        "variant": variant.name, "note": variant.note, "seed": seed, "config_hash": chash, "config": config,
        "final": {k: final[k] for k in ("test_top1", "test_top5", "test_loss", "train_loss", "train_acc")}
        | {k: v for k, v in final.items() if k.startswith("test_top1_")},   # named heads (GENet's members)
        "history": history, "cost": cost,
        "throughput": throughput(history, first.get("s"), prof.batch_size, compiled=prof.compile and
                                 device.type == "cuda"),
        "wall_time_s": wall, "train_time_s": sum(h["train_time_s"] for h in history),
        "hardware": hardware(device),
        "versions": _versions(),
        "git": _git(), "code_sha": code_sha(), "code": code, "command": " ".join(sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"source": data.source, "md5": data.md5, "train_images": len(data.train_y),
                 "test_images": len(data.test_y)},
    }
    if artefact is not None:
        record["prepare"] = {"name": variant.prepare, "config_hash": artefact["config_hash"],
                             "artefact": Path(artefact["_path"]).name}
    store_mod.write(record, path)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    return record


def throughput(history: list[dict], first_step_s: Optional[float], batch_size: int, compiled: bool) -> dict:
    """Training throughput of a run from its history: ``train_images_per_s`` in the steady state (the first step,
    which holds torch.compile and cuDNN's autotuning, left out), the overall rate, and ``compile_s`` (the first
    step's time less one steady step's; None when the model was not compiled)."""
    images = sum(h["train_images"] for h in history)
    train_s = sum(h["train_time_s"] for h in history)
    out = {"train_images_per_s_overall": images / train_s, "train_images_per_s": images / train_s,
           "first_step_s": first_step_s, "compiled": bool(compiled), "compile_s": None, "batch_size": batch_size}
    if first_step_s is not None and images > batch_size and train_s > first_step_s:
        steady = (images - batch_size) / (train_s - first_step_s)
        out["train_images_per_s"] = steady
        if compiled:
            out["compile_s"] = max(0.0, first_step_s - batch_size / steady)
    return out


def _version() -> str:
    from . import __version__
    return __version__


def _versions() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(), "plugconv_lite": _version()}


def run_chapter(chapter: str, profile=None, seeds: Optional[Sequence[int]] = None, variants=None,
                device=None, force: bool = False, progress: bool = True, data: Optional[Dataset] = None,
                quiet: bool = False):
    """Run (or load) every variant x seed of ``chapter``; returns ``results.table`` of the records, with the records
    in ``.attrs["records"]``. Smoke-profile tables are preceded by a banner (unless ``quiet``)."""
    if chapter not in EXPERIMENTS:
        raise ValueError(f"chapter={chapter!r} must be one of {sorted(EXPERIMENTS)}")
    prof = get_profile(profile)
    from .colab import announce
    announce(chapter, prof)  # on Colab: the runtime, the profile and what this run costs; elsewhere nothing
    seeds = prof.seeds if seeds is None else tuple(seeds)
    chosen = [v for v in EXPERIMENTS[chapter] if variants is None or v.name in variants]
    data = get_data(prof) if data is None else data
    records = []
    for v in chosen:
        prepared = prepare(v, prof, data=data, device=device, force=force, progress=progress)
        records += [experiment(v, prof, s, chapter=chapter, data=data, device=device, force=force,
                               progress=progress, prepared=prepared) for s in seeds]
    if banner(prof) and not quiet:
        print(banner(prof))
    df = store_mod.table(records)
    df.attrs["records"] = records
    return df


def full_command(chapter: str) -> str:
    return f"PLUGCONV_PROFILE=full python -m plugconv_lite run {chapter}"


def _fmt_table(table) -> "pd.DataFrame":
    """A results table formatted for a page: one narrow row per variant, numbers rounded, CI as text."""
    import pandas as pd

    rows = []
    for _, r in table.iterrows():
        row = {"variant": r["variant"], "seeds": int(r["seeds"]), "params (M)": f"{r['params_M']:.2f}",
               "MFLOPs": f"{r['MFLOPs']:.0f}",
               "top-1 (%)": f"{r['top1_mean']:.2f}" + (f" ± {r['top1_std']:.2f}" if r["seeds"] > 1 else "")}
        if r["variant"] != "baseline" and r["delta_top1"] == r["delta_top1"]:
            row["Δ top-1"] = f"{r['delta_top1']:+.2f}"
            row["95% CI"] = (f"[{r['delta_low']:+.2f}, {r['delta_high']:+.2f}]" if r["delta_low"] == r["delta_low"]
                             else "one seed: none")
        else:
            row["Δ top-1"], row["95% CI"] = "", ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def chapter_report(chapter: str, profile=None) -> None:
    """What a chapter's Experiment section shows (in a notebook):

    1. one line on the data, then the active profile's run of every variant (in CI the smoke profile: behind its
       banner, never interpreted);
    2. the full-profile records of this chapter from the committed store: mean +- std over seeds, the difference
       to the baseline with its 95% Welch interval, a bar chart and the computed verdicts with provenance; or,
       where none exist yet, the command that produces them.
    """
    from IPython.display import Markdown, display

    prof = get_profile(profile)
    data = get_data(prof)
    print(data_line(data, prof))
    df = run_chapter(chapter, prof, progress=False, data=data, quiet=True)
    if banner(prof):
        print(banner(prof))
    display(_fmt_table(df))
    full = chapter_records(chapter)
    ran = {r["variant"] for r in full}
    if not ran - {"baseline"}:
        seeds = len(get_profile("full").seeds)
        n = (len(EXPERIMENTS[chapter]) - 1) * seeds + (0 if "baseline" in ran else seeds)
        base = (f" The baseline's runs are there ({store_mod.provenance(full)}), but no variant of this chapter "
                f"has one." if "baseline" in ran else "")
        display(Markdown(
            f"**No full-profile runs of this chapter's variants are in `results/` yet**, so this page draws no "
            f"conclusion about accuracy.{base} To produce them on a GPU ({n} runs: every variant, three seeds; "
            f"runs already in `results/` are skipped):\n\n```bash\n{full_command(chapter)}\n```"))
        return
    from .viz import result_bars
    import matplotlib.pyplot as plt

    table = store_mod.table(full)
    display(Markdown(f"**Full profile** (`results/`; {store_mod.provenance(full)}):"))
    display(_fmt_table(table))
    result_bars(table, title=f"{chapter}: CIFAR-100 top-1, full profile (mean ± std over seeds)")
    plt.show()
    display(Markdown("\n".join("- " + store_mod.verdict(table, v) for v in table["variant"] if v != "baseline")))



def chapter_records(chapter: str, profile: str = "full", store=None) -> list[dict]:
    """The committed records of ``chapter``'s variants: the ones filed under it, and runs filed under another
    chapter that are exactly a run of this chapter's variant (same name and configuration hash; e.g. the SE row
    that the attention chapters share with the SE chapter, run once, filed under the chapter that asked first)."""
    prof = get_profile(profile)
    records = store_mod.load(store, profile=prof.name)
    variants = {v.name: v for v in EXPERIMENTS[chapter]}
    mine = [r for r in records if chapter in r.get("chapters", [])]
    others = [r for r in records if chapter not in r.get("chapters", []) and r.get("variant") in variants]
    if others:
        from .campaign import resolve
        stores = [Path(store) if store is not None else store_mod.results_dir()]
        expected = {name: resolve(variants[name], prof, "cifar100", stores)["config_hash"]
                    for name in {r["variant"] for r in others}}
        mine += [r for r in others if r.get("config_hash") == expected[r["variant"]]]
    return mine


def colab_line(chapter: str) -> None:
    """The line at the top of a chapter: what running its experiment on Colab (the colab profile) costs in time,
    from measured throughput where a record exists, "unmeasured" otherwise."""
    from IPython.display import Markdown, display

    from .colab import expected_time
    display(Markdown(f"*On Colab (GPU runtime):* {expected_time(chapter, 'colab')}"))


def _network_label(baseline: Variant, prof: Profile) -> str:
    """The baseline network a chapter's cost ratios are relative to, in words: its backbone and width."""
    backbone = baseline.backbone or prof.backbone
    names = {"resnet18": "ResNet-18", "resnet20": "ResNet-20", "resnet56": "ResNet-56", "mobilenetv2": "MobileNetV2"}
    arg, _ = width_arg(backbone)
    width = baseline.model_kw.get("width_mult", 1.0) if arg == "width_mult" else prof.width
    return f"{names.get(backbone, backbone)} at {arg} {width:g}"


def chapter_verdict(chapter: str) -> None:
    """The computed half of a chapter's Verdict: what each variant costs at the full profile's width relative to
    the baseline (parameters and FLOPs counted here; GPU latency from the records, where they exist) and what the
    full-profile evidence says (the interval-based verdicts), or that there is none yet."""
    from IPython.display import Markdown, display

    full_prof = get_profile("full")
    variants = EXPERIMENTS[chapter]
    counts = shapes_only(lambda: {v.name: (count_params(m := v.build(full_prof)), count_flops(m)) for v in variants})
    base_p, base_f = counts["baseline"]
    records = chapter_records(chapter)
    table = store_mod.table(records) if {r["variant"] for r in records} - {"baseline"} else None
    lat = {} if table is None else {v: t for v, t in zip(table["variant"], table["latency_ms"])
                                    if t is not None and t == t}  # NaN: not timed (runs that shared the GPU)
    lines = [f"**Cost** ({_network_label(variants[0], full_prof)}, one 32×32 image, relative to the baseline):"]
    for v in variants[1:]:
        params, flops = counts[v.name]
        gpu = (f"GPU latency ×{lat[v.name] / lat['baseline']:.2f} (batch 1, from the records)"
               if v.name in lat and "baseline" in lat else "GPU latency not yet measured")
        lines.append(f"- `{v.name}`: parameters ×{params / base_p:.2f}, FLOPs ×{flops / base_f:.2f}"
                     f" (as trained); {gpu}.")
    if table is None:
        lines.append("\n**Evidence:** no full-profile runs of this chapter's variants yet, so there is no evidence "
                     "either way on our recipe. "
                     f"They are one command away on a GPU: `{full_command(chapter)}`.")
    else:
        lines.append(f"\n**Evidence** ({store_mod.provenance(records)}):")
        lines += ["- " + (store_mod.verdict(table, v.name) if v.name in set(table["variant"]) else
                          f"`{v.name}`: no full-profile run yet") for v in variants[1:]]
    display(Markdown("\n".join(lines)))


from . import chapters as _chapters  # noqa: E402,F401  (the chapter files register their experiments)
