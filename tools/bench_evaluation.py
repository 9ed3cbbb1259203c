"""Where one search evaluation of the demo's model goes, phase by phase (issue 32).

Builds the demo's problem as ``edgeprune demo`` does (its trained MobileNetV2 on Fashion-MNIST
3x32x32, the x86-cpu profile, the round's search limit, the latency screen and the checkpoint
journal: ``jobs/prune._load`` and ``jobs/rounds._problem``, not a copy of them), then evaluates
the same N channel choices through ``PruningProblem.evaluate_batch`` once per variant, the
variants taking turns in batches of a few choices so that a spell of load on a shared VM hits
each alike. Every variant gets a fresh Profiler (no cache: each candidate is measured) timed in
the units of one anchor. cProfile's cumulative time per function of interest gives the phases.

Variants (``--variants``): ``before`` and ``again`` are today's code with the holdout preprocessed
at every score (as before cd2d1c4), twice: how far two runs of the same settings agree is the
floor every other row is read against; ``cached`` is the code now; the others change one
setting each (``proposed``: the measurement and holdout cuts together). The last table gives,
per variant, seconds per evaluation, measurement requests, and against the first variant the
Spearman correlation of the candidates' accuracies and latencies, the largest accuracy change,
the median latency change and whether the most accurate candidate within the search limit is
the same one.

    python tools/bench_evaluation.py                   # today's code only, 12 candidates
    python tools/bench_evaluation.py --n 12 --batch 2 --variants before,again,cached,proposed

``--against REV`` instead compares whole searches: commit REV's code (installed into a throwaway
venv) and this tree's, each through its own CLI, taking turns (tools/evaluation_against.py):

    nice -n 5 python tools/bench_evaluation.py --against 21dfb85 --new HEAD --pairs 2
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from evaluation_against import cumulative  # noqa: E402
from smoke import SMOKE_MODEL, SMOKE_NOTE, smoke_profile_file  # noqa: E402

# (label, file suffix, function): cumulative seconds of each function of interest. Nested
# phases are listed separately (export inside the latency request, node times inside the
# screen's learning), and the table says so.
PHASES = (
    ("shrink (deepcopy + Torch-Pruning)", "space/channels.py", "shrink"),
    ("screen: predict + learn (excl. node times)", "problem/screening.py", None),
    ("ONNX export (TorchScript)", "exporters/onnx_bytes.py", "export_onnx_bytes"),
    ("worker: paired latency measurement", "profiling/isolated.py", "measure_pair"),
    ("worker: per-node profile (screen warm-up)", "profiling/isolated.py", "node_times"),
    ("BN recalibration", "problem/pruning.py", "recalibrate_bn"),
    ("accuracy scoring (held-out)", "tasks/task.py", "score"),
    ("MACs + params count", "space/channels.py", "macs_and_params"),
    ("journal (checkpoint)", "jobs/checkpoint.py", "record"),
)
TOTAL = ("problem/pruning.py", "evaluate_batch")


@dataclass(frozen=True)
class Variant:
    """Settings a cut changes (None: as the code has it); ``before`` and ``again`` are the code's
    defaults, twice: how far two runs of the same settings agree is the floor any cut is read
    against."""

    name: str
    holdout_cache: bool = True  # held-out batches preprocessed once (tasks/task.py; before cd2d1c4: at every score)
    holdout: int | None = None  # held-out images scored (the demo's: 1000)
    calib_images: int | None = None  # BN recalibration images (the task's: 512)
    repeats_if_noisy: int | None = None  # paired re-takes of a noisy measurement (x86-cpu: 2)
    window_s: float | None = None  # timed window per model of a measurement (x86-cpu: 0.6 s)


VARIANTS = {v.name: v for v in (
    Variant("before", holdout_cache=False),
    Variant("again", holdout_cache=False),
    Variant("cached"),
    Variant("holdout500", holdout=500),
    Variant("calib256", calib_images=256),
    Variant("no-retake", repeats_if_noisy=0),
    Variant("window0.3", window_s=0.3),
    # The cuts outside the task that the measurements above left standing, together.
    Variant("proposed", holdout=500, repeats_if_noisy=0, window_s=0.3),
)}


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.against:
        from evaluation_against import compare

        compare(args.against, args.new, args.pairs, args.population, args.generations, args.here_first)
        return
    if args.smoke:
        args.n, args.variants = 4, "before,proposed"
        print(SMOKE_NOTE)
    variants = [VARIANTS[v] for v in args.variants.split(",")]
    bench = _Bench(args.n, args.seed, args.batch, args.smoke)
    runs = bench.run(variants)
    for variant in variants:
        _print_breakdown(variant.name, runs[variant.name], args.n)
    _print_ranking(variants, runs)
    worker = bench.worker_split()
    print(f"\nworker request, split in a torch-free child (the worker's way, {worker['sessions']} sessions): "
          f"session creation + warm-up {worker['setup_ms']:.0f} ms per session, timed window {worker['window_ms']:.0f} ms per model")


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="channel choices evaluated per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4, help="choices per turn (variants alternate)")
    parser.add_argument("--variants", default="before", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--against", metavar="REV", help="compare whole searches of the demo's model: commit REV's code against this tree's, alternately")
    parser.add_argument("--new", metavar="REV", help="with --against: commit REV (installed likewise) instead of this tree as installed")
    parser.add_argument("--pairs", type=int, default=2, help="with --against: runs of each code")
    parser.add_argument("--population", type=int, default=8, help="with --against: the search's population (both codes)")
    parser.add_argument("--generations", type=int, default=2, help="with --against: the search's generations (both codes)")
    parser.add_argument("--here-first", action="store_true", help="with --against: each pair runs this code first")
    parser.add_argument("--smoke", action="store_true", help=f"a tiny residual net (random weights) on sklearn's digits at 3x16x16, 4 choices, before and proposed ({SMOKE_NOTE})")
    return parser.parse_args(argv)


class _Bench:
    """The demo's job loaded once; one problem per variant over the same choices."""

    def __init__(self, n: int, seed: int, batch: int, smoke: bool = False):
        from edgeprune.jobs.demo import DEMO_HOLDOUT, DEMO_MODEL, DEMO_RECIPE, DEMO_SEARCH, DEMO_SHAPE, demo_weights
        from edgeprune.jobs.kinds import Supplied
        from edgeprune.jobs.prune import _load
        from edgeprune.jobs.settings import OutputSettings, PruneConfig, TaskSettings

        self.folder = Path(tempfile.mkdtemp(prefix="bench-evaluation-"))
        if smoke:  # tools/smoke.py's model, data and measurement protocol
            model, weights, target, data, shape, holdout = SMOKE_MODEL, None, smoke_profile_file("x86-cpu", self.folder), "digits", (3, 16, 16), 100
        else:
            model, weights, target, data, shape, holdout = DEMO_MODEL, str(demo_weights(seed, progress=False)), "x86-cpu", "fashion-mnist", DEMO_SHAPE, DEMO_HOLDOUT
        self.cfg = PruneConfig(
            model=model, weights=weights, target=target, speedup=2.0, seed=seed,
            task=TaskSettings(data=data, input_shape=shape, num_classes=10, holdout=holdout),
            search=DEMO_SEARCH, recipe=DEMO_RECIPE,
            output=OutputSettings(out=str(self.folder / "out"), no_cache=True, progress=False),
        )
        self.job = _load(self.cfg, Supplied())
        self.batch = batch
        space = self.job.space
        self.full = space.widths_from_indices(space.full_indices())
        self.anchor = self.job.problem.latency.set_reference(self.full)
        self.budget_ms = self.anchor.median_ms / self.cfg.speedup
        self.choices = _choices(space, n, np.random.default_rng(seed))
        self.blobs: list[bytes] = []

    def run(self, variants: list[Variant]) -> dict[str, dict]:
        problems = {v.name: self._problem(v) for v in variants}
        warm = {name: p.latency.profiler.measurements for name, p in problems.items()}
        profiles = {v.name: cProfile.Profile() for v in variants}
        walls = {v.name: 0.0 for v in variants}
        for start in range(0, len(self.choices), self.batch):
            chunk = self.choices[start:start + self.batch]
            for v in variants:
                t = time.perf_counter()
                profiles[v.name].runcall(problems[v.name].evaluate_batch, chunk)
                walls[v.name] += time.perf_counter() - t
        out = {}
        for v in variants:
            problem = problems[v.name]
            out[v.name] = {"stats": pstats.Stats(profiles[v.name]), "wall_s": walls[v.name], "problem": problem,
                           "candidates": [problem.results[c] for c in self.choices],
                           "requests": problem.latency.profiler.measurements - warm[v.name]}
            problem.latency.profiler.close()
        return out

    def _problem(self, variant: Variant):
        """A fresh profiler (nothing remembered) in the anchor's units, and the round's problem."""
        from edgeprune.jobs.rounds import RoundSettings, _Context, _problem
        from edgeprune.problem.latency import ProfiledLatency
        from edgeprune.profiling.profiler import Profiler
        from edgeprune.select.budget import DEFAULT_POLICY

        job, cfg = self.job, self.cfg
        profiler = Profiler(_profile_for(job.profile, variant), use_cache=False)
        latency = ProfiledLatency(job.space, profiler, job.profile.opset, job.profile.batch, job.profile.model_format)
        latency.set_reference(self.full, anchor=self.anchor)
        latency.measure(self.full, fresh=True)  # the worker started and warm before the clock runs
        first = replace(job.problem, task=_task_for(job.task, variant), latency=latency)
        first.reference_ms = self.anchor.median_ms
        ctx = _Context(
            RoundSettings(cfg.search, cfg.recipe, cfg.seed, False), job.model, first, [self.budget_ms], DEFAULT_POLICY,
            _checkpoint(self.folder / variant.name), None,
        )
        return _problem(ctx, 1, job.space, latency, first.model_scores)

    def worker_split(self, sessions: int = 3) -> dict:
        """Session creation + warm-up vs the timed window of one paired request, in a torch-free
        child like the worker (a torch-importing process times ONNX Runtime slower)."""
        from edgeprune.exporters.measured import measured_bytes

        job = self.job
        model = job.space.shrink(job.space.plan_of(self.choices[0]))
        path = self.folder / "candidate.onnx"
        path.write_bytes(measured_bytes(model, (job.profile.batch, *job.space.input_shape), job.profile.opset))
        code = _SPLIT.format(profile=str(job.profile.source), path=str(path), shape=(job.profile.batch, *job.space.input_shape), sessions=sessions)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        return {"sessions": sessions, "setup_ms": float(out[0]), "window_ms": float(out[1])}


