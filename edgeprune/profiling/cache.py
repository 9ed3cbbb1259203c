"""Persistent latency cache (SQLite), shared by every run and process on this host.

Measuring is the expensive part of the search, and the same widths recur across generations,
runs and users of one machine, so results are kept per (device fingerprint, architecture, input
shape). SQLite in WAL mode with a long busy timeout lets parallel searches share the file; values
are plain columns (never pickles), so a cache file from elsewhere cannot execute code.

The ``fingerprints`` table (hash -> the fingerprint's JSON) was added without a schema bump: it is
created on open when missing and older code ignores it, so it only makes ``edgeprune cache stats``
and exported files readable (which CPU and runtime a number belongs to).

A ``--cache`` path may name any file, so :func:`~edgeprune.profiling.cache_db.open_db` looks at it
read-only before anything writes to it. An import is untrusted too: its format and checks are
:mod:`edgeprune.profiling.cache_export`.
"""

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.errors import UserError
from edgeprune.profiling.cache_db import ROW_KEYS, STAT_COLUMNS, open_db
from edgeprune.profiling.cache_export import FUTURE_SLACK_S, export_document, shape_key, validate_export
from edgeprune.profiling.paths import cache_folder
from edgeprune.profiling.stats import LatencyStats
from edgeprune.untrusted import number_in



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
        self._db = open_db(self.path)

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
        params: tuple = (fp_hash, arch_key, shape_key(input_shape), _latest_valid())
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
            (fp_hash, arch_key, shape_key(input_shape), _latest_valid()),
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
        key = (fp_hash, arch_key, shape_key(input_shape))
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
            (fp_hash, arch_key, shape_key(input_shape)),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def put_node_times(self, fp_hash: str, arch_key: str, input_shape: Sequence[int], profile: dict) -> None:
        """First wins, as for latencies."""
        self._db.execute(
            "INSERT OR IGNORE INTO node_times (fingerprint, arch, input_shape, profile) VALUES (?, ?, ?, ?)",
            (fp_hash, arch_key, shape_key(input_shape), json.dumps(profile, sort_keys=True)),
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
        writes, and one note per kind of row left out (:func:`export_document`)."""
        where, args = ("WHERE fingerprint = ?", (fp_hash,)) if fp_hash else ("", ())
        raw_rows = self._db.execute(
            f"SELECT {', '.join(ROW_KEYS)} FROM latency {where} ORDER BY fingerprint, arch, input_shape", args
        )
        return export_document(raw_rows, self._fingerprints())

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
                    f"(fingerprint, arch, input_shape, {', '.join(STAT_COLUMNS)}, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r["fingerprint"], r["arch"], shape_key(r["input_shape"]), int(r["n"]),
                     *(float(r[k]) for k in STAT_COLUMNS[1:]), float(r["created"])),
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


def _is_time(v: Any) -> bool:
    """A time any date can show (before year 9999): what ``cache stats`` prints, not a bound."""
    return number_in(v, 0, 253402300799)
