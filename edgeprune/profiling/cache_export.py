"""The file ``edgeprune cache export`` writes and ``cache import`` reads: its format, and the
checks that make an import safe. The file may come from another machine or a CI artifact, and
``gate`` believes the cache before measuring, so :func:`read_export` and :func:`validate_export`
bound its size, its JSON and every field, and require device details that hash to each fingerprint.
"""

import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edgeprune.errors import UserError
from edgeprune.profiling.cache_db import ROW_KEYS, SCHEMA_VERSION
from edgeprune.profiling.fingerprint import fingerprint_hash
from edgeprune.untrusted import Malformed, clip, is_int, loads, number_in, show

EXPORT_FORMAT = "edgeprune-latency-cache"
EXPORT_VERSION = 1

# Bounds on an imported file. Real values sit far inside them; anything outside is a broken or
# hostile file, and the bounds keep every number representable and every message short.
MAX_IMPORT_BYTES = 256 * 2**20
MAX_IMPORT_ROWS = 1_000_000
MAX_IMPORT_FINGERPRINTS = 10_000
MAX_TEXT = 256
MAX_DETAIL_KEYS = 64
MAX_DETAIL_INT = 10**15
MAX_DIMS, MAX_DIM = 8, 65536
MAX_N = 10**9
MAX_MS = 1e7
MAX_CV = 10.0
EARLIEST_CREATED = 1577836800.0  # 2020-01-01 UTC: no edgeprune cache row is older
# Clocks of the machines that share a file may disagree by this much. A row dated further ahead
# would outlive every re-check of the baseline (rows older than a replaced baseline are retired,
# a row from "tomorrow" never is) and, as the baseline itself, hide every row written after it.
FUTURE_SLACK_S = 300.0
_HASH_RE = re.compile(r"[0-9a-f]{16}")  # what fingerprint_hash() returns
# Real architecture keys: 24 hex digits (ChannelSpace.arch_key), "onnx-" + 24 (graph_key), or
# short names in tests; printable ASCII without spaces keeps a terminal safe from escapes.
_ARCH_RE = re.compile(r"[!-~]{1,%d}" % MAX_TEXT)
_DETAIL_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def read_export(path: Path) -> Any:
    """The JSON document in ``path``, or a one-line UserError: the file is untrusted, so size,
    encoding, nesting, oversized integers and NaN/Infinity (which Python's json accepts but JSON
    does not, and which no latency can be) are refused here, before any of it is looked at."""
    fix = "pass a file written by `edgeprune cache export`"
    try:
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise UserError(f"cache import {path}: larger than {MAX_IMPORT_BYTES >> 20} MiB; export fewer rows at once (--fingerprint HASH)")
        with path.open("rb") as f:
            data = f.read(MAX_IMPORT_BYTES + 1)  # bounded even if the file grows meanwhile
    except OSError as e:
        raise UserError(f"cache import: cannot read {path} ({e.strerror or e}); {fix}") from None
    if len(data) > MAX_IMPORT_BYTES:
        raise UserError(f"cache import {path}: larger than {MAX_IMPORT_BYTES >> 20} MiB; export fewer rows at once (--fingerprint HASH)")
    try:
        return loads(data, constants=False)  # NaN or Infinity is no latency
    except Malformed as exc:
        raise UserError(f"cache import {path}: {exc}; {fix}") from None


