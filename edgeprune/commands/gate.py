"""``edgeprune gate``: the CI latency gate's command line.

Exit codes are the contract with CI: 0 every model within budget (and robust enough where asked), 1 at
least one fails, 2 the input
is wrong. Like :mod:`edgeprune.jobs.gate`, nothing here imports torch: a CI runner has only onnxruntime.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeprune.commands.args import add_cache_args, add_progress_args
from edgeprune.errors import UserError
from edgeprune.files import atomic_write
from edgeprune.jobs.gate import (
    DEFAULT_PERCENTILE, DEFAULT_TARGET, DEFAULT_TOLERANCE, html_page, json_report, junit_xml, print_table,
)


def add_parser(sub) -> None:
    g = sub.add_parser("gate", help="CI latency gate: exit 1 when a model is over its latency budget (or below --min-robust-accuracy), 2 on bad input")
    g.add_argument("model", nargs="?", metavar="MODEL.onnx", help="one model to gate (with --budget-ms); or use --budgets")
    g.add_argument("--budgets", metavar="FILE", help="YAML list of {model, budget_ms, target, percentile, tolerance, min_robust_accuracy}; paths relative to the file")
    g.add_argument("--budget-ms", type=float, help="budget for MODEL.onnx in ms")
    g.add_argument("--target", help=f"target profile name or YAML path (default {DEFAULT_TARGET}; a default for --budgets entries without one)")
    g.add_argument("--percentile", type=int, help=f"latency percentile judged: 50, 90 or 99 (default {DEFAULT_PERCENTILE})")
    g.add_argument("--tolerance", type=float, help=f"band around the budget, as a fraction of it, where a result is measured again (default {DEFAULT_TOLERANCE})")
    g.add_argument("--min-robust-accuracy", type=float, help="also fail a model whose robust accuracy (pruned.robust_accuracy in the report.json beside it, pinned with the model by its manifest.json) is below this fraction, e.g. 0.6; a default for --budgets entries without min_robust_accuracy")
    g.add_argument("--junit", metavar="FILE", help="write a JUnit XML report (one testcase per model)")
    g.add_argument("--json", metavar="FILE", help="write the results as JSON")
    g.add_argument("--html", metavar="FILE", help="write the results as a self-contained web page (a CI artifact: red/green per model)")
    add_cache_args(g, no_cache_help="neither read nor write the latency cache file: measure every model")
    add_progress_args(g, help="no progress bar")
    g.add_argument(
        "--allow-external-data", action="store_true",
        help="time models whose tensors are in separate data files (plain files beside the model only: no subfolder, nothing hidden, no link); refused by default",
    )


def run(args: argparse.Namespace) -> int:
    """0 all within budget, 1 any over; bad input raises UserError (exit 2)."""
    from edgeprune.api.gate import gate

    for path, flag in ((args.junit, "--junit"), (args.json, "--json"), (args.html, "--html")):
        if path:
            check_output(path, flag)
    results = gate(
        args.model, args.budget_ms, budgets=args.budgets, target=args.target, percentile=args.percentile, tolerance=args.tolerance,
        min_robust_accuracy=args.min_robust_accuracy, cache=args.cache, no_cache=args.no_cache, progress=not args.no_progress,
        allow_external_data=args.allow_external_data,
    )
    print_table(results)
    if args.junit:
        write_output(args.junit, junit_xml(results))
    if args.json:
        write_output(args.json, json_report(results))
    if args.html:
        write_output(args.html, html_page(results))
    return 0 if all(r.passed for r in results) else 1


def check_output(path: str, flag: str) -> None:
    """Refuse an unusable report path before anything is measured."""
    if Path(path).is_dir():
        raise UserError(f"{flag} {path} is a folder; pass a file path such as {Path(path) / 'gate.out'}")


def write_output(path: str, data: bytes) -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(file, data)
