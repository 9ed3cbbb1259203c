"""Settings are parsed once, at the faces: the ``parse_*`` helpers of the settings live in
edgeprune/api/ and edgeprune/commands/, and only the faces (the command line: edgeprune/commands/,
edgeprune/cli.py; Python: edgeprune/api/) call them; the job's config holds parsed values only."""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACE = (ROOT / "edgeprune" / "commands", ROOT / "edgeprune" / "api", ROOT / "edgeprune" / "cli.py")
# The text settings of a prune: objectives, input shape, 2:4 sparsity, Ray workers.
SETTINGS_PARSERS = {"parse_objectives", "parse_shape", "parse_sparsity", "parse_workers"}


def _modules():
    for folder in (ROOT / "edgeprune", ROOT / "exporters"):
        yield from sorted(folder.rglob("*.py"))


def _in_face(path: Path) -> bool:
    return any(path == f or f in path.parents for f in FACE)


def _face_parsers() -> set[str]:
    names = set()
    for path in [p for folder in FACE[:2] for p in folder.rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("parse_")}
    return names


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def test_the_settings_parsers_are_defined_at_the_face():
    assert SETTINGS_PARSERS <= _face_parsers()


def test_no_module_outside_the_face_calls_a_settings_parser():
    """A module outside the faces neither imports from edgeprune.commands or edgeprune.api nor calls one of their
    ``parse_*`` helpers (a module's own private parser of a wire format, defined in it, is its own)."""
    parsers = _face_parsers()
    offences = []
    for path in _modules():
        if _in_face(path):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("edgeprune.commands", "edgeprune.api")):
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno} imports from {node.module}")
            elif isinstance(node, ast.Call) and _called(node) in parsers and _called(node) not in own:
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {_called(node)}")
    assert not offences, "settings are parsed at the face only:\n" + "\n".join(offences)


def test_the_prune_config_holds_parsed_values_only():
    """No field of the config or its groups is a string a step parses again: the strings left
    are names and paths (a model spec, a target, a data set, a folder, a task, a mode)."""
    from edgeprune.jobs.settings import GROUPS, PruneConfig

    names_and_paths = {
        "model", "target", "weights", "name", "data", "detection_metric", "yolo_head", "strategy", "encoding", "mode",
        "ray_address", "agents", "out", "cache",
    }
    strings = []
    for cls in (PruneConfig, *GROUPS.values()):
        assert cls.__dataclass_params__.frozen, cls
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if hint is str or (isinstance(hint, types.UnionType) and str in typing.get_args(hint)):
                strings.append(f.name)
    assert set(strings) <= names_and_paths, set(strings) - names_and_paths


def test_a_config_survives_its_run_json_form():
    import json

    from edgeprune.api.settings import PruneOptions
    from edgeprune.jobs.settings import GROUPS, PruneConfig

    cfg = PruneOptions(model="m.pt", input_shape="3x32x32", objectives="accuracy,robustness", sparsity="2:4", workers="ray:auto", mean=(0.5,)).parse()
    stored = json.loads(json.dumps(cfg.to_dict()))
    top = {k: v for k, v in stored.items() if k not in GROUPS}
    assert PruneConfig.from_dict(top, {name: stored[name] for name in GROUPS}) == cfg


def test_the_text_form_and_the_typed_groups_share_their_defaults():
    """The command line's defaults (PruneOptions) and the groups' own (used where a job builds
    its config directly, as the demo does) are the same values: a default changed on one side
    only would make the demo and the CLI prune differently."""
    from edgeprune.api.settings import PruneOptions
    from edgeprune.jobs.settings import GROUPS

    parsed = PruneOptions(model="m.pt").parse()
    differ = []
    for name, group in GROUPS.items():
        for f in dataclasses.fields(group):
            if f.default is not dataclasses.MISSING and getattr(getattr(parsed, name), f.name) != f.default:
                differ.append(f"{name}.{f.name}: {getattr(getattr(parsed, name), f.name)!r} != {f.default!r}")
    assert differ == []
