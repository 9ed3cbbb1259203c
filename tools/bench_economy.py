"""Device measurements and wall time until the pick, on a simulated TensorRT-like device:
today's search against the economy (issue 32), same seed, same budget, same fine-tune.

    python tools/bench_economy.py                    # about 30 minutes on a 2-core VM
    python tools/bench_economy.py --arms economy     # one arm, no ratios
    python tools/bench_economy.py --population 4 --generations 2 --finetune-epochs 0.02 --refine-epochs 0   # a smoke run

The device is ``profiles/simulated.yaml`` with 3 % noise: latency is a fixed function of the
architecture, so the truth behind every prediction is known. Each measurement on a Jetson is an
engine build plus timing; here it costs ``--device-seconds`` (20 by default) of *modelled* device
time instead of sleeping: the wall time of an arm is its measured host time plus its measurements
times that cost (one device, measurements one after the other, as a local run takes them).

Arms (both a full ``prune`` of the demo's MobileNetV2 on Fashion-MNIST, 3x32x32):

* today: no screen on a device without per-layer times, widening one measurement per group per
  pass with no budget, every confirmation 5 fresh sessions (what main did before issue 32's
  economy);
* economy: the whole-network MACs screen, learnt per generation, skipping what it predicts far
  over the limit or surely under the focus floor and what enough measured candidates outrank in
  accuracy; widening ranked by the screen,
  steps predicted over not measured, within what the search spent; confirmations stopping at 3
  sessions when they agree.

Also printed: each arm's measurements by stage (baseline, seeds, search, shortlist,
confirmation, widening).

Printed: measurements, host seconds, modelled wall time, the pick's test accuracy after the same
fine-tune, its latency on the device measured afresh against the budget (the simulated device is
deterministic, so "afresh" means a new backend, not the run's cache), and the screen's fidelity:
the share of its predictions within ±10 % of the device's latency, for the networks it let
through (predicted, then measured) and the ones it skipped (measured here after the run).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml

from edgeprune.api.settings import prune_config
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.jobs.demo import DEMO_MODEL, DEMO_SHAPE, demo_weights
from edgeprune.jobs.prune import run_prune
from edgeprune.problem import screening
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.simulated import SimulatedBackend
from edgeprune.profiling.targets import load_profile
from edgeprune.select import selection


def device_profile(folder: Path, noise: float) -> Path:
    """The simulated device without its sleep (device time is modelled, see the docstring)."""
    data = yaml.safe_load(Path(load_profile("simulated").source).read_text())
    data["name"] = "simulated-trt"
    data["simulated"].update(device_seconds=0.0, noise=noise)
    path = folder / "simulated-trt.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# The stage a measurement belongs to: the innermost of these functions on the stack when it is made.
STAGES = {
    "_baseline": "baseline", "ratio_seeds": "seeds", "run_nsga2": "search", "shortlist": "shortlist",
    "confirm": "confirmation", "five_sessions": "confirmation", "widen": "widening",
}


class StageCounts:
    """Device measurements per stage of the run, counted where the profiler counts them."""

    def __init__(self):
        self.counts: collections.Counter[str] = collections.Counter()

    def install(self):
        """Make ``Profiler.measurements`` attribute each increment to a stage; returns the undo."""
        counts = self.counts

        def setter(profiler, value):
            grown = value - profiler.__dict__.get("_counted", 0)
            if grown > 0:
                names = [frame.name for frame in traceback.extract_stack()]
                counts[next((STAGES[n] for n in reversed(names) if n in STAGES), "other")] += grown
            profiler.__dict__["_counted"] = value

        Profiler.measurements = property(lambda profiler: profiler.__dict__.get("_counted", 0), setter)
        return lambda: delattr(Profiler, "measurements")

    def text(self) -> str:
        order = [*dict.fromkeys(STAGES.values()), "other"]
        return ", ".join(f"{stage} {self.counts[stage]}" for stage in order if self.counts[stage])


class Fidelity:
    """The screen's predictions, and the networks it skipped, recorded as the run makes them."""

    def __init__(self):
        self.learned: list[tuple[float, float]] = []  # (predicted, measured) once trusted enough to be scored
        self.skipped: list[tuple[float, bytes]] = []  # (predicted, the network's ONNX)

    def install(self, shape: tuple[int, ...]) -> None:
        learn, skip, under = screening.Screen.learn, screening.Screen.skip, screening.Screen.under

        def learning(screen, model, measured_ms, node_times):
            if screen._with_nodes >= screen.warmup:  # past the warm-up the screen scores this very prediction
                self.learned.append((screen.surrogate.predict(screen._layers(model)), measured_ms))
            learn(screen, model, measured_ms, node_times)

        def recording(decide):
            """``decide`` (the screen's skip or under), also keeping each network it leaves untimed."""

            def decided(screen, model, *args):
                predicted = decide(screen, model, *args)
                if predicted is not None:
                    self.skipped.append((predicted, export_onnx_bytes(model, shape, 17)))
                return predicted

            return decided

        screening.Screen.learn, screening.Screen.skip, screening.Screen.under = learning, recording(skip), recording(under)

    def shares(self, device: SimulatedBackend, shape: tuple[int, ...]) -> tuple[float | None, float | None, int, int]:
        def within(pairs):
            return sum(abs(p - m) / m <= 0.10 for p, m in pairs) / len(pairs) if pairs else None

        skipped = [(p, device.measure(blob, shape).median_ms) for p, blob in self.skipped]
        return within(self.learned), within(skipped), len(self.learned), len(skipped)


