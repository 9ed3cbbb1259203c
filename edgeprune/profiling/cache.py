"""Persistent latency cache (SQLite), shared by every run and process on this host.

Measuring is the expensive part of the search, and the same widths recur across generations,
runs and users of one machine, so results are kept per (device fingerprint, architecture, input
shape). SQLite in WAL mode with a long busy timeout lets parallel searches share the file; values
are plain columns (never pickles), so a cache file from elsewhere cannot execute code.

The ``fingerprints`` table (hash -> the fingerprint's JSON) was added without a schema bump: it is
created on open when missing and older code ignores it, so it only makes ``edgeprune cache stats``
and exported files readable (which CPU and runtime a number belongs to).

A ``--cache`` path may name any file, so it is looked at read-only before anything writes to it
(switching to WAL rewrites the header): another program's database, a non-SQLite file or a cache
of another schema version is refused byte-for-byte unchanged. An import is untrusted too (``gate``
believes the cache before measuring): :func:`read_export` and :func:`validate_export` bound its
size, its JSON and every field, and require device details that hash to each fingerprint.
"""

import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.errors import UserError
from edgeprune.profiling.fingerprint import fingerprint_hash
from edgeprune.profiling.paths import cache_folder
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
    newest: float | None  # None: the file holds no time a date can show


