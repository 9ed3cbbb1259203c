"""Attacks on the latency cache through files someone else wrote.

`gate` trusts the cache before measuring, and teams pass `edgeprune cache export` files around as
CI artifacts, so an import and a `--cache` path are untrusted input. Each test performs one attack
and shows it refused with one line (exit 2, no traceback) and the cache file left as it was.
"""

import hashlib
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeprune.cli import main
from edgeprune.errors import UserError
from edgeprune.profiling import cache_db, cache_export
from edgeprune.profiling.cache import LatencyCache
from edgeprune.profiling.fingerprint import fingerprint_hash
from edgeprune.profiling.stats import LatencyStats

SHAPE = (1, 3, 8, 8)
# What compose_fingerprint() writes on a Jetson: one nested object of plain values.
DEVICE = {
    "profile": "fast-cpu", "cpu": "ARMv8 Processor rev 1 (v8l)", "cpu_count": 6, "machine": "aarch64", "os": "Linux",
    "jetson": {"l4t": "36.3.0", "model": "NVIDIA Jetson Orin Nano", "power_mode": "15W", "power_mode_id": 0,
               "clocks_locked": True},
    "runtime": "onnxruntime", "runtime_version": "1.18.0", "provider": "CPUExecutionProvider",
    "intra_op_threads": 1, "inter_op_threads": 1, "execution_mode": "sequential", "precision": "fp32",
    "graph_optimization": "all", "opset": 17,
}
FP = fingerprint_hash(DEVICE)


def _stats(median: float) -> LatencyStats:
    return LatencyStats(n=20, median_ms=median, p90_ms=median * 1.1, p99_ms=median * 1.2,
                        mean_ms=median, std_ms=0.01, cv=0.01)


def _row(**changes) -> dict:
    row = {"fingerprint": FP, "arch": "onnx-" + "ab" * 12, "input_shape": list(SHAPE), "n": 20, "median": 1.0,
           "p90": 1.1, "p99": 1.2, "mean": 1.0, "std": 0.01, "cv": 0.01, "created": time.time() - 60}
    return {**row, **changes}


def _doc(rows=None, fingerprints=None) -> dict:
    return {"format": "edgeprune-latency-cache", "format_version": 1, "schema_version": 1,
            "fingerprints": {FP: DEVICE} if fingerprints is None else fingerprints,
            "rows": [_row()] if rows is None else rows}


@pytest.fixture
def db(tmp_path) -> Path:
    """A cache that already holds one row: an import must leave its bytes alone when refused."""
    path = tmp_path / "c.sqlite"
    cache = LatencyCache(path)
    cache.remember_fingerprint(FP, DEVICE)
    cache.put(FP, "existing", SHAPE, _stats(2.0))
    cache.close()
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(file: Path, db: Path, capsys) -> str:
    """Import ``file`` in-process; assert one error line, exit 2, and ``db`` unchanged."""
    before = _digest(db)
    code = main(["cache", "import", str(file), "--cache", str(db)])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and captured.out == "", (code, captured.out)
    assert len(err.splitlines()) == 1 and err.startswith("edgeprune: error:") and len(err) < 600, err
    assert _digest(db) == before
    return err


def _write(tmp_path: Path, doc) -> Path:
    file = tmp_path / "shared.json"
    file.write_text(json.dumps(doc))
    return file


def test_a_valid_jetson_export_still_imports(tmp_path, db, capsys):
    """The bounds are not so tight that a real fingerprint (nested Jetson facts) is refused."""
    assert main(["cache", "import", str(_write(tmp_path, _doc())), "--cache", str(db)]) == 0
    assert "imported 1 row" in capsys.readouterr().out
    cache = LatencyCache(db)
    assert cache.get(FP, "onnx-" + "ab" * 12, SHAPE).median_ms == 1.0 and cache.count() == 2
    cache.close()


# --- 1. fingerprints must carry verified details -------------------------------------------------

@pytest.mark.parametrize("fingerprints, words", [
    ({FP: None}, ["has no device details (null)", "re-export it with this edgeprune"]),
    ({}, ["missing from 'fingerprints'"]),
    ({FP: {**DEVICE, "cpu": "forged"}}, ["does not match its details"]),
    ({FP: []}, ["must be an object"]),
], ids=["null-details", "no-details", "forged-details", "list-details"])
def test_import_refuses_rows_whose_device_is_not_verified(fingerprints, words, tmp_path, db, capsys):
    """Rows for this host's fingerprint with no details to check used to be trusted as if measured here."""
    err = _refused(_write(tmp_path, _doc(fingerprints=fingerprints)), db, capsys)
    for word in words:
        assert word in err


