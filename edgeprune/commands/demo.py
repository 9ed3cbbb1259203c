"""``edgeprune demo``: the whole job on a known model and dataset, for trying edgeprune out."""

from __future__ import annotations

import argparse

from edgeprune.commands.args import add_cache_args, add_progress_args, from_args


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="train mobilenet_v2 on Fashion-MNIST (once), prune it to 2x faster on x86-cpu, export")
    d.add_argument("--out", default="edgeprune-demo", help="output folder (default edgeprune-demo)")
    d.add_argument("--seed", type=int, default=0)
    add_cache_args(d)
    add_progress_args(d)


def run(args: argparse.Namespace) -> int:
    """0 when the demo's pruned model meets its budget, 1 when it does not."""
    from edgeprune.jobs.demo import run_demo

    report = from_args(run_demo, args, progress=not args.no_progress)
    return 0 if report["budget_met"] else 1
