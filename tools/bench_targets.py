"""Pruning for one target is not pruning for another (issue 31's proof): each model pruned for the
same speed-up on each runtime, then every pick timed on every runtime.

For each model (Fashion-MNIST 3x32x32, 10 classes; the demo's MobileNetV2 and its half epoch of
training, and ``smoke:tiny_resnet``, plain 3x3 convs in torchvision BasicBlocks, trained the same
way) and each target (``x86-cpu`` ONNX Runtime, ``x86-openvino``, ``arm-litert`` LiteRT + XNNPACK
on this host as a stand-in, ``x86-executorch`` ExecuTorch + XNNPACK):

1. ``edgeprune.prune(... target=T, speedup=S)`` with the same search size, recipe and fine-tune
   for every target (the demo's recipe, smaller: ``--refine-top`` short tunes of 0.05 epoch, no
   widening, a 1000-image holdout, ``--finetune-epochs`` of KD fine-tune), the same seed;
2. every pick, converted to each runtime's format (``exporters/measured.py``, as the search does),
   timed on every runtime by that runtime's backend (``make_backend``) with its paired protocol
   (``Backend.measure_pair``: the pick and that runtime's unpruned model in alternating blocks of
   one process); ``--rounds`` rounds, the runtimes and picks taking turns, the cell being the
   median ratio pick / unpruned over the rounds;
3. a matrix, rows the picks (pruned for T), columns the runtimes, cells the latency ratios, with
   each pick's test accuracy (ONNX Runtime, after its fine-tune, from its report.json), and the
   conclusion per runtime: is the pick made for it the fastest there, and by how much.

    python tools/bench_targets.py --work /tmp/bt   # 2 models x 4 targets: 40-60 min on a loaded 2-core VM
    python tools/bench_targets.py --models smoke:tiny_resnet --targets x86-cpu,arm-litert --population 4 --generations 1 --finetune-epochs 0.05

``--work`` keeps each prune's output folder and reuses a finished one, so an interrupted run is
finished by the same command; ``--targets`` A,B ``--runtimes`` A,B,C,D times the picks finished so far
on every runtime. Run it on an otherwise idle machine: it measures latency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # smoke:tiny_resnet, and bench_vs_uniform's helpers
from bench_vs_uniform import model_spec, trained_weights  # noqa: E402

TARGETS = ("x86-cpu", "x86-openvino", "arm-litert", "x86-executorch")
MODELS = ("mobilenet_v2", "smoke:tiny_resnet")
SHAPE = (3, 32, 32)  # bench_vs_uniform's, which trains (and caches) the models: the demo's shape
DATA = "fashion-mnist"
# Two picks whose accuracies differ by no more than this are "equal accuracy" in the conclusion.
EQUAL_PP = 0.5
_STARTED = time.monotonic()


def say(message: str) -> None:
    """A progress line, with the minutes since the start (the log of a background run)."""
    print(f"[{(time.monotonic() - _STARTED) / 60:5.1f} min] {message}", flush=True)


# --- the table and its conclusion: pure functions of the numbers (tests/test_bench_targets.py) ---


def cell_ratio(rounds: list[float]) -> tuple[float, float]:
    """The median ratio of a cell's rounds and their spread ((max - min) / median)."""
    median = statistics.median(rounds)
    return median, (max(rounds) - min(rounds)) / median


def matrix_lines(picks: list[str], runtimes: list[str], ratios: dict, accuracy: dict, baseline_accuracy: float) -> list[str]:
    """A markdown table: one row per pick (``ratios[pick][runtime]`` = (ratio, spread)), the cell
    of the pick made for that runtime in bold; the unpruned model's accuracy in the header row."""
    lines = [
        "| pick (pruned for) | " + " | ".join(f"on {r}" for r in runtimes) + " | test accuracy |",
        "|---|" + "---:|" * (len(runtimes) + 1),
        "| unpruned | " + " | ".join("1.000" for _ in runtimes) + f" | {baseline_accuracy:.2%} |",
    ]
    for pick in picks:
        cells = []
        for runtime in runtimes:
            ratio, spread = ratios[pick][runtime]
            text = f"{ratio:.3f} ±{spread / 2:.0%}"
            cells.append(f"**{text}**" if pick == runtime else text)
        lines.append(f"| {pick} | " + " | ".join(cells) + f" | {accuracy[pick]:.2%} |")
    return lines


