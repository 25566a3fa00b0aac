"""The results store: one JSON record per (backbone, variant, config, seed), written atomically.

Layout: ``<store>/<dataset>/<profile>/<backbone>__<variant>__<config-hash>__seed<k>.json``.

The repository's ``results/`` holds only real runs on real CIFAR-100 with the colab or full profile; records are
never hand-edited. Smoke runs go to a cache store (``<cache>/runs``) and can never be written into ``results/``.
Readers turn records into tables (mean +- std over seeds) and plots.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

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


def prepare_path(store: Path, dataset: str, profile: str, backbone: str, step: str, chash: str) -> Path:
    """Where a preparation step's artefact lives (e.g. IC-Conv's EDO search)."""
    return Path(store) / dataset / profile / "prepare" / f"{backbone}__{step}__{chash}.json"


def latency_path(store: Path, dataset: str, profile: str, backbone: str, variant: str, chash: str,
                 device: str) -> Path:
    """Where a latency record lives: one per (run configuration, GPU model)."""
    slug = "".join(c if c.isalnum() else "-" for c in device).strip("-").lower() or "device"
    return Path(store) / dataset / profile / "latency" / f"{backbone}__{variant}__{chash}__{slug}.json"


def load_latency(store: Optional[Path] = None, profile: Optional[str] = None, dataset: str = "cifar100") -> list[dict]:
    """Latency records (measured with the GPU to themselves, ``campaign``) under ``store`` (default: committed)."""
    store = Path(store) if store is not None else results_dir()
    out = []
    for p in sorted((store / dataset).glob(f"{profile or '*'}/latency/*.json")):
        r = read(p)
        r["_path"] = str(p)
        out.append(r)
    return out


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


# ---------------------------------------------------------------------------------------------------------------
# Statistics over seeds: the difference of two means with Welch's 95% confidence interval

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz), for ``incomplete_beta``."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x={x} must be in [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with ``df`` (real, > 0) degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on ``t_cdf``; no SciPy)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must be in (0, 1)")
    if not df > 0:
        raise ValueError(f"df={df} must be > 0")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """Difference of means ``mean(a) - mean(b)`` with Welch's confidence interval at ``level``.

    Returns ``delta``, ``low``, ``high``, ``half_width`` (the smallest difference these seeds can tell from zero:
    an observed difference inside +- half_width is not resolved), ``df`` (Welch-Satterthwaite) and the sample
    sizes. With fewer than two values on either side there is no interval (NaN bounds).
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        raise ValueError(f"both samples need at least one value (got {len(a)} and {len(b)})")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must be in (0, 1)")
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    out = {"delta": ma - mb, "low": float("nan"), "high": float("nan"), "half_width": float("nan"),
           "df": float("nan"), "n_a": na, "n_b": nb, "level": level}
    if na < 2 or nb < 2:
        return out
    va = sum((v - ma) ** 2 for v in a) / (na - 1)
    vb = sum((v - mb) ** 2 for v in b) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0.0:  # identical values on both sides: the interval is the point
        df, half = float(na + nb - 2), 0.0
    else:
        df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
        half = t_quantile(0.5 + level / 2.0, df) * math.sqrt(se2)
    out.update(low=out["delta"] - half, high=out["delta"] + half, half_width=half, df=df)
    return out


