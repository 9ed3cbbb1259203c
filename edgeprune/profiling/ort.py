"""ONNX Runtime backend: measures an in-memory ONNX graph on this host, the way the target runs it.

Protocol (DESIGN.md "Measurement protocol"): a fresh session per measurement so no state leaks
between candidates; threads, execution mode and graph optimisation exactly as the profile says;
one fixed seeded input; warm-up; timed runs until both a run count and a time floor are reached
(or a run cap); re-measure when the coefficient of variation says the machine was busy.
"""

import dataclasses
import json
import os
import tempfile
import threading
import time
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from edgeprune.errors import UserError
from edgeprune.profiling.backend import Backend
from edgeprune.profiling.fingerprint import host_fingerprint
from edgeprune.profiling.stats import LatencyStats, NodeTime, NodeTimes, summarize
from edgeprune.profiling.targets import MeasureSpec, Profile

# Interleaved blocks per model in measure_pair: 20 blocks of 30 ms (at a 0.6 s window), compared
# by trimmed means, gave a candidate/reference ratio with CV 2-4 % over fresh session pairs; 4
# blocks of 150 ms compared by medians 6-8 %. 120 blocks of 5 ms moved the ratio itself (each
# block starts with the other model's weights in the caches).
_BLOCKS = 20

# Two measurements running at once on the same cores would time each other, not the model.
_MEASURE_LOCK = threading.Lock()

_EXECUTION_MODES = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}
_GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_LOAD_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NotImplemented,
)


def require_provider(profile: Profile) -> None:
    """Refuse a profile whose execution provider this onnxruntime build lacks.

    ORT falls back to the CPU provider with only a log line when the requested one is missing:
    the numbers would silently be for the wrong device, so refuse up front, with the fix.
    """
    available = ort.get_available_providers()
    if profile.provider not in available:
        raise UserError(
            f"target '{profile.name}' needs the ONNX Runtime provider {profile.provider}, "
            f"which this onnxruntime build lacks (it has: {', '.join(available)}); install the "
            "onnxruntime package that ships it or choose another target"
        )