# --- 2. every field is bounded -------------------------------------------------------------------

HUGE = int("9" * 4000)  # json writes and reads it (limit 4300 digits); float() of it overflows
ROW_ATTACKS = {
    "long-arch": (_row(arch="a" * 300), "'arch'"),
    "escape-arch": (_row(arch="\x1b[2J\x1b[31mPWNED"), "'arch'"),
    "space-arch": (_row(arch="a b"), "'arch'"),
    "empty-shape": (_row(input_shape=[]), "'input_shape'"),
    "nine-dims": (_row(input_shape=[1] * 9), "'input_shape'"),
    "big-dim": (_row(input_shape=[1, 3, 65537, 8]), "'input_shape'"),
    "huge-dim": (_row(input_shape=[1, HUGE]), "'input_shape'"),
    "bool-dim": (_row(input_shape=[True, 3]), "'input_shape'"),
    "big-n": (_row(n=10**9 + 1), "'n'"),
    "huge-n": (_row(n=HUGE), "'n'"),
    "huge-median": (_row(median=HUGE, p90=HUGE, p99=HUGE), "'median'"),
    "slow-median": (_row(median=1e8, p90=1e8, p99=1e8), "'median'"),
    "zero-median": (_row(median=0.0), "'median'"),
    "huge-p99": (_row(p99=1e300), "'p99'"),
    "huge-std": (_row(std=1e300), "'std'"),
    "huge-cv": (_row(cv=1e6), "'cv'"),
    "far-future": (_row(created=1e300), "'created'"),
    "huge-created": (_row(created=HUGE), "'created'"),
    "tomorrow-plus": (_row(created=time.time() + 3 * 86400), "'created'"),
    "before-2020": (_row(created=1e9), "'created'"),
    "string-created": (_row(created="now"), "'created'"),
}


@pytest.mark.parametrize("row, word", ROW_ATTACKS.values(), ids=ROW_ATTACKS.keys())
def test_import_refuses_out_of_range_fields(row, word, tmp_path, db, capsys):
    err = _refused(_write(tmp_path, _doc(rows=[_row(), row])), db, capsys)
    assert "row 2" in err and word in err


def _with_detail(**changes) -> dict:
    details = {**DEVICE, **changes}
    return {fingerprint_hash(details): details}


FINGERPRINT_ATTACKS = {
    "long-hash": ({"f" * 10000: DEVICE}, "fingerprint hash"),
    "non-hex-hash": ({"../../etc/passwd": DEVICE}, "fingerprint hash"),
    "long-value": (_with_detail(cpu="x" * 10000), "detail 'cpu'"),
    "escape-value": (_with_detail(cpu="\x1b]0;owned\x07"), "detail 'cpu'"),
    "newline-value": (_with_detail(cpu="a\nb"), "detail 'cpu'"),
    "many-keys": (_with_detail(**{f"k{i}": i for i in range(100)}), "115 details, at most 64"),
    "bad-key": (_with_detail(**{"a b\x1b": 1}), "detail named"),
    "too-deep": (_with_detail(jetson={"inner": {"deeper": 1}}), "detail 'jetson'"),
    "huge-int": (_with_detail(cpu_count=HUGE), "detail 'cpu_count'"),
    "list-value": (_with_detail(cpu=[1, 2]), "detail 'cpu'"),
}


@pytest.mark.parametrize("fingerprints, word", FINGERPRINT_ATTACKS.values(), ids=FINGERPRINT_ATTACKS.keys())
def test_import_refuses_oversized_or_odd_fingerprints(fingerprints, word, tmp_path, db, capsys):
    """Even with details that hash correctly, sizes and characters are bounded (no 10 kB or
    terminal-escape device names printed by `cache stats`)."""
    (fp,) = fingerprints
    err = _refused(_write(tmp_path, _doc(rows=[_row(fingerprint=fp)], fingerprints=fingerprints)), db, capsys)
    assert word in err and "\x1b" not in err


