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

* in-search vs fresh: ``--bias-candidates`` pruned variants of mobilenet_v2 timed as the search times
  them (paired with the unpruned model, torch busy with BN recalibration and scoring between
  measurements), then each timed again in a later pass as the selection re-measures it; the
  median and p90 of (fresh / in-search - 1), over all of them and over those a search would
  keep (within 10 % under a limit at the median latency): the second shows the winner's curse;
* absolute stability: 10 interleaved repeats of edgeprune's absolute measurement of the unpruned
  model (``edgeprune profile``'s protocol) and of an independent harness (a torch-free process:
  median of 5 fresh ONNX Runtime sessions x 200 runs): mean, CV and spread (max / min - 1).

Targets, for a quiet machine: CV <= 2 %, cache hit <= 5 ms, surrogate >= 95 % within ±10 %;
|median(fresh / in-search - 1)| <= 3 %; edgeprune's spread no wider than the harness's.

    python tools/bench_profiler.py --target x86-cpu            # full: 10 repeats, 200 candidates
    python tools/bench_profiler.py --sections bias,absolute    # just the two protocol checks
    python tools/bench_profiler.py --quick                     # smoke run, minutes
    python tools/bench_profiler.py --smoke                     # every section at tiny sizes, seconds (the test suite's run)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rich.console import Console
from rich.table import Table

from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.tasks.models import load_model
from edgeprune.profiling.isolated import IsolatedOrtBackend
from edgeprune.profiling.profiler import Profiler
from edgeprune.space.channels import ChannelSpace
from edgeprune.jobs.surrogate_check import validate_surrogate
from edgeprune.profiling.targets import MeasureSpec, load_profile

sys.path.insert(0, str(Path(__file__).parent))
from smoke import SMOKE_MODEL, SMOKE_NOTE, smoke_profile  # noqa: E402

MODELS = ("torchvision:mobilenet_v2", "torchvision:resnet18")
# --smoke: the same sections on two tiny models.
SMOKE_MODELS = (SMOKE_MODEL, "smoke:tiny_cnn")
INPUT = (3, 32, 32)
SECTIONS = ("stability", "cost", "surrogate", "bias", "absolute")

# The independent harness of the absolute check: a torch-free process, plain onnxruntime, the
# profile's threads and optimisation level, median of 5 fresh sessions x 200 runs.
HARNESS = """
import json, statistics, sys, time
import numpy as np, onnxruntime as ort
path, threads, level, shape = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
sessions, runs = (int(sys.argv[5]), int(sys.argv[6])) if len(sys.argv) > 6 else (5, 200)
levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
medians = []
for _ in range(sessions):
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    o.graph_optimization_level = levels[level]
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    for _ in range(20):
        s.run(None, feed)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter(); s.run(None, feed); t.append(time.perf_counter() - t0)
    medians.append(statistics.median(t) * 1e3)
print(statistics.median(medians))
"""