def default_cache_path() -> Path:
    """``latency.sqlite`` in :func:`~edgeprune.profiling.paths.cache_folder`."""
    return cache_folder() / "latency.sqlite"


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
        except OSError as e:
            raise UserError(f"cannot open latency cache {self.path} ({e}); pass a writable --cache path") from None
        self._inspect()
        try:
            # isolation_level=None: transactions are explicit below, never opened behind our back.
            self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            self._db.execute("PRAGMA trusted_schema = OFF")  # no SQL functions from the file's schema
        except (OSError, sqlite3.Error) as e:
            raise UserError(
                f"cannot open latency cache {self.path} ({e}); pass a writable --cache path"
            ) from None
        try:
            version = self._open()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise self._open_error(e) from None
        if version != str(SCHEMA_VERSION):
            self._db.close()
            raise self._version_error(version)

    def _inspect(self) -> None:
        """Refuse a file that is not ours (or ours at another schema version) before anything
        writes to it: the read-write open below switches the file to WAL and adds our tables, which
        would damage someone else's database or a newer edgeprune's cache. So look read-only first;
        only an absent or empty file, an SQLite file without tables (a fresh cache another process
        is creating right now) or our own cache at this version gets past here.
        """
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except OSError as e:
            raise UserError(f"cannot read latency cache {self.path} ({e}); pass a readable --cache path") from None
        if not head:
            return
        if head != _SQLITE_MAGIC:
            raise self._open_error(sqlite3.DatabaseError("it is not an SQLite database"))
        uri = self.path.resolve().as_uri() + "?mode=ro"  # as_uri() escapes '?', '#', '%' and spaces
        try:
            ro = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise UserError(f"cannot open latency cache {self.path} ({e}); pass a readable --cache path") from None
        try:
            version = _schema_version(ro)
        except sqlite3.DatabaseError as e:
            raise self._open_error(e) from None
        finally:
            ro.close()
        if version is not None and version != str(SCHEMA_VERSION):
            raise self._version_error(version)

    def _open_error(self, e: sqlite3.DatabaseError) -> UserError:
        if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
            return UserError(
                f"latency cache {self.path} stayed locked by another process for "
                f"{_BUSY_TIMEOUT_S:.0f} s; wait for it to finish or pass another --cache path"
            )
        return UserError(
            f"latency cache {self.path} is not an edgeprune SQLite cache ({e}); pass another "
            "--cache path or delete the file"
        )

    def _version_error(self, version: str) -> UserError:
        return UserError(
            f"latency cache {self.path} has schema version {_clip(version)}, this edgeprune needs "
            f"{SCHEMA_VERSION}; pass a new --cache path or delete the file"
        )

    def _open(self) -> str:
        """Set up the connection and the tables; return the file's schema version.

        The schema is checked again under the write lock: :meth:`_inspect` ran before another
        process may have created the cache, and a file at another version gets no tables added.
        """
        self._enable_wal()
        # IMMEDIATE takes the write lock first, so two processes creating a fresh cache at the
        # same moment do not both decide the file is new.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = _schema_version(self._db)
            if version in (None, str(SCHEMA_VERSION)):
                for statement in _SCHEMA:  # IF NOT EXISTS: also adds tables newer than the file
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return str(SCHEMA_VERSION) if version is None else version

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

    def get(
        self, fp_hash: str, arch_key: str, input_shape: Sequence[int], not_before: float | None = None
    ) -> LatencyStats | None:
        """The stored latency, or None; ``not_before`` (a Unix time) ignores rows created earlier,
        i.e. rows measured against an anchor that has since been replaced. A row dated in the
        future (beyond the clock-skew allowance) is never read: it would survive every
        ``not_before`` and every replacement."""
        sql = (
            "SELECT n, median, p90, p99, mean, std, cv FROM latency "
            "WHERE fingerprint = ? AND arch = ? AND input_shape = ? AND created <= ?"
        )
        params: tuple = (fp_hash, arch_key, _shape_key(input_shape), _latest_valid())
        if not_before is not None:
            sql += " AND created >= ?"
            params += (float(not_before),)
        row = self._db.execute(sql, params).fetchone()
        if row is None:
            return None
        n, median, p90, p99, mean, std, cv = row
        return LatencyStats(n, median, p90, p99, mean, std, cv)

    def created(self, fp_hash: str, arch_key: str, input_shape: Sequence[int]) -> float | None:
        """When the row of this key was stored (Unix time), or None (also for a row dated in the
        future, which :meth:`get` does not read either: as a baseline's date it would hide every
        row written after it)."""
        row = self._db.execute(
            "SELECT created FROM latency WHERE fingerprint = ? AND arch = ? AND input_shape = ? AND created <= ?",
            (fp_hash, arch_key, _shape_key(input_shape), _latest_valid()),
        ).fetchone()
        return None if row is None else float(row[0])

    def put(
        self,
        fp_hash: str,
        arch_key: str,
        input_shape: Sequence[int],
        stats: LatencyStats,
        replace_before: float | None = None,
    ) -> None:
        """Store ``stats`` unless the key is already there: the first measurement wins, so a
        number that has been reported never changes under the user's feet. The one exception is
        a row older than ``replace_before``: it was measured against an anchor that a fresh
        measurement has since replaced, so it is in units nobody uses any more. A row of the key
        dated in the future is no measurement's (no reader sees it) and is replaced too."""
        if stats.noisy:
            raise ValueError("refusing to cache a noisy measurement; re-measure it instead")
        key = (fp_hash, arch_key, _shape_key(input_shape))
        self._db.execute(
            "DELETE FROM latency WHERE fingerprint = ? AND arch = ? AND input_shape = ? AND created > ?",
            (*key, _latest_valid()),
        )
        if replace_before is not None:
            self._db.execute(
                "DELETE FROM latency WHERE fingerprint = ? AND arch = ? AND input_shape = ? AND created < ?",
                (*key, float(replace_before)),
            )
        self._db.execute(
            "INSERT OR IGNORE INTO latency "
            "(fingerprint, arch, input_shape, n, median, p90, p99, mean, std, cv, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *key,
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

    def node_count(self) -> int:
        """Cached per-node profiles (they train the latency surrogate, so stats shows them)."""
        return self._db.execute("SELECT COUNT(*) FROM node_times").fetchone()[0]

    def remember_fingerprint(self, fp_hash: str, fingerprint: dict[str, Any]) -> None:
        """Store what ``fp_hash`` stands for, so stats and exports can say which device it is."""
        self._db.execute(
            "INSERT OR IGNORE INTO fingerprints (hash, fingerprint) VALUES (?, ?)",
            (fp_hash, json.dumps(fingerprint, sort_keys=True)),
        )

    def fingerprint_rows(self) -> list[FingerprintRows]:
        """Rows per fingerprint, most rows first. ``newest`` is None when the file holds no
        plausible time (a hand-made file may hold 1e300, which no date can show)."""
        known = self._fingerprints()
        return [
            FingerprintRows(fp, known.get(fp), rows, newest if _is_time(newest) else None)
            for fp, rows, newest in self._db.execute(
                "SELECT fingerprint, COUNT(*), MAX(created) FROM latency GROUP BY fingerprint "
                "ORDER BY COUNT(*) DESC, fingerprint"
            )
        ]

    def fingerprint_hashes(self) -> list[str]:
        """Every fingerprint any table mentions: one with only node-time profiles left must
        still be reachable by ``edgeprune cache clear --fingerprint``."""
        return [
            fp for (fp,) in self._db.execute(
                "SELECT fingerprint FROM latency UNION SELECT fingerprint FROM node_times "
                "UNION SELECT hash FROM fingerprints ORDER BY 1"
            )
        ]

    def clear(self, fp_hash: str | None = None) -> tuple[int, int]:
        """Delete every row (``fp_hash=None``) or one fingerprint's rows, in every table; returns
        (latency rows, node-time profiles) removed. The node-time profiles go too: they train the
        latency surrogate, so a cache that kept them would still steer the next search."""
        where, args = ("", ()) if fp_hash is None else (" WHERE fingerprint = ?", (fp_hash,))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            removed = self._db.execute(f"DELETE FROM latency{where}", args).rowcount
            profiles = self._db.execute(f"DELETE FROM node_times{where}", args).rowcount
            self._db.execute("DELETE FROM fingerprints" + ("" if fp_hash is None else " WHERE hash = ?"), args)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return removed, profiles

    def export_rows(self, fp_hash: str | None = None) -> tuple[dict[str, Any], list[str]]:
        """The cache (or one fingerprint of it) as the JSON document ``edgeprune cache export``
        writes, and one note per kind of row left out.

        Only what :func:`validate_export` accepts goes out. A row whose device details were never
        recorded (or would fail the import's checks) would make every import of the file refuse
        it whole, and a shared file nobody can import is worse than one with fewer rows; so such
        rows are skipped, and the notes say how many, why and how to get them exported.
        """
        where, args = ("WHERE fingerprint = ?", (fp_hash,)) if fp_hash else ("", ())
        known, now = self._fingerprints(), time.time()
        fingerprints: dict[str, dict[str, Any]] = {}
        rows, skipped, refused, checked = [], {}, [], {}
        for fp, arch, shape, *rest in self._db.execute(
            f"SELECT fingerprint, arch, input_shape, {', '.join(_STAT_COLUMNS)}, created FROM latency "
            f"{where} ORDER BY fingerprint, arch, input_shape",
            args,
        ):
            details = known.get(fp)
            if fp not in checked:  # once per fingerprint, not per row
                checked[fp] = "its device details are not recorded" if details is None else _fingerprint_problem(fp, details)
            problem = checked[fp]
            if problem is not None:
                skipped[fp] = (problem, skipped.get(fp, ("", 0))[1] + 1)
                continue
            row = dict(zip(ROW_KEYS, (fp, arch, _parse_shape(shape), *rest)))
            problem = _row_problem(row, now)
            if problem is not None:
                refused.append(problem)
                continue
            fingerprints[fp] = details
            rows.append(row)
        notes = [
            f"skipped {n} row{'s' if n != 1 else ''} of fingerprint {_clip(fp)}: {problem}, so an import could not "
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

    def import_rows(self, document: Any, source: str) -> tuple[int, int]:
        """Add the rows of an exported document; returns (added, already present).

        Every row is checked before anything is written, so a bad file changes nothing. Rows
        whose key is already here are skipped: first wins, as with :meth:`put`.
        """
        fingerprints, rows = validate_export(document, source)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for fp, details in fingerprints.items():
                self.remember_fingerprint(fp, details)
            added = 0
            for r in rows:
                added += self._db.execute(
                    "INSERT OR IGNORE INTO latency "
                    f"(fingerprint, arch, input_shape, {', '.join(_STAT_COLUMNS)}, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r["fingerprint"], r["arch"], _shape_key(r["input_shape"]), int(r["n"]),
                     *(float(r[k]) for k in _STAT_COLUMNS[1:]), float(r["created"])),
                ).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return added, len(rows) - added

    def _fingerprints(self) -> dict[str, dict[str, Any]]:
        """Recorded details by hash; one whose JSON is unreadable counts as not recorded."""
        known = {}
        for fp, text in self._db.execute("SELECT hash, fingerprint FROM fingerprints"):
            try:
                details = json.loads(text)
            except (TypeError, ValueError, RecursionError):
                continue
            if isinstance(details, dict):
                known[fp] = details
        return known

    def close(self) -> None:
        self._db.close()


def _latest_valid() -> float:
    """The latest ``created`` a row may carry now: later is a future date, not clock skew."""
    return time.time() + FUTURE_SLACK_S


def _shape_key(input_shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in input_shape)


def _parse_shape(text: Any) -> Any:
    """``"1x3x8x8"`` -> ``[1, 3, 8, 8]``; anything else is returned as it is (and then refused)."""
    parts = text.split("x") if isinstance(text, str) and len(text) <= 100 else None
    return [int(d) for d in parts] if parts and all(d.isdigit() and d.isascii() for d in parts) else text


_SQLITE_MAGIC = b"SQLite format 3\x00"
# What each of our tables holds; a file whose table of that name has other columns is not ours.
_COLUMNS = {
    "meta": ("key", "value"),
    "latency": ROW_KEYS,
    "fingerprints": ("hash", "fingerprint"),
    "node_times": ("fingerprint", "arch", "input_shape", "profile"),
}


def _schema_version(db: sqlite3.Connection) -> str | None:
    """The schema version of an edgeprune cache; None for a database without tables (a new one);
    sqlite3.DatabaseError when the file holds something else. Reads only. Another version is
    returned as it is (the caller refuses it); only a cache of this version is checked in full."""
    entries = list(db.execute("SELECT type, name FROM sqlite_master"))
    if not entries:
        return None
    names = {name for kind, name in entries if kind == "table"}
    if "meta" not in names or tuple(row[1] for row in db.execute("PRAGMA table_info(meta)")) != _COLUMNS["meta"]:
        raise sqlite3.DatabaseError("it holds other tables")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise sqlite3.DatabaseError("its meta table has no schema_version")
    if str(row[0]) != str(SCHEMA_VERSION):
        return str(row[0])
    # A trigger or view would run SQL of the file's author on our reads and writes.
    foreign = [f"{kind} {name}" for kind, name in entries if kind not in ("table", "index") or (kind == "table" and name not in _COLUMNS)]
    if foreign:
        raise sqlite3.DatabaseError(f"it holds {foreign[0][:60]}, which an edgeprune cache never has")
    for table, columns in _COLUMNS.items():
        if table in names:
            have = tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
            if have != columns:
                raise sqlite3.DatabaseError(f"its {table} table has other columns")
    return str(row[0])


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
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"cache import {path}: not JSON (invalid UTF-8 at byte {e.start}); {fix}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise UserError(f"cache import {path}: not JSON this edgeprune reads (nested too deeply); {fix}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"cache import {path}: not JSON ({e.msg} at line {e.lineno} column {e.colno}); {fix}") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise UserError(f"cache import {path}: not JSON this edgeprune reads ({_clip(str(e).split(';')[0], 100)}); {fix}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


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
            raise bad("the file", f"has {key} {_show(document.get(key))}, this edgeprune reads {want}")
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
            raise bad(f"fingerprint {_clip(fp)}", "has no device details (null), so its rows cannot be verified for any device",
                      "re-export it with this edgeprune's `edgeprune cache export`, which leaves such rows out")
        problem = _fingerprint_problem(fp, details)
        if problem is not None:
            raise bad(f"fingerprint {_clip(fp)}", problem)
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
        return f"must be an object of plain values, got {_show(details)}"
    if len(details) > MAX_DETAIL_KEYS:
        return f"has {len(details)} details, at most {MAX_DETAIL_KEYS} allowed"
    for key, value in details.items():
        if not isinstance(key, str) or not _DETAIL_KEY_RE.fullmatch(key):
            return f"has a detail named {_show(key)} (1 to 64 letters, digits, '_', '.' or '-' expected)"
        if isinstance(value, dict) and depth == 0:
            problem = details_problem(value, depth + 1)
            if problem is not None:
                return f"detail '{key}' {problem}"
        elif not _is_plain(value):
            return (f"detail '{key}' must be null, a boolean, a number of at most {MAX_DETAIL_INT:.0e} or a printable "
                    f"string of at most {MAX_TEXT} characters, got {_show(value)}")
    return None


def _is_plain(v: Any) -> bool:
    if v is None or isinstance(v, bool):
        return True
    if isinstance(v, str):
        return len(v) <= MAX_TEXT and v.isprintable()
    return _number_in(v, -MAX_DETAIL_INT, MAX_DETAIL_INT)


def _row_problem(row: Any, now: float) -> str | None:
    """Why ``row`` is not a latency row a real measurement could have written, or None."""
    if not isinstance(row, dict) or set(row) != set(ROW_KEYS):
        if not isinstance(row, dict):
            return f"must be an object with the keys {', '.join(ROW_KEYS)}, got {_show(row)}"
        missing, extra = [k for k in ROW_KEYS if k not in row], sorted(map(str, set(row) - set(ROW_KEYS)))
        return (f"must have exactly the keys {', '.join(ROW_KEYS)} (missing: {', '.join(missing) or 'none'}; "
                f"unexpected: {_clip(', '.join(extra[:5])) or 'none'})")
    if not isinstance(row["fingerprint"], str) or not _HASH_RE.fullmatch(row["fingerprint"]):
        return f"'fingerprint' must be a fingerprint hash (16 lowercase hex digits), got {_show(row['fingerprint'])}"
    if not isinstance(row["arch"], str) or not _ARCH_RE.fullmatch(row["arch"]):
        return f"'arch' must be 1 to {MAX_TEXT} printable ASCII characters without spaces, got {_show(row['arch'])}"
    shape = row["input_shape"]
    if not (isinstance(shape, list) and 1 <= len(shape) <= MAX_DIMS and all(_is_int(d) and 1 <= d <= MAX_DIM for d in shape)):
        return f"'input_shape' must be a list of 1 to {MAX_DIMS} integers from 1 to {MAX_DIM}, got {_show(shape)}"
    if not (_is_int(row["n"]) and 1 <= row["n"] <= MAX_N):
        return f"'n' must be a positive integer of at most {MAX_N:.0e}, got {_show(row['n'])}"
    for key in ("median", "p90", "p99", "mean"):
        if not _number_in(row[key], 0, MAX_MS) or row[key] == 0:
            return f"'{key}' must be a finite positive number of at most {MAX_MS:.0e} ms, got {_show(row[key])}"
    for key, top in (("std", MAX_MS), ("cv", MAX_CV)):
        if not _number_in(row[key], 0, top):
            return f"'{key}' must be a finite number from 0 to {top:g}, got {_show(row[key])}"
    if not row["median"] <= row["p90"] <= row["p99"]:
        return f"has median {row['median']} > p90 {row['p90']} or p90 > p99 {row['p99']}"
    if not _number_in(row["created"], EARLIEST_CREATED, now + FUTURE_SLACK_S):
        return (f"'created' must be a Unix time from 2020-01-01 to now (+{FUTURE_SLACK_S / 60:g} minutes of clock skew), "
                f"got {_show(row['created'])}")
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number_in(v: Any, low: float, high: float) -> bool:
    """``low <= v <= high`` for a real JSON number. Never converts: a 4000-digit integer
    compares exactly with a float, but float() of it would overflow."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    if isinstance(v, float) and not math.isfinite(v):
        return False
    return low <= v <= high


def _is_time(v: Any) -> bool:
    """A time any date can show (before year 9999): what ``cache stats`` prints, not a bound."""
    return _number_in(v, 0, 253402300799)


def _show(v: Any) -> str:
    """A short one-line rendering of an untrusted value for a message: huge strings, lists and
    integers are cut, and repr() escapes control characters."""
    if _is_int(v) and abs(v) >= 10**18:
        return f"an integer of {v.bit_length()} bits"
    if isinstance(v, str) and len(v) > 60:
        v = v[:60]
    if isinstance(v, (list, dict)) and len(v) > 8:
        return f"a {'list' if isinstance(v, list) else 'object'} of {len(v)} items"
    try:
        text = repr(v)
    except (ValueError, RecursionError):
        text = f"an unprintable {type(v).__name__}"
    return _clip(text)


def _clip(text: Any, limit: int = 60) -> str:
    text = str(text) if isinstance(text, str) and text.isprintable() else repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