def verdict(runtime: str, picks: list[str], ratios: dict, accuracy: dict, widths: dict) -> str:
    """One sentence on ``runtime``: is its own pick the fastest there against the fastest pick
    with other widths, by how much, at what accuracy; a difference within the two cells'
    round-to-round spread is called that."""
    own, (own_ratio, own_spread) = runtime, ratios[runtime][runtime]
    same = [p for p in picks if p != own and widths[p] == widths[own]]
    coincide = f" (the same network as the pick for {', '.join(same)})" if same else ""
    head = f"on {runtime}, the pick made for it runs at {own_ratio:.3f}x the unpruned model{coincide}; "
    distinct = [p for p in picks if widths[p] != widths[own]]
    if not distinct:
        return head + "every other pick is the same network"
    rival = min(distinct, key=lambda p: ratios[p][runtime][0])
    rival_ratio, rival_spread = ratios[rival][runtime]
    gap = rival_ratio / own_ratio - 1  # > 0: the own pick is faster
    closeness = " (within the measurement spread: no real difference)" if abs(gap) <= max(own_spread, rival_spread) / 2 else ""
    if gap >= 0:
        judged = f"it is the fastest, {gap:.1%} faster than the next best, the pick for {rival} ({rival_ratio:.3f}x){closeness}"
    else:
        judged = f"it is NOT the fastest: the pick for {rival} runs at {rival_ratio:.3f}x, {-gap / (1 + gap):.1%} faster{closeness}"
    acc_pp = (accuracy[own] - accuracy[rival]) * 100
    if abs(acc_pp) <= EQUAL_PP:
        accuracy_text = f"at equal accuracy ({accuracy[own]:.2%} vs {accuracy[rival]:.2%})"
    else:
        accuracy_text = f"accuracy {accuracy[own]:.2%} vs {accuracy[rival]:.2%} ({acc_pp:+.2f} pp for its own pick: not equal accuracy)"
    return head + judged + "; " + accuracy_text


def conclusion_lines(picks: list[str], ratios: dict, accuracy: dict, widths: dict) -> list[str]:
    """The verdict for every runtime that has a pick of its own, then which picks coincide."""
    lines = [f"- {verdict(r, picks, ratios, accuracy, widths)}." for r in picks]
    groups: dict[str, list[str]] = {}
    for pick in picks:
        groups.setdefault(json.dumps(widths[pick], sort_keys=True), []).append(pick)
    same = [g for g in groups.values() if len(g) > 1]
    lines.append("- " + ("; ".join(f"the picks for {' and '.join(g)} coincide (same widths)" for g in same) if same else "no two picks coincide: every target chose other widths") + ".")
    if same:  # one network in several rows: how far apart its cells are is what noise alone does
        noise = max(max(ratios[p][r][0] for p in g) / min(ratios[p][r][0] for p in g) - 1 for g in same for r in ratios[g[0]])
        lines.append(f"- the same network's cells differ by up to {noise:.1%} on one runtime: a smaller gap between two picks is noise here.")
    return lines


# --- the measurements ---


