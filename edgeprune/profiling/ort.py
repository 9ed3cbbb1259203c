"""ONNX Runtime backend: measures an in-memory ONNX graph on this host, the way the target runs it.

Protocol (DESIGN.md "Measurement protocol"): a fresh session per measurement so no state leaks
between candidates; threads, execution mode and graph optimisation exactly as the profile says;
one fixed seeded input; warm-up; timed runs until both a run count and a time floor are reached
(or a run cap); re-measure when the coefficient of variation says the machine was busy. That
protocol is :mod:`edgeprune.profiling.timing`'s, shared with the other CPU runtimes.
"""

import functools
import json
import os
import tempfile
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from edgeprune.errors import UserError
from edgeprune.profiling.stats import NodeTime, NodeTimes
from edgeprune.profiling.targets import Profile
from edgeprune.profiling.timing import MEASURE_LOCK, ProtocolBackend, Run

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


class OrtBackend(ProtocolBackend):
    """Times ONNX graphs with ONNX Runtime under one target profile, in this process.

    Only the torch-free worker (:mod:`edgeprune.profiling.worker`) should time with it: next to
    torch the same kernels run slower and bimodal.
    """

    supports_node_times = True

    def __init__(self, profile: Profile):
        require_provider(profile)
        self.profile = profile

    def node_times(self, onnx_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        """Median time of every node ORT runs, from its own profiler over ``runs`` timed runs.

        A separate session with profiling on: the trace costs time per node, so these numbers
        are for *where* the time goes, never for the latency :meth:`measure` reports. Only the
        nodes inside the timed runs' ``model_run`` windows count (not the warm-up's).
        """
        if runs < 1:
            raise ValueError(f"node_times needs at least one run, got {runs}")
        with MEASURE_LOCK, tempfile.TemporaryDirectory(prefix="edgeprune-ort-trace-") as folder:
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

    def _warm(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> Run:
        session, feed = self._warm_session(onnx_bytes, input_shape)
        return functools.partial(session.run, None, feed)

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
