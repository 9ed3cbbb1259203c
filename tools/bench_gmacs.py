"""Benchmark: does edgeprune keep the CPU as busy per millisecond as the unpruned model?

Compute-bound shapes (1x3x224x224) on the target: a short NSGA-II search under a small latency
budget over the target's channel grid, and for every candidate it kept (within the budget) its
GMAC/s relative to the unpruned model's, i.e. (MACs / MACs_base) / (latency / latency_base),
with each latency timed in alternating blocks with the unpruned model. Below 1 the pruned shapes
waste the hardware: Torch-Pruning's uniform pruning without rounding (odd channel counts) is
timed the same way for comparison.

Scoring accuracy at 224x224 is out of reach on a 2-core machine within a benchmark's time, so
the search's accuracy objective is replaced by the share of MACs a candidate keeps (its
capacity): the search then does what it does with a real task, keeping as much network as the
budget allows; what this measures is how much of that capacity the clock pays for.

    python tools/bench_gmacs.py                          # mobilenet_v2 and resnet18, budget 0.5x
    python tools/bench_gmacs.py --models torchvision:resnet18 --population 6 --generations 2
    python tools/bench_gmacs.py --fewer-macs             # docs/benchmarks.md "Fewer MACs is not faster"
    python tools/bench_gmacs.py --smoke                  # both tables, a tiny net at 3x32x32, 4 candidates (seconds)

``--fewer-macs``: the claim that fewer MACs is not faster, measured. MobileNetV2 (random weights,
10 classes) pruned 10 % by channel magnitude with Torch-Pruning (L1, classifier kept) without
rounding, and the same rounded to the target's channel step; MACs of each, and the three files
timed in alternating fresh sessions, each next to the unpruned model (ratios to it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.problem.latency import ProfiledLatency
from edgeprune.tasks.models import load_model
from edgeprune.problem.pruning import PruningProblem
from edgeprune.profiling.profiler import Profiler
from edgeprune.search.nsga import run_nsga2
from edgeprune.space.channels import ChannelSpace, macs_and_params
from edgeprune.profiling.targets import load_profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_vs_uniform import uniform_prune  # noqa: E402  (a sibling script, not a package)
from smoke import SMOKE_MODEL, SMOKE_NOTE, smoke_profile  # noqa: E402
from timing import time_alternating  # noqa: E402

INPUT = (3, 224, 224)


class KeptMacs:
    """A stand-in task: the share of the unpruned model's MACs a network keeps (higher is better)."""

    def __init__(self, base_macs: int, shape: tuple[int, ...] = INPUT):
        self.base_macs = base_macs
        self.shape = shape

    def calibration_batches(self) -> list[torch.Tensor]:
        return []

    def score(self, model: nn.Module) -> float:
        return macs_and_params(model, self.shape)[0] / self.base_macs

    def fine_tune(self, model, teacher, epochs, seed, description) -> dict:
        return {}


def bench(spec: str, profile, speedup: float, population: int, generations: int, seed: int, uniform: list[float],
          shape: tuple[int, ...] = INPUT) -> list[tuple]:
    model, model_spec = load_model(spec, 10)
    space = ChannelSpace(model, shape, profile.channel_step, model_spec=model_spec)
    base_macs = macs_and_params(model, shape)[0]
    profiler = Profiler(profile, use_cache=False)
    try:
        latency = ProfiledLatency(space, profiler, profile.opset, profile.batch)
        anchor = latency.set_reference(space.widths_from_indices(space.full_indices()))
        limit = anchor.median_ms / speedup
        problem = PruningProblem(space, KeptMacs(base_macs, shape), latency, limit_ms=limit, focus=0.9, reference_ms=anchor.median_ms)
        run_nsga2(problem, population, generations, seed, show_progress=False)
        kept = [c for c in problem.evaluated() if not c.predicted and c.latency.median_ms <= limit]
        ours = [(c.macs / base_macs) / (c.latency.median_ms / anchor.median_ms) for c in kept]
        theirs = []
        for r in uniform:
            pruned = uniform_prune(model, r, None, shape)
            batch_shape = (profile.batch, *shape)
            onnx = export_onnx_bytes(pruned, batch_shape, profile.opset)
            stats, _ = profiler.latency(f"tp-unrounded-{spec}-{r}", batch_shape, lambda: onnx, fresh=True)
            theirs.append((r, (macs_and_params(pruned, shape)[0] / base_macs) / (stats.median_ms / anchor.median_ms)))
    finally:
        profiler.close()
    return [(spec, anchor.median_ms, limit, len(problem.evaluated()), ours, theirs)]