def prune_for(spec: str, target: str, args, out: Path) -> dict:
    """The prune of ``spec`` for ``target`` (reused from ``out`` when finished there): the pruned
    network, its test accuracy, widths and what the prune itself measured."""
    from edgeprune.space.pruned import load_pruned  # noqa: PLC0415

    report_path = out / "report.json"
    if report_path.exists():
        say(f"{spec} for {target}: reusing the finished prune in {out}")
        model = load_pruned(out / "plan.json", out / "state_dict.pt", trust_code=True)
    else:
        import edgeprune  # noqa: PLC0415

        say(f"{spec} for {target}: pruning (--speedup {args.speedup:g}, population {args.population} x {args.generations} generations, fine-tune {args.finetune_epochs:g} epoch)")
        started = time.monotonic()
        weights = trained_weights(spec, args.train_epochs, args.seed)
        result = edgeprune.prune(
            model_spec(spec), target=target, speedup=args.speedup, data=DATA, input_shape="x".join(map(str, SHAPE)), num_classes=10, weights=str(weights),
            population=args.population, generations=args.generations, finetune_epochs=args.finetune_epochs, refine_top=args.refine_top, refine_epochs=0.05,
            widen_passes=0, holdout=1000, seed=args.seed, cache=str(out.parent / "latency.sqlite"), out=str(out), progress=args.progress,
        )
        model = result.model
        say(f"{spec} for {target}: done in {(time.monotonic() - started) / 60:.1f} min")
    report = json.loads(report_path.read_text())
    pruned, base = report["pruned"], report["baseline"]
    return {
        "model": model.eval(), "accuracy": pruned["accuracy"], "baseline_accuracy": base["accuracy"], "widths": pruned["group_widths"],
        "budget_met": report["budget_met"], "own_ratio": pruned["latency_ms"]["median"] / base["latency_ms"]["median"],
    }


def converted(models: dict, formats: set[str], opset: int) -> dict:
    """``{(name, format): bytes}``: every model in every format the runtimes read, converted once
    as the search converts its candidates."""
    from edgeprune.exporters.measured import measured_bytes  # noqa: PLC0415

    blobs = {}
    for name, model in models.items():
        for fmt in sorted(formats):
            started = time.monotonic()
            blobs[name, fmt] = measured_bytes(model, (1, *SHAPE), opset, fmt)
            say(f"converted {name} to {fmt} in {time.monotonic() - started:.1f} s")
    return blobs


def cross_time(models: dict, runtimes: list[str], rounds: int) -> dict:
    """``{pick: {runtime: [ratio per round]}}``: each pick timed on each runtime paired with the
    unpruned model (``models['unpruned']``) in that runtime's format; the rounds outermost and the
    order of the picks rotated each round, so drift over the minutes hits every cell alike."""
    from edgeprune.profiling.factory import make_backend  # noqa: PLC0415
    from edgeprune.profiling.targets import load_profile  # noqa: PLC0415

    profiles = {r: load_profile(r) for r in runtimes}
    blobs = converted(models, {p.model_format for p in profiles.values()}, profiles[runtimes[0]].opset)
    backends = {r: make_backend(p) for r, p in profiles.items()}
    picks = [name for name in models if name != "unpruned"]
    ratios = {pick: {r: [] for r in runtimes} for pick in picks}
    try:
        for r, backend in backends.items():
            backend.set_reference(blobs["unpruned", profiles[r].model_format], (1, *SHAPE))
        for k in range(rounds):
            order = picks[k % len(picks):] + picks[: k % len(picks)]
            for r, backend in backends.items():
                for pick in order:
                    cand, ref = backend.measure_pair(blobs[pick, profiles[r].model_format], (1, *SHAPE))
                    ratios[pick][r].append(cand.median_ms / ref.median_ms)
            say(f"timing round {k + 1}/{rounds} done")
    finally:
        for backend in backends.values():
            backend.close()
    return ratios


