"""Latency measurement: stats, fingerprint, the ORT protocol, the SQLite cache and the Profiler."""

import ast
import dataclasses
import math
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import edgeprune.profiling
from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.profiling import ort as ort_backend
from edgeprune.profiling import timing
from edgeprune.profiling.backend import Backend
from edgeprune.profiling.cache import LatencyCache, default_cache_path
from edgeprune.profiling.factory import make_backend
from edgeprune.profiling.fingerprint import fingerprint_hash, host_fingerprint
from edgeprune.profiling.isolated import IsolatedOrtBackend
from edgeprune.profiling.ort import OrtBackend
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.remote import RemoteBackend
from edgeprune.profiling.tensorrt import TensorRTBackend
from edgeprune.profiling.stats import LatencyStats, summarize
from edgeprune.profiling.targets import MeasureSpec, load_profile

SHAPE = (1, 3, 16, 16)


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def _profile(**measure):
    """x86-cpu with a measurement short enough for tests; never noisy unless asked."""
    spec = dict(warmup_runs=2, min_runs=10, max_runs=50, max_seconds=0.02, cv_threshold=100.0,
                repeats_if_noisy=0, sessions=1)
    return dataclasses.replace(load_profile("x86-cpu"), measure=MeasureSpec(**{**spec, **measure}))


def _stats(median=1.0, noisy=False) -> LatencyStats:
    return LatencyStats(n=10, median_ms=median, p90_ms=1.2, p99_ms=1.3, mean_ms=1.05, std_ms=0.1,
                        cv=0.1, noisy=noisy)


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return export_onnx_bytes(_tiny_net(), SHAPE, opset=17)


# --- stats -------------------------------------------------------------------------------------

def test_summarize_known_numbers():
    s = summarize([i / 1000 for i in range(1, 101)])  # 1 ms .. 100 ms
    assert s.n == 100
    assert s.median_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.std_ms == pytest.approx(math.sqrt((100**2 - 1) / 12))
    assert s.cv == pytest.approx(s.std_ms / s.mean_ms)
    assert s.noisy is False


def test_stats_dict_roundtrip():
    s = _stats(noisy=True)
    d = s.to_dict()
    assert set(d) == {"n", "median", "p90", "p99", "mean", "std", "cv", "noisy"}
    assert LatencyStats.from_dict(d) == s


def test_summarize_needs_runs():
    with pytest.raises(ValueError):
        summarize([])


# --- fingerprint -------------------------------------------------------------------------------

def test_fingerprint_has_device_and_runtime():
    fp = host_fingerprint(load_profile("x86-cpu"))
    assert fp["profile"] == "x86-cpu" and fp["cpu"] and fp["cpu_count"] >= 1
    assert fp["runtime"] == "onnxruntime" and fp["runtime_version"] == ort.__version__
    assert (fp["intra_op_threads"], fp["inter_op_threads"]) == (1, 1)


def test_fingerprint_hash_is_order_independent_and_sensitive():
    fp = host_fingerprint(load_profile("x86-cpu"))
    h = fingerprint_hash(fp)
    assert len(h) == 16 and h == fingerprint_hash(dict(reversed(list(fp.items()))))
    assert h != fingerprint_hash({**fp, "intra_op_threads": 2})


# --- ONNX export -------------------------------------------------------------------------------

def test_export_matches_torch_and_keeps_training_flags():
    net = _tiny_net()
    net.train()
    net[1].eval()  # a deliberately frozen BatchNorm must stay frozen
    data = export_onnx_bytes(net, SHAPE, opset=17)
    assert net.training and net[0].training and not net[1].training
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, rtol=1e-4, atol=1e-5)


# --- ORT backend -------------------------------------------------------------------------------

def test_ort_measures_a_real_conv_net(onnx_bytes):
    s = OrtBackend(_profile(cv_threshold=0.15, repeats_if_noisy=1, sessions=3)).measure(onnx_bytes, SHAPE)
    assert 3 * 10 <= s.n <= 3 * 50  # the runs of three sessions, pooled
    assert 0 < s.median_ms <= s.p90_ms <= s.p99_ms < 1000
    assert s.trimmed_ms is not None and 0 < s.trimmed_ms <= s.p90_ms
    assert s.mean_ms > 0 and s.std_ms >= 0 and s.cv == pytest.approx(s.std_ms / s.mean_ms)


