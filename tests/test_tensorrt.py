"""TensorRT backend without TensorRT: trtexec command building, parsing of REAL trtexec output
(tests/fixtures/trtexec/, sources in its README), the backend's flow against a stand-in trtexec
script, and the Jetson fingerprint reads with fake files and commands."""

import dataclasses
import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from edgeprune.errors import UserError
from edgeprune.profiling import fingerprint as fpmod
from edgeprune.profiling import tensorrt as trt
from edgeprune.profiling.targets import load_profile

FIXTURES = Path(__file__).parent / "fixtures" / "trtexec"


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- parsing real output --------------------------------------------------------------------------


def test_parse_trt84_single_percentile_format():
    s = trt.parse_trtexec_output(_fixture("trt8.4-jetson-xavier.log"))
    assert s.version == (8, 4, 0)
    assert (s.minimum, s.maximum, s.mean, s.median) == (0.375977, 0.403564, 0.388221, 0.388443)
    assert s.percentiles == {99.0: 0.393188}  # not the Latency line's 0.420288
    assert s.cv is None


def test_parse_multi_percentile_format():
    s = trt.parse_trtexec_output(_fixture("trt8.6-multi-percentile.log"))
    assert s.median == 30.333 and s.percentiles == {90.0: 30.4037, 95.0: 30.4156, 99.0: 30.4204}
    s91 = trt.parse_trtexec_output(_fixture("trt9.1-compute-line.log"))
    assert s91.version == (9, 1, 0) and s91.percentiles[90.0] == 30.0258 and s91.mean == 29.2394


def test_parse_pasted_log_without_prefixes_and_with_cov_warning():
    s = trt.parse_trtexec_output(_fixture("unstable-pasted.log"))
    assert (s.median, s.percentiles[99.0]) == (3.71753, 3.87793)  # "percentile(99%) 3.87793" has no "="
    assert s.cv == pytest.approx(0.0555763)


def test_parse_version_10x_banner_and_queries():
    assert trt.parse_version(_fixture("trt10.3-orin-nx-banner.log")) == (10, 3, 0)
    assert trt.parse_version("[I] TensorRT version: 8.6.3") == (8, 6, 3)
    text = _fixture("trt10.x-queries.log") + "[I] GPU Compute Time: min = 1 ms, max = 3 ms, mean = 2 ms, median = 2 ms, percentile(90%) = 2.5 ms\n"
    assert trt.parse_trtexec_output(text).queries == 29


def test_parse_rejects_output_without_summary():
    with pytest.raises(ValueError, match="GPU Compute Time"):
        trt.parse_trtexec_output(_fixture("trt10.3-orin-nx-banner.log"))


def test_stats_take_trtexec_percentiles_and_runs_for_spread():
    s = trt.parse_trtexec_output(_fixture("trt8.4-jetson-xavier.log"))
    times = [0.38, 0.39, 0.388, 0.40, 0.376]
    stats = trt.stats_from_trtexec(s, times)
    assert stats.median_ms == 0.388443 and stats.p99_ms == 0.393188 and stats.mean_ms == 0.388221
    assert stats.n == 5 and stats.p90_ms == pytest.approx(0.396)  # 8.4 printed no p90: from the runs
    assert stats.cv == pytest.approx(stats.std_ms / 0.388221)
    with pytest.raises(ValueError, match="no per-run times"):
        trt.stats_from_trtexec(s, [])


def test_export_times_json_as_trtexec_writes_it():
    text = '[\n  { "startEnqMs" : 1.0, "computeMs" : 0.5, "latencyMs" : 0.6 }\n, { "startEnqMs" : 2.0, "computeMs" : 0.7, "latencyMs" : 0.8 }\n]\n'
    assert trt.parse_export_times(text) == [0.5, 0.7]


# --- command building -----------------------------------------------------------------------------


def test_measure_command_fp16_builds_and_times_with_protocol_flags(tmp_path):
    p = load_profile("jetson-orin")
    argv = trt.measure_command("trtexec", p, (10, 3, 0), tmp_path / "e.engine", tmp_path / "t.cache", tmp_path / "x.json", onnx=tmp_path / "m.onnx")
    assert argv[0] == "trtexec" and f"--onnx={tmp_path / 'm.onnx'}" in argv and f"--saveEngine={tmp_path / 'e.engine'}" in argv
    for flag in ("--fp16", "--useCudaGraph", "--noDataTransfers", "--useSpinWait", "--warmUp=500", "--iterations=200",
                 "--duration=3", "--percentile=50,90,99", "--memPoolSize=workspace:2048", f"--timingCacheFile={tmp_path / 't.cache'}"):
        assert flag in argv, flag
    assert "--int8" not in argv
    loaded = trt.measure_command("trtexec", p, (10, 3, 0), tmp_path / "e.engine", tmp_path / "t.cache", tmp_path / "x.json")
    assert f"--loadEngine={tmp_path / 'e.engine'}" in loaded and not any(a.startswith(("--onnx", "--fp16")) for a in loaded)


