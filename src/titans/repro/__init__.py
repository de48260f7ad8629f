"""Reproduction suites: train and evaluate a list of runs, then gather their results (``titans repro``).

A suite (``configs/repro/*.yaml``, see :mod:`titans.repro.suite`) lists runs, each a run config plus
``--set`` overrides. ``titans repro SUITE`` trains and evaluates the runs that are not done yet
(:mod:`titans.repro.runner`), then writes ``OUT/results.json`` (:mod:`titans.repro.collect`),
``OUT/results.md`` and ``OUT/plots/*.png`` (:mod:`titans.repro.report`)::

    uv run titans repro configs/repro/lm.yaml                      # -> runs/repro/lm/
    uv run titans repro configs/repro/lm.yaml --dry-run            # what would run, and the commands
    uv run titans repro configs/repro/lm.yaml --only mac --only mag
    uv run titans repro configs/repro/lm.yaml --collect-only --publish docs/results.md

From Python::

    from titans.repro import collect_results, load_suite, run_suite, write_report, write_results

    suite = load_suite("configs/repro/tiny_lm.yaml")
    run_suite(suite, "runs/repro/tiny_lm")
    results = collect_results(suite, "runs/repro/tiny_lm")
    write_results(results, "runs/repro/tiny_lm")
    write_report(results, "runs/repro/tiny_lm")
"""

from titans.repro.collect import RESULTS_FILE, collect_results, write_results
from titans.repro.report import publish, write_report
from titans.repro.runner import RECORD_FILE, RunOutcome, run_suite
from titans.repro.suite import Suite, load_suite

__all__ = [
    "RECORD_FILE",
    "RESULTS_FILE",
    "RunOutcome",
    "Suite",
    "collect_results",
    "load_suite",
    "publish",
    "run_suite",
    "write_report",
    "write_results",
]