def test_ort_repeats_noisy_measurements_and_flags_them(onnx_bytes, monkeypatch):
    phases = []
    real = timing.timed_runs
    monkeypatch.setattr(timing, "timed_runs", lambda *a: phases.append(1) or real(*a))
    s = OrtBackend(_profile(cv_threshold=1e-12, repeats_if_noisy=2, sessions=2)).measure(onnx_bytes, SHAPE)
    assert len(phases) == 3 * 2 and s.noisy  # three tries of two sessions each


def test_ort_measurements_never_overlap(onnx_bytes, monkeypatch):
    intervals = []
    real = timing.timed_runs

    def timed(*args):
        start = time.perf_counter()
        times = real(*args)
        intervals.append((start, time.perf_counter()))
        return times

    monkeypatch.setattr(timing, "timed_runs", timed)
    backend = OrtBackend(_profile())
    threads = [threading.Thread(target=backend.measure, args=(onnx_bytes, SHAPE)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    intervals.sort()
    assert len(intervals) == 3
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(intervals, intervals[1:]))


def test_ort_rejects_invalid_onnx_bytes():
    with pytest.raises(ValueError, match="not a model ONNX Runtime can load"):
        OrtBackend(_profile()).measure(b"definitely not onnx", SHAPE)


def test_ort_refuses_missing_provider():
    profile = dataclasses.replace(_profile(), provider="NoSuchExecutionProvider")
    with pytest.raises(UserError, match="NoSuchExecutionProvider"):
        OrtBackend(profile)


def test_ort_fingerprint_is_cached_copy():
    backend = OrtBackend(_profile())
    fp = backend.fingerprint()
    fp["cpu"] = "changed"
    assert backend.fingerprint()["cpu"] != "changed"


# --- cache -------------------------------------------------------------------------------------

def test_cache_roundtrip_and_key_parts(tmp_path):
    cache = LatencyCache(tmp_path / "deep" / "er" / "c.sqlite")  # missing parents are created
    cache.put("fp1", "w=16,32", SHAPE, _stats(1.5))
    got = cache.get("fp1", "w=16,32", list(SHAPE))
    assert got == _stats(1.5)
    assert cache.get("fp2", "w=16,32", SHAPE) is None
    assert cache.get("fp1", "w=16,48", SHAPE) is None
    assert cache.get("fp1", "w=16,32", (2, 3, 16, 16)) is None
    cache.put("fp1", "w=16,32", SHAPE, _stats(9.9))  # first measurement wins
    assert cache.get("fp1", "w=16,32", SHAPE).median_ms == 1.5
    assert cache.count() == 1
    cache.close()
    reopened = LatencyCache(tmp_path / "deep" / "er" / "c.sqlite")
    assert reopened.get("fp1", "w=16,32", SHAPE) == _stats(1.5)
    reopened.close()


def test_cache_refuses_noisy(tmp_path):
    cache = LatencyCache(tmp_path / "c.sqlite")
    with pytest.raises(ValueError, match="noisy"):
        cache.put("fp", "arch", SHAPE, _stats(noisy=True))
    assert cache.count() == 0
    cache.close()


def test_cache_schema_version_mismatch(tmp_path):
    path = tmp_path / "c.sqlite"
    LatencyCache(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(UserError, match="schema version 0.*new --cache path or delete"):
        LatencyCache(path)


@pytest.mark.parametrize("content", ["text", "other-db"])
def test_cache_rejects_foreign_files(tmp_path, content):
    path = tmp_path / "c.sqlite"
    if content == "text":
        path.write_text("not a database at all, but long enough to have a header" * 4)
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE customers (id INTEGER)")
        db.close()
    with pytest.raises(UserError, match="not an edgeprune SQLite cache"):
        LatencyCache(path)


def test_cache_rejects_directory(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        LatencyCache(tmp_path)


def test_default_cache_path_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path))
    assert default_cache_path() == tmp_path / "latency.sqlite"
    monkeypatch.delenv("EDGEPRUNE_CACHE_DIR")
    assert default_cache_path().name == "latency.sqlite"


def _put_same_key(path, barrier, median):
    barrier.wait()
    cache = LatencyCache(path)
    cache.put("fp", "arch", SHAPE, _stats(median))
    cache.close()


def test_cache_concurrent_writers_same_key(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    path = tmp_path / "c.sqlite"  # fresh: the two processes also race to create the schema
    procs = [ctx.Process(target=_put_same_key, args=(path, barrier, m)) for m in (1.0, 2.0)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = LatencyCache(path)
    assert cache.count() == 1 and cache.get("fp", "arch", SHAPE).median_ms in (1.0, 2.0)
    cache.close()


# --- profiler ----------------------------------------------------------------------------------

class _Exports:
    """Counts how often the Profiler asked for ONNX bytes (it must not on a cache hit)."""

    def __init__(self, data: bytes):
        self.data, self.calls = data, 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.data


def test_profiler_measures_each_arch_once(tmp_path, onnx_bytes):
    export = _Exports(onnx_bytes)
    prof = Profiler(_profile(), cache_path=tmp_path / "c.sqlite")
    first, hit1 = prof.latency("a", SHAPE, export)
    again, hit2 = prof.latency("a", SHAPE, export)
    _, hit3 = prof.latency("b", SHAPE, export)
    assert (hit1, hit2, hit3) == (False, True, False)
    assert again == first
    assert (prof.measurements, prof.cache_hits, export.calls) == (2, 1, 2)
    prof.close()

    # A later run on the same host reads SQLite: no measurement, no export.
    later = Profiler(_profile(), cache_path=tmp_path / "c.sqlite")
    assert later.fingerprint_hash == prof.fingerprint_hash
    stats, hit = later.latency("a", SHAPE, export)
    assert hit and stats == first
    assert (later.measurements, later.cache_hits, export.calls) == (0, 1, 2)
    later.close()


def test_profiler_fresh_always_measures(tmp_path, onnx_bytes):
    prof = Profiler(_profile(), cache_path=tmp_path / "c.sqlite")
    prof.latency("a", SHAPE, lambda: onnx_bytes)
    for _ in range(2):
        _, hit = prof.latency("a", SHAPE, lambda: onnx_bytes, fresh=True)
        assert not hit
    assert (prof.measurements, prof.cache_hits) == (3, 0)
    prof.close()


def test_profiler_without_cache_still_dedups_in_memory(tmp_path, onnx_bytes, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path))
    prof = Profiler(_profile(), use_cache=False)
    prof.latency("a", SHAPE, lambda: onnx_bytes)
    _, hit = prof.latency("a", SHAPE, lambda: onnx_bytes)
    assert hit and prof.measurements == 1
    assert not (tmp_path / "latency.sqlite").exists()
    prof.close()


def test_profiler_never_stores_noisy(tmp_path, monkeypatch):
    prof = Profiler(_profile(), cache_path=tmp_path / "c.sqlite")
    monkeypatch.setattr(prof.backend, "measure", lambda data, shape: _stats(noisy=True))
    for _ in range(2):
        stats, hit = prof.latency("a", SHAPE, lambda: b"")
        assert stats.noisy and not hit
    assert prof.measurements == 2
    prof.close()
    cache = LatencyCache(tmp_path / "c.sqlite")
    assert cache.count() == 0
    cache.close()


class _Machine:
    """A backend stand-in whose speed the test sets: the reference alone takes ``speed`` ms, a
    candidate timed next to it ``ratio`` of whatever the reference took in that pair."""

    def __init__(self, speed: float, ratio: float = 0.5):
        self.speed, self.ratio, self.alone, self.pairs = speed, ratio, 0, 0

    def measure(self, data, shape):
        self.alone += 1
        return _stats(median=self.speed)

    def measure_pair(self, data, shape):
        self.pairs += 1
        ref = dataclasses.replace(_stats(median=self.speed * 1.3), trimmed_ms=self.speed * 1.2)
        # The medians of the pair disagree with the trimmed means (a bimodal candidate): the
        # ratio must come from the trimmed means.
        cand = dataclasses.replace(_stats(median=self.speed * 0.9), trimmed_ms=self.speed * 1.2 * self.ratio)
        return cand, ref

    def set_reference(self, data, shape):
        pass

    def close(self):
        pass


def _with_machine(tmp_path, machine) -> Profiler:
    prof = Profiler(_profile(), cache_path=tmp_path / "c.sqlite")
    prof.backend.close()
    prof.backend = machine
    return prof


def test_a_pair_is_compared_by_trimmed_means_and_reported_in_the_anchors_units(tmp_path):
    prof = _with_machine(tmp_path, _Machine(speed=2.0, ratio=0.25))
    anchor = prof.set_reference("ref", SHAPE, b"ref")
    stats, _ = prof.latency("cand", SHAPE, lambda: b"cand")
    assert anchor.median_ms == 2.0
    assert stats.median_ms == pytest.approx(0.25 * 2.0)  # not 0.9 / 1.3 x 2.0 from the medians
    assert stats.trimmed_ms is None  # what is reported equals what the cache will give back
    prof.close()


def test_a_cached_anchor_a_fresh_measurement_agrees_with_sets_the_units(tmp_path):
    first = _with_machine(tmp_path, _Machine(speed=2.0))
    first.set_reference("ref", SHAPE, b"ref")
    cand, _ = first.latency("cand", SHAPE, lambda: b"cand")
    first.close()
    machine = _Machine(speed=2.0 * 1.1)  # within the tolerance: ordinary drift
    later = _with_machine(tmp_path, machine)
    assert later.set_reference("ref", SHAPE, b"ref").median_ms == 2.0
    again, hit = later.latency("cand", SHAPE, lambda: b"cand")
    assert hit and again == cand and machine.pairs == 0
    assert later.anchor_check == {"cached_ms": 2.0, "fresh_ms": pytest.approx(2.2), "kept_cached": True, "tolerance": 0.15}
    assert machine.alone == 1  # one agreeing re-check is enough
    later.close()


def test_one_re_check_off_by_chance_does_not_retire_the_cached_unit(tmp_path):
    first = _with_machine(tmp_path, _Machine(speed=2.0))
    first.set_reference("ref", SHAPE, b"ref")
    first.close()
    machine = _Machine(speed=2.0)
    speeds = iter([2.6, 2.05])  # one unlucky pooled measurement, then an ordinary one
    machine.measure = lambda data, shape: _stats(median=next(speeds))
    later = _with_machine(tmp_path, machine)
    assert later.set_reference("ref", SHAPE, b"ref").median_ms == 2.0
    assert later.anchor_check["kept_cached"] is True and later.measurements == 2
    later.close()


def test_a_cached_anchor_from_a_bad_spell_is_replaced_and_its_rows_timed_again(tmp_path):
    """A slow spell cached 2.07 ms for a model that timed 1.2 ms later (issue 18): that anchor
    must not set the units of later runs, nor the candidates timed against it."""
    spell = _with_machine(tmp_path, _Machine(speed=2.07, ratio=0.5))
    spell.set_reference("ref", SHAPE, b"ref")
    assert spell.latency("cand", SHAPE, lambda: b"cand")[0].median_ms == pytest.approx(1.035)
    spell.close()
    machine = _Machine(speed=1.2, ratio=0.5)
    later = _with_machine(tmp_path, machine)
    assert later.set_reference("ref", SHAPE, b"ref").median_ms == 1.2
    assert later.anchor_check["kept_cached"] is False and later.anchor_check["cached_ms"] == 2.07
    assert machine.alone == 2  # replaced only after two re-checks in a row disagreed
    stats, hit = later.latency("cand", SHAPE, lambda: b"cand")
    assert not hit and stats.median_ms == pytest.approx(0.6) and machine.pairs == 1
    later.close()
    third = _with_machine(tmp_path, _Machine(speed=1.25))  # the replaced rows are what the cache now holds
    assert third.set_reference("ref", SHAPE, b"ref").median_ms == 1.2
    assert third.latency("cand", SHAPE, lambda: b"cand") == (stats, True)
    third.close()


def test_profiler_unknown_backend(tmp_path):
    profile = dataclasses.replace(_profile(), backend="tensorflow-lite")
    with pytest.raises(UserError, match="backend 'tensorflow-lite'.*one of: onnxruntime"):
        Profiler(profile, cache_path=tmp_path / "c.sqlite")


# --- one backend interface, one factory ---------------------------------------------------------

def test_every_backend_declares_the_interface_and_whether_it_takes_node_times():
    declared = {OrtBackend: True, IsolatedOrtBackend: True, TensorRTBackend: False, RemoteBackend: False}
    for cls, node_times in declared.items():
        assert Backend in cls.__mro__ and not cls.__abstractmethods__  # subclassed, nothing left out
        assert cls.supports_node_times is node_times


def test_make_backend_measures_through_the_agent_unless_it_is_the_agent(tmp_path):
    remote = dataclasses.replace(_profile(), agent="http://127.0.0.1:9")
    assert isinstance(make_backend(remote), RemoteBackend)
    here = make_backend(remote, local=True, timeout_s=5.0, max_memory_mb=1024)  # the agent's options
    assert isinstance(here, IsolatedOrtBackend) and (here.timeout_s, here.max_memory_mb) == (5.0, 1024)
    here.close()
    with pytest.raises(UserError, match="NoSuchExecutionProvider"):
        make_backend(dataclasses.replace(_profile(), provider="NoSuchExecutionProvider"))
    profiler = Profiler(_profile(), cache_path=tmp_path / "c.sqlite")
    assert isinstance(profiler.backend, IsolatedOrtBackend) and profiler.has_node_times
    profiler.close()


def test_ort_pairs_only_with_a_reference(onnx_bytes):
    backend = OrtBackend(_profile())
    with pytest.raises(ValueError, match="set_reference"):
        backend.measure_pair(onnx_bytes, SHAPE)
    backend.set_reference(onnx_bytes, SHAPE)
    cand, ref = backend.measure_pair(onnx_bytes, SHAPE)
    assert cand.n > 0 and ref.n > 0


def test_profiling_imports_nothing_from_the_exporters():
    """The import linter cannot see edgeprune.exporters (installed from exporters/), so its
    torch-free contract would miss this one way for profiling to reach torch."""
    for path in Path(edgeprune.profiling.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            assert not any(n.startswith("edgeprune.exporters") for n in names), f"{path.name} imports {names}"


def test_isolated_worker_uses_the_parents_profile_not_the_file(onnx_bytes):
    # The child used to reload the profile from its YAML file and silently drop in-memory
    # overrides (CI measured with the shipped cv_threshold instead of the test's).
    backend = IsolatedOrtBackend(_profile(min_runs=7, max_runs=7, max_seconds=10.0))
    try:
        assert backend.measure(onnx_bytes, SHAPE).n == 7
    finally:
        backend.close()


# --- per-node times ---------------------------------------------------------------------------

def test_ort_node_times_of_a_real_conv_net(onnx_bytes):
    times = OrtBackend(_profile()).node_times(onnx_bytes, SHAPE, runs=7)
    assert times.runs == 7 and times.run_ms > 0
    conv = next(n for n in times.nodes if "Conv" in n.op_type)  # BN and ReLU are fused into it
    # ORT's NCHWc layout may pad the 8 output channels to its block size (16 on AVX-512)
    assert conv.input_shapes[0] == list(SHAPE) and conv.input_shapes[1][1:] == [3, 3, 3]
    assert conv.input_shapes[1][0] in (8, 16) and conv.output_shapes[0][2:] == [16, 16]
    assert any(n.op_type == "Gemm" for n in times.nodes)
    assert all(0 < n.median_ms < times.run_ms for n in times.nodes)
    # A factor 2, not equality: per-node medians need not add up to the run's median (each is the
    # median of its own runs) and the run includes time between nodes. Node times in another unit
    # land 1000x over it, summed over the 7 runs about 3x.
    assert sum(n.median_ms for n in times.nodes) < 2 * times.run_ms


def test_node_trace_counts_only_the_timed_runs():
    def node(ts, dur):
        return {"cat": "Node", "name": "/c/Conv_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": "Conv", "input_type_shape": [{"float": [1, 3, 4, 4]}], "output_type_shape": [{"float": [1, 2, 4, 4]}]}}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 1000}, node(10, 900),  # warm-up
        {"cat": "Session", "name": "model_run", "ts": 2000, "dur": 30}, node(2010, 10),
        {"cat": "Session", "name": "model_run", "ts": 3000, "dur": 40}, node(3010, 20),
        {"cat": "Session", "name": "model_run", "ts": 4000, "dur": 50}, node(4010, 30),
    ]
    times = ort_backend._parse_trace(events, runs=3)
    assert times.runs == 3 and times.run_ms == pytest.approx(0.04)
    (only,) = times.nodes
    assert (only.name, only.op_type, only.median_ms) == ("/c/Conv", "Conv", pytest.approx(0.02))
    assert only.input_shapes == [[1, 3, 4, 4]] and only.output_shapes == [[1, 2, 4, 4]]


def test_isolated_node_times_and_measure_share_the_worker(onnx_bytes):
    backend = IsolatedOrtBackend(_profile())
    try:
        times = backend.node_times(onnx_bytes, SHAPE, runs=3)
        assert times.runs == 3 and any("Conv" in n.op_type for n in times.nodes)
        assert backend.measure(onnx_bytes, SHAPE).median_ms > 0
        with pytest.raises(ValueError, match="at least one run"):
            backend.node_times(onnx_bytes, SHAPE, runs=0)
    finally:
        backend.close()


def test_the_ratio_falls_back_to_medians_without_usable_trimmed_means():
    from edgeprune.profiling.stats import ratio

    cand = dataclasses.replace(_stats(median=1.0), trimmed_ms=0.8)
    ref = dataclasses.replace(_stats(median=2.0), trimmed_ms=1.0)
    assert ratio(cand, ref) == 0.8
    for bad in (None, float("nan"), 0.0, -1.0):  # e.g. an agent that sends none, or nonsense
        assert ratio(cand, dataclasses.replace(ref, trimmed_ms=bad)) == 0.5
