"""TensorRT backend: engines built and timed with ``trtexec`` on the device (a Jetson, usually
behind ``edgeprune agent``).

Why trtexec and not the Python API: it ships with every JetPack next to the bindings, its
"GPU Compute Time" is the number NVIDIA asks for in every performance report (CUDA graphs,
spin-wait, no host transfers), and it needs no extra process of ours to stay torch-free. The
``tensorrt`` module is only read for its version.

Protocol: the first measurement of an ONNX graph builds its engine and times it in one trtexec
run (``--saveEngine``); engines and the timing cache are kept per device fingerprint under the
edgeprune cache folder, so a later measurement of the same graph only loads the engine. Timing
flags: ``--useCudaGraph --noDataTransfers --useSpinWait``, ``--warmUp`` (ms, profile
``tensorrt.warmup_ms``), ``--iterations`` (``measure.min_runs``), ``--duration``
(``measure.max_seconds``, whole seconds: older trtexec parses an integer), ``--percentile``,
``--exportTimes`` (per-run compute times for n, std and CV, which the text summary lacks).

Not run on hardware in this repository (TensorRT cannot be installed where it was written): the
command building and the parsing are tested against real trtexec output in
``tests/fixtures/trtexec/`` (sources in the README there). Supported: TensorRT 8.0 and later.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.errors import UserError
from edgeprune.files import move_into_place
from edgeprune.profiling.backend import Backend
from edgeprune.profiling.fingerprint import device_facts, fingerprint_hash, host_fingerprint
from edgeprune.profiling.paths import cache_folder
from edgeprune.profiling.stats import LatencyStats, NodeTimes, summarize
from edgeprune.profiling.trtexec import TRTEXEC_DEFAULT, TRTEXEC_ENV, find_trtexec, parse_version, trtexec_version
from edgeprune.profiling.targets import Profile

# An engine build of a large CNN on an Orin Nano takes minutes; a hung trtexec must still end.
_TRTEXEC_TIMEOUT_S = 3600.0
# Alternating blocks per model in measure_pair (each block is a trtexec run of duration/blocks).
_BLOCKS = 2
# One trtexec at a time per process: two would share the GPU and time each other.
_TRT_LOCK = threading.Lock()

_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


@dataclass
class TrtexecSummary:
    """What trtexec's ``=== Performance summary ===`` says about GPU compute time (ms)."""

    version: tuple[int, ...] | None
    minimum: float
    maximum: float
    mean: float
    median: float
    percentiles: dict[float, float] = field(default_factory=dict)
    queries: int | None = None
    cv: float | None = None  # only printed when trtexec finds the run unstable


# --- command building -----------------------------------------------------------------------------


def build_flags(profile: Profile, version: tuple[int, ...]) -> list[str]:
    """Flags that decide what engine is built: precision, workspace, device, sparsity."""
    trt = profile.tensorrt
    if trt is None:
        raise UserError(f"target '{profile.name}' has no 'tensorrt' section; it cannot build engines")
    flags = []
    if profile.precision == "fp16":
        flags.append("--fp16")
    elif profile.precision == "int8":
        # FP16 too, as deployed INT8 engines are built: layers without an INT8 kernel fall back
        # to FP16 instead of FP32. Without a calibration cache trtexec uses placeholder scales,
        # which time like calibrated ones (accuracy is not measured here).
        flags += ["--int8", "--fp16"]
    # --memPoolSize replaced --workspace in 8.4; a bare number is MiB in both spellings.
    flags.append(f"--memPoolSize=workspace:{trt.workspace_mb}" if version >= (8, 4) else f"--workspace={trt.workspace_mb}")
    if profile.provider.startswith("DLA"):
        flags += [f"--useDLACore={profile.provider[3:]}", "--allowGPUFallback"]
    if trt.sparsity:
        flags.append("--sparsity=enable")  # 2:4 weights may take sparse kernels; others stay dense
    return flags


def timing_flags(profile: Profile, version: tuple[int, ...], duration_s: float | None = None) -> list[str]:
    """Flags that decide how the engine is timed (the profile's protocol)."""
    trt = profile.tensorrt
    spec = profile.measure
    seconds = spec.max_seconds if duration_s is None else duration_s
    # --percentile takes a list since 8.6; earlier versions take one number (p90 then comes from
    # the exported per-run times).
    percentile = "--percentile=50,90,99" if version >= (8, 6) else "--percentile=99"
    return [
        "--useCudaGraph",
        "--noDataTransfers",
        "--useSpinWait",
        f"--warmUp={trt.warmup_ms if trt is not None else 200}",
        f"--iterations={spec.min_runs}",
        f"--duration={max(1, math.ceil(seconds))}",
        percentile,
    ]