def fewer_macs(spec: str, profile, ratio: float, sessions: int, shape: tuple[int, ...] = INPUT) -> list[tuple[str, int, float]]:
    """(name, MACs, median ms in the unpruned model's units) of the unpruned model and of
    Torch-Pruning's uniform L1 pruning at ``ratio``, unrounded and rounded to the target's step;
    the three files timed in ``sessions`` alternating fresh sessions, each next to the unpruned."""
    model, _ = load_model(spec, 10)
    batch_shape = (profile.batch, *shape)
    models = {
        "unpruned": model,
        f"Torch-Pruning {ratio:g}, unrounded": uniform_prune(model, ratio, None, shape),
        f"Torch-Pruning {ratio:g}, round_to={profile.channel_step}": uniform_prune(model, ratio, profile.channel_step, shape),
    }
    files = {name: export_onnx_bytes(m, batch_shape, profile.opset) for name, m in models.items()}
    profiler = Profiler(profile, use_cache=False)
    try:
        profiler.set_reference(f"fewer-macs-unpruned-{spec}", batch_shape, files["unpruned"], recheck=False)
        latency = time_alternating(profiler, files, batch_shape, sessions, tag="fewer-macs")
    finally:
        profiler.close()
    return [(name, macs_and_params(m, shape)[0], latency[name]) for name, m in models.items()]


def print_fewer_macs(spec: str, profile, ratio: float, sessions: int, shape: tuple[int, ...], note: str = "") -> None:
    rows = fewer_macs(spec, profile, ratio, sessions, shape)
    base_macs, base_ms = rows[0][1], rows[0][2]
    table = Table(title=f"Fewer MACs is not faster: {spec.removeprefix('torchvision:')}, 1x{'x'.join(map(str, shape))} on {profile.name}, "
                        f"median of {sessions} alternating fresh sessions{note}")
    for col in ("model", "MMACs", "MACs x unpruned", "median ms", "latency x unpruned"):
        table.add_column(col)
    for name, macs, ms in rows:
        table.add_row(name, f"{macs / 1e6:.1f}", f"{macs / base_macs:.3f}", f"{ms:.3f}", f"{ms / base_ms:.3f}")
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--models", default="torchvision:mobilenet_v2,torchvision:resnet18")
    parser.add_argument("--speedup", type=float, default=2.0, help="budget = unpruned latency / this (default 2)")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--uniform", default="0.3,0.5", help="Torch-Pruning unrounded ratios to compare (default 0.3,0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fewer-macs", action="store_true", help="only the fewer-MACs table: MobileNetV2 pruned 10 %% unrounded and rounded, timed")
    parser.add_argument("--fewer-macs-ratio", type=float, default=0.1, help="Torch-Pruning's ratio for --fewer-macs (default 0.1)")
    parser.add_argument("--sessions", type=int, default=5, help="alternating fresh sessions per file for --fewer-macs (default 5)")
    parser.add_argument("--smoke", action="store_true", help=f"both tables for a tiny residual net at 3x32x32, 4 candidates, 1 generation ({SMOKE_NOTE})")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.target)
    except UserError as exc:
        print(f"bench_gmacs: error: {exc}", file=sys.stderr)
        return 2
    shape, note = INPUT, ""
    if args.smoke:
        profile, shape, note = smoke_profile(profile), (3, 32, 32), f" ({SMOKE_NOTE})"
        args.models, args.population, args.generations, args.uniform, args.sessions = SMOKE_MODEL, 4, 1, "0.3", 2
    if args.fewer_macs or args.smoke:
        print_fewer_macs(SMOKE_MODEL if args.smoke else "torchvision:mobilenet_v2", profile, args.fewer_macs_ratio, args.sessions, shape, note)
        if args.fewer_macs:
            return 0
    rows = []
    for spec in args.models.split(","):
        rows += bench(spec, profile, args.speedup, args.population, args.generations, args.seed, [float(r) for r in args.uniform.split(",")], shape)
    table = Table(title=f"GMAC/s relative to the unpruned model, 1x{'x'.join(map(str, shape))} on {profile.name} (goal: >= 0.95 for every kept candidate){note}")
    for col in ("model", "base ms", "budget ms", "evaluated", "kept", "min", "median", "max", "Torch-Pruning unrounded (ratio: rel. GMAC/s)"):
        table.add_column(col)
    for spec, base, limit, evaluated, ours, theirs in rows:
        stats = (f"{min(ours):.2f}", f"{statistics.median(ours):.2f}", f"{max(ours):.2f}") if ours else ("-", "-", "-")
        table.add_row(spec.removeprefix("torchvision:"), f"{base:.2f}", f"{limit:.2f}", str(evaluated), str(len(ours)), *stats,
                      ", ".join(f"{r:g}: {g:.2f}" for r, g in theirs))
    Console(width=200).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
