"""``edgeprune ensemble OUT_DIR``: K members of a prune run's Pareto front as one averaging ONNX.

The work is :func:`edgeprune.jobs.ensemble.run_ensemble`; torch loads only when it runs.
"""

from __future__ import annotations

import argparse

from edgeprune.commands.args import add_cache_args, add_progress_args, from_args


def add_parser(sub) -> None:
    e = sub.add_parser("ensemble", help="fine-tune K networks of a run's Pareto front and export one ONNX averaging their softmax outputs, timed as a whole")
    e.add_argument("out_dir", metavar="OUT_DIR", help="folder written by a one-round classification `edgeprune prune` run (its report.json holds the front)")
    e.add_argument("--members", type=int, default=3, help="networks in the ensemble, 2 to 8 (default 3)")
    e.add_argument("--budget-ms", type=float, help="latency budget of the whole ensemble, members run in sequence (default: the run's budget); members are chosen so their search-time latencies add up to at most this")
    e.add_argument("--finetune-epochs", type=float, help="fine-tune epochs per member with the run's recipe, adversarial if the run's was (default: the run's)")
    e.add_argument("--weights", help="the original model's state_dict the run was given (required when report.json names one: confirm it)")
    e.add_argument("--data", metavar="SPEC", help="the dataset the model was pruned on (default: the one report.json names; needed to confirm an imagefolder:PATH)")
    e.add_argument("--target", help="target profile name or YAML path to time on (default: the run's profile)")
    e.add_argument("--robust-test-samples", type=int, help="test images the robust accuracy of the ensemble and each member is measured on (default: the run's, else 1000)")
    e.add_argument("--trust-model-code", action="store_true", help="allow a run whose original model is a package.module:factory (imported) or a torch.save()d file (unpickled), and a recorded profile that measures through an agent (the model is uploaded there; or pass --target)")
    e.add_argument("--seed", type=int, default=0, help="seed of the fine-tunes and the attacks (default 0)")
    add_cache_args(e)
    add_progress_args(e)


def run(args: argparse.Namespace) -> int:
    """0 when the ensemble meets its budget, 1 when it does not."""
    from edgeprune.jobs.ensemble import EnsembleConfig, run_ensemble

    result = run_ensemble(from_args(EnsembleConfig, args, progress=not args.no_progress))
    return 0 if result["ensemble"]["budget_met"] else 1