def bench_model(spec: str, args, work: Path) -> dict:
    """One model: its prune for every target, then the matrix and the conclusion, printed."""
    from edgeprune.tasks.models import load_model  # noqa: PLC0415

    say(f"{spec}: the unpruned model, trained {args.train_epochs:g} epoch once and cached (minutes the first time)")
    trained_weights(spec, args.train_epochs, args.seed)
    picks = {t: prune_for(spec, t, args, work / spec.replace(":", "-") / t) for t in args.targets}
    unpruned, _ = load_model(model_spec(spec), num_classes=10, weights=str(trained_weights(spec, args.train_epochs, args.seed)))
    models = {"unpruned": unpruned.eval()} | {t: p["model"] for t, p in picks.items()}
    say(f"{spec}: timing {len(picks)} picks on {len(args.runtimes)} runtimes, {args.rounds} rounds")
    rounds = cross_time(models, list(args.runtimes), args.rounds)
    ratios = {pick: {r: cell_ratio(values) for r, values in row.items()} for pick, row in rounds.items()}
    accuracy = {t: p["accuracy"] for t, p in picks.items()}
    widths = {t: p["widths"] for t, p in picks.items()}
    targets = list(args.targets)
    print(f"\n## {spec}, pruned for --speedup {args.speedup:g} on each target: latency x unpruned on each runtime\n")
    print("\n".join(matrix_lines(targets, list(args.runtimes), ratios, accuracy, picks[targets[0]]["baseline_accuracy"])))
    print("\nEach prune's own final measurement, pick / unpruned on its target: " + ", ".join(
        f"{t} {p['own_ratio']:.3f} (budget {'met' if p['budget_met'] else 'MISSED'})" for t, p in picks.items()))
    print("\nConclusion:\n" + "\n".join(conclusion_lines(targets, ratios, accuracy, widths)) + "\n", flush=True)
    return {"rounds": rounds, "accuracy": accuracy, "widths": widths, "own": {t: [p["own_ratio"], p["budget_met"]] for t, p in picks.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)}; a bare name is torchvision's)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, at least 2 (default {','.join(TARGETS)})")
    ap.add_argument("--runtimes", help="the runtimes every pick is timed on, comma-separated, the targets among them (default: the targets)")
    ap.add_argument("--speedup", type=float, default=2.0, help="every prune's --speedup (default 2: 0.5x the latency)")
    ap.add_argument("--population", type=int, default=6, help="the search's population (default 6; the demo's is 8)")
    ap.add_argument("--generations", type=int, default=2, help="the search's generations (default 2)")
    ap.add_argument("--finetune-epochs", "--fine-tune-epochs", dest="finetune_epochs", type=float, default=0.1, help="each pick's KD fine-tune (default 0.1; the demo's is 0.5)")
    ap.add_argument("--refine-top", type=int, default=1, help="short tunes (0.05 epoch) that re-rank the shortlist (default 1; the demo's is 2)")
    ap.add_argument("--train-epochs", type=float, default=0.5, help="training of the unpruned models, once, cached (default 0.5: mobilenet_v2 is the demo's model)")
    ap.add_argument("--rounds", type=int, default=3, help="paired timings of every pick on every runtime (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="keep each prune's output here and reuse finished ones (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the measurements to this JSON file")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="without the prunes' own progress lines (the edgeprune logger, every 10 s)")
    ap.add_argument("--smoke", action="store_true", help="the code path at tiny sizes (smoke:tiny_resnet, x86-cpu and x86-openvino, one generation, one round), not a result")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models, args.targets, args.runtimes = "smoke:tiny_resnet", "x86-cpu,x86-openvino", None
        args.population, args.generations, args.finetune_epochs, args.train_epochs, args.rounds, args.progress = 4, 1, 0.02, 0.05, 1, False
    args.targets = tuple(args.targets.split(","))
    args.runtimes = tuple(args.runtimes.split(",")) if args.runtimes else args.targets
    if len(args.targets) < 2:
        ap.error("--targets needs at least two targets to compare")
    if set(args.targets) - set(args.runtimes):
        ap.error("--runtimes must include every target: each pick is judged on its own runtime")
    if args.progress:
        import logging  # noqa: PLC0415

        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        results = {spec: bench_model(spec, args, work) for spec in args.models.split(",")}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    say("all done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