def validate_export(document: Any, source: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Check an exported cache document completely; a UserError names the first problem.

    The file may come from another machine or a CI artifact, and ``gate`` trusts the cache
    before measuring, so nothing in it is trusted: every fingerprint must carry details that hash
    to it, and every field must be of a size and range a real measurement has.
    """

    def bad(where: str, problem: str, fix: str = "re-export it with `edgeprune cache export`") -> UserError:
        return UserError(f"cache import {source}: {where} {problem}; {fix}")

    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise bad("the file", f"is not an edgeprune cache export (no \"format\": \"{EXPORT_FORMAT}\")")
    for key, want in (("format_version", EXPORT_VERSION), ("schema_version", SCHEMA_VERSION)):
        if document.get(key) != want or isinstance(document.get(key), bool):
            raise bad("the file", f"has {key} {show(document.get(key))}, this edgeprune reads {want}")
    fingerprints, rows = document.get("fingerprints"), document.get("rows")
    if not isinstance(fingerprints, dict):
        raise bad("'fingerprints'", "must be an object of fingerprint hash -> details")
    if not isinstance(rows, list):
        raise bad("'rows'", "must be a list")
    for what, have, limit in (("fingerprints", len(fingerprints), MAX_IMPORT_FINGERPRINTS), ("rows", len(rows), MAX_IMPORT_ROWS)):
        if have > limit:
            raise bad("the file", f"has {have} {what}, at most {limit} are imported at once", "export fewer at once (--fingerprint HASH)")
    for fp, details in fingerprints.items():
        if details is None:
            raise bad(f"fingerprint {clip(fp)}", "has no device details (null), so its rows cannot be verified for any device",
                      "re-export it with this edgeprune's `edgeprune cache export`, which leaves such rows out")
        problem = _fingerprint_problem(fp, details)
        if problem is not None:
            raise bad(f"fingerprint {clip(fp)}", problem)
    now = time.time()
    for i, row in enumerate(rows, 1):
        problem = _row_problem(row, now)
        if problem is None and row["fingerprint"] not in fingerprints:
            problem = f"refers to fingerprint {row['fingerprint']} missing from 'fingerprints'"
        if problem is not None:
            raise bad(f"row {i}", problem)
    return fingerprints, rows


def _fingerprint_problem(fp: Any, details: Any) -> str | None:
    """Why ``details`` cannot be trusted as the fingerprint ``fp``, or None."""
    if not isinstance(fp, str) or not _HASH_RE.fullmatch(fp):
        return "is not a fingerprint hash (16 lowercase hex digits)"
    problem = details_problem(details)
    if problem is not None:
        return problem
    got = fingerprint_hash(details)
    return None if got == fp else f"does not match its details (they hash to {got})"


def details_problem(details: Any, depth: int = 0) -> str | None:
    """Why ``details`` is not shaped like a fingerprint, or None. A fingerprint is an object of
    at most 64 short keys whose values are plain (null, boolean, number, short printable string)
    or, one level deep only, such an object (the Jetson facts). The remote backend holds a
    device's facts to the same rule, so what an agent reports is what an export can carry."""
    if not isinstance(details, dict):
        return f"must be an object of plain values, got {show(details)}"
    if len(details) > MAX_DETAIL_KEYS:
        return f"has {len(details)} details, at most {MAX_DETAIL_KEYS} allowed"
    for key, value in details.items():
        if not isinstance(key, str) or not _DETAIL_KEY_RE.fullmatch(key):
            return f"has a detail named {show(key)} (1 to 64 letters, digits, '_', '.' or '-' expected)"
        if isinstance(value, dict) and depth == 0:
            problem = details_problem(value, depth + 1)
            if problem is not None:
                return f"detail '{key}' {problem}"
        elif not _is_plain(value):
            return (f"detail '{key}' must be null, a boolean, a number of at most {MAX_DETAIL_INT:.0e} or a printable "
                    f"string of at most {MAX_TEXT} characters, got {show(value)}")
    return None


def _is_plain(v: Any) -> bool:
    if v is None or isinstance(v, bool):
        return True
    if isinstance(v, str):
        return len(v) <= MAX_TEXT and v.isprintable()
    return number_in(v, -MAX_DETAIL_INT, MAX_DETAIL_INT)


def _row_problem(row: Any, now: float) -> str | None:
    """Why ``row`` is not a latency row a real measurement could have written, or None."""
    if not isinstance(row, dict) or set(row) != set(ROW_KEYS):
        if not isinstance(row, dict):
            return f"must be an object with the keys {', '.join(ROW_KEYS)}, got {show(row)}"
        missing, extra = [k for k in ROW_KEYS if k not in row], sorted(map(str, set(row) - set(ROW_KEYS)))
        return (f"must have exactly the keys {', '.join(ROW_KEYS)} (missing: {', '.join(missing) or 'none'}; "
                f"unexpected: {clip(', '.join(extra[:5])) or 'none'})")
    if not isinstance(row["fingerprint"], str) or not _HASH_RE.fullmatch(row["fingerprint"]):
        return f"'fingerprint' must be a fingerprint hash (16 lowercase hex digits), got {show(row['fingerprint'])}"
    if not isinstance(row["arch"], str) or not _ARCH_RE.fullmatch(row["arch"]):
        return f"'arch' must be 1 to {MAX_TEXT} printable ASCII characters without spaces, got {show(row['arch'])}"
    shape = row["input_shape"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= MAX_DIMS and all(is_int(d) and 1 <= d <= MAX_DIM for d in shape)):
        return f"'input_shape' must be a list of 1 to {MAX_DIMS} integers from 1 to {MAX_DIM}, got {show(shape)}"
    if not (is_int(row["n"]) and 1 <= row["n"] <= MAX_N):
        return f"'n' must be a positive integer of at most {MAX_N:.0e}, got {show(row['n'])}"
    for key in ("median", "p90", "p99", "mean"):
        if not number_in(row[key], 0, MAX_MS) or row[key] == 0:
            return f"'{key}' must be a finite positive number of at most {MAX_MS:.0e} ms, got {show(row[key])}"
    for key, top in (("std", MAX_MS), ("cv", MAX_CV)):
        if not number_in(row[key], 0, top):
            return f"'{key}' must be a finite number from 0 to {top:g}, got {show(row[key])}"
    if not row["median"] <= row["p90"] <= row["p99"]:
        return f"has median {row['median']} > p90 {row['p90']} or p90 > p99 {row['p99']}"
    if not number_in(row["created"], EARLIEST_CREATED, now + FUTURE_SLACK_S):
        return (f"'created' must be a Unix time from 2020-01-01 to now (+{FUTURE_SLACK_S / 60:g} minutes of clock skew), "
                f"got {show(row['created'])}")
    return None


def export_document(raw_rows: Iterable[tuple], known: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The document ``edgeprune cache export`` writes from the cache's ``raw_rows`` (its columns in
    ROW_KEYS' order) and the device details ``known`` by fingerprint, and one note per kind of row
    left out.

    Only what :func:`validate_export` accepts goes out. A row whose device details were never
    recorded (or would fail the import's checks) would make every import of the file refuse it
    whole, and a shared file nobody can import is worse than one with fewer rows; so such rows
    are skipped, and the notes say how many, why and how to get them exported.
    """
    now = time.time()
    fingerprints: dict[str, dict[str, Any]] = {}
    rows, skipped, refused, checked = [], {}, [], {}
    for fp, arch, shape, *rest in raw_rows:
        details = known.get(fp)
        if fp not in checked:  # once per fingerprint, not per row
            checked[fp] = "its device details are not recorded" if details is None else _fingerprint_problem(fp, details)
        problem = checked[fp]
        if problem is not None:
            skipped[fp] = (problem, skipped.get(fp, ("", 0))[1] + 1)
            continue
        row = dict(zip(ROW_KEYS, (fp, arch, parse_shape_key(shape), *rest)))
        problem = _row_problem(row, now)
        if problem is not None:
            refused.append(problem)
            continue
        fingerprints[fp] = details
        rows.append(row)
    notes = [
        f"skipped {n} row{'s' if n != 1 else ''} of fingerprint {clip(fp)}: {problem}, so an import could not "
        "verify them; measure on that device with this edgeprune to export them"
        for fp, (problem, n) in skipped.items()
    ]
    if refused:
        notes.append(f"skipped {len(refused)} row{'s' if len(refused) != 1 else ''} an import would refuse "
                     f"(first: {refused[0]}); clear them with `edgeprune cache clear` and measure again")
    document = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "fingerprints": fingerprints,
        "rows": rows,
    }
    return document, notes


def shape_key(input_shape: Sequence[int]) -> str:
    """How the cache stores an input shape: ``[1, 3, 8, 8]`` -> ``"1x3x8x8"``."""
    return "x".join(str(int(d)) for d in input_shape)


def parse_shape_key(text: Any) -> Any:
    """``"1x3x8x8"`` -> ``[1, 3, 8, 8]``; anything else is returned as it is (and then refused)."""
    parts = text.split("x") if isinstance(text, str) and len(text) <= 100 else None
    return [int(d) for d in parts] if parts and all(d.isdigit() and d.isascii() for d in parts) else text