def table(records: Iterable[dict], baseline: Optional[str] = "baseline", level: float = 0.95):
    """One row per (profile, backbone, variant, config): seeds, top-1/top-5 mean and std, cost, and the
    difference in mean top-1 to ``baseline`` of the same profile and backbone with its Welch confidence interval
    over seeds (``delta_low``, ``delta_high``; NaN with fewer than two seeds on either side) and the half-width
    ``resolvable`` (the smallest difference these seeds can tell from zero)."""
    import pandas as pd

    records = list(records)
    rows = [{"profile": r["profile"], "backbone": r["backbone"], "variant": r["variant"], "config": r["config_hash"],
             "seed": r["seed"], "top1": r["final"]["test_top1"], "top5": r["final"]["test_top5"],
             "params_M": r["cost"]["params"] / 1e6, "MFLOPs": r["cost"]["flops"] / 1e6,
             "latency_ms": r["cost"].get("latency_ms"), "images_per_s": r["throughput"]["train_images_per_s"],
             "wall_time_min": r["wall_time_s"] / 60, "device": r["hardware"].get("device")} for r in records]
    cols = ["profile", "backbone", "variant", "config"]
    stats = ["delta_top1", "delta_low", "delta_high", "resolvable"]
    if not rows:
        return pd.DataFrame(columns=cols + ["seeds", "top1_mean", "top1_std", "top5_mean", "params_M", "MFLOPs",
                                            "latency_ms", "images_per_s", "wall_time_min", "device"] + stats)
    df = pd.DataFrame(rows)
    g = df.groupby(cols, sort=False)
    out = g.agg(seeds=("seed", "nunique"), top1_mean=("top1", "mean"), top1_std=("top1", "std"),
                top5_mean=("top5", "mean"), params_M=("params_M", "first"), MFLOPs=("MFLOPs", "first"),
                latency_ms=("latency_ms", "median"), images_per_s=("images_per_s", "mean"),
                wall_time_min=("wall_time_min", "mean"), device=("device", "first")).reset_index()
    for c in stats:
        out[c] = float("nan")
    if baseline is not None:
        for (prof, bb), sub in out.groupby(["profile", "backbone"]):
            base = sub[sub["variant"] == baseline]
            if not len(base):
                continue
            base_top1 = df[(df.profile == prof) & (df.backbone == bb) & (df.variant == baseline)
                           & (df.config == base["config"].iloc[0])]["top1"]
            for i, row in sub.iterrows():
                top1 = df[(df.profile == prof) & (df.backbone == bb) & (df.variant == row["variant"])
                          & (df.config == row["config"])]["top1"]
                w = welch(top1, base_top1, level)
                out.loc[i, stats] = [w["delta"], w["low"], w["high"], w["half_width"]]
    return out


def provenance(records: Iterable[dict]) -> str:
    """One line on where a set of records came from (devices, commits, dates)."""
    records = list(records)
    if not records:
        return "no records"
    devices = sorted({r["hardware"].get("device", "?") for r in records})
    commits = sorted({((r.get("git") or {}).get("commit") or (r.get("campaign") or {}).get("source_commit")
                        or "?")[:8] for r in records})
    dates = sorted(r.get("date", "?")[:10] for r in records)
    return (f"{len(records)} runs on {', '.join(devices)}; commits {', '.join(commits)}; "
            f"dates {dates[0]} to {dates[-1]}; torch {', '.join(sorted({r['versions']['torch'] for r in records}))}")


def verdict(table, variant: str, baseline: str = "baseline") -> str:
    """A sentence, computed from ``table`` (``results.table``), comparing ``variant`` with ``baseline``: the
    difference in mean top-1 with its 95% Welch interval over seeds, and what the interval decides. Chapters print
    it instead of typing numbers into prose."""
    rows = table.set_index("variant")
    if variant not in rows.index or baseline not in rows.index:
        return f"no runs of both {variant!r} and {baseline!r} to compare"
    v, b = rows.loc[variant], rows.loc[baseline]
    delta, low, high = v["delta_top1"], v["delta_low"], v["delta_high"]
    n_v, n_b = int(v["seeds"]), int(b["seeds"])
    text = (f"{variant} vs {baseline}: {delta:+.2f} points top-1 ({v['top1_mean']:.2f}% vs {b['top1_mean']:.2f}%, "
            f"{n_v} and {n_b} seeds)")
    if math.isnan(low):
        return text + "; with one seed on a side there is no confidence interval, so nothing is decided."
    text += f", 95% CI [{low:+.2f}, {high:+.2f}]"
    if low > 0:
        return text + f": {variant} is better; the interval excludes zero."
    if high < 0:
        return text + f": {variant} is worse; the interval excludes zero."
    return (text + f": not resolved. These seeds can only tell differences larger than about "
            f"{v['resolvable']:.2f} points from zero.")