@pytest.mark.parametrize("limit, words", [
    ("MAX_IMPORT_ROWS", ["has 3 rows, at most 2"]),
    ("MAX_IMPORT_FINGERPRINTS", ["has 3 fingerprints, at most 2"]),
])
def test_import_refuses_too_many_rows_or_fingerprints(limit, words, tmp_path, db, capsys, monkeypatch):
    monkeypatch.setattr(cache_export, limit, 2)
    fps = dict(_with_detail(cpu="a"), **_with_detail(cpu="b"), **_with_detail(cpu="c"))
    rows = [_row(fingerprint=fp) for fp in fps]
    err = _refused(_write(tmp_path, _doc(rows=rows, fingerprints=fps)), db, capsys)
    for word in words:
        assert word in err


def test_import_refuses_a_file_over_256_mib_without_reading_it(tmp_path, db, capsys):
    file = tmp_path / "big.json"
    with file.open("wb") as f:
        f.truncate(256 * 2**20 + 1)  # sparse: costs no disk
    assert "larger than 256 MiB" in _refused(file, db, capsys)


def test_import_api_refuses_infinite_values(db):
    """NaN/Infinity cannot reach the table through the Python API either."""
    cache = LatencyCache(db)
    try:
        for bad in (float("inf"), float("nan")):
            with pytest.raises(UserError, match="'p99' must be a finite positive number"):
                cache.import_rows(_doc(rows=[_row(p99=bad)]), "doc")
        assert cache.count() == 1
    finally:
        cache.close()