def test_int8_dla_and_old_trtexec_flags(tmp_path):
    p = dataclasses.replace(load_profile("jetson-orin-int8"), provider="DLA0")
    flags = trt.build_flags(p, (8, 2, 1))
    assert flags[:2] == ["--int8", "--fp16"] and "--workspace=2048" in flags
    assert "--useDLACore=0" in flags and "--allowGPUFallback" in flags
    timing = trt.timing_flags(dataclasses.replace(p, measure=dataclasses.replace(p.measure, max_seconds=0.4)), (8, 2, 1))
    assert "--percentile=99" in timing and "--duration=1" in timing
    build = trt.build_command("trtexec", p, (8, 5, 2), tmp_path / "m.onnx", tmp_path / "e", tmp_path / "c")
    assert build[-1] == "--buildOnly"
    assert trt.build_command("trtexec", p, (10, 0, 0), tmp_path / "m.onnx", tmp_path / "e", tmp_path / "c")[-1] == "--skipInference"


# --- the backend against a stand-in trtexec -------------------------------------------------------

_FAKE_TRTEXEC = """\
#!{python}
# Stand-in for trtexec: records its argv, writes --saveEngine/--exportTimes like trtexec, prints a
# summary in the 8.6+ format. Only the process contract is faked; the format is tested on real logs.
import json, statistics, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec " + " ".join(args))
if args == ["--help"]:
    sys.exit(0)
opts = dict(a[2:].split("=", 1) for a in args if "=" in a)
if "onnx" in opts and open(opts["onnx"], "rb").read() == b"bad":
    print("[E] [TRT] ModelImporter.cpp: failed to parse onnx file"); sys.exit(1)
if "saveEngine" in opts:
    open(opts["saveEngine"], "wb").write(b"engine:" + open(opts["onnx"], "rb").read())
if "--skipInference" in args or "--buildOnly" in args:
    sys.exit(0)
model = opts.get("onnx") or opts["loadEngine"]
base = 2.0 if "ref" in open(model, "rb").read().decode(errors="ignore") else 1.0
times = [base * (1 + 0.01 * (i % 5)) for i in range(50)]
json.dump([{{"computeMs": t, "latencyMs": t}} for t in times], open(opts["exportTimes"], "w"))
q = statistics.quantiles(times, n=100)
print("[I] GPU Compute Time: min = %g ms, max = %g ms, mean = %g ms, median = %g ms, percentile(90%%) = %g ms, percentile(99%%) = %g ms"
      % (min(times), max(times), statistics.mean(times), statistics.median(times), q[89], q[98]))
"""


