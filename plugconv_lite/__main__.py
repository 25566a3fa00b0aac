"""Command line: ``python -m plugconv_lite run <chapter>... [--profile full]``, ``list``, ``table``,
``assignment <chapter> --out DIR``; GPU campaigns: ``bench``, ``campaign``, ``campaign-run``, ``import-results``
(see plugconv_lite/campaign.py).

Errors the library reports (a bad profile, device, chapter or variant, data that cannot be had) end the command
with one line on stderr and a non-zero exit status (2: bad input, 1: data); ``PLUGCONV_DEBUG=1`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys

PROG = "python -m plugconv_lite"


def main(argv=None) -> int:
    """Run the command line; library errors become one line on stderr and a non-zero exit status."""
    from .data import DataIntegrityError
    try:
        return _main(argv)
    except (ValueError, DataIntegrityError) as err:
        if os.environ.get("PLUGCONV_DEBUG"):
            raise
        message = " ".join(str(err).split())  # one line, whatever the library put in it
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1 if isinstance(err, DataIntegrityError) else 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume from the last epoch checkpoint",
              file=sys.stderr)
        return 130


def _main(argv=None) -> int:
    from . import experiments, results
    from .profiles import PROFILES, profile
    from .train import resolve_device

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
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
    asg = sub.add_parser("assignment", help="a chapter as a course assignment (otter-grader): student notebook, "
                                            "autograder zip with hidden tests, solution notebook")
    asg.add_argument("chapter", help="a notebook stem (04_psconv, foundations_arithmetic, ...), a notebook path, "
                                     "or 'all'")
    asg.add_argument("--out", required=True, help="output folder; each chapter goes to OUT/<stem>/")
    asg.add_argument("--no-run-tests", action="store_true",
                     help="skip executing the solution notebook against the autograder (faster)")
    asg.add_argument("--library", help="pip requirement installing plugconv-lite in the grading image "
                                       "(default: this checkout's commit on GitHub)")
    from . import bench, campaign
    campaign.add_subcommands(sub)
    bench.add_subcommands(sub)
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is not None:
        return args.handler(args)

    if args.command == "assignment":
        from .assignment import make_assignment
        try:
            made = make_assignment(args.chapter, args.out, run_tests=not args.no_run_tests, library=args.library)
        except (ValueError, ImportError, RuntimeError) as err:
            parser.error(str(err))
        for a in made if isinstance(made, list) else [made]:
            print(f"{a.chapter}: {len(a.questions)} auto-graded question(s) ({', '.join(a.questions)}), "
                  f"{len(a.manual)} manual\n  student notebook:  {a.student}\n  solution notebook: {a.solution}\n"
                  f"  autograder:        {a.autograder}")
        return 0

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
    # everything that can be checked is checked before the first run starts
    prof = profile(args.profile)
    resolve_device(args.device)
    if args.variants:
        valid = sorted({v.name for c in chapters for v in experiments.EXPERIMENTS[c]})
        typos = [v for v in args.variants if v not in valid]
        if typos:
            raise ValueError(f"--variants {' '.join(typos)}: no such variant in {', '.join(chapters)}; valid: "
                             f"{', '.join(valid)}")
    for chapter in chapters:
        if args.variants and not any(v.name in args.variants for v in experiments.EXPERIMENTS[chapter]):
            print(f"{chapter}: none of the variants {args.variants}; skipped")
            continue
        df = experiments.run_chapter(chapter, prof, args.seeds, args.variants, args.device, args.force)
        print(df.drop(columns=["config"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
