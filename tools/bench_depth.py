"""Benchmark: depth genes reach latency budgets that channels alone cannot (``prune --depth``).

On regnet_y_400mf (10 classes) with Fashion-MNIST at 3x28x28 (grey replicated to RGB: the
torchvision stem takes three channels), on the target:

1. the floors, timed next to the unpruned model: the narrowest network channels alone allow
   (every group at its smallest grid width) and the same with every droppable residual block
   dropped, as fractions of the unpruned latency;
2. the model trained on the train split (``--train-epochs``, cached like bench_vs_uniform's),
   then two full prunes at ``--speedup``: channels only, and with ``--depth``; each row has the
   delivered test accuracy (torch, as report.json has it), the latency ratio edgeprune measured
   and the blocks dropped. A budget below the channel floor is refused by the channels-only run
   (exit 2, "below what the smallest allowed network reaches"), which the table says.

    python tools/bench_depth.py                         # speedup 2, 1 training epoch
    python tools/bench_depth.py --floors-only           # just the floors (about a minute)
    python tools/bench_depth.py --smoke                 # a tiny residual net on sklearn's digits (seconds)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeprune.jobs.demo import train_and_save
from edgeprune.errors import UserError
from edgeprune.problem.latency import ProfiledLatency
from edgeprune.tasks.models import load_model
from edgeprune.api.settings import prune_config
from edgeprune.jobs.prune import run_prune
from edgeprune.profiling.cache import default_cache_path
from edgeprune.profiling.profiler import Profiler
from edgeprune.space.channels import ChannelSpace
from edgeprune.profiling.targets import load_profile

sys.path.insert(0, str(Path(__file__).parent))
from smoke import SMOKE_MODEL, SMOKE_NOTE, smoke_profile_file  # noqa: E402

MODEL = "torchvision:regnet_y_400mf"
SHAPE = (3, 28, 28)
DATA = "fashion-mnist"
HOLDOUT = 2000


def floors(profile) -> tuple[float, float, int]:
    """(channel floor, channel + depth floor) as fractions of the unpruned latency, and the
    number of droppable blocks."""
    model, spec = load_model(MODEL, 10)
    space = ChannelSpace(model, SHAPE, profile.channel_step, model_spec=spec, depth=True)
    profiler = Profiler(profile, use_cache=False)
    try:
        latency = ProfiledLatency(space, profiler, profile.opset, profile.batch)
        base = latency.set_reference(space.widths_from_indices(space.full_indices())).median_ms
        narrow = [0 if g.depth else g.options[0] for g in space.groups]
        channels_only = [1 if g.depth else w for g, w in zip(space.groups, narrow)]
        channel = latency.measure(tuple(channels_only), fresh=True)[0].median_ms / base
        both = latency.measure(tuple(narrow), fresh=True)[0].median_ms / base
    finally:
        profiler.close()
    return channel, both, sum(g.depth for g in space.groups)


def trained(epochs: float, seed: int, folder: Path | None = None) -> Path:
    side = "x".join(map(str, SHAPE))
    path = (folder or default_cache_path().parent / "bench") / f"{MODEL.split(':')[-1]}-{DATA}-{side}-e{epochs:g}-s{seed}.pt"
    if not path.exists():
        train_and_save(MODEL, data=DATA, input_shape=tuple(SHAPE), out=path, epochs=epochs, seed=seed, num_classes=10, progress=False)
    return path


def prune(weights: Path, args, depth: bool, out: Path) -> tuple[str, ...]:
    cfg = prune_config(
        model=MODEL, weights=str(weights), num_classes=10, data=DATA, input_shape="x".join(map(str, SHAPE)), target=args.target,
        speedup=args.speedup, population=args.population, generations=args.generations, patience=2, holdout=HOLDOUT,
        refine_top=1 if args.smoke else 2, refine_epochs=0.01 if args.smoke else 0.05, widen_passes=0,
        finetune_epochs=args.finetune_epochs, depth=depth, out=str(out), seed=args.seed, progress=False, no_cache=args.smoke,
    )
    try:
        report = run_prune(cfg)
    except UserError as exc:
        return ("channels only" if not depth else "--depth", "-", "-", f"refused: {exc}"[:120], "")
    pruned, base = report["pruned"], report["baseline"]
    ratio = pruned["latency_ms"]["median"] / base["latency_ms"]["median"]
    return (
        "--depth" if depth else "channels only", f"{pruned['accuracy']:.2%} (unpruned {base['accuracy']:.2%})",
        f"{ratio:.3f}", "met" if report["budget_met"] else "NOT met", ", ".join(pruned.get("dropped_blocks", [])) or "-",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--train-epochs", type=float, default=1.0)
    parser.add_argument("--finetune-epochs", type=float, default=0.5)
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--floors-only", action="store_true")
    parser.add_argument("--smoke", action="store_true", help=f"a tiny residual net on sklearn's digits at 3x16x16, 4 candidates, 1 generation ({SMOKE_NOTE})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        return _run(args, Path(work))


def _run(args, work: Path) -> int:
    global MODEL, SHAPE, DATA, HOLDOUT
    weights_folder = None
    if args.smoke:
        MODEL, SHAPE, DATA, HOLDOUT, weights_folder = SMOKE_MODEL, (3, 16, 16), "digits", 100, work
        args.train_epochs, args.finetune_epochs, args.population, args.generations = 1.0, 0.05, 4, 1
        args.target = smoke_profile_file(args.target, work)
        print(SMOKE_NOTE)
    try:
        profile = load_profile(args.target)
    except UserError as exc:
        print(f"bench_depth: error: {exc}", file=sys.stderr)
        return 2
    channel, both, blocks = floors(profile)
    console = Console(width=180)
    console.print(f"{MODEL} at {'x'.join(map(str, SHAPE))} on {profile.name}: channel floor {channel:.3f}x of the unpruned latency; "
                  f"with all {blocks} droppable blocks dropped too {both:.3f}x")
    if args.floors_only:
        return 0
    weights = trained(args.train_epochs, args.seed, weights_folder)
    table = Table(title=f"{MODEL}, {DATA} {'x'.join(map(str, SHAPE))}, --speedup {args.speedup:g} on {profile.name}")
    for col in ("search", "test accuracy", "latency / unpruned", "budget", "dropped blocks"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as folder:
        for depth in (False, True):
            table.add_row(*prune(weights, args, depth, Path(folder) / ("depth" if depth else "channels")))
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
