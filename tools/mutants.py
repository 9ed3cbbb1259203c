"""Mutation testing of the verdict code: which one-token changes to it do the tests let through?

edgeprune's product is one sentence, "this file meets your budget on your target" (exit 0) or not
(exit 1). This runner breaks the code that decides that sentence one small change at a time (a
``<=`` made ``<``, a ``0.03`` made ``1.03``, a ``@property`` removed, ...), runs the tests that are
meant to cover it, and lists every change that no test noticed (a *survivor*). It is not part of CI
(a full run takes tens of minutes); ``--smoke`` is, through tests/test_mutants.py.

    python tools/mutants.py --list                 # the targets, their code and their tests
    nice -n 19 python tools/mutants.py             # every target
    nice -n 19 python tools/mutants.py --target gate --target prune-verdict
    python tools/mutants.py --smoke                # a handful of mutants of BudgetPolicy, seconds

Why cosmic-ray (8.x) and not mutmut (3.x). mutmut 3 is faster per mutant (it forks a warm process
and switches mutants through a trampoline in every function), but on this code it cannot see what
matters: (1) it mutates only undecorated functions, so ``Confirmation.passed``,
``GateResult.latency_passed`` and ``SessionNoise.spread`` (properties), BudgetPolicy's margins
(dataclass fields) and ``REMEASURES``/``PERCENTILES`` (module constants) are never mutated; (2) the
trampoline picks the mutant from an environment variable inside the test process and maps tests
to functions by recording calls there, so the exit code of ``edgeprune prune``/``ensemble``, which
the tests reach through ``python -m edgeprune`` in a subprocess, counts as covered by no test and
is skipped. cosmic-ray writes the mutant into the file on disk, so every process sees it, and
mutates any expression. Its price is one fresh pytest process per mutant (a second or two to
import torch), which the small per-target test selections below keep affordable; and its work
items carry line numbers, so mutants outside a target's functions/lines are dropped before any
test runs (mutating whole modules is far too slow on 2 cores).

How a run works: the checkout is copied to a scratch folder (the source tree is never touched, so
it is safe while others edit it), with ``edgeprune.exporters``/``edgeprune.profiles`` linked in
place, and a throw-away virtual environment (``--system-site-packages``, no pip) puts that copy
first on ``sys.path`` of every process, the CLI subprocesses the tests start included (they run
``sys.executable``). For each target the selected tests run once unmutated (they must pass; their
time sets the per-mutant timeout), then once per mutant with ``pytest -x``: a failure kills it,
a timeout is counted apart, a pass is a survivor. To keep the count meaningful on 2 cores, binary
operators are only swapped among ``+ - * /`` and comparisons not turned into ``is``/``in``
(those mostly raise at once, or duplicate another mutant).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Span:
    """Code to mutate in ``file``: the whole of each named function/class (``Class.method``
    allowed, ``NAME`` for a module-level assignment too), or within ``where`` only the statements
    whose first line contains one of ``lines`` (text to look for, so a span survives edits)."""

    file: str
    names: tuple[str, ...] = ()
    where: str | None = None
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    spans: tuple[Span, ...]
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions
    limit: int | None = None  # the first N mutants only (in file/line order)


TARGETS = [
    Target(
        "budget", "BudgetPolicy: the margins, the limits every stage works to, and met(), the verdict",
        (Span("edgeprune/select/budget.py", ("BudgetPolicy",)),),
        ("tests/test_budget.py",),
    ),
    Target(
        "confirm", "selection's confirmation: session spread, fresh-session median against its limit",
        (Span("edgeprune/select/selection.py", ("MIN_SESSION_SPREAD", "CONFIRM_SESSIONS", "SessionNoise", "Confirmation", "confirm", "confirmed")),),
        ("tests/test_search.py", "-k", "confirm"),
    ),
    Target(
        "gate", "the gate's judging: tolerance band, re-measures, median, pass/fail",
        (Span("edgeprune/jobs/gate.py", ("_judge", "REMEASURES")),
         Span("edgeprune/commands/gate.py", where="run", lines=("return 0 if all(",)),
         Span("edgeprune/jobs/gate.py", ("Budget.latency_met", "Budget.robust_met", "GateResult.latency_passed", "GateResult.robust_passed"))),
        ("tests/test_gate.py", "-k", "not bad_"),  # not the budgets-file parser's error tests
    ),
    Target(
        "percentile", "percentile_ms: the percentile the gate judges",
        (Span("edgeprune/profiling/keys.py", ("PERCENTILES", "percentile_ms")),),
        ("tests/test_gate.py", "tests/test_profiling.py", "-k", "percentile or gate and not bad_"),
    ),
    Target(
        "profiler", "the Profiler's pairing: anchor, re-check, fresh sessions, candidate/reference x anchor, drift",
        (Span("edgeprune/profiling/profiler.py", (
            "Profiler.set_reference", "Profiler._checked_anchor", "Profiler._rows_valid_since",
            "Profiler.latency", "Profiler.sessions", "Profiler._remember", "Profiler._measure", "Profiler._absolute")),
         Span("edgeprune/profiling/reference.py", ("Reference.recheck", "Reference.scale", "Reference.drift"))),
        ("tests/test_reference.py", "tests/test_profiling.py"),
    ),
    Target(
        "stats", "latency statistics: summarize, ratio, scaled",
        (Span("edgeprune/profiling/stats.py", ("LatencyStats.scaled", "ratio", "summarize")),),
        ("tests/test_profiling.py", "tests/test_reference.py"),
    ),
    Target(
        "prune-verdict", "prune's verdict: budget from --speedup, the final latency, budget_met, the exit code",
        (Span("edgeprune/jobs/prune.py", where="_run_facts", lines=("budget_met=",)),
         Span("edgeprune/jobs/prune.py", where="_parts", lines=("final_latency = ",)),
         Span("edgeprune/report/builder.py", where="_run_section", lines=('"budget_met":',)),
         Span("edgeprune/commands/prune.py", where="run", lines=('return 0 if report["budget_met"]',)),
         Span("edgeprune/jobs/prune.py", where="_baseline", lines=("budget_ms = cfg.budget_ms if",))),
        # the end-to-end prunes, and whatever later tests judge the verdict (by name)
        ("tests/test_cli.py", "tests/test_resume.py", "tests/test_release_fixture.py",
         "-k", "end_to_end or budget or speedup or reach or independent or kill_9 or verdict or demo"),
    ),
    Target(
        "ensemble-verdict", "ensemble's verdict: its latency in the run's units, budget_met, the exit code",
        (Span("edgeprune/jobs/ensemble.py", where="_result", lines=('"budget_met":', '"latency_ms": ensemble_ms')),
         Span("edgeprune/commands/ensemble.py", where="run", lines=("return 0 if",)),
         Span("edgeprune/jobs/ensemble.py", where="_timed", lines=("return ",))),
        ("tests/test_robustness.py", "-k", "ensemble"),
    ),
]
# --smoke: the first three mutants of BudgetPolicy.search_limit and two fast tests of it.
SMOKE = Target(
    "smoke", "BudgetPolicy.search_limit and confirmation_limit, first 3 mutants",
    (Span("edgeprune/select/budget.py", ("BudgetPolicy.search_limit", "BudgetPolicy.confirmation_limit")),),
    ("tests/test_budget.py", "-k", "limits or margin"), limit=3,
)

# Binary operators are swapped only among these, comparisons never into identity/membership tests.
ARITHMETIC = ("Add", "Sub", "Mul", "Div")
SKIP_COMPARISONS = ("Is", "IsNot", "In", "NotIn")


def _keep_operator(name: str) -> bool:
    kind, _, rest = name.partition("/")[2].partition("_")
    if kind == "ReplaceBinaryOperator":
        src, dst = rest.split("_")
        return src in ARITHMETIC and dst in ARITHMETIC
    if kind == "ReplaceComparisonOperator":
        src, dst = rest.split("_")
        return dst not in SKIP_COMPARISONS or src in ("Is", "IsNot")
    return True


# --- which lines ---------------------------------------------------------------------------------


def _find(tree: ast.Module, qualname: str) -> ast.AST:
    scope: list[ast.stmt] = tree.body
    node = None
    for part in qualname.split("."):
        node = next((n for n in scope if _named(n, part)), None)
        if node is None:
            raise SystemExit(f"mutants.py: {qualname} not found")
        scope = getattr(node, "body", [])
    return node


def _named(node: ast.AST, name: str) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    return False


def span_lines(root: Path, span: Span) -> set[int]:
    """Line numbers (1-based) of ``span`` in the file under ``root``."""
    source = (root / span.file).read_text()
    tree = ast.parse(source)
    lines: set[int] = set()
    for name in span.names:
        node = _find(tree, name)
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        lines |= set(range(first, node.end_lineno + 1))
    if span.where:
        text = source.splitlines()
        found = set()
        for node in ast.walk(_find(tree, span.where)):
            if not isinstance(node, (ast.stmt, ast.expr)) or not hasattr(node, "lineno"):
                continue
            for wanted in span.lines:
                if wanted in text[node.lineno - 1]:
                    found.add(wanted)
                    # the smallest node starting on that line: a dict entry, not the whole dict
                    end = node.end_lineno if isinstance(node, ast.stmt) or node.end_lineno == node.lineno else node.lineno
                    lines |= set(range(node.lineno, end + 1))
        missing = set(span.lines) - found
        if missing:
            raise SystemExit(f"mutants.py: {span.file}:{span.where} has no line containing {sorted(missing)}")
    return lines


# --- the scratch copy ----------------------------------------------------------------------------


def make_scratch(root: Path, work: Path) -> tuple[Path, str]:
    """A copy of ``root``'s tree (no .git, caches or build output) and a virtual environment whose
    python imports edgeprune from it; returns (copy, that python)."""
    copy = work / "tree"
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache", "mutants", "build", "dist", ".venv")
    shutil.copytree(root, copy, ignore=ignore, symlinks=True)
    for sub in ("exporters", "profiles"):  # pyproject's package-dir: edgeprune.exporters is exporters/
        if (copy / sub).is_dir() and not (copy / "edgeprune" / sub).exists():
            (copy / "edgeprune" / sub).symlink_to(copy / sub, target_is_directory=True)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "edgeprune_mutants.pth").write_text(f"{copy}\n")
    where = subprocess.run([python, "-c", "import edgeprune.profiling.keys as k, edgeprune.exporters as e; print(k.__file__); print(e.__file__)"],
                           cwd=copy / "tests", check=True, capture_output=True, text=True).stdout.split()
    if not all(Path(w).resolve().is_relative_to(copy.resolve()) for w in where):
        raise SystemExit(f"mutants.py: the scratch python imports edgeprune from {where}, not from {copy}")
    return copy, python


# --- running -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    target: str
    what: str = ""
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    timeout: int = 0
    error: int = 0
    seconds: float = 0.0
    note: str = ""
    survivors: list[str] = field(default_factory=list)


def _tests_present(copy: Path, tests: tuple[str, ...]) -> list[str]:
    """The target's pytest arguments less the test files this checkout does not have."""
    args: list[str] = []
    skip_value = False
    for a in tests:
        if skip_value:
            args.append(a)
            skip_value = False
        elif a.startswith("-"):
            args.append(a)
            skip_value = a in ("-k", "-m")
        elif (copy / a.split("::")[0]).exists():
            args.append(a)
    return args