def five_sessions(problem, widths, budget_ms, policy, noise, sessions=selection.CONFIRM_SESSIONS):
    """Today's confirmation: always all ``sessions`` fresh sessions (the economy stops at 3 when
    they agree)."""
    runs = [s.median_ms for s in problem.fresh_sessions(widths, sessions)]
    noise.add(runs)
    return selection.Confirmation(runs, noise.spread, selection._confirmation_limit(noise, [], sessions, budget_ms, policy))


def run_arm(name: str, economy: bool, profile: Path, weights: str, args, work: Path) -> dict:
    """One prune; returns what the table shows."""
    originals = (screening.Screen.learn, screening.Screen.skip, screening.Screen.under, selection.WidenBudget.of_search, selection.confirm)
    fidelity, stages = Fidelity(), StageCounts()
    shape = (1, *DEMO_SHAPE)
    if economy:
        fidelity.install(shape)
    else:  # today's widening: no budget; today's confirmation: always 5 sessions
        selection.WidenBudget.of_search = classmethod(lambda cls, *a: cls())
        selection.confirm = five_sessions
    try:
        cfg = prune_config(
            model=DEMO_MODEL, weights=weights, target=str(profile), data="fashion-mnist", input_shape="x".join(map(str, DEMO_SHAPE)),
            holdout=args.holdout, speedup=args.speedup, population=args.population, generations=args.generations,
            finetune_epochs=args.finetune_epochs, refine_top=args.refine_top, refine_epochs=args.refine_epochs, seed=args.seed, out=str(work / name),
            no_cache=True, progress=False, screen=economy,
        )
        undo = stages.install()
        start = time.perf_counter()
        try:
            report = run_prune(cfg)
        finally:
            undo()
        host_s = time.perf_counter() - start
    finally:
        screening.Screen.learn, screening.Screen.skip, screening.Screen.under, selection.WidenBudget.of_search, selection.confirm = originals
    device = SimulatedBackend(load_profile(str(profile)))
    fresh = device.measure((work / name / "model.onnx").read_bytes(), shape).median_ms
    measurements = report["search"]["latency_measurements"]
    return {
        "arm": name, "measurements": measurements, "host_s": host_s, "wall_s": host_s + measurements * args.device_seconds,
        "accuracy": report["pruned"]["accuracy"], "fresh_ms": fresh, "budget_ms": report["budget_ms"], "met": fresh <= report["budget_ms"],
        "skips": report["search"].get("surrogate_skips", 0), "widened": sum(len(r.get("widened", [])) for r in report["rounds"]),
        "fidelity": fidelity.shares(device, shape) if economy else None, "stages": stages.text(),
        "outranked": sum((r.get("screen") or {}).get("outranked", 0) for r in report["rounds"]),
        "floored": sum((r.get("screen") or {}).get("floored", 0) for r in report["rounds"]),
    }