_SPLIT = """
import time, statistics
from edgeprune.profiling.ort import OrtBackend
from edgeprune.profiling.targets import load_profile
from edgeprune.profiling.timing import timed_runs
backend = OrtBackend(load_profile({profile!r}))
blob = open({path!r}, 'rb').read()
setup, window = [], []
for _ in range({sessions}):
    t = time.perf_counter(); run = backend._warm(blob, {shape}); setup.append(time.perf_counter() - t)
    t = time.perf_counter(); timed_runs(run, backend.profile.measure); window.append(time.perf_counter() - t)
print(statistics.median(setup) * 1e3, statistics.median(window) * 1e3)
"""


def _checkpoint(folder: Path):
    from edgeprune.jobs.checkpoint import RunCheckpoint

    return RunCheckpoint(folder)


def _task_for(task, variant: Variant):
    """The demo's task, or a copy that scores on fewer held-out images / recalibrates on fewer
    / preprocesses the holdout at every score as before."""
    if not variant.holdout_cache:
        task = replace(task, holdout_cache_bytes=0)
    if variant.holdout is not None:
        task = replace(task, data=replace(task.data, holdout=task.data.holdout.subset(variant.holdout, task.seed)))
    if variant.calib_images is not None:
        task = replace(task, calib_images=variant.calib_images)
    return task


