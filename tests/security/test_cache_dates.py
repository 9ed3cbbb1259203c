"""Audit finding 8, the cache: a row dated in the future must not outlive the baseline's re-check,
nor, as the baseline's own row, hide every row a run writes. A --cache file may come from anyone
(and imports used to accept rows dated up to a day ahead), so such rows are written here straight
into the SQLite file, as whoever made the file could.

Timed on the simulated device (deterministic latency, no sleep), through the real Profiler.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from edgeprune.cli import main
from edgeprune.profiling import cache as cache_mod
from edgeprune.profiling.cache import LatencyCache
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.simulated import SimulatedBackend
from edgeprune.profiling.targets import load_profile

from .test_agent_security import conv_model
from .test_cache_security import FP, _doc, _row, _stats

SIM = Path(__file__).resolve().parents[1] / "fixtures" / "sim-fast.yaml"
MODEL_SHAPE = (1, 3, 32, 32)
HOUR = 3600.0


def _write_row(path: Path, fp: str, arch: str, median: float, created: float) -> None:
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO latency VALUES (?, ?, ?, 20, ?, ?, ?, ?, 0.01, 0.01, ?)",
                   (fp, arch, "x".join(map(str, MODEL_SHAPE)), median, median * 1.1, median * 1.2, median, created))
    db.close()


def _profiler(path: Path) -> Profiler:
    return Profiler(load_profile(str(SIM)), cache_path=path)


def test_a_future_dated_baseline_row_does_not_hide_the_rows_a_run_writes(tmp_path):
    path = tmp_path / "c.sqlite"
    reference, candidate = conv_model(width=8, shape=MODEL_SHAPE), conv_model(width=24, shape=MODEL_SHAPE)
    true_ms = SimulatedBackend(load_profile(str(SIM))).latency_ms(reference)
    first = _profiler(path)
    fp = first.fingerprint_hash
    _write_row(path, fp, "ref", true_ms, time.time() + HOUR)  # the baseline, dated an hour ahead
    try:
        first.set_reference("ref", MODEL_SHAPE, reference)
        first.latency("cand", MODEL_SHAPE, lambda: candidate)
    finally:
        first.close()
    second = _profiler(path)  # the next run on this cache
    try:
        second.set_reference("ref", MODEL_SHAPE, reference)
        stats, from_cache = second.latency("cand", MODEL_SHAPE, lambda: candidate)
    finally:
        second.close()
    assert from_cache  # the first run's row is there for the second
    cache = LatencyCache(path)
    assert cache.created(fp, "ref", MODEL_SHAPE) <= time.time()  # the future-dated baseline was replaced
    cache.close()


def test_a_future_dated_row_does_not_survive_the_baselines_recheck(tmp_path):
    path = tmp_path / "c.sqlite"
    reference, candidate = conv_model(width=8, shape=MODEL_SHAPE), conv_model(width=24, shape=MODEL_SHAPE)
    true_ms = SimulatedBackend(load_profile(str(SIM))).latency_ms(reference)
    run = _profiler(path)
    fp = run.fingerprint_hash
    _write_row(path, fp, "ref", true_ms * 3, time.time() - HOUR)  # a stale baseline: the re-check replaces it
    _write_row(path, fp, "cand", 123.0, time.time() + HOUR)  # in the stale units, dated ahead
    try:
        run.set_reference("ref", MODEL_SHAPE, reference)
        assert run.anchor_check["kept_cached"] is False
        stats, from_cache = run.latency("cand", MODEL_SHAPE, lambda: candidate)
    finally:
        run.close()
    assert not from_cache and stats.median_ms != 123.0
    cache = LatencyCache(path)
    assert cache.get(fp, "cand", MODEL_SHAPE).median_ms == pytest.approx(stats.median_ms)  # replaced in the file too
    cache.close()


def test_the_cache_reads_no_row_dated_beyond_the_clock_skew_allowance(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = LatencyCache(path)
    now = time.time()
    for arch, created in (("skewed", now + 60), ("ahead", now + cache_mod.FUTURE_SLACK_S + 60)):
        _write_row(path, FP, arch, 1.0, created)
    assert cache.get(FP, "skewed", MODEL_SHAPE) is not None  # a minute of clock skew is tolerated
    assert cache.get(FP, "ahead", MODEL_SHAPE) is None and cache.created(FP, "ahead", MODEL_SHAPE) is None
    cache.put(FP, "ahead", MODEL_SHAPE, _stats(2.0))  # first wins, except over a row no reader sees
    assert cache.get(FP, "ahead", MODEL_SHAPE).median_ms == 2.0
    cache.close()


@pytest.mark.parametrize("ahead, accepted", [(HOUR, False), (6 * HOUR, False), (60.0, True)])
def test_an_import_refuses_rows_dated_ahead_beyond_the_allowance(ahead, accepted, tmp_path, capsys):
    file = tmp_path / "rows.json"
    file.write_text(json.dumps(_doc(rows=[_row(created=time.time() + ahead)])))
    code = main(["cache", "import", str(file), "--cache", str(tmp_path / "c.sqlite")])
    err = capsys.readouterr().err
    if accepted:
        assert code == 0, err
    else:
        assert code == 2 and "'created'" in err and "5 minutes" in err and len(err.strip().splitlines()) == 1, err