def _diff_lines(diff: str) -> str:
    minus = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    plus = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return f"{' / '.join(minus)}  ->  {' / '.join(plus)}"


def mutants_for(target: Target, root: Path) -> list:
    """cosmic-ray's work items (one mutant each) on the target's lines, the first span's first
    (so the deciding lines run first when time is short); paths relative to ``root``."""
    from cosmic_ray.commands import init
    from cosmic_ray.work_db import WorkDB, use_db

    items = []  # (span index, item): mutants in the order the target lists its spans
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with tempfile.TemporaryDirectory() as tmp, use_db(str(Path(tmp) / "session.sqlite"), WorkDB.Mode.create) as db:
            for file in sorted({s.file for s in target.spans}):
                spans = [(i, span_lines(root, s)) for i, s in enumerate(target.spans) if s.file == file]
                init([Path(file)], db, {})  # clears the db first
                for item in db.work_items:
                    m = item.mutations[0]
                    first = next((i for i, lines in spans if m.start_pos[0] in lines), None)
                    if first is not None and _keep_operator(m.operator_name):
                        items.append((first, item))
    finally:
        os.chdir(cwd)
    items.sort(key=lambda t: (t[0], str(t[1].mutations[0].module_path), t[1].mutations[0].start_pos, t[1].mutations[0].operator_name))
    items = [item for _, item in items]
    return items[: target.limit] if target.limit is not None else items