class OrtBackend(Backend):
    """Times ONNX graphs with ONNX Runtime under one target profile, in this process.

    Only the torch-free worker (:mod:`edgeprune.profiling.worker`) should time with it: next to
    torch the same kernels run slower and bimodal.
    """

    supports_node_times = True

    def __init__(self, profile: Profile):
        require_provider(profile)
        self.profile = profile
        self._fingerprint: dict[str, Any] | None = None
        self._reference: tuple[bytes, tuple[int, ...]] | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The device fingerprint for this host + profile (computed once; reads /proc)."""
        if self._fingerprint is None:
            self._fingerprint = host_fingerprint(self.profile)
        return dict(self._fingerprint)

    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> LatencyStats:
        """Latency of one inference of ``onnx_bytes`` on a float32 input of ``input_shape``: the
        runs of ``measure.sessions`` fresh sessions, each timed for the profile's window, pooled.

        One session's median on a shared CPU swings by a quarter from one second to the next
        (measured, mobilenet_v2 at 3x32x32: 10 repeats of one 0.6 s session scatter with CV
        0.11; of 5 pooled sessions, 0.034), so an absolute number, which anchors every later one,
        pools several. The result has ``noisy=True`` when even the least noisy of the repeats is
        above the profile's CV threshold; callers report it but must not cache it.
        """
        spec = self.profile.measure
        with _MEASURE_LOCK:  # session creation runs graph optimisation: keep it off timed cores
            best = self._pooled(onnx_bytes, input_shape, spec)
            for _ in range(spec.repeats_if_noisy):
                if best.cv <= spec.cv_threshold:
                    break
                again = self._pooled(onnx_bytes, input_shape, spec)
                if again.cv < best.cv:
                    best = again
        best.noisy = best.cv > spec.cv_threshold
        return best

    def _pooled(self, onnx_bytes: bytes, input_shape: tuple[int, ...], spec: MeasureSpec) -> LatencyStats:
        times: list[float] = []
        for _ in range(spec.sessions):
            session, feed = self._warm_session(onnx_bytes, input_shape)
            times.extend(_timed_runs(session, feed, spec))
            del session
        return summarize(times)

    def set_reference(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> None:
        """The model that :meth:`measure_pair` times alongside every candidate."""
        self._reference = (onnx_bytes, tuple(input_shape))

    def measure_pair(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> tuple[LatencyStats, LatencyStats]:
        """Candidate and reference timed in alternating blocks, so both see the same CPU state.

        On shared or virtual CPUs the speed of the whole machine drifts by tens of percent from
        minute to minute; the ratio of two models timed in interleaved blocks does not. Short
        blocks let both models see the same spells of a machine whose speed changes within a
        second; compare the two by :func:`~edgeprune.profiling.stats.ratio`.
        """
        if self._reference is None:
            raise ValueError("set_reference() must be called before measure_pair()")
        ref_bytes, ref_shape = self._reference
        spec = self.profile.measure
        block = dataclasses.replace(spec, min_runs=max(1, spec.min_runs // _BLOCKS), max_seconds=spec.max_seconds / _BLOCKS, max_runs=max(1, spec.max_runs // _BLOCKS))
        with _MEASURE_LOCK:
            runs = [(*self._warm_session(onnx_bytes, input_shape), []), (*self._warm_session(ref_bytes, ref_shape), [])]
            for _ in range(_BLOCKS):
                for session, feed, times in runs:
                    times.extend(_timed_runs(session, feed, block))
        cand, ref = (summarize(times) for _, _, times in runs)
        for stats in (cand, ref):
            stats.noisy = stats.cv > spec.cv_threshold
        return cand, ref

    def node_times(self, onnx_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        """Median time of every node ORT runs, from its own profiler over ``runs`` timed runs.

        A separate session with profiling on: the trace costs time per node, so these numbers
        are for *where* the time goes, never for the latency :meth:`measure` reports. Only the
        nodes inside the timed runs' ``model_run`` windows count (not the warm-up's).
        """
        if runs < 1:
            raise ValueError(f"node_times needs at least one run, got {runs}")
        with _MEASURE_LOCK, tempfile.TemporaryDirectory(prefix="edgeprune-ort-trace-") as folder:
            options = self._options()
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(folder, "trace")
            session, feed = self._warm_session(onnx_bytes, input_shape, options)
            for _ in range(runs):
                session.run(None, feed)
            with open(session.end_profiling(), encoding="utf-8") as f:
                events = json.load(f)
        return _parse_trace(events, runs)

    def close(self) -> None:
        """Nothing to release: every session lives only as long as one measurement."""

    def _warm_session(
        self, onnx_bytes: bytes, input_shape: tuple[int, ...], options: ort.SessionOptions | None = None
    ) -> tuple[ort.InferenceSession, dict]:
        """A new session and its feed, after the profile's warm-up runs.

        The input is fixed (seed 0): data-dependent kernels (none expected in CNNs, but cheap
        to rule out) then see the same values for every candidate.
        """
        session = self._session(onnx_bytes, options)
        x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
        feed = {session.get_inputs()[0].name: x}
        for _ in range(self.profile.measure.warmup_runs):
            session.run(None, feed)
        return session, feed

    def _session(self, onnx_bytes: bytes, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(onnx_bytes, options or self._options(), providers=[self.profile.provider])
        except _LOAD_ERRORS as e:
            raise ValueError(f"onnx_bytes is not a model ONNX Runtime can load: {e}") from e

    def _options(self) -> ort.SessionOptions:
        p = self.profile
        options = ort.SessionOptions()
        options.intra_op_num_threads = p.intra_op_threads
        options.inter_op_num_threads = p.inter_op_threads
        options.execution_mode = _EXECUTION_MODES[p.execution_mode]
        options.graph_optimization_level = _GRAPH_OPTIMIZATION[p.graph_optimization]
        # Thread spinning stays at ORT's default: that is how the model runs when deployed.
        # Fatal only: optimiser notes would flood a search's log, and an error's text may quote the
        # model's data (a user's external data file); errors reach us as exceptions, never printed.
        options.log_severity_level = 4
        return options


def _timed_runs(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], spec: MeasureSpec
) -> list[float]:
    """Per-run wall times (s): at least ``min_runs`` and ``max_seconds``, at most ``max_runs``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < spec.max_runs:
        t0 = time.perf_counter()
        session.run(None, feed)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if len(times) >= spec.min_runs and t1 - start >= spec.max_seconds:
            break
    return times


def _parse_trace(events: list[dict[str, Any]], runs: int) -> NodeTimes:
    """Reduce ORT's Chrome-trace JSON to per-node medians over the last ``runs`` model runs."""
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-runs:]
    if not model_runs:
        raise ValueError("onnxruntime's profile trace has no model_run event")
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in model_runs]
    durations: dict[str, list[float]] = {}
    first: dict[str, dict[str, Any]] = {}
    for e in sorted(events, key=lambda e: e.get("ts", 0)):
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        if not any(lo <= e["ts"] <= hi for lo, hi in windows):
            continue
        node = name.removesuffix("_kernel_time")
        durations.setdefault(node, []).append(e["dur"] / 1e3)
        first.setdefault(node, e)
    nodes = []
    for node, ms in durations.items():
        args = first[node].get("args", {})
        arr = np.asarray(ms)
        nodes.append(
            NodeTime(
                name=node,
                op_type=args.get("op_name", ""),
                median_ms=float(np.median(arr)),
                mean_ms=float(arr[arr <= np.percentile(arr, 90)].mean()),
                input_shapes=_trace_shapes(args.get("input_type_shape", [])),
                output_shapes=_trace_shapes(args.get("output_type_shape", [])),
            )
        )
    run_ms = float(np.median([e["dur"] / 1e3 for e in model_runs]))
    return NodeTimes(nodes, run_ms, len(model_runs))


def _trace_shapes(entries: list[dict[str, list[int]]]) -> list[list[int]]:
    """``[{"float": [1, 3, 32, 32]}, ...]`` -> ``[[1, 3, 32, 32], ...]`` (the element type dropped)."""
    return [[int(d) for d in next(iter(entry.values()), [])] for entry in entries]