def _cv(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.mean(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved A,B repeats (default 10)")
    parser.add_argument("--candidates", type=int, default=200, help="surrogate validation candidates per model (default 200)")
    parser.add_argument("--fit", type=int, default=40, help="measured candidates the surrogate is fitted on (default 40)")
    parser.add_argument("--bias-candidates", type=int, default=60, help="candidates timed twice in the in-search vs fresh check (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="short run: 3 repeats, fit 8 + validate 12, short timing windows")
    parser.add_argument("--smoke", action="store_true", help=f"every section at tiny sizes: 2 repeats, fit 3 + validate 2 on one model ({SMOKE_NOTE})")
    parser.add_argument("--sections", default="stability,cost,surrogate,bias,absolute",
                        help="comma-separated subset of: stability, cost, surrogate, bias, absolute (default: all)")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        print(f"bench_profiler: error: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    try:
        profile = load_profile(args.target)
    except UserError as exc:
        print(f"bench_profiler: error: {exc}", file=sys.stderr)
        return 2
    if args.quick:
        args.repeats, args.candidates, args.fit, args.bias_candidates = 3, 12, 8, 6
        m = profile.measure
        profile = dataclasses.replace(profile, measure=MeasureSpec(
            warmup_runs=min(m.warmup_runs, 10), min_runs=min(m.min_runs, 30), max_runs=m.max_runs,
            max_seconds=min(m.max_seconds, 0.1), cv_threshold=100.0, repeats_if_noisy=0, sessions=2))  # smoke: never "noisy"
    harness = (5, 200)
    if args.smoke:
        global MODELS
        MODELS = SMOKE_MODELS
        args.repeats, args.candidates, args.fit, args.bias_candidates = 2, 2, 3, 2
        profile, harness = smoke_profile(profile), (2, 20)
    shape = (profile.batch, *INPUT)
    rows: list[tuple[str, str, str]] = []

    if "stability" in sections:
        rows += _stability(profile, shape, args.repeats)
    if "cost" in sections:
        rows += _cost(profile, shape)
    if "surrogate" in sections:
        rows += _surrogate(profile, args, MODELS[:1] if args.smoke else MODELS)
    if "bias" in sections:
        rows += _bias(profile, shape, args.bias_candidates, args.seed)
    if "absolute" in sections:
        rows += _absolute(profile, shape, 1 if args.smoke else 3 if args.quick else 10, harness)

    note = f" ({SMOKE_NOTE})" if args.smoke else " (--quick: short run, not a result)" if args.quick else ""
    table = Table(title=f"edgeprune profiling bench on {profile.name}{note}")
    for col in ("metric", "value", "target"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
    return 0


def _stability(profile, shape, repeats: int) -> list[tuple[str, str, str]]:
    """Fresh sessions, A then B, in one worker."""
    rows = []
    blobs = {spec: export_onnx_bytes(load_model(spec, 10)[0], shape, profile.opset) for spec in MODELS}
    a, b = MODELS
    backend = IsolatedOrtBackend(profile)
    medians: dict[str, list[float]] = {a: [], b: []}
    try:
        for _ in range(repeats):
            for spec in (a, b):
                medians[spec].append(backend.measure(blobs[spec], shape).median_ms)
    finally:
        backend.close()
    for spec in (a, b):
        rows.append((f"CV of {repeats} medians, {spec}", f"{100 * _cv(medians[spec]):.2f} %", "≤ 2 %"))
    ratios = [x / y for x, y in zip(medians[a], medians[b])]
    rows.append((f"CV of {repeats} ratios A/B", f"{100 * _cv(ratios):.2f} %", "≤ 2 %"))
    return rows


def _cost(profile, shape) -> list[tuple[str, str, str]]:
    """The cost of an uncached candidate and of a cache hit."""
    rows = []
    a = MODELS[0]
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
    return rows


def _surrogate(profile, args, models=MODELS) -> list[tuple[str, str, str]]:
    """How well the latency surrogate predicts measured candidates."""
    rows = []
    for spec in models:
        result = validate_surrogate(spec, profile, INPUT, num_classes=10, n_fit=args.fit,
                                    n_validate=args.candidates, seed=args.seed)
        rows.append((f"surrogate within ±10 %, {spec} ({args.fit} fit / {args.candidates} checked)",
                     f"{100 * result.within_10:.1f} % (median |err| {result.median_abs_pct:.1f} %)", "≥ 95 %"))
        rows.append((f"  noise reference: re-measure within ±10 % of the first, {spec}",
                     f"{100 * result.repeat_within_10:.1f} %", "the machine vs itself"))
    return rows


def _bias(profile, shape, count: int, seed: int) -> list[tuple[str, str, str]]:
    """In-search vs fresh: the same candidates timed as the search and then as the selection does."""
    model, spec_dict = load_model(MODELS[0], 10)
    space = ChannelSpace(model, INPUT, profile.channel_step, model_spec=spec_dict)
    prof = Profiler(profile, use_cache=False)
    rng = random.Random(seed)
    batch = torch.randn(64, *INPUT, generator=torch.Generator().manual_seed(seed))
    try:
        full = space.widths_from_indices(space.full_indices())
        prof.set_reference(space.arch_key(full), shape, export_onnx_bytes(model, shape, profile.opset))
        candidates = []
        for _ in range(count):
            keep = rng.uniform(0.35, 0.85)
            idx = [min(len(g.options) - 1, max(0, round(rng.gauss(keep, 0.12) * (len(g.options) - 1)))) for g in space.groups]
            candidates.append(space.widths_from_indices(idx))
        passes: list[list[float]] = [[], []]
        for timings in passes:  # pass 1 as the search times, pass 2 as the selection re-times
            for widths in candidates:
                pruned = space.shrink(space.plan(widths))
                onnx = export_onnx_bytes(pruned, shape, profile.opset)
                stats, _ = prof.latency(space.arch_key(widths), shape, lambda: onnx, fresh=True)
                timings.append(stats.median_ms)
                _busy(pruned, batch)  # what the search does next: BN recalibration and scoring
    finally:
        prof.close()
    in_search, fresh = passes
    gaps = [f / i - 1 for i, f in zip(in_search, fresh)]
    limit = statistics.median(in_search)
    kept = [g for i, g in zip(in_search, gaps) if 0.9 * limit <= i <= limit]
    rows = [
        (f"fresh / in-search - 1, median of {len(gaps)} candidates", f"{100 * statistics.median(gaps):+.2f} %", "|x| ≤ 3 %"),
        ("  p90 of |fresh / in-search - 1|", f"{100 * _p90([abs(g) for g in gaps]):.2f} %", ""),
    ]
    if kept:
        rows.append((f"  median over the {len(kept)} a search keeps (within 10 % under a limit)", f"{100 * statistics.median(kept):+.2f} %", "winner's curse"))
    return rows


def _absolute(profile, shape, repeats: int, harness: tuple[int, int] = (5, 200)) -> list[tuple[str, str, str]]:
    """Edgeprune's absolute protocol and an independent harness, interleaved on one file."""
    model, _ = load_model(MODELS[0], 10)
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        blob = export_onnx_bytes(model, shape, profile.opset)
        path.write_bytes(blob)
        backend = IsolatedOrtBackend(profile)
        try:
            for _ in range(repeats):
                ours.append(backend.measure(blob, shape).median_ms)
                out = subprocess.run(
                    [sys.executable, "-c", HARNESS, str(path), str(profile.intra_op_threads), profile.graph_optimization, json.dumps(list(shape)),
                     *map(str, harness)],
                    check=True, capture_output=True, text=True,
                )
                theirs.append(float(out.stdout.strip()))
        finally:
            backend.close()
    def describe(values):
        return f"mean {statistics.mean(values):.4f} ms, CV {100 * _cv(values):.1f} %, spread {100 * (max(values) / min(values) - 1):.1f} %"
    return [
        (f"absolute, {repeats} repeats of {MODELS[0].removeprefix('torchvision:')}: edgeprune ({profile.measure.sessions} sessions pooled)", describe(ours), "spread ≤ harness's"),
        (f"  independent harness (median of {harness[0]} sessions x {harness[1]} runs), interleaved", describe(theirs), ""),
    ]


def _busy(model: torch.nn.Module, batch: torch.Tensor) -> None:
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(batch)
    model.eval()


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


if __name__ == "__main__":
    sys.exit(main())
