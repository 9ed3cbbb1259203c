"""Target profiles: one YAML file per device, loaded into frozen dataclasses.

A profile is the whole description of *how* a target is measured (runtime, threads, protocol), so
it is validated strictly: a typo in a key would otherwise silently fall back to a default and the
numbers in the report would belong to a different setup than the one the user asked for.
"""

import dataclasses
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgeprune.errors import UserError

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}
# Numbers must be >= 0; below these minimums the measurement loop or the search is meaningless.
_MINIMUM = {"min_runs": 1, "opset": 1, "batch": 1, "channel_step": 1}
_CHOICES = {
    "execution_mode": ("sequential", "parallel"),
    "graph_optimization": ("disable", "basic", "extended", "all"),
}


@dataclass(frozen=True)
class MeasureSpec:
    """How long to measure: enough runs for a stable median, bounded so a search stays fast."""

    warmup_runs: int
    min_runs: int
    max_runs: int
    max_seconds: float
    cv_threshold: float
    repeats_if_noisy: int


@dataclass(frozen=True)
class Profile:
    """Everything that decides what a latency number means on one target."""

    name: str
    description: str
    backend: str
    provider: str
    precision: str
    intra_op_threads: int
    inter_op_threads: int
    execution_mode: str
    graph_optimization: str
    opset: int
    batch: int
    channel_step: int
    measure: MeasureSpec
    source: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Profile":
        """Inverse of :meth:`to_dict`: how a profile (with any in-memory overrides) reaches a
        measurement process exactly as the parent holds it."""
        return cls(**{**data, "measure": MeasureSpec(**data["measure"])})


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped target by name (``x86-cpu``) or a user's profile by path (``my.yaml``)."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(
                f"profile file {path} not found; pass the path of a target .yaml file "
                "or a shipped target name (run `edgeprune targets`)"
            )
        return _parse(path.read_text(encoding="utf-8"), str(path))
    shipped = _shipped_files()
    if name_or_path not in shipped:
        raise UserError(
            f"unknown target '{name_or_path}'; choose one of: {', '.join(sorted(shipped))} "
            "(run `edgeprune targets`)"
        )
    resource = shipped[name_or_path]
    return _parse(resource.read_text(encoding="utf-8"), str(resource))


def list_profiles() -> list[Profile]:
    """All shipped targets, sorted by name (what `edgeprune targets` prints)."""
    return sorted((load_profile(name) for name in _shipped_files()), key=lambda p: p.name)


def _shipped_files() -> dict[str, Any]:
    root = importlib.resources.files("edgeprune.profiles")
    return {f.name[: -len(".yaml")]: f for f in root.iterdir() if f.name.endswith(".yaml")}


def _parse(text: str, source: str) -> Profile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"profile {source} is not valid YAML{where} ({getattr(e, 'problem', None) or e}); "
            "fix the file (compare with the shipped profiles/x86-cpu.yaml)"
        ) from None
    profile = _build(Profile, data, "", source, {"source": source})
    if profile.measure.max_runs < profile.measure.min_runs:
        raise UserError(
            f"profile {source}: measure.max_runs ({profile.measure.max_runs}) is below "
            f"measure.min_runs ({profile.measure.min_runs}); raise max_runs or lower min_runs"
        )
    return profile


def _build(cls: type, data: Any, prefix: str, source: str, given: dict[str, Any]) -> Any:
    """Build ``cls`` from a YAML mapping, naming the exact key that is unknown, missing or wrong."""
    where = f"'{prefix[:-1]}'" if prefix else "the top level"
    if not isinstance(data, dict):
        raise UserError(
            f"profile {source}: {where} must be a mapping of keys to values; "
            "fix the file (compare with the shipped profiles/x86-cpu.yaml)"
        )
    expected = [f for f in dataclasses.fields(cls) if f.name not in given]
    names = [f.name for f in expected]
    for key in data:
        if key not in names:
            raise UserError(
                f"unknown key '{prefix}{key}' in profile {source}; remove it or fix the spelling "
                f"(valid keys in {where}: {', '.join(names)})"
            )
    values = dict(given)
    for f in expected:
        if f.name not in data:
            raise UserError(
                f"profile {source} lacks the key '{prefix}{f.name}'; add it "
                "(compare with the shipped profiles/x86-cpu.yaml)"
            )
        values[f.name] = _value(f.name, f.type, data[f.name], prefix, source)
    return cls(**values)


def _value(name: str, kind: type, value: Any, prefix: str, source: str) -> Any:
    key = prefix + name
    if kind is MeasureSpec:
        return _build(MeasureSpec, value, f"{key}.", source, {})
    # bool is an int subclass in Python; `threads: yes` is a typo, not the number 1.
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if not ok or isinstance(value, bool):
        raise UserError(
            f"profile {source}: '{key}' must be {_TYPE_NAMES[kind]}, got {value!r}; fix the value"
        )
    if kind in (int, float) and value < _MINIMUM.get(name, 0):
        raise UserError(
            f"profile {source}: '{key}' is {value}, below its minimum {_MINIMUM.get(name, 0)}; "
            "fix the value"
        )
    if name in _CHOICES and value not in _CHOICES[name]:
        raise UserError(
            f"profile {source}: '{key}' is {value!r}; choose one of: {', '.join(_CHOICES[name])}"
        )
    return float(value) if kind is float else value
