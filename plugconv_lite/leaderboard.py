"""The leaderboard: every module against the baseline, decided by the records in ``results/``.

``board`` turns run records (and latency records, ``campaign``'s GPU-to-itself timings) into one row per variant:
the difference in mean top-1 to the baseline with its Welch 95% interval over seeds (``results.table``), what the
interval decides (``better``/``worse`` when it excludes zero, else ``not resolved``; ``no interval`` with one seed
on a side), whether the row is provisional (fewer than three seeds on a side), parameters, FLOPs, GPU latency at
batch 1 and 256 (bf16 autocast, channels_last, folded) and training throughput. ``pareto_figure`` plots the
difference against latency with the Pareto front; ``html_table`` renders a table that sorts by any column in the
browser with no kernel (``book/_static/sortable-table.js``).
"""
from __future__ import annotations

import html
import math
import numbers
from typing import Iterable, Optional

from . import results as store_mod

MIN_SEEDS = 3
COLUMNS = [  # (column, header, format): narrow enough for the book's column at 1280 px
    ("variant", "module", "{}"), ("seeds", "seeds", "{:.0f}"), ("top1_mean", "top-1 %", "{:.2f}"),
    ("delta_top1", "Δ top-1", "{:+.2f}"), ("ci", "95% CI", "{}"), ("decision", "decision", "{}"),
    ("params_M", "params M", "{:.2f}"), ("MFLOPs", "MFLOPs", "{:.0f}"), ("latency_b1_ms", "ms b1", "{:.3f}"),
    ("latency_b256_ms", "ms b256", "{:.2f}"), ("images_per_s", "train img/s", "{:,.0f}"),
]


def _decision(low: float, high: float) -> str:
    if math.isnan(low):
        return "no interval"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "not resolved"


def _latency_by_config(latency: Iterable[dict]) -> tuple[dict, Optional[str]]:
    """{(backbone, variant, config_hash): cost} from the GPU that timed the most configurations."""
    latency = [r for r in latency if (r.get("hardware") or {}).get("device_type") == "cuda"]
    if not latency:
        return {}, None
    devices: dict[str, int] = {}
    for r in latency:
        devices[r["hardware"]["device"]] = devices.get(r["hardware"]["device"], 0) + 1
    device = max(devices, key=devices.get)
    return {(r["backbone"], r["variant"], r["config_hash"]): r["cost"] for r in latency
            if r["hardware"]["device"] == device}, device


def board(records: Iterable[dict], latency: Iterable[dict] = (), profile: str = "full", level: float = 0.95):
    """One row per (backbone, variant, config) of ``profile``, baseline first, then by Δ top-1 (best first)."""
    import pandas as pd

    records = [r for r in records if r.get("profile") == profile]
    table = store_mod.table(records, level=level)
    lat, lat_device = _latency_by_config(latency)
    if table.empty:
        out = table.assign(chapters=[], ci=[], decision=[], provisional=[], latency_b1_ms=[], latency_b256_ms=[],
                           latency_source=[], concurrency=[])
        out.attrs["latency_device"] = lat_device
        return out
    rows = []
    for _, t in table.iterrows():
        recs = [r for r in records if (r["backbone"], r["variant"], r["config_hash"]) ==
                (t["backbone"], t["variant"], t["config"])]
        chapters = sorted({c for r in recs for c in r.get("chapters", [])} - {"baseline"})
        base = table[(table.backbone == t["backbone"]) & (table.variant == "baseline")]
        base_seeds = int(base["seeds"].iloc[0]) if len(base) else 0
        cost = lat.get((t["backbone"], t["variant"], t["config"]))
        source = "alone" if cost is not None else None
        if cost is None:  # a run that had the GPU to itself timed its own latency
            alone = [r["cost"] for r in recs if (r.get("campaign") or {}).get("concurrency", 1) == 1
                     and r["cost"].get("latency_ms") is not None and r["hardware"].get("device_type") == "cuda"]
            cost, source = (alone[0], "in run") if alone else ({}, None)
        low, high = t["delta_low"], t["delta_high"]
        is_base = t["variant"] == "baseline"
        rows.append({
            **t.to_dict(), "chapters": "-" if is_base else ", ".join(chapters) or "-",
            "ci": "-" if is_base or math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]",
            "decision": "baseline" if is_base else _decision(low, high),
            "provisional": t["seeds"] < MIN_SEEDS or base_seeds < MIN_SEEDS,
            "latency_b1_ms": cost.get("latency_ms"), "latency_b256_ms": cost.get("latency_b256_ms"),
            "latency_source": source,
            "concurrency": sorted({(r.get("campaign") or {}).get("concurrency", 1) for r in recs}),
        })
    out = pd.DataFrame(rows)
    for c in ("latency_b1_ms", "latency_b256_ms"):
        out[c] = pd.to_numeric(out[c], errors="coerce")
    out = out.sort_values(["variant", "delta_top1"], key=lambda s: (s != "baseline") if s.name == "variant" else -s)
    out = out.reset_index(drop=True)
    out.attrs["latency_device"] = lat_device
    return out


