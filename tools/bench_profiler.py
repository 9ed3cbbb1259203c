"""Benchmark of the profiling stack: measurement stability, candidate cost, cache hit, surrogate.

Prints one table with:

* CV of the median over interleaved repeats of two models (A = mobilenet_v2, B = resnet18;
  repeat = a fresh measurement of A, then of B): per model, and of the ratio A/B, which is what
  the search relies on (candidates are timed next to the unpruned model);
* the cost of one uncached candidate (shrink, ONNX export, session + timing) and of a cache hit
  (a SQLite lookup in a Profiler that has not seen the key in memory);
* the surrogate's share of candidates within ±10 % of their measurement, per model (each
  validation candidate is measured in two passes and scored against the mean), next to the
  share whose second measurement is within ±10 % of the first: how far the machine agrees with
  itself, which caps what any predictor can be shown to reach against its measurements.

Targets, for a quiet machine: CV <= 2 %, cache hit <= 5 ms, surrogate >= 95 % within ±10 %.

    python tools/bench_profiler.py --target x86-cpu            # full: 10 repeats, 200 candidates
    python tools/bench_profiler.py --quick                     # smoke run, minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.models import load_model
from edgeprune.profiling.isolated import IsolatedOrtBackend
from edgeprune.profiling.profiler import Profiler
from edgeprune.space import ChannelSpace
from edgeprune.surrogate_check import validate_surrogate
from edgeprune.targets import MeasureSpec, load_profile

MODELS = ("torchvision:mobilenet_v2", "torchvision:resnet18")
INPUT = (3, 32, 32)


def _cv(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.mean(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved A,B repeats (default 10)")
    parser.add_argument("--candidates", type=int, default=200, help="surrogate validation candidates per model (default 200)")
    parser.add_argument("--fit", type=int, default=40, help="measured candidates the surrogate is fitted on (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 repeats, fit 8 + validate 12, short timing windows")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.target)
    except UserError as exc:
        print(f"bench_profiler: error: {exc}", file=sys.stderr)
        return 2
    if args.quick:
        args.repeats, args.candidates, args.fit = 3, 12, 8
        m = profile.measure
        profile = dataclasses.replace(profile, measure=MeasureSpec(
            warmup_runs=min(m.warmup_runs, 10), min_runs=min(m.min_runs, 30), max_runs=m.max_runs,
            max_seconds=min(m.max_seconds, 0.1), cv_threshold=100.0, repeats_if_noisy=0))  # smoke: never "noisy"
    shape = (profile.batch, *INPUT)
    rows: list[tuple[str, str, str]] = []

    # 1. stability: fresh sessions, A then B, in one worker
    blobs = {spec: export_onnx_bytes(load_model(spec, 10)[0], shape, profile.opset) for spec in MODELS}
    a, b = MODELS
    backend = IsolatedOrtBackend(profile)
    medians: dict[str, list[float]] = {a: [], b: []}
    try:
        for _ in range(args.repeats):
            for spec in (a, b):
                medians[spec].append(backend.measure(blobs[spec], shape).median_ms)
    finally:
        backend.close()
    for spec in (a, b):
        rows.append((f"CV of {args.repeats} medians, {spec}", f"{100 * _cv(medians[spec]):.2f} %", "≤ 2 %"))
    ratios = [x / y for x, y in zip(medians[a], medians[b])]
    rows.append((f"CV of {args.repeats} ratios A/B", f"{100 * _cv(ratios):.2f} %", "≤ 2 %"))

    # 2. cost of an uncached candidate and of a cache hit
    model, spec_dict = load_model(a, 10)
    space = ChannelSpace(model, INPUT, profile.channel_step, model_spec=spec_dict)
    widths = space.widths_from_indices(space.uniform_indices(0.5))
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "bench.sqlite"
        prof = Profiler(profile, cache_path=cache)
        try:
            t0 = time.perf_counter()
            pruned = space.shrink(space.plan(widths))
            t1 = time.perf_counter()
            stats, _ = prof.latency(space.arch_key(widths), shape, lambda: export_onnx_bytes(pruned, shape, profile.opset))
            t2 = time.perf_counter()
        finally:
            prof.close()
        hits = []
        for _ in range(0 if stats.noisy else 20):  # a noisy measurement is never cached
            fresh = Profiler(profile, cache_path=cache)  # empty memory: the answer comes from SQLite
            start = time.perf_counter()
            _, hit = fresh.latency(space.arch_key(widths), shape, lambda: b"")
            hits.append(time.perf_counter() - start)
            fresh.close()
            assert hit
    rows.append(("uncached candidate: shrink", f"{1e3 * (t1 - t0):.0f} ms", ""))
    rows.append(("uncached candidate: export + session + timing", f"{1e3 * (t2 - t1):.0f} ms", ""))
    hit_ms = f"{1e3 * statistics.median(hits):.2f} ms" if hits else "n/a (the measurement was noisy, so not cached)"
    rows.append(("cache hit (SQLite, median of 20)", hit_ms, "≤ 5 ms"))

    # 3. surrogate fidelity
    for spec in MODELS:
        result = validate_surrogate(spec, profile, INPUT, num_classes=10, n_fit=args.fit,
                                    n_validate=args.candidates, seed=args.seed)
        rows.append((f"surrogate within ±10 %, {spec} ({args.fit} fit / {args.candidates} checked)",
                     f"{100 * result.within_10:.1f} % (median |err| {result.median_abs_pct:.1f} %)", "≥ 95 %"))
        rows.append((f"  noise reference: re-measure within ±10 % of the first, {spec}",
                     f"{100 * result.repeat_within_10:.1f} %", "the machine vs itself"))

    table = Table(title=f"edgeprune profiling bench on {profile.name}{' (--quick: smoke run, not a result)' if args.quick else ''}")
    for col in ("metric", "value", "target"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