def measure_command(
    trtexec: str,
    profile: Profile,
    version: tuple[int, ...],
    engine: Path,
    timing_cache: Path,
    times: Path,
    onnx: Path | None = None,
    duration_s: float | None = None,
) -> list[str]:
    """trtexec argv that times ``engine``, building it from ``onnx`` first when given."""
    if onnx is not None:
        source = [f"--onnx={onnx}", f"--saveEngine={engine}", f"--timingCacheFile={timing_cache}", *build_flags(profile, version)]
    else:
        source = [f"--loadEngine={engine}"]
        if profile.provider.startswith("DLA"):
            source.append(f"--useDLACore={profile.provider[3:]}")
    return [trtexec, *source, *timing_flags(profile, version, duration_s), f"--exportTimes={times}"]


def build_command(
    trtexec: str, profile: Profile, version: tuple[int, ...], onnx: Path, engine: Path, timing_cache: Path
) -> list[str]:
    """trtexec argv that only builds (for export): no timing runs."""
    skip = "--skipInference" if version >= (8, 6) else "--buildOnly"
    return [trtexec, f"--onnx={onnx}", f"--saveEngine={engine}", f"--timingCacheFile={timing_cache}", *build_flags(profile, version), skip]


# --- parsing --------------------------------------------------------------------------------------


def parse_trtexec_output(text: str) -> TrtexecSummary:
    """The GPU compute time summary of a trtexec run (8.x one-percentile and 8.6+/10.x
    multi-percentile formats, with or without the ``[date] [I]`` prefixes)."""
    m = re.search(r"GPU Compute Time:\s*(min\b[^\n]*)", text)
    if m is None:
        raise ValueError("trtexec output has no 'GPU Compute Time:' summary line")
    line = m.group(1)
    values = {k: float(v) for k, v in re.findall(rf"\b(min|max|mean|median)\s*=?\s*{_NUMBER}\s*ms", line)}
    missing = {"min", "max", "mean", "median"} - values.keys()
    if missing:
        raise ValueError(f"trtexec 'GPU Compute Time' line lacks {', '.join(sorted(missing))}: {line.strip()}")
    percentiles = {float(p): float(v) for p, v in re.findall(rf"percentile\(\s*{_NUMBER}\s*%\)\s*=?\s*{_NUMBER}\s*ms", line)}
    queries = re.search(r"Timing trace has (\d+) queries", text)
    cv = re.search(rf"coefficient of variance\s*=\s*{_NUMBER}\s*%", text)
    return TrtexecSummary(
        version=parse_version(text),
        minimum=values["min"],
        maximum=values["max"],
        mean=values["mean"],
        median=values["median"],
        percentiles=percentiles,
        queries=int(queries.group(1)) if queries else None,
        cv=float(cv.group(1)) / 100 if cv else None,
    )


def parse_export_times(text: str) -> list[float]:
    """Per-run GPU compute times (ms) from a ``--exportTimes`` JSON file (a list of objects
    with ``computeMs`` in every trtexec version)."""
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("trtexec --exportTimes file is not a JSON list")
    return [float(entry["computeMs"]) for entry in data if isinstance(entry, dict) and "computeMs" in entry]


def stats_from_trtexec(summary: TrtexecSummary, compute_ms: list[float]) -> LatencyStats:
    """trtexec's own median/p90/p99/mean; n, std and CV (and any percentile the text lacks)
    from the per-run times."""
    if not compute_ms:
        raise ValueError("trtexec exported no per-run times; cannot tell how noisy the run was")
    runs = summarize([t / 1e3 for t in compute_ms])
    return LatencyStats(
        n=len(compute_ms),
        median_ms=summary.percentiles.get(50.0, summary.median),
        p90_ms=summary.percentiles.get(90.0, runs.p90_ms),
        p99_ms=summary.percentiles.get(99.0, runs.p99_ms),
        mean_ms=summary.mean,
        std_ms=runs.std_ms,
        cv=runs.std_ms / summary.mean if summary.mean > 0 else 0.0,
    )


# --- the backend ----------------------------------------------------------------------------------


def require_trtexec() -> str:
    """trtexec's path, or a one-line UserError naming where it was looked for and the fix."""
    trtexec = find_trtexec()
    if trtexec is None:
        raise UserError(
            f"TensorRT's trtexec was not found (looked at ${TRTEXEC_ENV}, PATH and "
            f"{TRTEXEC_DEFAULT}); install TensorRT (JetPack ships it) or measure through an "
            "agent on the device (profile key 'agent: http://HOST:PORT')"
        )
    return trtexec


class TrtexecTimeout(UserError):
    """trtexec ran past its time limit and was stopped. ``seconds``: that limit. Its message names
    no file: on the device agent it may reach a client."""

    def __init__(self, seconds: float):
        super().__init__(
            f"trtexec did not finish building or timing the engine within {seconds:g} s and was stopped; "
            "time a smaller model, or check that trtexec runs on this device (e.g. trtexec --help)"
        )
        self.seconds = seconds


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TRTEXEC_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TrtexecTimeout(_TRTEXEC_TIMEOUT_S) from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        tail = " | ".join(line for line in output.strip().splitlines()[-5:])
        raise ValueError(f"trtexec failed (exit {done.returncode}): {tail}")
    return output