@pytest.mark.parametrize("created", [1e300, float("inf"), -1e300, "garbage"])
def test_stats_survives_an_impossible_created_already_in_the_file(created, db, capsys):
    """A `created = 1e300` row used to make every later `cache stats` die with OverflowError."""
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE latency SET created = ?", (created,))
    raw.close()
    assert main(["cache", "stats", "--cache", str(db)]) == 0
    assert "newest unknown" in capsys.readouterr().out
    assert main(["cache", "stats", "--json", "--cache", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)["fingerprints"][0]["newest"] is None


# --- 3. malformed JSON: one line, exit 2, never a traceback --------------------------------------

MALFORMED = {
    "deep-nesting": b"[" * 100000 + b"]" * 100000,
    "5000-digit-int": b'{"format": ' + b"9" * 5000 + b"}",
    "invalid-utf8": b'{"format": "\xff\xfe edgeprune"}',
    "nan": b'{"format": "edgeprune-latency-cache", "x": NaN}',
    "infinity": b'{"x": Infinity}',
    "minus-infinity": b'[-Infinity]',
    "truncated": b'{"format": "edgeprune-latency-cache", "rows": [',
    "not-an-object": b'"just a string"',
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_json_through_the_cli(content, tmp_path, db):
    file = tmp_path / "bad.json"
    file.write_bytes(content)
    before = _digest(db)
    done = subprocess.run([sys.executable, "-m", "edgeprune", "cache", "import", str(file), "--cache", str(db)],
                          capture_output=True, text=True, timeout=120)
    err = done.stderr.strip()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(err.splitlines()) == 1 and err.startswith("edgeprune: error:") and "Traceback" not in err, err
    assert len(err) < 600
    assert _digest(db) == before


# --- 4. a --cache path is inspected read-only before anything writes to it -----------------------

def _foreign_db(path: Path, *statements: str) -> Path:
    raw = sqlite3.connect(path)
    for statement in statements or ("CREATE TABLE customers (id INTEGER, name TEXT)",
                                    "INSERT INTO customers VALUES (1, 'alice')"):
        raw.execute(statement)
    raw.commit()
    raw.close()
    return path


def _journal_mode(path: Path) -> str:
    raw = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return raw.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        raw.close()


def _tables(path: Path) -> list[str]:
    raw = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return sorted(name for (name,) in raw.execute("SELECT name FROM sqlite_master"))
    finally:
        raw.close()


FOREIGN = {
    "other-tables": (),
    "meta-of-another-app": ("CREATE TABLE meta (k TEXT, v TEXT)", "INSERT INTO meta VALUES ('schema_version', '1')"),
    "meta-without-version": ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",),
    "our-meta-other-latency": ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                               "INSERT INTO meta VALUES ('schema_version', '1')", "CREATE TABLE latency (x)"),
}


@pytest.mark.parametrize("statements", FOREIGN.values(), ids=FOREIGN.keys())
@pytest.mark.parametrize("name", ["c.sqlite", "we ir?d#%20.sqlite"])
def test_a_foreign_sqlite_file_is_refused_unchanged(statements, name, tmp_path, capsys):
    """It used to be switched to WAL mode before being refused. Odd names check the URI escaping."""
    path = _foreign_db(tmp_path / name, *statements)
    before, tables = _digest(path), _tables(path)
    with pytest.raises(UserError, match="is not an edgeprune SQLite cache"):
        LatencyCache(path)
    assert main(["cache", "stats", "--cache", str(path)]) == 2
    assert capsys.readouterr().err.startswith("edgeprune: error:")
    assert _digest(path) == before and _tables(path) == tables and _journal_mode(path) == "delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no -wal, -shm or -journal either


@pytest.mark.parametrize("version", ["2", "0", "\x1b[31m99"])
def test_a_cache_of_another_schema_version_gets_no_tables(version, tmp_path):
    path = _foreign_db(tmp_path / "c.sqlite", "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                       f"INSERT INTO meta VALUES ('schema_version', '{version}')")
    before = _digest(path)
    with pytest.raises(UserError, match="schema version .* this edgeprune needs 1; pass a new --cache path") as e:
        LatencyCache(path)
    assert "\x1b" not in str(e.value)
    assert _tables(path) == ["meta", "sqlite_autoindex_meta_1"] and _digest(path) == before
    assert _journal_mode(path) == "delete"


def test_a_newer_wal_cache_keeps_its_tables(tmp_path):
    """A newer edgeprune's cache (WAL, version 2, tables we do not know) gets none of ours."""
    path = tmp_path / "c.sqlite"
    LatencyCache(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        for table in ("latency", "fingerprints", "node_times"):
            raw.execute(f"DROP TABLE {table}")
        raw.execute("CREATE TABLE latency_v2 (x)")
    raw.close()
    tables = _tables(path)
    with pytest.raises(UserError, match="schema version 2"):
        LatencyCache(path)
    assert _tables(path) == tables


@pytest.mark.parametrize("content", [os.urandom(8192), b"abc", b"SQLite format 3\x00" + os.urandom(4080)],
                         ids=["random", "short", "sqlite-header-then-garbage"])
def test_a_non_sqlite_file_is_refused_unchanged(content, tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is not an edgeprune SQLite cache"):
        LatencyCache(path)
    assert path.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["c.sqlite"]


def test_an_empty_file_and_an_old_rollback_mode_cache_are_taken(tmp_path):
    """What is ours is still opened and switched to WAL: an empty file, and a version-1 cache
    in rollback mode that lacks the tables added later (they are created without a bump)."""
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    LatencyCache(empty).close()
    old = _foreign_db(tmp_path / "old.sqlite", "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                      "INSERT INTO meta VALUES ('schema_version', '1')", cache_db._SCHEMA[1])
    cache = LatencyCache(old)
    cache.put(FP, "a", SHAPE, _stats(1.0))
    cache.close()
    assert _journal_mode(empty) == _journal_mode(old) == "wal"
    assert {"fingerprints", "node_times", "latency", "meta"} <= set(_tables(old))


def _open_and_put(path, barrier, i):
    barrier.wait()
    cache = LatencyCache(path)
    cache.put(FP, f"arch-{i}", SHAPE, _stats(1.0 + i))
    cache.close()


def test_four_processes_create_one_fresh_cache_at_once(tmp_path):
    """The read-only look first must not break the race the write lock settles: a process that
    looks while another is creating the file sees an SQLite file without tables, which is new."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    path = tmp_path / "fresh.sqlite"
    procs = [ctx.Process(target=_open_and_put, args=(path, barrier, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    cache = LatencyCache(path)
    assert cache.count() == 4
    cache.close()


# --- 5. clear removes every table's rows ---------------------------------------------------------

OTHER = {**DEVICE, "cpu": "another"}
OTHER_FP = fingerprint_hash(OTHER)


def _full_cache(path: Path) -> Path:
    cache = LatencyCache(path)
    for fp, details in ((FP, DEVICE), (OTHER_FP, OTHER)):
        cache.remember_fingerprint(fp, details)
        cache.put(fp, "a", SHAPE, _stats(1.0))
        cache.put_node_times(fp, "a", SHAPE, {"nodes": {"conv": 0.5}})
    cache.put(FP, "b", SHAPE, _stats(2.0))
    cache.put_node_times(FP, "b", SHAPE, {"nodes": {"conv": 0.7}})
    cache.close()
    return path


def _counts(path: Path) -> dict[str, dict[str, int]]:
    raw = sqlite3.connect(path)
    try:
        return {table: dict(raw.execute(f"SELECT {col}, COUNT(*) FROM {table} GROUP BY {col}").fetchall())
                for table, col in (("latency", "fingerprint"), ("node_times", "fingerprint"), ("fingerprints", "hash"))}
    finally:
        raw.close()


def test_clear_all_empties_every_table(tmp_path, capsys):
    """The node-time profiles train the latency surrogate: a cleared cache kept them before."""
    path = _full_cache(tmp_path / "c.sqlite")
    assert main(["cache", "clear", "--all", "--cache", str(path)]) == 0
    assert "removed 3 latency rows and 3 node-time profiles (all fingerprints)" in capsys.readouterr().out
    assert _counts(path) == {"latency": {}, "node_times": {}, "fingerprints": {}}


def test_clear_one_fingerprint_removes_only_its_rows_in_every_table(tmp_path, capsys):
    path = _full_cache(tmp_path / "c.sqlite")
    assert main(["cache", "clear", "--fingerprint", FP[:6], "--cache", str(path)]) == 0
    assert f"removed 2 latency rows and 2 node-time profiles (fingerprint {FP})" in capsys.readouterr().out
    assert _counts(path) == {"latency": {OTHER_FP: 1}, "node_times": {OTHER_FP: 1}, "fingerprints": {OTHER_FP: 1}}


def test_clear_reaches_a_fingerprint_with_only_node_times_left(tmp_path, capsys):
    path = _full_cache(tmp_path / "c.sqlite")
    with sqlite3.connect(path) as raw:
        raw.execute("DELETE FROM latency WHERE fingerprint = ?", (OTHER_FP,))
    raw.close()
    assert main(["cache", "clear", "--fingerprint", OTHER_FP, "--cache", str(path)]) == 0
    assert "removed 0 latency rows and 1 node-time profile (" in capsys.readouterr().out
    assert OTHER_FP not in _counts(path)["node_times"]


# --- 6. export leaves out what an import would refuse --------------------------------------------

def test_export_skips_unverifiable_rows_with_a_note_and_the_file_imports(tmp_path, capsys):
    src = tmp_path / "src.sqlite"
    cache = LatencyCache(src)
    cache.remember_fingerprint(FP, DEVICE)
    cache.put(FP, "good", SHAPE, _stats(1.0))
    cache.put(FP, "bad-time", SHAPE, _stats(1.0))
    cache.put("0123456789abcdef", "unrecorded", SHAPE, _stats(1.0))  # details never recorded
    cache.close()
    with sqlite3.connect(src) as raw:
        raw.execute("UPDATE latency SET created = 1e300 WHERE arch = 'bad-time'")
    raw.close()
    file = tmp_path / "shared.json"
    assert main(["cache", "export", str(file), "--cache", str(src)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 2
    assert "skipped 1 row of fingerprint 0123456789abcdef: its device details are not recorded" in notes[0]
    assert "skipped 1 row an import would refuse" in notes[1] and "'created'" in notes[1]
    doc = json.loads(file.read_text())
    assert [r["arch"] for r in doc["rows"]] == ["good"] and list(doc["fingerprints"]) == [FP]
    assert main(["cache", "import", str(file), "--cache", str(tmp_path / "dest.sqlite")]) == 0
    assert "imported 1 row" in capsys.readouterr().out


def test_a_cache_carrying_a_trigger_is_refused(tmp_path):
    # A shared "cache" whose trigger would rewrite every row we add (e.g. to fake fast numbers).
    path = tmp_path / "c.sqlite"
    LatencyCache(path).close()
    db = sqlite3.connect(path)
    db.execute("CREATE TRIGGER fake AFTER INSERT ON latency BEGIN UPDATE latency SET median = 1e-9; END")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(UserError, match="holds trigger fake"):
        LatencyCache(path)
    assert path.read_bytes() == before
