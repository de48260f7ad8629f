"""``titans repro SUITE``: run a suite's runs that are not done yet, then collect and report all of them.

Wire it into the main parser with :func:`add_repro_commands` (``titans.cli`` does)::

    titans repro configs/repro/lm.yaml                           # train + evaluate, then runs/repro/lm/results.*
    titans repro configs/repro/lm.yaml --dry-run                 # the plan and its commands; runs nothing
    titans repro configs/repro/lm.yaml --only mac,mag            # some runs (results still list every run)
    titans repro configs/repro/lm.yaml --set train.steps=600 --out runs/repro/lm-600
    titans repro configs/repro/lm.yaml --collect-only --publish docs/results.md

Exit status: 0 when every selected run is done, 1 when one failed (the others still ran), 2 for bad input.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def _command_line(args: argparse.Namespace) -> str:
    """The ``titans repro`` command line that ``args`` stand for (recorded in results.json)."""
    words = ["titans", "repro", args.suite]
    if args.out:
        words += ["--out", args.out]
    for name in args.only:
        words += ["--only", name]
    for override in args.overrides:
        words += ["--set", override]
    for flag in ("dry_run", "collect_only"):
        if getattr(args, flag):
            words.append("--" + flag.replace("_", "-"))
    if args.publish:
        words += ["--publish", args.publish]
    return shlex.join(words)


def _repro(args: argparse.Namespace) -> int:
    from titans.repro.collect import collect_results, write_results
    from titans.repro.report import publish, write_report
    from titans.repro.runner import display_path, run_suite, select_runs
    from titans.repro.suite import load_suite

    suite = load_suite(args.suite)
    out_dir = Path(args.out) if args.out else suite.default_out_dir()
    if args.collect_only:
        select_runs(suite.plan(out_dir), args.only)  # still reject unknown names
        outcomes = []
    else:
        outcomes = run_suite(suite, out_dir, args.only, args.overrides, progress=not args.no_progress,
                             dry_run=args.dry_run, echo=lambda line: print(line, flush=True),
                             run_plots=not args.no_run_plots)  # fmt: skip
    if args.dry_run:
        return 0
    results = collect_results(suite, out_dir, args.overrides)
    results["command"] = _command_line(args)
    results_path = write_results(results, out_dir)
    report_path, plots = write_report(results, out_dir)
    print(f"results: {display_path(results_path)}, {display_path(report_path)}, "
          f"{len(plots)} plot(s) in {display_path(out_dir / 'plots')}")  # fmt: skip
    if args.publish:
        print(f"published into {display_path(publish(results, plots, args.publish))}")
    for run in results["runs"]:
        bits = run.get("bits")
        value = f"{bits:.4f}" if isinstance(bits, float) else "—"
        print(f"  {run['name']:<24} {run['status']:<11} {suite.spec.metric_split} bpb {value}")
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    for outcome in failed:
        print(f"failed: {outcome.name}: {outcome.error}")
    return 1 if failed else 0


def add_repro_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``titans repro``."""
    parser = commands.add_parser(
        "repro",
        help="run a suite of training runs (configs/repro/*.yaml) and collect their results",
        description="Train and evaluate the runs of a suite that are not done yet (in this process, one after "
        "the other), then write OUT/results.json, OUT/results.md and OUT/plots/. Done runs are skipped; "
        "interrupted ones resume from their last checkpoint.",
    )
    parser.add_argument("suite", help="a suite YAML, e.g. configs/repro/lm.yaml")
    parser.add_argument("--out", help="output folder, one subfolder per run (default: runs/repro/<suite name>)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="only these runs (repeatable, or comma-separated); results list every run")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value of every run, after the suite's own (repeatable)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print what would run and its commands; run nothing")
    parser.add_argument("--collect-only", action="store_true", help="train nothing: collect what --out holds")
    parser.add_argument("--publish", metavar="PAGE", help="also fill the suite's block of this markdown page")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-run-plots", action="store_true",
                        help="no plots of each run (NAME/plots/); the suite's plots are drawn anyway")  # fmt: skip
    parser.set_defaults(run=_repro)
