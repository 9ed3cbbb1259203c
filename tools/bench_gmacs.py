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
from edgeprune.latency import ProfiledLatency
from edgeprune.models import load_model
from edgeprune.problem import PruningProblem
from edgeprune.profiling.profiler import Profiler
from edgeprune.search.nsga import run_nsga2
from edgeprune.space import ChannelSpace, macs_and_params
from edgeprune.targets import load_profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_vs_uniform import uniform_prune  # noqa: E402  (a sibling script, not a package)

INPUT = (3, 224, 224)


class KeptMacs:
    """A stand-in task: the share of the unpruned model's MACs a network keeps (higher is better)."""

    def __init__(self, base_macs: int):
        self.base_macs = base_macs

    def calibration_batches(self) -> list[torch.Tensor]:
        return []

    def score(self, model: nn.Module) -> float:
        return macs_and_params(model, INPUT)[0] / self.base_macs

    def fine_tune(self, model, teacher, epochs, seed, description) -> dict:
        return {}


def bench(spec: str, profile, speedup: float, population: int, generations: int, seed: int, uniform: list[float]) -> list[tuple]:
    model, model_spec = load_model(spec, 10)
    space = ChannelSpace(model, INPUT, profile.channel_step, model_spec=model_spec)
    base_macs = macs_and_params(model, INPUT)[0]
    profiler = Profiler(profile, use_cache=False)
    try:
        latency = ProfiledLatency(space, profiler, profile.opset, profile.batch)
        anchor = latency.set_reference(space.widths_from_indices(space.full_indices()))
        limit = anchor.median_ms / speedup
        problem = PruningProblem(space, KeptMacs(base_macs), latency, limit_ms=limit, focus=0.9, reference_ms=anchor.median_ms)
        run_nsga2(problem, population, generations, seed, show_progress=False)
        kept = [c for c in problem.evaluated() if not c.predicted and c.latency.median_ms <= limit]
        ours = [(c.macs / base_macs) / (c.latency.median_ms / anchor.median_ms) for c in kept]
        theirs = []
        for r in uniform:
            pruned = uniform_prune(model, r, None, INPUT)
            shape = (profile.batch, *INPUT)
            onnx = export_onnx_bytes(pruned, shape, profile.opset)
            stats, _ = profiler.latency(f"tp-unrounded-{spec}-{r}", shape, lambda: onnx, fresh=True)
            theirs.append((r, (macs_and_params(pruned, INPUT)[0] / base_macs) / (stats.median_ms / anchor.median_ms)))
    finally:
        profiler.close()
    return [(spec, anchor.median_ms, limit, len(problem.evaluated()), ours, theirs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--models", default="torchvision:mobilenet_v2,torchvision:resnet18")
    parser.add_argument("--speedup", type=float, default=2.0, help="budget = unpruned latency / this (default 2)")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--uniform", default="0.3,0.5", help="Torch-Pruning unrounded ratios to compare (default 0.3,0.5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.target)
    except UserError as exc:
        print(f"bench_gmacs: error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for spec in args.models.split(","):
        rows += bench(spec, profile, args.speedup, args.population, args.generations, args.seed, [float(r) for r in args.uniform.split(",")])
    table = Table(title=f"GMAC/s relative to the unpruned model, 1x3x224x224 on {profile.name} (goal: >= 0.95 for every kept candidate)")
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