@pytest.fixture
def fake_trtexec(tmp_path, monkeypatch):
    log = tmp_path / "argv.log"
    script = tmp_path / "trtexec"
    script.write_text(_FAKE_TRTEXEC.format(python=sys.executable, log=str(log)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv(trt.TRTEXEC_ENV, str(script))
    return log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip() != '["--help"]']


def test_backend_builds_once_then_loads_engine(fake_trtexec, tmp_path):
    backend = trt.TensorRTBackend(load_profile("jetson-orin"), cache_dir=tmp_path / "engines")
    assert backend.version == (10, 3, 0) and backend.fingerprint()["runtime"] == "tensorrt"
    first = backend.measure(b"model-a", (1, 3, 32, 32))
    second = backend.measure(b"model-a", (1, 3, 32, 32))
    calls = _calls(fake_trtexec)
    assert any(a.startswith("--onnx=") for a in calls[0]) and any(a.startswith("--loadEngine=") for a in calls[1])
    assert len(list(backend.engine_dir.glob("*.engine"))) == 1 and first.median_ms == second.median_ms == 1.02
    assert first.n == 50 and not first.noisy
    backend.set_reference(b"model-ref", (1, 3, 32, 32))
    cand, ref = backend.measure_pair(b"model-a", (1, 3, 32, 32))
    assert ref.median_ms == pytest.approx(2 * cand.median_ms) and cand.n == 100


def test_backend_reports_trtexec_failure(fake_trtexec, tmp_path):
    backend = trt.TensorRTBackend(load_profile("jetson-orin"), cache_dir=tmp_path / "engines")
    with pytest.raises(ValueError, match="failed to parse onnx"):
        backend.measure(b"bad", (1, 3, 32, 32))
    assert not list(backend.engine_dir.glob("*.engine"))  # nothing half-built is cached


def test_build_engine_returns_versions_and_writes_atomically(fake_trtexec, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"model")
    info = trt.build_engine(onnx, tmp_path / "out" / "model.engine", load_profile("jetson-orin-nano"))
    assert (tmp_path / "out" / "model.engine").read_bytes() == b"engine:model"
    assert info["tensorrt_version"] == "10.3.0" and info["precision"] == "fp16" and "--skipInference" in info["command"]
    assert not list((tmp_path / "out").glob("*.partial"))


def test_without_trtexec_is_a_clear_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv(trt.TRTEXEC_ENV, str(tmp_path / "missing"))
    (tmp_path / "m.onnx").write_bytes(b"model")
    with pytest.raises(UserError, match="trtexec was not found"):
        trt.build_engine(tmp_path / "m.onnx", tmp_path / "e", load_profile("jetson-orin"))
    with pytest.raises(UserError, match="trtexec was not found"):
        trt.TensorRTBackend(load_profile("jetson-orin"))


# --- Jetson fingerprint reads ---------------------------------------------------------------------

# Shaped like JetPack's output (not captured from a device): the fields the parser reads.
_NVPMODEL = "NV Power Mode: MAXN\n0\n"
_CLOCKS_LOCKED = textwrap.dedent("""\
    SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
    Online CPUs: 0-11
    cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
    cpu1: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
    GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000
    EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
""")


def _fake_jetson(tmp_path, monkeypatch, commands):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19 23:24:25 UTC 2024\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    monkeypatch.setattr(fpmod, "TEGRA_RELEASE", release)
    monkeypatch.setattr(fpmod, "DEVICE_TREE_MODEL", model)
    monkeypatch.setattr(fpmod, "run_command", lambda argv: commands.get(argv[0]))


def test_jetson_facts_from_fake_device(tmp_path, monkeypatch):
    _fake_jetson(tmp_path, monkeypatch, {"nvpmodel": _NVPMODEL, "jetson_clocks": _CLOCKS_LOCKED})
    facts = fpmod.jetson_facts()
    assert facts == {"l4t": "36.3.0", "model": "NVIDIA Jetson AGX Orin Developer Kit", "power_mode": "MAXN", "power_mode_id": 0, "clocks_locked": True}
    unlocked = _CLOCKS_LOCKED.replace("GPU MinFreq=1300500000", "GPU MinFreq=306000000")
    assert fpmod.parse_clocks_locked(unlocked) is False


def test_jetson_reads_degrade_when_tools_are_missing(tmp_path, monkeypatch):
    _fake_jetson(tmp_path, monkeypatch, {})  # no nvpmodel, jetson_clocks needs root, ...
    monkeypatch.setattr(fpmod, "CUDA_VERSION_FILES", (tmp_path / "nope.json",))
    monkeypatch.setattr(fpmod, "tensorrt_version", lambda: None)
    facts = fpmod.device_facts(tensorrt=True)
    assert facts["jetson"]["power_mode"] is None and facts["jetson"]["clocks_locked"] is None
    assert facts["cuda_version"] is None and facts["gpu"] == "NVIDIA Jetson AGX Orin Developer Kit"
    fp = fpmod.compose_fingerprint(load_profile("jetson-orin"), facts)
    assert fp["runtime"] == "tensorrt" and fp["jetson"]["l4t"] == "36.3.0" and fp["precision"] == "fp16"


def test_not_a_jetson_and_cuda_version_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fpmod, "TEGRA_RELEASE", tmp_path / "absent")
    assert fpmod.jetson_facts() is None
    version = tmp_path / "version.json"
    version.write_text(json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}))
    txt = tmp_path / "version.txt"
    txt.write_text("CUDA Version 10.2.300\n")
    monkeypatch.setattr(fpmod, "CUDA_VERSION_FILES", (tmp_path / "bad.json", version))
    assert fpmod.cuda_version() == "12.6.68"
    monkeypatch.setattr(fpmod, "CUDA_VERSION_FILES", (txt,))
    assert fpmod.cuda_version() == "10.2.300"


def test_x86_ort_fingerprint_keeps_its_historic_keys():
    fp = fpmod.host_fingerprint(load_profile("x86-cpu"))
    if fpmod.jetson_facts() is None:
        assert set(fp) == {"profile", "cpu", "cpu_count", "machine", "os", "runtime", "runtime_version", "provider",
                           "intra_op_threads", "inter_op_threads", "execution_mode", "precision", "graph_optimization", "opset"}
    assert os.cpu_count() == fp["cpu_count"]


def test_export_engine_is_built_from_the_fp32_onnx_and_marked_not_portable(fake_trtexec):
    from edgeprune.jobs.export import _build_engine

    blob, info = _build_engine(load_profile("jetson-orin"), b"fp32-onnx")
    assert blob == b"engine:fp32-onnx"
    assert info["portable"] is False and info["file"] == "model.engine" and info["tensorrt_version"] == "10.3.0"
    with pytest.raises(UserError, match="needs a TensorRT target"):
        _build_engine(load_profile("x86-cpu"), b"fp32-onnx")