def pareto_front(df, x: str, y: str = "delta_top1"):
    """Boolean Series: rows no other row beats (lower or equal ``x`` and higher or equal ``y``, one strictly)."""
    import pandas as pd

    ok = df[[x, y]].notna().all(axis=1)
    front = pd.Series(False, index=df.index)
    for i in df.index[ok]:
        xi, yi = df.at[i, x], df.at[i, y]
        front[i] = not any((df.at[j, x] <= xi and df.at[j, y] >= yi and (df.at[j, x] < xi or df.at[j, y] > yi))
                           for j in df.index[ok] if j != i)
    return front


def pareto_figure(df, title: Optional[str] = None):
    """Δ top-1 (95% CI bars) against GPU latency at batch 1 and 256, the Pareto front drawn; decided rows filled,
    provisional ones hollow. Returns the figure."""
    import matplotlib.pyplot as plt

    from .viz import PALETTE

    fig, axes = plt.subplots(2, 1, figsize=(6.8, 6.4), layout="constrained", sharey=True)  # 680 px at 100 dpi
    colors = {"better": PALETTE[2], "worse": PALETTE[3], "baseline": "0.2"}
    for ax, x, label in zip(axes, ("latency_b1_ms", "latency_b256_ms"), ("batch 1", "batch 256")):
        d = df[df[x].notna()]
        if d.empty:
            ax.text(0.5, 0.5, "no latency measured on a GPU yet", ha="center", va="center", transform=ax.transAxes)
        for _, r in d.iterrows():
            color = colors.get(r["decision"], PALETTE[0])
            err = None if r["decision"] == "baseline" or math.isnan(r["delta_low"]) else [
                [r["delta_top1"] - r["delta_low"]], [r["delta_high"] - r["delta_top1"]]]  # the baseline's Δ is 0
            ax.errorbar(r[x], r["delta_top1"], yerr=err, fmt="o", color=color, capsize=3,
                        markerfacecolor="white" if r["provisional"] else color)
            ax.annotate(r["variant"], (r[x], r["delta_top1"]), textcoords="offset points", xytext=(5, 4), fontsize=9)
        front = d[pareto_front(d, x)].sort_values(x)
        if len(front) > 1:
            ax.step(front[x], front["delta_top1"], where="post", color="0.5", lw=1, ls="--", label="Pareto front")
            ax.legend(loc="lower right", fontsize=9)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.margins(x=0.15)  # room for the labels of the outermost points
        ax.set_xlabel(f"GPU latency, {label} (ms, bf16)")
        ax.set_title(f"Δ top-1 vs latency, {label}")
    for ax in axes:
        ax.set_ylabel("Δ top-1 (points, 95% CI)")
    if title:
        fig.suptitle(title)
    return fig


def _cell(value, fmt: str) -> tuple[str, str]:
    """(text shown, sort key) of one cell; missing numbers show '-' and sort last."""
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)) or value == "-":
        return "-", ""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return fmt.format(value), repr(float(value))
    return str(value), str(value)


