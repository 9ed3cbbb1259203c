"""``bench_evaluation.py --against REV``: one search evaluation of the demo's model, this tree's
code against commit REV's, each through its own CLI, taking turns in one run (issue 32).

A VM's speed drifts 10-40 % over minutes, so the two codes alternate (REV, here, REV, here, ...)
and ratios come from neighbouring runs. REV is installed from ``git archive`` into a throwaway
venv that sees the system's packages (torch and the rest) but not the editable install of this
tree: a ``sitecustomize`` in the venv drops setuptools' editable finder, which would otherwise
answer every ``edgeprune.X`` that REV lacks with this tree's module. Nothing outside /tmp changes.

Each run is ``python THIS_FILE STATS -- prune ...`` in that code's Python, in a folder of its own
(so that neither it nor its measurement worker imports the ``edgeprune/`` of the working
directory): the CLI runs as a user runs it, with cProfile enabled only inside
``PruningProblem.evaluate_batch`` (the outermost call), so that the phases are those of the
evaluations. Per evaluation is the issue's measure: the report's search wall (search and
selection) over its evaluations. The search settings are each commit's demo's (holdout, patience,
short-tune shortlist), except the sizes (population, generations), no short tune, no widening and
no final fine-tune, the same for both.

This file runs under either commit's Python: stdlib only at the top.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where each commit keeps the class whose evaluate_batch is profiled, newest first.
PROBLEM_MODULES = ("edgeprune.problem.pruning", "edgeprune.problem")
_SITECUSTOMIZE = """import sys
# this venv's edgeprune is another commit's: no fallback to the editable install's modules
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable___edgeprune")]
"""
# The demo's search settings as each commit defines them (edgeprune/jobs/demo.py, or before the
# package split, edgeprune/demo.py's DEMO_SEARCH dict), and where edgeprune was imported from.
_DEMO_PROBE = """import json, edgeprune
try:
    from edgeprune.jobs.demo import DEMO_HOLDOUT as holdout, DEMO_RECIPE, DEMO_SEARCH
    demo = dict(holdout=holdout, patience=DEMO_SEARCH.patience, refine_top=DEMO_RECIPE.refine_top)
except ModuleNotFoundError:
    from edgeprune.demo import DEMO_SEARCH
    demo = {k: DEMO_SEARCH[k] for k in ("holdout", "patience", "refine_top")}
