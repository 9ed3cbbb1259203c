"""Persistent latency cache (SQLite), shared by every run and process on this host.

Measuring is the expensive part of the search, and the same widths recur across generations,
runs and users of one machine, so results are kept per (device fingerprint, architecture, input
shape). SQLite in WAL mode with a long busy timeout lets parallel searches share the file; values
are plain columns (never pickles), so a cache file from elsewhere cannot execute code.
"""

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

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
)


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

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM latency").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _shape_key(input_shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in input_shape)
