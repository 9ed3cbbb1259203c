"""`edgeprune cache stats|clear|export|import` and `edgeprune profile` through the cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeprune.cli import main
from edgeprune.profiling.cache import LatencyCache
from edgeprune.profiling.fingerprint import fingerprint_hash, host_fingerprint
from edgeprune.profiling.stats import LatencyStats
from edgeprune.profiling.targets import load_profile

TESTS = Path(__file__).parent
PROFILE = str(TESTS / "fixtures" / "fast-cpu.yaml")
SHAPE = (1, 3, 8, 8)


def _stats(median: float) -> LatencyStats:
    return LatencyStats(n=20, median_ms=median, p90_ms=median * 1.1, p99_ms=median * 1.2,
                        mean_ms=median, std_ms=0.01, cv=0.01)


def _filled(path: Path) -> tuple[str, str]:
    """A cache with 3 rows of the real fingerprint (recorded) and 1 of an unrecorded one."""
    fp = host_fingerprint(load_profile(PROFILE))
    h = fingerprint_hash(fp)
    cache = LatencyCache(path)
    cache.remember_fingerprint(h, fp)
    for i, arch in enumerate(("a", "b", "c")):
        cache.put(h, arch, SHAPE, _stats(1.0 + i))
    cache.put("0123456789abcdef", "a", SHAPE, _stats(5.0))
    cache.close()
    return h, "0123456789abcdef"


def test_stats_shows_rows_per_fingerprint_with_a_summary(tmp_path, capsys):
    h, other = _filled(tmp_path / "c.sqlite")
    assert main(["cache", "stats", "--cache", str(tmp_path / "c.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "4 rows, 2 fingerprints, 0 node-time profiles" in out
    line = next(line for line in out.splitlines() if h in line)
    assert "3 rows" in line and "fast-cpu" in line and "onnxruntime" in line and "1 thread" in line
    assert "(details not recorded)" in next(line for line in out.splitlines() if other in line)
    assert main(["cache", "stats", "--json", "--cache", str(tmp_path / "c.sqlite")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(g["hash"], g["rows"]) for g in doc["fingerprints"]] == [(h, 3), (other, 1)]


def test_export_import_roundtrip_is_first_wins(tmp_path, capsys):
    h, other = _filled(tmp_path / "a.sqlite")
    dest = LatencyCache(tmp_path / "b.sqlite")
    dest.put(h, "a", SHAPE, _stats(9.0))  # already there: must survive the import
    dest.close()
    file = tmp_path / "shared.json"
    assert main(["cache", "export", str(file), "--cache", str(tmp_path / "a.sqlite")]) == 0
    out = capsys.readouterr().out
    doc = json.loads(file.read_text())
    assert doc["format"] == "edgeprune-latency-cache" and doc["format_version"] == 1 and doc["schema_version"] == 1
    # The unrecorded fingerprint's row is left out with a note: an import would refuse it.
    assert list(doc["fingerprints"]) == [h] and doc["fingerprints"][h]["profile"] == "fast-cpu"
    assert len(doc["rows"]) == 3 and doc["rows"][0]["input_shape"] == list(SHAPE)
    assert f"note: skipped 1 row of fingerprint {other}: its device details are not recorded" in out
    assert "exported 3 rows (1 fingerprint) to" in out
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert main(["cache", "import", str(file), "--cache", str(tmp_path / "b.sqlite")]) == 0
    assert "imported 2 rows" in capsys.readouterr().out
    cache = LatencyCache(tmp_path / "b.sqlite")
    assert cache.count() == 3
    assert cache.get(h, "a", SHAPE).median_ms == 9.0 and cache.get(h, "c", SHAPE).median_ms == 3.0
    assert {g.hash: g.fingerprint is not None for g in cache.fingerprint_rows()} == {h: True}
    cache.close()
    assert main(["cache", "import", str(file), "--cache", str(tmp_path / "b.sqlite")]) == 0
    assert "imported 0 rows" in capsys.readouterr().out


def test_export_one_fingerprint_by_prefix(tmp_path):
    h, _ = _filled(tmp_path / "a.sqlite")
    file = tmp_path / "one.json"
    assert main(["cache", "export", str(file), "--fingerprint", h[:6], "--cache", str(tmp_path / "a.sqlite")]) == 0
    doc = json.loads(file.read_text())
    assert list(doc["fingerprints"]) == [h] and len(doc["rows"]) == 3


def _bad(doc_or_text, tmp_path, capsys) -> str:
    _filled(tmp_path / "a.sqlite")
    file = tmp_path / "bad.json"
    file.write_text(doc_or_text if isinstance(doc_or_text, str) else json.dumps(doc_or_text))
    target = tmp_path / "b.sqlite"
    code = main(["cache", "import", str(file), "--cache", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("edgeprune: error:")
    cache = LatencyCache(target)
    assert cache.count() == 0  # nothing of a bad file is written
    cache.close()
    return err


def _export(tmp_path) -> dict:
    h, _ = _filled(tmp_path / "src.sqlite")
    cache = LatencyCache(tmp_path / "src.sqlite")
    doc, _ = cache.export_rows()
    cache.close()
    return doc


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d["rows"][1].update(median=-1.0), ["row 2", "'median'", "finite positive"]),
        (lambda d: d["rows"][0].update(median=4.0, p90=3.0), ["row 1", "median 4.0 > p90 3.0"]),
        # json.dumps writes Infinity, which is not JSON: refused while reading, before any row.
        (lambda d: d["rows"][0].update(p99=float("inf")), ["not valid JSON", "Infinity is not a JSON number"]),
        (lambda d: d["rows"][0].update(n="20"), ["row 1", "'n'"]),
        (lambda d: d["rows"][0].update(input_shape=[1, 0, 8]), ["row 1", "input_shape"]),
        (lambda d: d["rows"][2].pop("cv"), ["row 3", "keys"]),
        (lambda d: d["rows"][0].update(fingerprint="ffffffffffffffff"), ["row 1", "missing from 'fingerprints'"]),
        (lambda d: d.update(schema_version=99), ["schema_version 99"]),
        (lambda d: d.update(format_version=2), ["format_version 2"]),
        (lambda d: next(v for v in d["fingerprints"].values() if v).update(cpu="forged"), ["does not match"]),
        (lambda d: d.pop("format"), ["not an edgeprune cache export"]),
    ],
    ids=["negative", "unordered", "infinite", "string-n", "bad-shape", "missing-key", "unknown-fp", "schema", "format-version",
         "forged-fingerprint", "not-export"],
)
def test_import_rejects_bad_rows_and_names_the_problem(mutate, words, tmp_path, capsys):
    doc = _export(tmp_path)
    mutate(doc)
    err = _bad(doc, tmp_path, capsys)
    for word in words:
        assert word in err


def test_import_rejects_non_json(tmp_path, capsys):
    assert "not valid JSON" in _bad("{ this is not json", tmp_path, capsys)


def test_clear_one_fingerprint_or_all(tmp_path, capsys):
    h, other = _filled(tmp_path / "c.sqlite")
    path = str(tmp_path / "c.sqlite")
    assert main(["cache", "clear", "--cache", path]) == 2
    assert "--all or --fingerprint" in capsys.readouterr().err
    assert main(["cache", "clear", "--fingerprint", "zzzz", "--cache", path]) == 2
    capsys.readouterr()
    assert main(["cache", "clear", "--fingerprint", other[:8], "--cache", path]) == 0
    assert f"removed 1 latency row and 0 node-time profiles (fingerprint {other})" in capsys.readouterr().out
    cache = LatencyCache(path)
    assert cache.count() == 3 and cache.get(other, "a", SHAPE) is None
    cache.close()
    assert main(["cache", "clear", "--all", "--cache", path]) == 0
    assert "removed 3 latency rows and 0 node-time profiles (all fingerprints)" in capsys.readouterr().out


# --- `edgeprune profile` through the cache -------------------------------------------------------

@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    from tiny_models import TinyCNN

    from edgeprune.exporters.onnx_bytes import export_onnx_bytes

    path = tmp_path / "tiny.onnx"
    path.write_bytes(export_onnx_bytes(TinyCNN(in_channels=3).eval(), SHAPE, 17))
    return path


def _profile(args, capsys) -> dict:
    assert main(["profile", *args, "--target", PROFILE, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_profile_reads_the_cache_and_fresh_measures_again(tiny_onnx, tmp_path, capsys):
    cache = str(tmp_path / "c.sqlite")
    first = _profile([str(tiny_onnx), "--cache", cache], capsys)
    again = _profile([str(tiny_onnx), "--cache", cache], capsys)
    fresh = _profile([str(tiny_onnx), "--cache", cache, "--fresh"], capsys)
    assert (first["from_cache"], again["from_cache"], fresh["from_cache"]) == (False, True, False)
    assert again["runs"] == [{**first["runs"][0]}] and again["median_ms"] == first["median_ms"]
    db = LatencyCache(cache)
    assert db.count() == 1 and db.fingerprint_rows()[0].fingerprint["profile"] == "fast-cpu"
    db.close()


def test_profile_no_cache_touches_no_file(tiny_onnx, tmp_path, capsys):
    result = _profile([str(tiny_onnx), "--no-cache", "--cache", str(tmp_path / "never.sqlite")], capsys)
    assert result["from_cache"] is False and result["cache"] is None
    assert not (tmp_path / "never.sqlite").exists()


def test_two_profile_processes_share_one_cache_file(tiny_onnx, tmp_path):
    cache = tmp_path / "shared.sqlite"  # fresh: both processes also race to create the schema
    cmd = [sys.executable, "-m", "edgeprune", "profile", str(tiny_onnx), "--target", PROFILE, "--cache", str(cache), "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ}) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1000:] for _, err in outs]
    assert all(json.loads(out)["median_ms"] > 0 for out, _ in outs)
    db = LatencyCache(cache)
    assert db.count() == 1 and len(db.fingerprint_rows()) == 1
    db.close()