print(json.dumps(demo | {"file": edgeprune.__file__}))
"""
# (label, [(file suffix, function)]): cumulative seconds inside evaluate_batch, either commit's
# layout; None as function: every function of that file, outermost frames only.
PHASES = (
    ("latency: worker requests (incl. re-takes)", [("profiling/isolated.py", "_request")]),
    ("  of which per-node profile (screen)", [("profiling/isolated.py", "node_times")]),
    ("ONNX export (TorchScript)", [("exporters/onnx_bytes.py", "export_onnx_bytes")]),
    ("shrink (deepcopy + Torch-Pruning)", [("space/channels.py", "shrink"), ("edgeprune/space.py", "shrink")]),
    ("BN recalibration", [("problem/pruning.py", "recalibrate_bn"), ("edgeprune/problem.py", "recalibrate_bn")]),
    ("accuracy scoring (held-out)", [("tasks/task.py", "score"), ("edgeprune/task.py", "score")]),
    ("screen: predict + learn (excl. node times)", [("problem/screening.py", None), ("edgeprune/screening.py", None)]),
    ("MACs + params count", [("space/channels.py", "macs_and_params"), ("edgeprune/space.py", "macs_and_params")]),
    ("journal (checkpoint)", [("jobs/checkpoint.py", "record"), ("edgeprune/checkpoint.py", "record")]),
)
EVALUATE = [("problem/pruning.py", "evaluate_batch"), ("edgeprune/problem.py", "evaluate_batch")]


def install(rev: str, folder: Path) -> Path:
    """Commit ``rev`` installed into a venv under ``folder``; its Python, checked to import
    that commit's edgeprune."""
    src, venv = folder / "src", folder / "venv"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "sitecustomize.py").write_text(_SITECUSTOMIZE, encoding="utf-8")
    env = {"PIP_FIND_LINKS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(src)], cwd=folder, env=_env(env), check=True)
    return python


def demo_settings(python: Path, cwd: Path) -> dict:
    """The demo's holdout, patience and shortlist in the code ``python`` imports."""
    out = subprocess.run([str(python), "-c", _DEMO_PROBE], cwd=cwd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def prune_argv(demo: dict, weights: str, population: int, generations: int, out: Path) -> list[str]:
    """The demo's prune through the CLI, in flags both commits accept."""
    return [
        "prune", "torchvision:mobilenet_v2", "--weights", weights, "--num-classes", "10",
        "--data", "fashion-mnist", "--input-shape", "3x32x32", "--target", "x86-cpu", "--speedup", "2", "--seed", "0",
        "--holdout", str(demo["holdout"]), "--patience", str(demo["patience"]), "--refine-top", str(demo["refine_top"]),
        "--population", str(population), "--generations", str(generations),
        "--refine-epochs", "0", "--widen-passes", "0", "--finetune-epochs", "0", "--no-cache", "--no-progress", "--out", str(out),
    ]


def run_once(python: Path, argv: list[str], folder: Path) -> dict:
    """One prune under ``python`` in ``folder``: the report's search numbers, the profile of its
    evaluations, and the process's wall time."""
    folder.mkdir(parents=True)
    stats = folder / "evaluations.prof"
    t = time.perf_counter()
    run = subprocess.run([str(python), __file__, str(stats), "--", *argv], cwd=folder, capture_output=True, text=True, env=_env({}))
    wall = time.perf_counter() - t
    (folder / "log.txt").write_text(run.stdout + run.stderr, encoding="utf-8")
    if run.returncode != 0:
        raise SystemExit(f"{python} prune exited {run.returncode}; its log: {folder / 'log.txt'}\n{run.stderr[-2000:]}")
    search = json.loads((Path(argv[argv.index("--out") + 1]) / "report.json").read_text(encoding="utf-8"))["search"]
    return {"search": search, "stats": stats, "process_s": wall}


def _env(extra: dict) -> dict:
    """This environment less PYTHONPATH (it could put another edgeprune first), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | extra


def breakdown(run: dict) -> dict:
    """Seconds of each phase inside the run's evaluations, and the evaluations' total."""
    import pstats

    stats = pstats.Stats(str(run["stats"]))
    out = {"evaluate": cumulative(stats, EVALUATE)[0]}
    for label, where in PHASES:
        seconds, calls = cumulative(stats, where)
        if label.startswith("screen"):
            seconds -= cumulative(stats, [("profiling/profiler.py", "node_times")])[0]
        out[label] = (seconds, calls)
    return out


def cumulative(stats, where: list) -> tuple[float, int]:
    """Seconds and calls of the outermost frames of each (file suffix, function) in ``where``
    (every function of the file when the function is None)."""
    seconds, calls = 0.0, 0
    for suffix, name in where:
        for (file, _line, func), (_cc, nc, _tt, ct, callers) in stats.stats.items():
            if not file.endswith(suffix) or (name is not None and func != name):
                continue
            if name is None and any(c[0].endswith(suffix) for c in callers):
                continue  # nested in the same file: counted by its caller
            seconds, calls = seconds + ct, calls + nc
    return seconds, calls


def compare(rev: str, new: str | None, pairs: int, population: int, generations: int, here_first: bool = False) -> None:
    """``pairs`` runs of each code, alternating, and the tables. ``new``: a commit to install
    likewise (so that other people's uncommitted edits in the tree are not measured), or None for
    this tree as installed (editable)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-evaluation-against-"))
    from edgeprune.jobs.demo import demo_weights

    weights = str(demo_weights(0, progress=False))
    codes = {rev: install(rev, folder / "old"), "here": install(new, folder / "new") if new else Path(sys.executable)}
    order = ["here", rev] if here_first else [rev, "here"]
    demos = {name: demo_settings(python, folder) for name, python in codes.items()}
    for name, demo in demos.items():
        print(f"[{name}] edgeprune from {demo['file']}; demo settings: holdout {demo['holdout']}, patience {demo['patience']}, shortlist {demo['refine_top']}")
    for name in codes if new else [rev]:
        assert not demos[name]["file"].startswith(str(ROOT)), f"{name}'s venv imports this tree's edgeprune"
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    for i in range(pairs):
        for name in order:
            python = codes[name]
            where = folder / f"run-{i}-{name}"
            argv = prune_argv(demos[name], weights, population, generations, where / "out")
            print(f"pair {i + 1}/{pairs}: {name} ...", flush=True)
            run = run_once(python, argv, where)
            run["phases"] = breakdown(run)
            runs[name].append(run)
    here = f"{new} ({_commit(new)})" if new else "the working tree"
    print(f"\n`python tools/bench_evaluation.py --against {rev}{f' --new {new}' if new else ''} --pairs {pairs} --population {population} --generations {generations}`: "
          f"{rev} ({_commit(rev)}) against {here}, as 'here' (runs in {folder})")
    print_runs(rev, runs)
    print_phases(rev, runs)


def _commit(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True, check=True).stdout.strip()


def _per_eval(run: dict) -> float:
    return run["search"]["wall_s"] / run["search"]["evaluations"]


def print_runs(rev: str, runs: dict) -> None:
    """Each run's search numbers, and each pair's ratio (here / REV, per evaluation)."""
    print(f"\n| pair | code | search wall s | evaluations | s per evaluation | in evaluate_batch s/eval | measurements | screened out | here / {rev} |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for i, (old, new) in enumerate(zip(runs[rev], runs["here"]), 1):
        ratio = _per_eval(new) / _per_eval(old)
        ratios.append(ratio)
        for name, run in ((rev, old), ("here", new)):
            s = run["search"]
            print(f"| {i} | {name} | {s['wall_s']:.1f} | {s['evaluations']} | {_per_eval(run):.2f} | {run['phases']['evaluate'] / s['evaluations']:.2f} | "
                  f"{s['latency_measurements']} | {s.get('surrogate_skips', 0)} | {f'{ratio:.2f}' if name == 'here' else ''} |")
    print(f"\nmedian ratio here / {rev}, s per evaluation: {statistics.median(ratios):.2f} (pairs: {', '.join(f'{r:.2f}' for r in ratios)})")


def print_phases(rev: str, runs: dict) -> None:
    """Seconds per evaluation of each phase, all runs of a code together (sum over sum)."""
    def row(name: str, key: str | None) -> tuple[float, float]:
        evals = sum(r["search"]["evaluations"] for r in runs[name])
        if key is None:  # the search wall outside evaluate_batch: NSGA-II, seeds' bisection, selection's confirmations
            seconds = sum(r["search"]["wall_s"] - r["phases"]["evaluate"] for r in runs[name])
            return seconds / evals, 0
        if key == "other":
            seconds = sum(r["phases"]["evaluate"] - sum(r["phases"][label][0] for label, _ in PHASES if not label.startswith("  ")) for r in runs[name])
            return seconds / evals, 0
        return sum(r["phases"][key][0] for r in runs[name]) / evals, sum(r["phases"][key][1] for r in runs[name]) / evals

    print(f"\n| phase (s per evaluation; calls per evaluation) | {rev} | here | here / {rev} |")
    print("|---|---|---|---|")
    for label in [*(label for label, _ in PHASES), "other (inside evaluate_batch)", "search wall less evaluate_batch (selection, NSGA-II; the baseline step's evaluations are in evaluate_batch, not in the search wall)"]:
        key = None if label.startswith("search wall") else "other" if label.startswith("other") else label
        (old, old_calls), (new, new_calls) = row(rev, key), row("here", key)
        calls = f"; {old_calls:.2f} / {new_calls:.2f} calls" if key not in (None, "other") else ""
        print(f"| {label.strip()}{calls} | {old:.3f} | {new:.3f} | {new / old if old else float('nan'):.2f} |")
    for name in (rev, "here"):
        evals = sum(r["search"]["evaluations"] for r in runs[name])
        print(f"[{name}] {sum(r['search']['latency_measurements'] for r in runs[name]) / evals:.2f} latency measurements per evaluation (report.json, search and selection)")


def _profiled_cli(stats_path: str, argv: list[str]) -> int:
    """The CLI with cProfile on inside the outermost ``PruningProblem.evaluate_batch``."""
    import cProfile
    import importlib

    for name in PROBLEM_MODULES:
        try:
            problem_class = importlib.import_module(name).PruningProblem
            break
        except (ModuleNotFoundError, AttributeError):
            continue
    profile, depth, original = cProfile.Profile(), [0], problem_class.evaluate_batch

    def evaluate_batch(self, *args, **kwargs):
        if depth[0]:
            return original(self, *args, **kwargs)
        depth[0] += 1
        try:
            return profile.runcall(original, self, *args, **kwargs)
        finally:
            depth[0] -= 1

    problem_class.evaluate_batch = evaluate_batch
    from edgeprune.cli import main

    try:
        return main(argv)
    finally:
        profile.dump_stats(stats_path)


if __name__ == "__main__":
    sys.exit(_profiled_cli(sys.argv[1], sys.argv[3:]))