def html_table(df) -> str:
    """The board as an HTML table that sorts by any column on the static site (class ``plugconv-sortable``;
    ``book/_static/sortable-table.js``): decided rows are marked, provisional ones carry a * and a legend."""
    head = "".join(f'<th scope="col">{html.escape(h)}</th>' for _, h, _ in COLUMNS)
    body = []
    for _, r in df.iterrows():
        cells = []
        for col, _, fmt in COLUMNS:
            text, key = _cell(r.get(col), fmt)
            if col == "decision":
                text = {"better": "▲ ", "worse": "▼ "}.get(text, "") + text
            if col == "seeds" and r["provisional"]:
                text += "*"
            if col == "ci" and text != "-":
                key = repr(float(r["delta_low"]))  # an interval sorts by its lower end
            cells.append(f'<td data-sort="{html.escape(key)}">{html.escape(text)}</td>')
        cls = f"decision-{str(r['decision']).replace(' ', '-')}" + (" provisional" if r["provisional"] else "")
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    legend = (f"* provisional: fewer than {MIN_SEEDS} seeds on a side. Latency in ms at batch 1 and 256 (GPU, "
              "bf16); - where none was timed with the GPU to itself.")
    return (f'<table class="plugconv-sortable plugconv-leaderboard"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table><p class="plugconv-legend">{html.escape(legend)}</p>')


def empty_message(profile: str = "full") -> str:
    """What the leaderboard says when the store holds no run of ``profile``: that there is nothing to decide
    from, and the commands that produce the runs."""
    return (f"**No {profile}-profile runs are in `results/` yet, so this page decides nothing.** The runs are "
            "produced on a GPU and merged here with:\n\n"
            "```bash\n"
            f"python -m plugconv_lite campaign --budget 3600 --out campaign/ --profile {profile}   # within an hour\n"
            "python -m plugconv_lite import-results campaign/plugconv-campaign.json.gz\n"
            f"python -m plugconv_lite campaign --list --out runs/ --profile {profile}  # or: one command per run, "
            "for a cluster\n"
            "```\n\nThe README's \"Full experiments on a GPU\" section says more.")


def summary(df) -> str:
    """One markdown paragraph on what the board decides (counts only, computed from ``df``)."""
    mods = df[df.variant != "baseline"]
    n = len(mods)
    better, worse = int((mods.decision == "better").sum()), int((mods.decision == "worse").sum())
    prov = int(mods.provisional.sum())
    shared = sorted({n for c in df.concurrency for n in c})
    device = df.attrs.get("latency_device")
    return (f"{n} variants against the baseline: {better} better and {worse} worse by an interval that excludes "
            f"zero, {n - better - worse} undecided; {prov} of them provisional (fewer than {MIN_SEEDS} seeds on a "
            f"side). Latency timed on {device or 'no GPU yet'}; training images/s measured with "
            f"{' or '.join(map(str, shared))} run(s) sharing the GPU.")


def coverage(profile: str = "full", store=None):
    """Every chapter's experiment against the runs ``store`` holds for it: one row per chapter (book order of the
    registered experiments) with its variants besides the shared baseline, the runs planned (variants x the profile's
    seeds), the runs in the store (``experiments.chapter_records``: filed under the chapter, or the same variant
    and configuration filed under another) and the variants still missing a seed. A chapter without a single run
    is listed too: the board above only has rows for what ran."""
    import pandas as pd

    from . import chapters  # noqa: F401  (registers every chapter's experiment)
    from .experiments import BASELINE, EXPERIMENTS, chapter_records, get_profile

    prof = get_profile(profile)
    rows = []
    for chapter, variants in EXPERIMENTS.items():
        # the shared plain backbone is run once for the book; a chapter's own baseline on another backbone (the
        # Sandglass chapter's MobileNetV2) is one of the chapter's planned runs
        names = [v.name for v in variants if v is not BASELINE]
        if not names:
            continue
        done = {(r["variant"], r["seed"]) for r in chapter_records(chapter, prof.name, store)
                if r.get("variant") in names and r.get("seed") in prof.seeds}
        missing = [n for n in names if any((n, s) not in done for s in prof.seeds)]
        rows.append({"chapter": chapter, "variants": len(names), "runs": len(done),
                     "planned": len(names) * len(prof.seeds), "missing": ", ".join(missing) or "-"})
    return pd.DataFrame(rows).set_index("chapter")
