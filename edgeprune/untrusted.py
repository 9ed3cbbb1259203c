"""The one validator of files someone else may have written (plan.json, report.json, a checkpoint,
a cache export, a target profile, an agent's reply): a bounded JSON read whose every failure is one
UserError, the checks of single values, and schema rules that name the field that is wrong.

A rule is ``check(value, name)`` and raises :class:`Malformed` with the field's name and what it
must be; the reader of each kind of file adds the file and the fix to make the one-line error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeprune.errors import UserError

# Far above any report, plan or checkpoint edgeprune writes; a larger file is not one of them.
MAX_JSON_BYTES = 64 << 20
# Whole numbers beyond this are no count, size or index we write (and float() of a longer one overflows).
INT_LIMIT = 2**63

Rule = Callable[[Any, str], None]


def loads(raw: bytes, constants: bool = True) -> Any:
    """The JSON document in ``raw``, or :class:`Malformed` saying what is wrong with it.

    ``json.loads`` fails in four ways on bytes someone else wrote: not UTF-8, bad syntax, an
    integer of more than 4300 digits (ValueError) and nesting deep enough to exhaust the stack
    (RecursionError); each is bad input here, never a bug. ``constants=False`` also refuses
    NaN and Infinity, which Python accepts and JSON does not.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("not UTF-8 text") from None
    try:
        return json.loads(text, **({} if constants else {"parse_constant": _refuse_constant}))
    except json.JSONDecodeError as exc:
        raise Malformed(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise Malformed("not valid JSON to edgeprune (nested too deeply)") from None
    except ValueError as exc:
        if str(exc).endswith("is not a JSON number"):
            raise Malformed(f"not valid JSON ({exc})") from None
        raise Malformed("not valid JSON to edgeprune (a number too long to be one it wrote)") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: Path, fix: str) -> Any:
    """The parsed file; ``fix`` ends the one-line error (``"pass the plan.json edgeprune wrote"``).

    ``json.loads`` raises ValueError for a number of thousands of digits as well as for bad
    syntax, and RecursionError for deep nesting: both are bad input here, not bugs.
    """
    # At most the cap and one byte are read: a file of gigabytes is refused without being read whole.
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or type(exc).__name__}); {fix}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise UserError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MiB, far above any file edgeprune writes; {fix}")
    try:
        return loads(raw)
    except Malformed as exc:
        raise UserError(f"{path} is {exc}; {fix}") from None


# --- single values ---------------------------------------------------------------------------


def show(value: Any) -> str:
    """A value for a one-line message: short JSON (a 5000-character string must not flood the
    terminal, a newline in it must not break the line); a list or object by its size."""
    if isinstance(value, (dict, list)):
        n = len(value)
        kind = "an object of {} key{}" if isinstance(value, dict) else "a list of {} item{}"
        return kind.format(n, "" if n == 1 else "s")
    try:
        text = json.dumps(value)
    except ValueError:  # an integer of thousands of digits
        return "a number with thousands of digits"
    except TypeError:  # not a JSON value: a YAML date, a set ...
        text = repr(value) if not isinstance(value, (set, frozenset, tuple)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def clip(text: Any, limit: int = 60) -> str:
    """Text from a file for a one-line message, as it is when printable and short; else repr()'d
    (escaping control characters) and cut."""
    text = str(text) if isinstance(text, str) and text.isprintable() else repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def label(key: str) -> str:
    """A key of the file as part of a field name: as it is when it is a plain name, else quoted
    (a key holding a newline must not break the one-line message)."""
    return key if key.isprintable() and len(key) <= 60 else show(key)


def is_int(value: Any) -> bool:
    """A whole JSON number of a size edgeprune writes (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and -INT_LIMIT < value < INT_LIMIT


def is_number(value: Any) -> bool:
    """A finite JSON number: Python's json reads NaN, Infinity and 1e999 without complaint."""
    return is_int(value) or (isinstance(value, float) and math.isfinite(value))


def number_in(value: Any, low: float, high: float) -> bool:
    """``low <= value <= high`` for a real JSON number of any size. Never converts: a 4000-digit
    integer compares exactly with a float, but float() of it would overflow."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return low <= value <= high


# --- schema rules: each is ``check(value, name)`` and raises Malformed naming the field ------------


class Malformed(Exception):
    """One record's problem; the reader adds the file, the line and the fix."""


def _subject(name: str) -> str:
    """``name`` to start a message with; the record itself ("") goes unnamed: "has no 'x'"."""
    return f"{name} " if name else ""


def rule(test: Callable[[Any], bool], what: str) -> Rule:
    """A value that passes ``test``; ``what`` says what it must be ("a number from 0 to 1")."""

    def check(value, name):
        if not test(value):
            raise Malformed(f"{_subject(name)}must be {what}, got {show(value)}")

    return check


def nullable(inner: Rule) -> Rule:
    return lambda value, name: None if value is None else inner(value, name)


def items(inner: Rule) -> Rule:
    """A JSON list whose every item follows ``inner``."""

    def check(value, name):
        if not isinstance(value, list):
            raise Malformed(f"{_subject(name)}must be a list, got {show(value)}")
        for i, item in enumerate(value):
            inner(item, f"{name}[{i}]")

    return check


def values(inner: Rule) -> Rule:
    """A JSON object whose every value follows ``inner`` (keys are names: any string)."""

    def check(value, name):
        if not isinstance(value, dict):
            raise Malformed(f"{_subject(name)}must be a JSON object, got {show(value)}")
        for key, item in value.items():
            inner(item, f"{name}.{label(key)}")

    return check


def json_object(required: dict[str, Rule], optional: dict[str, Rule] | None = None) -> Rule:
    """A JSON object with these keys (others are allowed: a newer writer may add some)."""
    optional = optional or {}

    def check(value, name):
        if not isinstance(value, dict):
            raise Malformed(f"{_subject(name)}must be a JSON object, got {show(value)}")
        for key, inner in [*required.items(), *optional.items()]:
            field = f"{name}.{key}" if name else key
            if key in value:
                inner(value[key], field)
            elif key in required:
                raise Malformed(f"{_subject(name)}has no {key!r}")

    return check


NONNEG_INT = rule(lambda v: is_int(v) and v >= 0, "a whole number >= 0")
POSITIVE_INT = rule(lambda v: is_int(v) and v >= 1, "a whole number >= 1")
NONNEG = rule(lambda v: is_number(v) and v >= 0, "a finite number >= 0")
POSITIVE = rule(lambda v: is_number(v) and v > 0, "a finite number > 0")
FRACTION = rule(lambda v: is_number(v) and 0 <= v <= 1, "a number from 0 to 1")
BOOL = rule(lambda v: isinstance(v, bool), "true or false")
ANY_OBJECT = rule(lambda v: isinstance(v, dict), "a JSON object")
