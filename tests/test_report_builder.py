"""report.json is assembled in one module, edgeprune/report/builder.py: the stages hand it records,
it builds the dict and checks it against the schema; nothing else adds to or validates a report.

The check is an AST walk over edgeprune/ and exporters/: outside the builder no code assigns into a
report (``report[...] = ``, ``report[...] |= ``, ``report.update(...)``, ``report |= ...``, or any
subscript assignment whose key is one of report.json's own sections), no dict display carries
several of report.json's required sections, and no code calls ``check_report``.
"""

import ast
from pathlib import Path

import pytest

from edgeprune.report.builder import ExportRecord, exported
from edgeprune.report.schema import report_schema

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgeprune"
EXPORTERS = ROOT / "exporters"
BUILDER = PACKAGE / "report" / "builder.py"
SCHEMA = PACKAGE / "report" / "schema.py"

# report.json's sections that no other dict of edgeprune has a key of that name: an assignment
# under one of these keys is a report being built, whatever the variable is called. (Keys such
# as "target", "model", "data" or "sparsity" name parts of run.json, a fingerprint or the export
# section too.)
SECTIONS = {
    "edgeprune_version", "budget_met", "budget_kind", "budget_policy", "drift", "anchor_check", "baseline", "pruned",
    "pareto", "search", "rounds", "finetune", "parity", "phases", "artifacts", "per_layer", "robustness", "export",
}
MUTATORS = {"update", "setdefault", "pop", "popitem", "clear", "__setitem__"}
# Required keys only a whole report has (the export section and manifest share target, profile,
# fingerprint; ensemble's rules of what it reads name search, artifacts, pareto, pruned): a dict
# display with three of them is a report.json under construction.
REPORT_ONLY = {"edgeprune_version", "budget_met", "baseline", "pruned", "pareto", "rounds"}
KEYS_OF_A_REPORT = 3


def _root_and_keys(node: ast.expr) -> tuple[str | None, set[str]]:
    """The variable under a chain of subscripts/attributes (``report`` of ``report["a"]["b"]``)
    and the string keys along it."""
    keys = set()
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            keys.add(node.slice.value)
        node = node.value
    return (node.id if isinstance(node, ast.Name) else None), keys


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return node.targets
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target]
    if isinstance(node, ast.Delete):
        return node.targets
    return []


def _problems(node: ast.AST) -> list[str]:
    found = []
    for target in _targets(node):
        root, keys = _root_and_keys(target)
        if isinstance(target, ast.Subscript) and (root == "report" or keys & SECTIONS):
            found.append(f"assigns into a report ({ast.unparse(target)})")
        elif isinstance(target, ast.Name) and target.id == "report" and isinstance(node, ast.AugAssign):
            found.append("updates a report in place (report |= ...)")
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name == "check_report":
            found.append("validates a report (check_report)")
        elif isinstance(func, ast.Attribute) and name in MUTATORS and _root_and_keys(func.value)[0] == "report":
            found.append(f"mutates a report ({ast.unparse(func)})")
    if isinstance(node, ast.Dict):
        keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        if len(keys & REPORT_ONLY) >= KEYS_OF_A_REPORT:
            found.append(f"builds a report's dict ({', '.join(sorted(keys & REPORT_ONLY))})")
    return found


def report_assembly_violations(roots=(PACKAGE, EXPORTERS), allowed=(BUILDER, SCHEMA)) -> list[str]:
    """``path:line what`` for each place outside the builder that builds, changes or validates a report."""
    bad = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if path in allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                bad += [f"{path.relative_to(root.parent)}:{node.lineno} {what}" for what in _problems(node)]
    return bad


def test_report_json_is_assembled_only_by_the_builder():
    assert REPORT_ONLY <= set(report_schema()["required"]) and SECTIONS <= set(report_schema()["properties"]) | {"export", "finetune", "parity", "phases"}
    assert report_assembly_violations() == []


@pytest.mark.parametrize("line", [
    'report["export"] = section',
    'report["artifacts"] |= {"onnx": "model.onnx"}',
    'report["baseline"]["robust_accuracy"] = 0.5',
    'result["robustness"] = {}',
    "report.update(extra)",
    "report |= extra",
    "check_report(report)",
    'r = {"target": t, "budget_ms": b, "baseline": {}, "pruned": {}, "pareto": []}',
])
def test_the_check_catches_a_report_built_elsewhere(tmp_path, line):
    folder = tmp_path / "edgeprune" / "jobs"
    folder.mkdir(parents=True)
    (folder / "prune.py").write_text(f"def f(report, result, section, extra, t, b):\n    {line}\n")
    assert len(report_assembly_violations((tmp_path / "edgeprune",), allowed=())) == 1


def test_a_re_export_replaces_the_export_and_keeps_the_run_and_an_engine_it_had():
    """``exported`` on a release-0.1.0 report: the run's sections untouched, the new export's
    section, parity and files in, an engine built earlier still named, the result checked."""
    import json

    report = json.loads((ROOT / "tests" / "fixtures" / "release-0.1.0" / "out" / "report.json").read_text())
    report["artifacts"]["engine"] = "model.engine"  # as an earlier `export --engine` left it
    files = {"onnx": "model.onnx", "int8": None, "engine": None, "manifest": "manifest.json", "model_card": "MODEL_CARD.md"}
    new = exported(report, ExportRecord(report["export"] | {"opset": 18}, {"max_abs_diff": 0.0}, files))
    assert new["export"]["opset"] == 18 and new["parity"] == {"max_abs_diff": 0.0}
    assert new["artifacts"]["engine"] == "model.engine" and new["artifacts"]["int8"] is None
    assert {k: v for k, v in new.items() if k not in ("export", "parity", "artifacts")} == {
        k: v for k, v in report.items() if k not in ("export", "parity", "artifacts")
    }
    assert list(new) == list(report)  # key order kept: the file diffs only where the export changed
