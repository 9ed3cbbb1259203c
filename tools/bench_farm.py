"""Search throughput against the number of device agents and against Ray workers.

    python tools/bench_farm.py                       # about 12 minutes on a 2-core VM
    python tools/bench_farm.py --device-seconds 5 --agents 1,2,4,8,16
    python tools/bench_farm.py --smoke      # a tiny net on sklearn's digits, 1 and 2 agents, no Ray (seconds)
    python tools/bench_farm.py --agents '' --no-ray  # the steady-state table only

The model is the demo's MobileNetV2 trained on Fashion-MNIST (3x32x32, trained once and cached).
Latency comes from the ``simulated`` device (profiles/simulated.yaml): a fixed function of the
architecture, each measurement holding its agent for ``--device-seconds`` (a TensorRT engine
build and timing on a Jetson takes tens of seconds; 4 s keeps the coordinator from being the bound
up to 4 agents).
The agents are real ``edgeprune agent`` processes on loopback, so HTTP, the queue and the
coordinator's own work (shrink, ONNX export, adaptive-BN accuracy) are all in the numbers.

Rows, each from one NSGA-II search (same seed, population, generations) in this one run:
candidates evaluated, the search's wall time, candidates per hour, the speed-up over one agent,
and whether every candidate (widths, accuracy, latency) equals the one-agent run's. Then the
same search with no device time (accuracy-bound), scored here and on a local Ray cluster. Then
a model of a larger farm fitted to the measured device and coordinator times, and where it
stops scaling.

Last, the steady-state (asynchronous) NSGA-II, ``--strategy steady-state``, with as many
measurements in flight as there are agents, on a TensorRT-like device (``--steady-device-seconds``,
20 s a measurement): one agent (its rate, on ``population 4 x 1`` candidates), the generational
search and the steady-state search on ``--steady-agents`` (16 and 32), each with
``--population`` x ``--steady-generations`` candidates. Rates count measured candidates (the
unpruned model is the reference, answered from memory). The fronts' hypervolumes are compared at
the same number of evaluations (the first n of each, n the smaller count). The generation table
keeps its 4 s and 1-8 agents (recorded in d7f6322): at 20 s its one-agent row alone would take 16
minutes, and the steady-state table has its own one-agent rate.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from edgeprune.tasks.data import load_data
from edgeprune.jobs.demo import DEMO_MODEL, DEMO_SHAPE, demo_weights
from edgeprune.problem.latency import ProfiledLatency
from edgeprune.api.settings import parse_shape
from edgeprune.tasks.models import load_model
from edgeprune.problem.pruning import PruningProblem
from edgeprune.profiling.profiler import Profiler
from edgeprune.search.nsga import hypervolume, pareto_front, run_nsga2
from edgeprune.search.steady import run_steady_state
from edgeprune.space.channels import ChannelSpace
from edgeprune.profiling.targets import load_profile
from edgeprune.tasks.task import Classification, Recipe

sys.path.insert(0, str(Path(__file__).parent))
from smoke import SMOKE_MODEL, SMOKE_NOTE  # noqa: E402


def start_agents(count: int) -> list[tuple[subprocess.Popen, str]]:
    """``count`` agents on loopback, started together (32 one after the other take a minute)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "edgeprune", "agent", "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for _ in range(count)
    ]
    agents = []
    for proc in procs:
        line = proc.stdout.readline()
        if "listening on http://127.0.0.1:" not in line:
            stop_agents(agents + [(p, "") for p in procs if p not in [a for a, _ in agents]])
            raise SystemExit(f"an agent did not start: {line!r}")
        agents.append((proc, "http://" + line.split("http://")[1].split()[0]))
    return agents


def stop_agents(agents: list[tuple[subprocess.Popen, str]]) -> None:
    for proc, _ in agents:
        proc.terminate()
    for proc, _ in agents:
        proc.wait()


