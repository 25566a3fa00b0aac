"""Command line: ``python -m plugconv_lite run <chapter>... [--profile full]``, ``list``, ``table``; GPU campaigns:
``bench``, ``campaign``, ``campaign-run``, ``import-results`` (see plugconv_lite/campaign.py)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from . import experiments, results
    from .profiles import PROFILES

    parser = argparse.ArgumentParser(prog="python -m plugconv_lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train (or load) every variant x seed of the given chapters")
    run.add_argument("chapters", nargs="+", help=f"chapter names, or 'all': {', '.join(sorted(experiments.EXPERIMENTS))}")
    run.add_argument("--profile", choices=sorted(PROFILES), help="default: $PLUGCONV_PROFILE, else by hardware")
    run.add_argument("--seeds", type=int, nargs="+", help="default: the profile's seeds")
    run.add_argument("--variants", nargs="+", help="only these variants of each chapter")
    run.add_argument("--device", help="e.g. cuda, cuda:1, cpu")
    run.add_argument("--force", action="store_true", help="re-train even if a record exists")
    sub.add_parser("list", help="list the chapters and their variants")
    tab = sub.add_parser("table", help="summarise the committed results store")
    tab.add_argument("--profile", choices=sorted(PROFILES))
    from . import bench, campaign
    campaign.add_subcommands(sub)
    bench.add_subcommands(sub)
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is not None:
        return args.handler(args)

    if args.command == "list":
        for chapter, variants in sorted(experiments.EXPERIMENTS.items()):
            print(f"{chapter}: " + ", ".join(v.name + (f" (prepared by {v.prepare})" if v.prepare else "")
                                             for v in variants))
        return 0
    if args.command == "table":
        import pandas as pd
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(results.table(results.load(profile=args.profile)).to_string(index=False))
        return 0
    chapters = sorted(experiments.EXPERIMENTS) if args.chapters == ["all"] else args.chapters
    unknown = [c for c in chapters if c not in experiments.EXPERIMENTS]
    if unknown:
        parser.error(f"unknown chapters {unknown}; valid: {', '.join(sorted(experiments.EXPERIMENTS))}")
    for chapter in chapters:
        df = experiments.run_chapter(chapter, args.profile, args.seeds, args.variants, args.device, args.force)
        print(df.drop(columns=["config"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
