"""The results store: one JSON record per (backbone, variant, config, seed), written atomically.

Layout: ``<store>/<dataset>/<profile>/<backbone>__<variant>__<config-hash>__seed<k>.json``.

The repository's ``results/`` holds only real runs on real CIFAR-100 with the colab or full profile; records are
never hand-edited. Smoke runs go to a cache store (``<cache>/runs``) and can never be written into ``results/``.
Readers turn records into tables (mean +- std over seeds) and plots.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional

from .data import cache_dir

COMMITTED_PROFILES = ("colab", "full")


def repo_root(start: Optional[Path] = None) -> Optional[Path]:
    """The book's repository root (the folder with ``_config.yml`` and ``plugconv_lite/``) above ``start``/cwd."""
    here = Path(start or Path.cwd()).resolve()
    for p in [here, *here.parents]:
        if (p / "_config.yml").is_file() and (p / "plugconv_lite").is_dir():
            return p
    pkg = Path(__file__).resolve().parent.parent  # an editable install inside the repository
    if (pkg / "_config.yml").is_file():
        return pkg
    return None


def results_dir() -> Path:
    """The committed store: ``$PLUGCONV_RESULTS``, else the repository's ``results/``, else ``./results``."""
    if os.environ.get("PLUGCONV_RESULTS"):
        return Path(os.environ["PLUGCONV_RESULTS"]).expanduser()
    root = repo_root()
    return (root / "results") if root is not None else Path("results")


def default_store(profile_name: str) -> Path:
    """Where a run of this profile writes: smoke runs to the cache, colab/full runs to the committed store."""
    return results_dir() if profile_name in COMMITTED_PROFILES else cache_dir() / "runs"


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def record_path(store: Path, dataset: str, profile: str, backbone: str, variant: str, chash: str, seed: int) -> Path:
    return Path(store) / dataset / profile / f"{backbone}__{variant}__{chash}__seed{seed}.json"


def write(record: dict, path: Path) -> Path:
    """Write ``record`` atomically (temporary file, fsync, rename). Refuses smoke or synthetic runs in the
    committed store."""
    path = Path(path)
    committed = results_dir().resolve()
    if committed in path.resolve().parents:
        if record.get("profile") not in COMMITTED_PROFILES or record.get("data", {}).get("source") != "cifar100":
            raise ValueError(f"refusing to write a {record.get('profile')} run on {record.get('data', {}).get('source')}"
                             f" data into {committed}: the committed store holds only colab/full runs on CIFAR-100")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def load(store: Optional[Path] = None, profile: Optional[str] = None, chapter: Optional[str] = None,
         dataset: str = "cifar100") -> list[dict]:
    """All records under ``store`` (default: the committed store), optionally of one profile / chapter."""
    store = Path(store) if store is not None else results_dir()
    base = store / dataset
    if not base.is_dir():
        return []
    records = []
    for p in sorted(base.glob(f"{profile or '*'}/*.json")):
        r = read(p)
        if chapter is None or chapter in r.get("chapters", []):
            r["_path"] = str(p)
            records.append(r)
    return records


def table(records: Iterable[dict], baseline: Optional[str] = "baseline"):
    """One row per (profile, backbone, variant, config): seeds, top-1/top-5 mean and std, cost, and the
    difference in mean top-1 to ``baseline`` of the same profile and backbone."""
    import pandas as pd

    rows = [{"profile": r["profile"], "backbone": r["backbone"], "variant": r["variant"], "config": r["config_hash"],
             "seed": r["seed"], "top1": r["final"]["test_top1"], "top5": r["final"]["test_top5"],
             "params_M": r["cost"]["params"] / 1e6, "MFLOPs": r["cost"]["flops"] / 1e6,
             "latency_ms": r["cost"].get("latency_ms"), "images_per_s": r["throughput"]["train_images_per_s"],
             "wall_time_min": r["wall_time_s"] / 60, "device": r["hardware"].get("device")} for r in records]
    cols = ["profile", "backbone", "variant", "config"]
    if not rows:
        return pd.DataFrame(columns=cols + ["seeds", "top1_mean", "top1_std", "top5_mean", "params_M", "MFLOPs",
                                            "latency_ms", "images_per_s", "wall_time_min", "delta_top1"])
    df = pd.DataFrame(rows)
    g = df.groupby(cols, sort=False)
    out = g.agg(seeds=("seed", "nunique"), top1_mean=("top1", "mean"), top1_std=("top1", "std"),
                top5_mean=("top5", "mean"), params_M=("params_M", "first"), MFLOPs=("MFLOPs", "first"),
                latency_ms=("latency_ms", "median"), images_per_s=("images_per_s", "mean"),
                wall_time_min=("wall_time_min", "mean"), device=("device", "first")).reset_index()
    out["delta_top1"] = float("nan")
    if baseline is not None:
        for (prof, bb), sub in out.groupby(["profile", "backbone"]):
            base = sub[sub["variant"] == baseline]
            if len(base):
                out.loc[sub.index, "delta_top1"] = sub["top1_mean"] - base["top1_mean"].iloc[0]
    return out


def provenance(records: Iterable[dict]) -> str:
    """One line on where a set of records came from (devices, commits, dates)."""
    records = list(records)
    if not records:
        return "no records"
    devices = sorted({r["hardware"].get("device", "?") for r in records})
    commits = sorted({(r.get("git") or {}).get("commit", "?")[:8] for r in records})
    dates = sorted(r.get("date", "?")[:10] for r in records)
    return (f"{len(records)} runs on {', '.join(devices)}; commits {', '.join(commits)}; "
            f"dates {dates[0]} to {dates[-1]}; torch {', '.join(sorted({r['versions']['torch'] for r in records}))}")


def verdict(table, variant: str, baseline: str = "baseline") -> str:
    """A sentence, computed from ``table``, comparing ``variant`` with ``baseline``: the difference in mean top-1
    and whether it exceeds the seed-to-seed spread. Chapters print it instead of typing numbers into prose."""
    rows = table.set_index("variant")
    if variant not in rows.index or baseline not in rows.index:
        return f"no runs of both {variant!r} and {baseline!r} to compare"
    v, b = rows.loc[variant], rows.loc[baseline]
    delta = v["top1_mean"] - b["top1_mean"]
    n = int(min(v["seeds"], b["seeds"]))
    spread = max(v["top1_std"], b["top1_std"]) if n > 1 else float("nan")
    text = (f"{variant} vs {baseline}: {delta:+.2f} points top-1 ({v['top1_mean']:.2f}% vs {b['top1_mean']:.2f}%, "
            f"{n} seed{'s' if n != 1 else ''} each")
    if n < 2:
        return text + "); one seed cannot separate a difference from seed noise."
    text += f", largest seed std {spread:.2f})"
    if abs(delta) <= spread:
        return text + "; the difference is within the seed-to-seed spread."
    return text + f"; the difference is larger than the seed-to-seed spread ({abs(delta) / spread:.1f}x)."