class TensorRTBackend(Backend):
    """Times with trtexec on this host's GPU (or DLA). No per-node times: the search's latency
    surrogate reads ONNX Runtime's profile, which trtexec does not produce."""

    supports_node_times = False

    def __init__(self, profile: Profile, cache_dir: Path | None = None):
        self.profile = profile
        self.trtexec = require_trtexec()
        version = trtexec_version(self.trtexec)
        self.version = tuple(int(v) for v in version.split(".")) if version else (8, 0, 0)
        self._fingerprint = host_fingerprint(profile)
        root = cache_dir or cache_folder() / "tensorrt"
        # Engines are only valid for the GPU, TensorRT version and build flags they were built
        # with: exactly what the fingerprint hashes.
        self.engine_dir = root / fingerprint_hash(self._fingerprint)
        self.engine_dir.mkdir(parents=True, exist_ok=True)
        self._reference: tuple[bytes, tuple[int, ...]] | None = None

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fingerprint)

    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> LatencyStats:
        """Median GPU compute time of one inference; ``noisy`` as in the ORT backend."""
        spec = self.profile.measure
        with _TRT_LOCK:
            best = self._time(onnx_bytes)
            for _ in range(spec.repeats_if_noisy):
                if best.cv <= spec.cv_threshold:
                    break
                again = self._time(onnx_bytes)
                if again.cv < best.cv:
                    best = again
        best.noisy = best.cv > spec.cv_threshold
        return best

    def set_reference(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> None:
        self._reference = (onnx_bytes, tuple(input_shape))

    def measure_pair(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> tuple[LatencyStats, LatencyStats]:
        """(candidate, reference) timed in alternating trtexec runs, per-run times pooled."""
        if self._reference is None:
            raise ValueError("set_reference() must be called before measure_pair()")
        reference = self._reference[0]
        block_s = self.profile.measure.max_seconds / _BLOCKS
        pooled: tuple[list[float], list[float]] = ([], [])
        with _TRT_LOCK:
            for _ in range(_BLOCKS):
                for blob, times in ((onnx_bytes, pooled[0]), (reference, pooled[1])):
                    times.extend(self._run_timed(blob, block_s)[1])
        cand, ref = (summarize([t / 1e3 for t in times]) for times in pooled)
        for stats in (cand, ref):
            stats.noisy = stats.cv > self.profile.measure.cv_threshold
        return cand, ref

    def node_times(self, onnx_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        raise NotImplementedError(f"target '{self.profile.name}' times with TensorRT, which has no ONNX Runtime per-node profile")

    def close(self) -> None:
        """Nothing stays running between measurements (each is one trtexec process)."""

    def _time(self, onnx_bytes: bytes) -> LatencyStats:
        summary, compute_ms = self._run_timed(onnx_bytes, None)
        return stats_from_trtexec(summary, compute_ms)

    def _run_timed(self, onnx_bytes: bytes, duration_s: float | None) -> tuple[TrtexecSummary, list[float]]:
        engine = self.engine_dir / f"{hashlib.sha256(onnx_bytes).hexdigest()[:20]}.engine"
        with tempfile.TemporaryDirectory(prefix="edgeprune-trt-") as tmp:
            times = Path(tmp) / "times.json"
            onnx = None
            target = engine
            if not engine.is_file():
                onnx = Path(tmp) / "model.onnx"
                onnx.write_bytes(onnx_bytes)
                target = Path(tmp) / "model.engine"  # moved into the cache only when complete
            argv = measure_command(
                self.trtexec, self.profile, self.version, target, self.engine_dir / "timing.cache", times, onnx, duration_s
            )
            output = _run(argv)
            if onnx is not None:
                move_into_place(target, engine)
            return parse_trtexec_output(output), parse_export_times(times.read_text(encoding="utf-8"))


def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], profile: Profile, trtexec: str | None = None) -> dict[str, Any]:
    """Build a deployable engine for ``profile`` with this host's TensorRT (run it on the device:
    engines do not move between GPUs or TensorRT versions). Returns what firmware needs to
    know: TensorRT version, device, precision, the exact command and the build time."""
    if profile.backend != "tensorrt":
        raise UserError(f"target '{profile.name}' uses {profile.backend}, not tensorrt; choose a TensorRT target to build an engine")
    onnx_file = Path(onnx_path)
    if not onnx_file.is_file():
        raise UserError(f"ONNX file {onnx_file} not found; pass the path of an exported model.onnx")
    trtexec = trtexec or require_trtexec()
    version_text = trtexec_version(trtexec)
    version = tuple(int(v) for v in version_text.split(".")) if version_text else (8, 0, 0)
    out = Path(engine_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    timing_cache = out.with_name(out.name + ".timing.cache")
    argv = build_command(trtexec, profile, version, onnx_file, partial, timing_cache)
    start = time.monotonic()
    try:
        _run(argv)
        move_into_place(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    facts = device_facts(tensorrt=True)
    return {
        "engine": str(out),
        "tensorrt_version": version_text,
        "cuda_version": facts.get("cuda_version"),
        "gpu": facts.get("gpu"),
        "jetson": facts.get("jetson"),
        "device": profile.provider,
        "precision": profile.precision,
        "command": argv,
        "build_s": round(time.monotonic() - start, 3),
    }