def simulated_profile(folder: Path, device_seconds: float) -> Path:
    data = yaml.safe_load(Path(load_profile("simulated").source).read_text())
    data["simulated"]["device_seconds"] = device_seconds
    path = folder / f"simulated-{device_seconds:g}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def search(space, task, profile: Path, args, agents: list[str] | None = None, workers=None, steady: bool = False,
           population: int | None = None, generations: int | None = None) -> dict:
    """One search (generational, or ``steady`` with as many in flight as agents); returns its
    candidates, wall time and the farm's summary."""
    population, generations = population or args.population, generations or args.generations
    profiler = Profiler(load_profile(str(profile)), use_cache=False, agents=agents)
    try:
        latency = ProfiledLatency(space, profiler, opset=17)
        full = latency.set_reference(tuple(g.full for g in space.groups)).median_ms
        problem = PruningProblem(space, task, latency, limit_ms=args.budget * full, workers=workers)
        start = time.perf_counter()
        if steady:
            run_steady_state(problem, population, generations, args.seed, in_flight=profiler.capacity, show_progress=False)
        else:
            run_nsga2(problem, population=population, generations=generations, seed=args.seed, show_progress=False)
        wall = time.perf_counter() - start
        farm = profiler.backend.summary() if agents else None
        log = list(profiler.backend.pool.log) if agents else []
    finally:
        profiler.close()
    cands = problem.evaluated()
    return {
        "rows": [(c.widths, c.accuracy, c.latency.median_ms) for c in cands],
        "count": len(cands), "wall": wall, "farm": farm,
        "device_s": [e["seconds"] for e in log if e["ok"]],
        "per_generation": len(cands) / generations,
        "candidates": cands, "full_ms": full, "limit_ms": args.budget * full,
        "measured": sum(not c.from_cache for c in cands),
    }