def table(rows: list[dict], device_seconds: float) -> str:
    lines = [
        f"| arm | device measurements | host s | wall s (host + {device_seconds:g} s per measurement) | test accuracy | fresh latency / budget (ms) | met | screened | widening steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['measurements']} | {r['host_s']:.0f} | {r['wall_s']:.0f} | {r['accuracy']:.2%} | "
            f"{r['fresh_ms']:.4f} / {r['budget_ms']:.4f} | {'yes' if r['met'] else 'NO'} | {r['skips']} | {r['widened']} |"
        )
    lines.append("")
    for r in rows:
        lines.append(
            f"{r['arm']}: measurements by stage: {r['stages']}; screened {r['skips']} (scored but not timed: "
            f"{r['floored']} under the focus floor, {r['outranked']} outranked)"
        )
    by_arm = {r["arm"]: r for r in rows}
    today, economy = by_arm.get("today"), by_arm.get("economy")
    if today and economy:
        lines.append("")
        lines.append(
            f"economy / today: {economy['measurements'] / today['measurements']:.0%} of the measurements, "
            f"{economy['wall_s'] / today['wall_s']:.0%} of the wall time, accuracy {100 * (economy['accuracy'] - today['accuracy']):+.2f} pp"
        )
    if not economy:
        return "\n".join(lines)
    learned, skipped, n_learned, n_skipped = economy["fidelity"]
    fmt = lambda v: "n/a" if v is None else f"{v:.0%}"  # noqa: E731
    lines.append(
        f"screen fidelity (share within ±10 % of the device): {fmt(learned)} of {n_learned} predictions it let through, "
        f"{fmt(skipped)} of {n_skipped} it skipped as far over the limit or floored"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--speedup", type=float, default=2.0)
    p.add_argument("--finetune-epochs", type=float, default=0.5)
    p.add_argument("--refine-top", type=int, default=4)
    p.add_argument("--refine-epochs", type=float, default=0.2, help="short tune per shortlisted candidate (0: off, for a quick look)")
    p.add_argument("--holdout", type=int, default=2000)
    p.add_argument("--device-seconds", type=float, default=20.0, help="modelled device time per measurement (a TensorRT engine build + timing)")
    p.add_argument("--noise", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default="today,economy", help="which arms to run, comma-separated (the ratios need both)")
    p.add_argument("--smoke", action="store_true", help="the code path at tiny sizes (population 4, one generation, no short tunes), not a result")
    args = p.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    if unknown := set(arms) - {"today", "economy"}:
        p.error(f"--arms: unknown arm(s) {', '.join(sorted(unknown))}; choose from today, economy")
    if args.smoke:
        args.population, args.generations, args.finetune_epochs, args.refine_epochs, args.refine_top, args.holdout = 4, 1, 0.01, 0.0, 1, 500
    weights = str(demo_weights(args.seed, progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        profile = device_profile(work, args.noise)
        rows = []
        for name, economy in (("today", False), ("economy", True)):
            if name not in arms:
                continue
            print(f"arm {name}: pruning ...", file=sys.stderr, flush=True)
            rows.append(run_arm(name, economy, profile, weights, args, work))
            print(f"arm {name}: {rows[-1]['measurements']} measurements, {rows[-1]['host_s']:.0f} s", file=sys.stderr, flush=True)
    print(table(rows, args.device_seconds))


if __name__ == "__main__":
    main()
