"""Persistent latency cache (SQLite), shared by every run and process on this host.

Measuring is the expensive part of the search, and the same widths recur across generations,
runs and users of one machine, so results are kept per (device fingerprint, architecture, input
shape). SQLite in WAL mode with a long busy timeout lets parallel searches share the file; values
are plain columns (never pickles), so a cache file from elsewhere cannot execute code.

The ``fingerprints`` table (hash -> the fingerprint's JSON) was added without a schema bump: it is
created on open when missing and older code ignores it, so it only makes ``edgeprune cache stats``
and exported files readable (which CPU and runtime a number belongs to).
"""

import json
import math
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from edgeprune.errors import UserError
from edgeprune.profiling.stats import LatencyStats

SCHEMA_VERSION = 1
# Parallel searches on one host wait this long for each other's writes before giving up.
_BUSY_TIMEOUT_S = 30.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS latency (
    fingerprint TEXT NOT NULL,
    arch TEXT NOT NULL,
    input_shape TEXT NOT NULL,
    n INTEGER NOT NULL,
    median REAL NOT NULL,
    p90 REAL NOT NULL,
    p99 REAL NOT NULL,
    mean REAL NOT NULL,
    std REAL NOT NULL,
    cv REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (fingerprint, arch, input_shape)
    )""",
    "CREATE TABLE IF NOT EXISTS fingerprints (hash TEXT PRIMARY KEY, fingerprint TEXT NOT NULL)",
    # ORT per-node profiles (JSON of NodeTimes) that trained the search's latency surrogate:
    # cached like latencies so two runs on one cache screen candidates identically.
    """CREATE TABLE IF NOT EXISTS node_times (
    fingerprint TEXT NOT NULL,
    arch TEXT NOT NULL,
    input_shape TEXT NOT NULL,
    profile TEXT NOT NULL,
    PRIMARY KEY (fingerprint, arch, input_shape)
    )""",
)
_STAT_COLUMNS = ("n", "median", "p90", "p99", "mean", "std", "cv")
ROW_KEYS = ("fingerprint", "arch", "input_shape", *_STAT_COLUMNS, "created")


@dataclass(frozen=True)
class FingerprintRows:
    """What ``edgeprune cache stats`` shows for one device fingerprint."""

    hash: str
    fingerprint: dict[str, Any] | None  # None: written by code that did not record it
    rows: int
    newest: float


def default_cache_path() -> Path:
    """``<user cache dir>/edgeprune/latency.sqlite``; ``EDGEPRUNE_CACHE_DIR`` moves the folder."""
    folder = os.environ.get("EDGEPRUNE_CACHE_DIR") or platformdirs.user_cache_dir("edgeprune")
    return Path(folder) / "latency.sqlite"


class LatencyCache:
    """Latency statistics keyed by fingerprint hash, architecture key and input shape."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(
                f"latency cache {self.path} is a directory; pass a file path such as "
                f"--cache {self.path / 'latency.sqlite'}"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit below, never opened behind our back.
            self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise UserError(
                f"cannot open latency cache {self.path} ({e}); pass a writable --cache path"
            ) from None
        try:
            version = self._open()
        except sqlite3.DatabaseError as e:
            self._db.close()
            if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                raise UserError(
                    f"latency cache {self.path} stayed locked by another process for "
                    f"{_BUSY_TIMEOUT_S:.0f} s; wait for it to finish or pass another --cache path"
                ) from None
            raise UserError(
                f"latency cache {self.path} is not an edgeprune SQLite cache ({e}); pass another "
                "--cache path or delete the file"
            ) from None
        if version != str(SCHEMA_VERSION):
            self._db.close()
            raise UserError(
                f"latency cache {self.path} has schema version {version}, this edgeprune needs "
                f"{SCHEMA_VERSION}; pass a new --cache path or delete the file"
            )

    def _open(self) -> str:
        """Set up the connection and the tables; return the file's schema version."""
        self._enable_wal()
        # IMMEDIATE takes the write lock first, so two processes creating a fresh cache at the
        # same moment do not both decide the file is new.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
            if tables and "meta" not in tables:
                raise sqlite3.DatabaseError("it holds other tables")
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        (version,) = self._db.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        return version

    def _enable_wal(self) -> None:
        """WAL lets readers and a writer share the file. Switching to it needs an exclusive lock,
        and when several processes switch a fresh file at once SQLite answers "locked" at once
        instead of waiting on the busy timeout, so wait here (the mode then persists in the file).
        """
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def get(self, fp_hash: str, arch_key: str, input_shape: Sequence[int]) -> LatencyStats | None:
        row = self._db.execute(
            "SELECT n, median, p90, p99, mean, std, cv FROM latency "
            "WHERE fingerprint = ? AND arch = ? AND input_shape = ?",
            (fp_hash, arch_key, _shape_key(input_shape)),
        ).fetchone()
        if row is None:
            return None
        n, median, p90, p99, mean, std, cv = row
        return LatencyStats(n, median, p90, p99, mean, std, cv)

    def put(
        self, fp_hash: str, arch_key: str, input_shape: Sequence[int], stats: LatencyStats
    ) -> None:
        """Store ``stats`` unless the key is already there: the first measurement wins, so a
        number that has been reported never changes under the user's feet."""
        if stats.noisy:
            raise ValueError("refusing to cache a noisy measurement; re-measure it instead")
        self._db.execute(
            "INSERT OR IGNORE INTO latency "
            "(fingerprint, arch, input_shape, n, median, p90, p99, mean, std, cv, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fp_hash,
                arch_key,
                _shape_key(input_shape),
                stats.n,
                stats.median_ms,
                stats.p90_ms,
                stats.p99_ms,
                stats.mean_ms,
                stats.std_ms,
                stats.cv,
                time.time(),
            ),
        )

    def get_node_times(self, fp_hash: str, arch_key: str, input_shape: Sequence[int]) -> dict | None:
        row = self._db.execute(
            "SELECT profile FROM node_times WHERE fingerprint = ? AND arch = ? AND input_shape = ?",
            (fp_hash, arch_key, _shape_key(input_shape)),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def put_node_times(self, fp_hash: str, arch_key: str, input_shape: Sequence[int], profile: dict) -> None:
        """First wins, as for latencies."""
        self._db.execute(
            "INSERT OR IGNORE INTO node_times (fingerprint, arch, input_shape, profile) VALUES (?, ?, ?, ?)",
            (fp_hash, arch_key, _shape_key(input_shape), json.dumps(profile, sort_keys=True)),
        )

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM latency").fetchone()[0]

    def remember_fingerprint(self, fp_hash: str, fingerprint: dict[str, Any]) -> None:
        """Store what ``fp_hash`` stands for, so stats and exports can say which device it is."""
        self._db.execute(
            "INSERT OR IGNORE INTO fingerprints (hash, fingerprint) VALUES (?, ?)",
            (fp_hash, json.dumps(fingerprint, sort_keys=True)),
        )

    def fingerprint_rows(self) -> list[FingerprintRows]:
        """Rows per fingerprint, most rows first."""
        known = self._fingerprints()
        return [
            FingerprintRows(fp, known.get(fp), rows, newest)
            for fp, rows, newest in self._db.execute(
                "SELECT fingerprint, COUNT(*), MAX(created) FROM latency GROUP BY fingerprint "
                "ORDER BY COUNT(*) DESC, fingerprint"
            )
        ]

    def clear(self, fp_hash: str | None = None) -> int:
        """Delete every row (``fp_hash=None``) or one fingerprint's rows; returns how many."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if fp_hash is None:
                removed = self._db.execute("DELETE FROM latency").rowcount
                self._db.execute("DELETE FROM fingerprints")
            else:
                removed = self._db.execute("DELETE FROM latency WHERE fingerprint = ?", (fp_hash,)).rowcount
                self._db.execute("DELETE FROM fingerprints WHERE hash = ?", (fp_hash,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return removed

    def export_rows(self, fp_hash: str | None = None) -> dict[str, Any]:
        """The cache (or one fingerprint of it) as the JSON document ``edgeprune cache export``
        writes: versioned, with every fingerprint a row refers to (``null`` when unrecorded)."""
        where, args = ("WHERE fingerprint = ?", (fp_hash,)) if fp_hash else ("", ())
        rows = [
            dict(zip(ROW_KEYS, (fp, arch, [int(d) for d in shape.split("x")], *rest)))
            for fp, arch, shape, *rest in self._db.execute(
                f"SELECT fingerprint, arch, input_shape, {', '.join(_STAT_COLUMNS)}, created FROM latency "
                f"{where} ORDER BY fingerprint, arch, input_shape",
                args,
            )
        ]
        known = self._fingerprints()
        used = sorted({r["fingerprint"] for r in rows})
        return {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "schema_version": SCHEMA_VERSION,
            "fingerprints": {fp: known.get(fp) for fp in used},
            "rows": rows,
        }

    def import_rows(self, document: Any, source: str) -> tuple[int, int]:
        """Add the rows of an exported document; returns (added, already present).

        Every row is checked before anything is written, so a bad file changes nothing. Rows
        whose key is already here are skipped: first wins, as with :meth:`put`.
        """
        fingerprints, rows = validate_export(document, source)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for fp, details in fingerprints.items():
                if details is not None:
                    self.remember_fingerprint(fp, details)
            added = 0
            for r in rows:
                added += self._db.execute(
                    "INSERT OR IGNORE INTO latency "
                    f"(fingerprint, arch, input_shape, {', '.join(_STAT_COLUMNS)}, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r["fingerprint"], r["arch"], _shape_key(r["input_shape"]), *(r[k] for k in _STAT_COLUMNS), r["created"]),
                ).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return added, len(rows) - added

    def _fingerprints(self) -> dict[str, dict[str, Any]]:
        return {fp: json.loads(text) for fp, text in self._db.execute("SELECT hash, fingerprint FROM fingerprints")}

    def close(self) -> None:
        self._db.close()


def _shape_key(input_shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in input_shape)


EXPORT_FORMAT = "edgeprune-latency-cache"
EXPORT_VERSION = 1


def validate_export(document: Any, source: str) -> tuple[dict[str, dict[str, Any] | None], list[dict[str, Any]]]:
    """Check an exported cache document completely; a UserError names the first problem.

    The file may come from another machine or a CI artifact, so nothing in it is trusted: a row
    with a negative, infinite or non-numeric latency would silently steer every later search.
    """

    def bad(where: str, problem: str) -> UserError:
        return UserError(f"cache import {source}: {where} {problem}; re-export it with `edgeprune cache export`")

    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise bad("the file", f"is not an edgeprune cache export (no \"format\": \"{EXPORT_FORMAT}\")")
    for key, want in (("format_version", EXPORT_VERSION), ("schema_version", SCHEMA_VERSION)):
        if document.get(key) != want or isinstance(document.get(key), bool):
            raise bad("the file", f"has {key} {document.get(key)!r}, this edgeprune reads {want}")
    fingerprints = document.get("fingerprints")
    if not isinstance(fingerprints, dict):
        raise bad("'fingerprints'", "must be an object of fingerprint hash -> details")
    from edgeprune.profiling.fingerprint import fingerprint_hash

    for fp, details in fingerprints.items():
        if details is None:
            continue
        if not isinstance(details, dict) or not all(v is None or isinstance(v, (str, int, float)) for v in details.values()):
            raise bad(f"fingerprint {fp}", "must be an object of plain values or null")
        if fingerprint_hash(details) != fp:
            raise bad(f"fingerprint {fp}", f"does not match its details (they hash to {fingerprint_hash(details)})")
    rows = document.get("rows")
    if not isinstance(rows, list):
        raise bad("'rows'", "must be a list")
    for i, row in enumerate(rows, 1):
        where = f"row {i}"
        if not isinstance(row, dict) or set(row) != set(ROW_KEYS):
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise bad(where, f"must have exactly the keys {', '.join(ROW_KEYS)} (got {got})")
        for key in ("fingerprint", "arch"):
            if not isinstance(row[key], str) or not row[key]:
                raise bad(where, f"'{key}' must be a non-empty string, got {row[key]!r}")
        if row["fingerprint"] not in fingerprints:
            raise bad(where, f"refers to fingerprint {row['fingerprint']} missing from 'fingerprints'")
        shape = row["input_shape"]
        if not isinstance(shape, list) or not shape or not all(_is_int(d) and d > 0 for d in shape):
            raise bad(where, f"'input_shape' must be a list of positive integers, got {shape!r}")
        if not _is_int(row["n"]) or row["n"] < 1:
            raise bad(where, f"'n' must be a positive integer, got {row['n']!r}")
        for key in ("median", "p90", "p99", "mean", "created"):
            if not _is_finite(row[key]) or row[key] <= 0:
                raise bad(where, f"'{key}' must be a finite positive number, got {row[key]!r}")
        for key in ("std", "cv"):
            if not _is_finite(row[key]) or row[key] < 0:
                raise bad(where, f"'{key}' must be a finite number >= 0, got {row[key]!r}")
        if not row["median"] <= row["p90"] <= row["p99"]:
            raise bad(where, f"has median {row['median']} > p90 {row['p90']} or p90 > p99 {row['p99']}")
    return fingerprints, rows


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
