"""Opening a latency cache file: the ``--cache`` path may name any file, so it is looked at
read-only before anything writes to it (switching to WAL rewrites the header). Another program's
database, a non-SQLite file or a cache of another schema version is refused byte-for-byte
unchanged; a new or empty file gets the tables.
"""

import sqlite3
import time
from pathlib import Path

from edgeprune.errors import UserError
from edgeprune.untrusted import clip

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
STAT_COLUMNS = ("n", "median", "p90", "p99", "mean", "std", "cv")
ROW_KEYS = ("fingerprint", "arch", "input_shape", *STAT_COLUMNS, "created")

_SQLITE_MAGIC = b"SQLite format 3\x00"
# What each of our tables holds; a file whose table of that name has other columns is not ours.
_COLUMNS = {
    "meta": ("key", "value"),
    "latency": ROW_KEYS,
    "fingerprints": ("hash", "fingerprint"),
    "node_times": ("fingerprint", "arch", "input_shape", "profile"),
}


def open_db(path: Path) -> sqlite3.Connection:
    """A connection to the cache at ``path`` (created when missing), in WAL mode with our tables;
    a one-line UserError for a file that is not an edgeprune cache of this schema version."""
    _inspect(path)
    try:
        # isolation_level=None: transactions are explicit, never opened behind the caller's back.
        db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        db.execute("PRAGMA trusted_schema = OFF")  # no SQL functions from the file's schema
    except (OSError, sqlite3.Error) as e:
        raise UserError(f"cannot open latency cache {path} ({e}); pass a writable --cache path") from None
    try:
        version = _set_up(db)
    except sqlite3.DatabaseError as e:
        db.close()
        raise _open_error(path, e) from None
    if version != str(SCHEMA_VERSION):
        db.close()
        raise _version_error(path, version)
    return db


def _inspect(path: Path) -> None:
    """Refuse a file that is not ours (or ours at another schema version) before anything
    writes to it: the read-write open switches the file to WAL and adds our tables, which would
    damage someone else's database or a newer edgeprune's cache. So look read-only first; only an
    absent or empty file, an SQLite file without tables (a fresh cache another process is
    creating right now) or our own cache at this version gets past here.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"cannot read latency cache {path} ({e}); pass a readable --cache path") from None
    if not head:
        return
    if head != _SQLITE_MAGIC:
        raise _open_error(path, sqlite3.DatabaseError("it is not an SQLite database"))
    uri = path.resolve().as_uri() + "?mode=ro"  # as_uri() escapes '?', '#', '%' and spaces
    try:
        ro = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise UserError(f"cannot open latency cache {path} ({e}); pass a readable --cache path") from None
    try:
        version = _schema_version(ro)
    except sqlite3.DatabaseError as e:
        raise _open_error(path, e) from None
    finally:
        ro.close()
    if version is not None and version != str(SCHEMA_VERSION):
        raise _version_error(path, version)


def _open_error(path: Path, e: sqlite3.DatabaseError) -> UserError:
    if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
        return UserError(
            f"latency cache {path} stayed locked by another process for "
            f"{_BUSY_TIMEOUT_S:.0f} s; wait for it to finish or pass another --cache path"
        )
    return UserError(f"latency cache {path} is not an edgeprune SQLite cache ({e}); pass another --cache path or delete the file")


def _version_error(path: Path, version: str) -> UserError:
    return UserError(
        f"latency cache {path} has schema version {clip(version)}, this edgeprune needs "
        f"{SCHEMA_VERSION}; pass a new --cache path or delete the file"
    )


def _set_up(db: sqlite3.Connection) -> str:
    """Set up the connection and the tables; return the file's schema version.

    The schema is checked again under the write lock: :func:`_inspect` ran before another
    process may have created the cache, and a file at another version gets no tables added.
    """
    _enable_wal(db)
    # IMMEDIATE takes the write lock first, so two processes creating a fresh cache at the
    # same moment do not both decide the file is new.
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _schema_version(db)
        if version in (None, str(SCHEMA_VERSION)):
            for statement in _SCHEMA:  # IF NOT EXISTS: also adds tables newer than the file
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return str(SCHEMA_VERSION) if version is None else version


def _enable_wal(db: sqlite3.Connection) -> None:
    """WAL lets readers and a writer share the file. Switching to it needs an exclusive lock,
    and when several processes switch a fresh file at once SQLite answers "locked" at once
    instead of waiting on the busy timeout, so wait here (the mode then persists in the file).
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


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
