"""Every benchmark script runs: its ``--smoke`` mode (its own code path at tiny sizes) exits 0 and
prints its table, a header and a row whose numbers parse. The scripts are found by glob, so a new
``tools/bench_*.py`` without ``--smoke`` (argparse: exit 2) or without an entry here fails.

Nothing here judges a number: smoke runs time millisecond windows and train nothing to convergence.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*(ROOT / "tools").glob("bench_*.py"), ROOT / "tools" / "zoo_sweep.py"])

NUM = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
# Smoke runs that prune end to end (several prunes, training, a detector): a minute or more on a
# shared 2-core machine, so out of the quick loop (`-m "not slow"`); CI runs them.
SLOW = {"bench_depth", "bench_detection", "bench_economy", "bench_robust", "bench_seeds", "bench_targets", "bench_vs_uniform"}

# script: [(words the table's header line holds, a regex of one of its rows: every group a number)]
TABLES = {
    "bench_ab": [(["round", "process", "A median ms", "B median ms", "B/A"], r"│\s+median\s+│\s+│\s+(NUM)\s+│\s+(NUM)\s+│\s+(NUM)\s+│")],
    "bench_depth": [(["search", "test accuracy", "latency / unpruned", "budget", "dropped blocks"],
                     r"│ (?:channels only|--depth)\s+│ (NUM)% \(unpruned (NUM)%\)\s+│ (NUM)\s+│ (?:met|NOT met)\s+│")],
    "bench_detection": [(["method", "latency ms", "x unpruned", "meets", "test mAP50", "GMACs"],
                         r"^edgeprune\s+(NUM)\s+(NUM)\s+(?:True|False)\s+(NUM)%\s+(NUM)%\s+(NUM)\s")],
    "bench_economy": [(["| arm | device measurements | host s |", "test accuracy", "met"],
                       r"^\| economy \| (NUM) \| (NUM) \| (NUM) \| (NUM)% \| (NUM) / (NUM) \| (?:yes|NO) \| (NUM) \| (NUM) \|$")],
    "bench_evaluation": [(["variant", "s/eval", "ratio", "requests", "rho acc"], r"^proposed\s+(NUM)\s+(NUM)\s+(NUM)\s")],
    "bench_farm": [(["| agents | candidates | search wall (s) | candidates / hour | speed-up vs 1 |"], r"^\| 2 \| (NUM) \| (NUM) \| (NUM) \| (NUM)x \|"),
                   (["| agents | modelled, scoring here | modelled, Ray scoring |"], r"^\| 100 \| (NUM) \| (NUM) \| - \|"),
                   (["| strategy | agents | candidates | measured |", "hypervolume at"],
                    r"^\| steady-state \| 2 \| (NUM) \| (NUM) \| (NUM) \| (NUM) \| (NUM)x \| (NUM) \| (NUM) \|$")],
    "bench_gmacs": [(["model", "MMACs", "MACs x unpruned", "median ms", "latency x unpruned"],
                     r"│ Torch-Pruning 0\.1, unrounded\s+│ (NUM)\s+│ (NUM)\s+│ (NUM)\s+│ (NUM)\s+│"),
                    (["model", "base ms", "budget ms", "evaluated", "kept", "min", "median", "max"],
                     r"│ smoke:tiny_resnet\s+│ (NUM)\s+│ (NUM)\s+│ (NUM)\s+│ (NUM)\s+│")],
    "bench_int8": [(["model", "input", "FP32 ms", "ort-qdq", "ort-qoperator", "unfused Q/DQ nodes"],
                    r"│ smoke:tiny_cnn\s+│ 16x16\s+│ (NUM)\s+│ (NUM)\s+│ (NUM)\s+│")],
    "bench_profiler": [(["metric", "value", "target"], r"│ CV of 2 ratios A/B\s+│ (NUM) %")],
    "bench_robust": [(["model", "x unpruned", "meets", "test acc", "robust acc", "MMACs"],
                      r"^\(c\) accuracy\+robustness search, --adv-finetune\s+(NUM)\s+(?:yes|no)\s+(NUM)%\s+(NUM)%\s+(NUM)$")],
    "bench_seeds": [(["| model | neurons of the head's hidden layer | test accuracy |"],
                     r"^\| --mode head --speedup 1\.6, fine-tuned \| (NUM) \((NUM)% fewer\) \| (NUM)% \| (NUM) \| (?:yes|no) \|$"),
                    (["| model | features the head reads | test accuracy |"],
                     r"^\| --mode features --speedup 1\.3, fine-tuned \| (NUM) \((NUM)% fewer\) \| (NUM)% \| (NUM) \| (?:yes|no) \|$"),
                    (["| model | conv widths | test accuracy |"], r"^\| edgeprune --speedup 1\.67, fine-tuned \| (NUM)/(NUM)/(NUM) \| (NUM)% \| (NUM) \|"),
                    (["| model | test accuracy | weight groups with the 2:4 pattern (ONNX file) |"],
                     r"^\| 2:4, fine-tuned 0\.05 epoch with the masks fixed \| (NUM)% \| (NUM)% \((NUM)/(NUM)\) \| (NUM) / (NUM) \| (NUM)% \|$")],
    "bench_targets": [(["| pick (pruned for) |", "on x86-cpu", "on x86-openvino", "test accuracy"],
                       r"^\| x86-cpu \| \*\*(NUM) ±(NUM)%\*\* \| (NUM) ±(NUM)% \| (NUM)% \|$")],
    "bench_vs_uniform": [(["model", "budget", "method", "latency ms", "meets", "test acc", "MMACs", "search s"],
                          r"^smoke:tiny_resnet\s+0\.7x = (NUM) ms\s+edgeprune\s+(NUM)\s+(?:True|False)\s+(NUM)%\s+(NUM)\s+(NUM)\s")],
    "zoo_sweep": [(["model", "input", "groups", "skip", "width", "rel err", "top1 (n)", "GMACs before"],
                   r"^resnet18\s+32x32\s+(NUM)\s+(NUM)\s+(NUM)\s+(NUM)\s+same \((NUM)\)\s+(NUM)\s+(NUM)\s+(NUM)\s+ok$")],
}


def table_row(output: str, header: list[str], row: str) -> list[float]:
    """The numbers of the first line after ``header``'s line that matches ``row``."""
    lines = output.splitlines()
    at = next((i for i, line in enumerate(lines) if all(word in line for word in header)), None)
    assert at is not None, f"no header line holding {header}"
    pattern = re.compile(row.replace("NUM", NUM))
    for line in lines[at + 1:]:
        if match := pattern.search(line):
            numbers = [float(g) for g in match.groups()]
            assert numbers and all(math.isfinite(n) for n in numbers), line
            return numbers
    raise AssertionError(f"no row matching {row!r} after the header {header}")


def test_every_bench_script_is_found():
    assert {p.stem for p in SCRIPTS} >= {"bench_ab", "bench_gmacs", "bench_profiler", "zoo_sweep"}


@pytest.mark.parametrize("script", [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else []) for p in SCRIPTS])
def test_smoke_run_prints_its_table(script: Path):
    run = subprocess.run(
        [sys.executable, str(script), "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False,
    )
    tail = f"\n--- stdout ---\n{run.stdout[-3000:]}\n--- stderr ---\n{run.stderr[-3000:]}"
    assert run.returncode == 0, f"{script.name} --smoke exited {run.returncode}{tail}"
    assert script.stem in TABLES, f"{script.name} is not in TABLES: add its table's header and a row pattern"
    for header, row in TABLES[script.stem]:
        try:
            table_row(run.stdout, header, row)
        except AssertionError as exc:
            raise AssertionError(f"{script.name} --smoke: {exc}{tail}") from None