def run_target(target: Target, copy: Path, python: str, log, deadline: float = float("inf")) -> Outcome:
    from cosmic_ray.mutating import mutate_and_test
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    out = Outcome(target.name, target.what)
    t0 = time.perf_counter()
    tests = _tests_present(copy, target.tests)
    if not any(not a.startswith("-") for a in tests):
        out.note = "no test file of this target exists here"
        return out
    if time.time() > deadline:
        out.note = "not run: --minutes were spent on the targets before it"
        return out
    command = " ".join([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *[_quote(a) for a in tests]])
    env_before = dict(os.environ)
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    cwd = os.getcwd()
    os.chdir(copy)
    try:
        started = time.perf_counter()
        clean = subprocess.run(command, shell=True, capture_output=True, text=True)
        clean_s = time.perf_counter() - started
        if clean.returncode != 0:
            out.note = "the selected tests fail unmutated: " + (clean.stdout + clean.stderr).strip().splitlines()[-1][:200]
            return out
        timeout = max(3 * clean_s, clean_s + 60)
        log(f"[{target.name}] tests pass unmutated in {clean_s:.0f} s; per-mutant timeout {timeout:.0f} s")
        items = mutants_for(target, copy)
        for n, item in enumerate(items, 1):
            if time.time() > deadline:
                out.note = f"stopped at --minutes after {n - 1} of {len(items)} mutants; the rest were not run"
                break
            m = item.mutations[0]
            result = mutate_and_test(item.mutations, command, timeout)
            where = f"{m.module_path}:{m.start_pos[0]}"
            if result.worker_outcome == WorkerOutcome.NO_TEST:
                continue
            out.mutants += 1
            if result.worker_outcome != WorkerOutcome.NORMAL or result.test_outcome == TestOutcome.INCOMPETENT:
                out.error += 1
                status = "error"
            elif result.test_outcome == TestOutcome.SURVIVED:
                out.survived += 1
                out.survivors.append(f"{where}  {_diff_lines(result.diff or '')}  [{m.operator_name.removeprefix('core/')}]")
                status = "SURVIVED"
            elif result.output == "timeout":
                out.timeout += 1
                status = "timeout"
            else:
                out.killed += 1
                status = "killed"
            log(f"[{target.name}] {n}/{len(items)} {where} {m.operator_name.removeprefix('core/')}: {status}")
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env_before)
        out.seconds = time.perf_counter() - t0
    return out


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def print_table(outcomes: list[Outcome], stream=sys.stdout) -> None:
    rows = [("target", "mutants", "killed", "survived", "timeout", "error", "seconds")]
    for o in outcomes:
        rows.append((o.target, str(o.mutants), str(o.killed), str(o.survived), str(o.timeout), str(o.error), f"{o.seconds:.0f}"))
    total = [sum(getattr(o, k) for o in outcomes) for k in ("mutants", "killed", "survived", "timeout", "error")]
    rows.append(("TOTAL", *map(str, total), f"{sum(o.seconds for o in outcomes):.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))), file=stream)
        if i == 0 or i == len(rows) - 2:
            print("  ".join("-" * w for w in widths), file=stream)
    for o in outcomes:
        if o.note:
            print(f"\n{o.target}: {o.note}", file=stream)
    for o in outcomes:
        if o.survivors:
            print(f"\nsurvivors in {o.target} ({o.what}):", file=stream)
            for s in o.survivors:
                print(f"  {s}", file=stream)


def list_targets(root: Path) -> None:
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        cosmic_ray = None
    for t in TARGETS:
        count = f" ({len(mutants_for(t, root))} mutants)" if cosmic_ray else ""
        print(f"{t.name}{count}: {t.what}")
        for s in t.spans:
            lines = sorted(span_lines(root, s))
            what = ", ".join(s.names) if s.names else f"{s.where}: lines containing {', '.join(map(repr, s.lines))}"
            print(f"    {s.file} [{what}] lines {_ranges(lines)}")
        print(f"    tests: {' '.join(t.tests)}")


def _ranges(lines: list[int]) -> str:
    parts, start = [], None
    for i, n in enumerate(lines):
        if start is None:
            start = n
        if i + 1 == len(lines) or lines[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", choices=[t.name for t in TARGETS], help="run this target (repeatable; default: all)")
    ap.add_argument("--smoke", action="store_true", help="a handful of mutants of BudgetPolicy, to check the runner works (seconds)")
    ap.add_argument("--list", action="store_true", help="print the targets, the lines each mutates and its tests")
    ap.add_argument("--root", default=str(ROOT), help="the checkout to test (default: the one this file is in)")
    ap.add_argument("--save", metavar="FILE", help="append each target's outcome to FILE (JSON lines) as soon as it is done")
    ap.add_argument("--show", metavar="FILE", help="print the table of the outcomes saved in FILE and exit")
    ap.add_argument("--minutes", type=float, help="start no mutant after this many minutes (the table says what was left)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (printed) for inspection")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    if args.show:
        lines = Path(args.show).read_text().splitlines()
        print_table([Outcome(**json.loads(line)) for line in lines if line.strip()])
        return 0
    if args.list:
        list_targets(root)
        return 0
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        print("mutants.py needs cosmic-ray: pip install -e '.[dev]' (or pip install 'cosmic-ray>=8.7,<9')", file=sys.stderr)
        return 2
    by_name = {t.name: t for t in TARGETS}
    targets = [SMOKE] if args.smoke else [by_name[n] for n in dict.fromkeys(args.target)] if args.target else TARGETS

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the scratch folder is removed
    start = time.time()
    work = Path(tempfile.mkdtemp(prefix="edgeprune-mutants-"))
    try:
        copy, python = make_scratch(root, work)
        log(f"scratch copy of {root} in {copy}")
        outcomes = []
        for t in targets:
            deadline = start + 60 * args.minutes if args.minutes else float("inf")
            outcomes.append(run_target(t, copy, python, log, deadline))
            if args.save:
                with open(args.save, "a") as f:
                    f.write(json.dumps(dataclasses.asdict(outcomes[-1])) + "\n")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