def _profile_for(profile, variant: Variant):
    """The target's profile with the variant's measurement settings."""
    measure = profile.measure
    if variant.repeats_if_noisy is not None:
        measure = replace(measure, repeats_if_noisy=variant.repeats_if_noisy)
    if variant.window_s is not None:
        measure = replace(measure, max_seconds=variant.window_s)
    return replace(profile, measure=measure)


def _choices(space, n: int, rng: np.random.Generator) -> list:
    """``n`` channel choices like the search's first generation: every group near one random keep
    ratio (here between 0.35 and 0.9: around the demo's budget of half the latency)."""
    out = []
    while len(out) < n:
        ratio = rng.uniform(0.35, 0.9)
        jitter = rng.uniform(-0.15, 0.15, size=len(space.groups))
        widths = tuple(g.options[g.nearest_option((ratio + j) * g.full)] for g, j in zip(space.groups, jitter))
        choice = space.choice(widths)
        if choice not in out:
            out.append(choice)
    return out


def _print_breakdown(name: str, run: dict, n: int) -> None:
    stats = run["stats"]
    total, _ = cumulative(stats, [TOTAL])
    print(f"\n[{name}] {n} evaluations, {total:.1f} s in evaluate_batch = {total / n:.2f} s per evaluation")
    print(f"  {'phase':46s} {'s/eval':>7s} {'share':>6s} {'calls':>6s}")
    for label, suffix, func in PHASES:
        seconds, calls = cumulative(stats, [(suffix, func)])
        if label.startswith("screen"):
            seconds -= cumulative(stats, [("profiling/profiler.py", "node_times")])[0]
        print(f"  {label:46s} {seconds / n:7.3f} {seconds / total:6.1%} {calls:6d}")