def coordinator_parts(space, shape: tuple[int, ...], folder: Path, count: int = 10, seed: int = 0) -> tuple[float, float]:
    """Median seconds of what stays on the coordinator when Ray scores accuracy (shrink + ONNX
    export of a random candidate), and of one latency-cache write + read (SQLite)."""
    import numpy as np

    from edgeprune.exporters.onnx_bytes import export_onnx_bytes
    from edgeprune.profiling.cache import LatencyCache
    from edgeprune.profiling.stats import LatencyStats

    rng = np.random.default_rng(seed)
    export_s = []
    for _ in range(count):
        widths = [int(rng.choice(g.options)) for g in space.groups]
        start = time.perf_counter()
        export_onnx_bytes(space.shrink(space.plan(widths)), (1, *shape), 17)
        export_s.append(time.perf_counter() - start)
    cache = LatencyCache(folder / "cache-cost.sqlite")
    stats = LatencyStats(100, 1.0, 1.1, 1.2, 1.0, 0.01, 0.01)
    start = time.perf_counter()
    for i in range(500):
        cache.put("f" * 16, f"arch-{i}", (1, *shape), stats)
        cache.get("f" * 16, f"arch-{i}", (1, *shape))
    cache_s = (time.perf_counter() - start) / 500
    cache.close()
    return statistics.median(export_s), cache_s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device-seconds", type=float, default=4.0, help="how long one measurement holds an agent (default 4)")
    ap.add_argument("--agents", default="1,2,4,8", help="agent counts to run (default 1,2,4,8)")
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.6, help="latency limit as a fraction of the unpruned model's (default 0.6)")
    ap.add_argument("--holdout", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    ap.add_argument("--steady-agents", default="1,16,32", help="agent counts of the steady-state table; the first is the one-agent rate, the second also runs the generational search (default 1,16,32; '' skips the table)")
    ap.add_argument("--steady-device-seconds", type=float, default=20.0, help="how long one measurement holds an agent in the steady-state table (default 20, TensorRT-like)")
    ap.add_argument("--steady-generations", type=int, default=4, help="generations' worth of candidates of each steady-state and generational search there (default 4)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"a tiny residual net (random weights) on sklearn's digits at 3x16x16, 1 and 2 agents, 0.05 s per measurement, no Ray ({SMOKE_NOTE})")
    args = ap.parse_args(argv)
    model_name, shape_text, data_name, weights = DEMO_MODEL, "x".join(map(str, DEMO_SHAPE)), "fashion-mnist", None
    if args.smoke:
        args.agents, args.device_seconds, args.population, args.generations, args.holdout, args.no_ray = "1,2", 0.05, 4, 1, 100, True
        args.steady_agents, args.steady_device_seconds, args.steady_generations = "1,2,3", 0.05, 2
        model_name, shape_text, data_name = SMOKE_MODEL, "3x16x16", "digits"
        print(SMOKE_NOTE)
    counts = [int(n) for n in args.agents.split(",") if n]
    steady_counts = [int(n) for n in args.steady_agents.split(",") if n]

    torch.manual_seed(args.seed)
    if not args.smoke:
        weights = str(demo_weights(args.seed, progress=False))
    data = load_data(data_name, input_shape=parse_shape(shape_text), holdout=args.holdout, seed=args.seed)
    model, spec = load_model(model_name, num_classes=10, weights=weights)
    space = ChannelSpace(model, parse_shape(shape_text), 16, model_spec=spec)
    task = Classification(data, Recipe(0.01, 128, 0.5, 4.0, progress=False), seed=args.seed)

    folder = Path(tempfile.mkdtemp(prefix="bench-farm-"))
    fast = simulated_profile(folder, 0.0)
    search(space, task, fast, args)  # warm-up: first exports and forward passes are slower
    title = f"{model_name} / {data_name} {shape_text}"
    if counts:
        generational_tables(space, task, folder, args, counts, title, parse_shape(shape_text))
    if steady_counts:
        steady_table(space, task, folder, args, steady_counts, title)


def generational_tables(space, task, folder: Path, args, counts: list[int], title: str, shape) -> None:
    """The generational search against agents at ``--device-seconds``, the Ray rows, the model."""
    slow, fast = simulated_profile(folder, args.device_seconds), simulated_profile(folder, 0.0)
    agents = start_agents(max(counts))
    results = {}
    try:
        for n in counts:
            results[n] = search(space, task, slow, args, agents=[url for _, url in agents[:n]])
            print(f"  {n} agent(s): {results[n]['count']} candidates in {results[n]['wall']:.1f} s", file=sys.stderr, flush=True)
    finally:
        stop_agents(agents)

    base = results[counts[0]]
    print(f"\n## Search throughput vs agents (simulated device, {args.device_seconds:g} s per measurement; "
          f"NSGA-II population {args.population}, {args.generations} generations, {title})\n")
    print("| agents | candidates | search wall (s) | candidates / hour | speed-up vs 1 | measurements per agent | same candidates as 1 agent |")
    print("|---:|---:|---:|---:|---:|---|---|")
    for n in counts:
        r = results[n]
        per_agent = ", ".join(str(a["measurements"]) for a in r["farm"]["agents"])
        print(f"| {n} | {r['count']} | {r['wall']:.1f} | {3600 * r['count'] / r['wall']:.0f} | "
              f"{base['wall'] / r['wall']:.2f}x | {per_agent} | {'yes' if r['rows'] == base['rows'] else 'NO'} |")

    local = search(space, task, fast, args)
    coordinator_s = local["wall"] / local["count"]
    if not args.no_ray:
        from edgeprune.problem.workers import RayWorkers

        workers = RayWorkers("")
        try:
            search(space, task, fast, args, workers=workers)  # warm-up: worker processes start and load the bundle
            ray_run = search(space, task, fast, args, workers=workers)
            cpus = workers.describe()["cpus"]
        finally:
            workers.close()
        print(f"\n## Candidate scoring: this process vs Ray workers (no device time: accuracy-bound; {os.cpu_count()} CPUs)\n")
        print("| scoring | candidates | search wall (s) | candidates / hour | same candidates |")
        print("|---|---:|---:|---:|---|")
        print(f"| this process (torch {torch.get_num_threads()} threads) | {local['count']} | {local['wall']:.1f} | {3600 * local['count'] / local['wall']:.0f} | - |")
        print(f"| local Ray cluster, {cpus} CPUs, {max(1, cpus // torch.get_num_threads())} task(s) at once (warm) | {ray_run['count']} | {ray_run['wall']:.1f} | {3600 * ray_run['count'] / ray_run['wall']:.0f} | "
              f"{'yes' if ray_run['rows'] == local['rows'] else 'NO'} |")

    device_s = statistics.median(results[max(counts)]["device_s"])
    per_gen = base["per_generation"]
    export_s, cache_s = coordinator_parts(space, shape, folder, count=2 if args.smoke else 10)
    print("\n## A larger farm, modelled on these measurements\n")
    print(f"Measured: one measurement holds an agent {device_s:.2f} s (median, HTTP included); the coordinator "
          f"spends {coordinator_s:.3f} s per candidate scoring here (shrink, ONNX export, adaptive-BN accuracy: the "
          f"no-device-time run), of which {export_s:.3f} s is shrink + ONNX export, what stays on it when Ray workers "
          f"score accuracy; a latency-cache write + read takes {1000 * cache_s:.2f} ms; a generation brings "
          f"{per_gen:.1f} new candidates on average (population {args.population}).\n")
    print("Model: a generation takes the largest of: ceil(new / agents) x device time (the devices; at most `new` "
          "of them busy: the generation barrier), new x coordinator time, new x cache time; candidates per hour = "
          "new / that. Columns: scoring here, and scoring on Ray workers with enough CPUs (coordinator = export only).\n")
    print("| agents | modelled, scoring here | modelled, Ray scoring | measured (scoring here) | bound by (here / Ray) |")
    print("|---:|---:|---:|---:|---|")
    for n in sorted(set(counts) | {16, 32, 100}):
        device_t = math.ceil(per_gen / n) * device_s
        row, bounds = [], []
        for coordinator in (coordinator_s, export_s):
            limits = {"devices": device_t, "coordinator": per_gen * coordinator, "cache": per_gen * cache_s}
            bound = max(limits, key=limits.get)
            if bound == "devices" and n >= per_gen:
                bound = "generation barrier"
            row.append(3600 * per_gen / limits[max(limits, key=limits.get)])
            bounds.append(bound)
        measured = f"{3600 * results[n]['count'] / results[n]['wall']:.0f}" if n in results else "-"
        print(f"| {n} | {row[0]:.0f} | {row[1]:.0f} | {measured} | {bounds[0]} / {bounds[1]} |")



def steady_table(space, task, folder: Path, args, counts: list[int], title: str) -> None:
    """The steady-state search against agents at ``--steady-device-seconds``: the one-agent rate,
    then at ``counts[1]`` agents the generational search beside it, and the fronts' hypervolumes
    at the same number of evaluations."""
    slow, fast = simulated_profile(folder, args.steady_device_seconds), simulated_profile(folder, 0.0)
    agents = start_agents(max(counts))
    urls = [url for _, url in agents]
    runs = []  # (strategy, agents, result)
    try:
        for n in counts:
            if n == counts[0]:  # the one-agent rate, on few candidates
                runs.append(("steady-state", n, search(space, task, slow, args, agents=urls[:n], steady=True, population=4, generations=1)))
                continue
            if n == counts[1]:
                runs.append(("generational", n, search(space, task, slow, args, agents=urls[:n], generations=args.steady_generations)))
            runs.append(("steady-state", n, search(space, task, slow, args, agents=urls[:n], steady=True, generations=args.steady_generations)))
            strategy, _, r = runs[-1]
            print(f"  {strategy} on {n} agent(s): {r['count']} candidates in {r['wall']:.1f} s", file=sys.stderr, flush=True)
    finally:
        stop_agents(agents)
    local = search(space, task, fast, args, generations=1)  # no device time: the coordinator's own time
    coordinator_s = local["wall"] / local["count"]
    rate = {id(r): 3600 * r["measured"] / r["wall"] for _, _, r in runs}
    base = rate[id(runs[0][2])]
    compared = [r for _, n, r in runs if n != counts[0]]
    evaluations = min(r["count"] for r in compared)
    reference = next(r for s_, _, r in runs if s_ == "generational")
    hv = {id(r): front_volume(r, evaluations) for r in compared}
    print(f"\n## Steady-state NSGA-II vs agents (simulated device, {args.steady_device_seconds:g} s per measurement; "
          f"population {args.population}, {args.population * args.steady_generations} candidates a search, {title})\n")
    print(f"| strategy | agents | candidates | measured | search wall (s) | measured / hour | speed-up vs 1 agent | "
          f"hypervolume at {evaluations} evaluations | vs generational |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for strategy, n, r in runs:
        volume = f"{hv[id(r)]:.4f} | {hv[id(r)] / hv[id(reference)]:.3f}" if id(r) in hv else "- | -"
        print(f"| {strategy} | {n} | {r['count']} | {r['measured']} | {r['wall']:.1f} | {rate[id(r)]:.0f} | "
              f"{rate[id(r)] / base:.2f}x | {volume} |")
    device_s = statistics.median(runs[-1][2]["device_s"])
    print(f"\nBounds: a measurement holds an agent {device_s:.2f} s (median, HTTP included), so n agents give at most "
          f"n x {3600 / device_s:.0f} measurements per hour; the coordinator spends {coordinator_s:.3f} s per candidate "
          f"(shrink, ONNX export, adaptive-BN accuracy, the search's own work: the no-device-time run, "
          f"{local['count']} candidates), at most {3600 / coordinator_s:.0f} per hour, "
          f"{3600 / coordinator_s / base:.1f}x the one-agent rate.")


def front_volume(result: dict, evaluations: int) -> float:
    """Hypervolume of the front of a search's first ``evaluations`` candidates (unit: the unpruned
    model's latency, as the searches' history)."""
    return hypervolume(pareto_front(result["candidates"][:evaluations]), result["full_ms"])


if __name__ == "__main__":
    main()