# ---------------------------------------------------------------------------------------------------------------
# Packs: records made elsewhere (a campaign on a lent GPU, a cluster's jobs), verified and merged into the store
#
# A pack is one gzip-compressed JSON file: {"format", "version", "provenance", "records": [run records],
# "artefacts": [preparation artefacts], "latency": [latency records], "failures": [...]}. ``import_packs`` merges
# the entries that pass ``verify`` and says, one line each, why it refused the others.

PACK_FORMAT, PACK_VERSION = "plugconv-results-pack", 1
PACK_KINDS = ("artefacts", "records", "latency")  # import order: a prepared run needs its artefact first


def new_pack(provenance: Optional[dict] = None) -> dict:
    return {"format": PACK_FORMAT, "version": PACK_VERSION, "provenance": dict(provenance or {}),
            **{k: [] for k in PACK_KINDS}, "failures": []}


def write_pack(pack: dict, path: Path) -> Path:
    """Write ``pack`` as gzip JSON atomically (temporary file, fsync, rename): a reader sees the old or the new
    pack, never half of one."""
    import gzip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    blob = json.dumps(pack, sort_keys=True, separators=(",", ":"), default=str).encode()
    with open(tmp, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
            gz.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_pack(path: Path) -> dict:
    """A pack written by ``write_pack``; ``ValueError`` if the file is not one (or of another format version)."""
    import gzip

    try:
        with gzip.open(path, "rt") as f:
            pack = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable results pack (gzip JSON): {err}") from err
    if not isinstance(pack, dict) or pack.get("format") != PACK_FORMAT:
        raise ValueError(f"{path} is not a results pack (format={pack.get('format') if isinstance(pack, dict) else None!r},"
                         f" expected {PACK_FORMAT!r})")
    if pack.get("version") != PACK_VERSION:
        raise ValueError(f"{path}: pack version {pack.get('version')} is not {PACK_VERSION}, which this code reads")
    for k in PACK_KINDS:
        pack.setdefault(k, [])
    pack.setdefault("failures", [])
    return pack


def entry_path(kind: str, entry: dict, store: Path) -> Path:
    """Where an entry of a pack goes in ``store``."""
    dataset = (entry.get("data") or {}).get("source", "cifar100")
    if kind == "records":
        return record_path(store, dataset, entry["profile"], entry["backbone"], entry["variant"],
                           entry["config_hash"], entry["seed"])
    if kind == "artefacts":
        return prepare_path(store, dataset, entry["profile"], entry["backbone"], entry["prepare"],
                            entry["config_hash"])
    if kind == "latency":
        return latency_path(store, dataset, entry["profile"], entry["backbone"], entry["variant"],
                            entry["config_hash"], entry["hardware"]["device"])
    raise ValueError(f"kind={kind!r} must be one of {PACK_KINDS}")


def entry_name(kind: str, entry: dict) -> str:
    try:
        return entry_path(kind, entry, Path(".")).stem
    except (KeyError, TypeError):
        return f"{kind[:-1]} {entry.get('variant') or entry.get('prepare') or '?'}"


def _git_problem(commit: Optional[str], root: Optional[Path]) -> Optional[str]:
    """Why ``commit`` does not fit this repository's history (None if it does, or if git cannot tell)."""
    import subprocess

    if not commit or root is None or not (Path(root) / ".git").exists():
        return None
    try:
        known = subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{commit}^{{commit}}"],
                               capture_output=True, timeout=30).returncode == 0
        if not known:
            return f"its commit {commit[:10]} is not in this repository"
        rc = subprocess.run(["git", "-C", str(root), "merge-base", "--is-ancestor", commit, "HEAD"],
                            capture_output=True, timeout=30).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return f"its commit {commit[:10]} is not an ancestor of HEAD" if rc == 1 else None


