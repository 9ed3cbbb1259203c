"""report.json's contract: the JSON Schema shipped next to this module, checked on every write.

CI jobs and users parse report.json, so its keys are an interface. The schema file
(``report.schema.json``, package data) says which keys and types a report has; a report that
does not match is a bug in edgeprune, caught where it is written rather than in someone's CI.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any


@functools.cache
def report_schema() -> dict[str, Any]:
    return json.loads(importlib.resources.files("edgeprune.report").joinpath("report.schema.json").read_text(encoding="utf-8"))


def report_problems(report: dict[str, Any]) -> list[str]:
    """Every way ``report`` departs from the schema, as ``path: message`` lines (empty: valid)."""
    import jsonschema  # noqa: PLC0415 - only the writers need it

    validator = jsonschema.Draft202012Validator(report_schema())
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message[:200]}"
        for error in sorted(validator.iter_errors(report), key=lambda e: list(map(str, e.absolute_path)))
    ]


def check_report(report: dict[str, Any]) -> None:
    """Raise when ``report`` does not match the schema (an edgeprune bug, not bad input)."""
    problems = report_problems(report)
    if problems:
        raise RuntimeError("report.json would not match edgeprune/report/report.schema.json: " + "; ".join(problems[:5]))
