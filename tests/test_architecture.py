"""The layout holds: the import rules of pyproject.toml's [tool.importlinter] (the loop's order
as a `layers` contract), the imports of ``edgeprune.exporters`` that the linter cannot see, a
small ground floor, and units short enough to read."""

import ast
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgeprune"
EXPORTERS = ROOT / "exporters"

# The stages from the top of the loop down (pyproject's layers contract), and where the exporters
# stand in it: onnx/onnx_bytes turn a torch module into ONNX bytes, a tool of the stages that time
# or ship a network (tasks and up); the rest of exporters/ packages a finished run, the jobs' tool.
STAGES = ["cli", "commands", "jobs", "report", "select", "problem", "search", "space", "tasks", "profiling"]
LOW_EXPORTERS = {"onnx", "onnx_bytes"}
LOWEST_STAGE_FOR = {"low": "tasks", "high": "jobs"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def exporter_import_violations(package: Path = PACKAGE) -> list[str]:
    """Each import of ``edgeprune.exporters.X`` from a stage below the one X may serve."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        first = path.relative_to(package).parts[0]
        stage = first if first in STAGES else None
        for name in _imports(path):
            if not name.startswith("edgeprune.exporters."):
                continue
            module = name.split(".")[2]
            lowest = LOWEST_STAGE_FOR["low" if module in LOW_EXPORTERS else "high"]
            if stage is None or STAGES.index(stage) > STAGES.index(lowest):
                bad.append(f"{path.relative_to(package.parent)} imports {name} (allowed from {lowest} and up)")
    return bad


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports")
    assert lint, "lint-imports is missing: install the dev extra (bash tools/setup.sh)"
    run = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout
    assert "the loop's order" in run.stdout  # the layers contract is among them


def test_the_exporters_are_imported_only_from_the_stages_they_serve():
    assert exporter_import_violations() == []


def test_the_exporter_check_catches_a_low_stage_importing_the_packager(tmp_path):
    fake = tmp_path / "edgeprune"
    (fake / "space").mkdir(parents=True)
    (fake / "space" / "channels.py").write_text("from edgeprune.exporters.package import finalize\n")
    (fake / "jobs").mkdir()
    (fake / "jobs" / "prune.py").write_text("from edgeprune.exporters.package import finalize\n")
    assert exporter_import_violations(fake) == [
        "edgeprune/space/channels.py imports edgeprune.exporters.package (allowed from jobs and up)",
        "edgeprune/space/channels.py imports edgeprune.exporters.package.finalize (allowed from jobs and up)",
    ]


def test_the_ground_floor_holds_at_most_eight_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


def test_no_function_over_60_lines_and_no_class_over_250():
    long = []
    for root in (PACKAGE, EXPORTERS):
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                limit = 60 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else 250 if isinstance(node, ast.ClassDef) else None
                if limit and node.end_lineno - node.lineno + 1 > limit:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