def verify(kind: str, entry: dict, root: Optional[Path] = None) -> list[str]:
    """Why ``entry`` (of pack section ``kind``) may not go into the committed store; empty if it may.

    Refused: another profile than colab/full (smoke), data other than CIFAR-100 (synthetic) or with other md5s, a
    ``config_hash`` that does not match the config (an edited record), a recipe other than the current profile's,
    code that changed since the run (``provenance.check``: the files that define the run), a commit that is not an
    ancestor of HEAD (when the record names one and git can tell), latency timed on a CPU."""
    from . import provenance
    from .data import FILES
    from .profiles import PROFILES

    need = {"records": ("profile", "backbone", "variant", "seed", "config_hash", "config", "final", "data"),
            "artefacts": ("profile", "backbone", "prepare", "config_hash", "config", "output", "data"),
            "latency": ("profile", "backbone", "variant", "config_hash", "config", "cost", "hardware")}[kind]
    missing = [k for k in need if k not in entry]
    if missing:
        return [f"malformed: no {', '.join(missing)}"]
    problems = []
    prof = entry["profile"]
    if prof not in COMMITTED_PROFILES:
        problems.append(f"a {prof}-profile run: only {'/'.join(COMMITTED_PROFILES)} runs are committed")
    if kind != "latency":
        data = entry["data"]
        if data.get("source") != "cifar100":
            problems.append(f"trained on {data.get('source')} data, not CIFAR-100")
        elif data.get("md5") != {n: m for n, (m, _) in FILES.items()}:
            problems.append("its data md5s are not CIFAR-100's")
    elif (entry.get("hardware") or {}).get("device_type") != "cuda":
        problems.append("latency timed on a CPU, not a GPU")
    if config_hash(entry["config"]) != entry["config_hash"]:
        problems.append("config_hash does not match its config (edited?)")
    if prof in PROFILES and entry["config"].get("recipe") != PROFILES[prof].recipe():
        problems.append(f"its recipe is not the current {prof} profile's")
    changed = provenance.check(entry.get("code"), root)
    if changed:
        problems.append("code changed since the run: " + "; ".join(changed))
    commit = (entry.get("git") or {}).get("commit") or (entry.get("campaign") or {}).get("source_commit")
    git = _git_problem(commit, root if root is not None else repo_root())
    if git:
        problems.append(git)
    return problems


def _origin(entry: dict) -> tuple:
    """What identifies one measurement (the same run imported twice has the same origin)."""
    result = entry.get("final") or entry.get("output") or entry.get("cost")
    return entry.get("date"), json.dumps(result, sort_keys=True, default=str)


def import_packs(paths: Sequence[Path], store: Optional[Path] = None, dry_run: bool = False,
                 root: Optional[Path] = None) -> dict:
    """Verify the entries of the packs at ``paths`` (files, or folders of ``*.json.gz``) and write those that pass
    into ``store`` (default: the committed store). Returns ``{"imported": [names], "identical": [names already in
    the store], "refused": [(name, reason)]}``; nothing is written with ``dry_run``."""
    store = Path(store) if store is not None else results_dir()
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.json.gz")) if p.is_dir() else [p]
    report = {"imported": [], "identical": [], "refused": []}
    packs = [(f, read_pack(f)) for f in files]
    seen: dict[Path, tuple] = {}
    for kind in PACK_KINDS:
        for f, pack in packs:
            for entry in pack[kind]:
                entry = {k: v for k, v in entry.items() if k != "_path"}
                name = entry_name(kind, entry)
                problems = verify(kind, entry, root)
                if problems:
                    report["refused"].append((name, "; ".join(problems)))
                    continue
                path = entry_path(kind, entry, store)
                if kind == "records" and "prepare" in entry["config"]:
                    art = prepare_path(store, "cifar100", entry["profile"], entry["backbone"],
                                       entry["config"]["prepare"]["name"], entry["config"]["prepare"]["config_hash"])
                    if not art.exists() and art not in seen:
                        report["refused"].append((name, f"its preparation artefact {art.name} is neither in the "
                                                         "store nor in the packs"))
                        continue
                previous = seen.get(path) or (_origin(read(path)) if path.exists() else None)
                if previous is not None:
                    if previous == _origin(entry):
                        report["identical"].append(name)
                    else:
                        report["refused"].append((name, f"duplicate: a different {kind[:-1]} of this run is already "
                                                         f"{'in the packs' if path in seen else 'at ' + str(path)}"))
                    continue
                seen[path] = _origin(entry)
                if not dry_run:
                    write(entry, path)
                report["imported"].append(name)
    return report