def _print_ranking(variants: list[Variant], runs: dict) -> None:
    """Each variant against the first: time per evaluation, measurement requests, and how its
    accuracies and latencies rank the same candidates (Spearman), how far they moved, and
    whether it picks the same best candidate within the search limit."""
    from scipy.stats import spearmanr

    first = runs[variants[0].name]
    base, limit = first["candidates"], first["problem"].limit_ms
    print(f"\nagainst [{variants[0].name}], {len(base)} candidates, search limit {limit:.4f} ms")
    print(f"{'variant':11s} {'s/eval':>6s} {'ratio':>5s} {'requests':>8s} {'rho acc':>7s} {'max dacc':>8s} {'rho lat':>7s} {'med dlat':>8s} {'best':>5s}")
    for v in variants:
        run = runs[v.name]
        cands = run["candidates"]
        acc = spearmanr([c.accuracy for c in base], [c.accuracy for c in cands]).statistic
        lat = spearmanr([c.latency.median_ms for c in base], [c.latency.median_ms for c in cands]).statistic
        dacc = max(abs(a.accuracy - b.accuracy) for a, b in zip(base, cands))
        dlat = float(np.median([abs(b.latency.median_ms / a.latency.median_ms - 1) for a, b in zip(base, cands)]))
        same = _best(base, limit) == _best(cands, limit)
        requests = run["requests"]
        print(f"{v.name:11s} {run['wall_s'] / len(cands):6.2f} {run['wall_s'] / first['wall_s']:5.2f} {requests:8d} "
              f"{acc:7.3f} {dacc * 100:7.2f}pp {lat:7.3f} {dlat:8.1%} {'same' if same else 'other':>5s}")  # rho: nan when all equal


def _best(candidates, limit_ms: float) -> int | None:
    """Index of the most accurate candidate within the limit (None when none is)."""
    feasible = [i for i, c in enumerate(candidates) if c.latency.median_ms <= limit_ms]
    return max(feasible, key=lambda i: candidates[i].accuracy, default=None)


if __name__ == "__main__":
    main()
