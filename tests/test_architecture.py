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
# stand in it: onnx/onnx_bytes/measured turn a torch module into ONNX (or a runtime's own) bytes, a
# tool of the stages that time or ship a network (tasks and up); the rest of exporters/ packages a finished run, the jobs' tool.
STAGES = ["cli", "commands", "api", "jobs", "report", "select", "problem", "search", "space", "tasks", "profiling"]
LOW_EXPORTERS = {"onnx", "onnx_bytes", "measured"}
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


def renames_outside_the_writer(roots=(PACKAGE, EXPORTERS)) -> list[str]:
    """Each rename outside edgeprune/files.py: ``os.replace``/``os.rename``/``os.renames`` (called
    or imported), any ``.rename(...)``, and ``.replace(x)`` with one argument and no keywords
    (``Path.replace``; ``str.replace`` takes two, ``dataclasses.replace`` keywords)."""
    bad = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if path == PACKAGE / "files.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.ImportFrom) and node.module == "os":
                    bad += [f"{where} imports os.{a.name}" for a in node.names if a.name in ("replace", "rename", "renames")]
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                name, owner = node.func.attr, node.func.value
                if isinstance(owner, ast.Name) and owner.id == "os" and name in ("replace", "rename", "renames"):
                    bad.append(f"{where} os.{name}")
                elif name == "rename" or (name == "replace" and len(node.args) == 1 and not node.keywords):
                    bad.append(f"{where} .{name}(...)")
    return bad


def test_files_are_renamed_into_place_only_by_the_atomic_writer():
    """One atomic writer (edgeprune/files.py): every file or folder edgeprune renames into place
    goes through it, so none is written without its temp name, fsync and output marker."""
    assert renames_outside_the_writer() == []
