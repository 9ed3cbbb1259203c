"""OpenVINO backend: the ONNX graph read into OpenVINO's runtime (ONNX → OpenVINO model, in memory)
and timed on the profile's device (``provider``: ``CPU``) under OpenVINO's latency hint.

The protocol is ONNX Runtime's (:mod:`edgeprune.profiling.timing`, DESIGN.md "Measurement protocol"):
a freshly compiled model per measurement, one fixed seeded input, the profile's warm-up, timed
runs until a run count and a time floor are reached, absolute numbers pooled over
``measure.sessions`` compilations and re-taken while noisy, paired numbers in alternating blocks
with the reference, all summarised by :func:`~edgeprune.profiling.stats.summarize`.

Settings: ``INFERENCE_NUM_THREADS`` is the profile's ``intra_op_threads``; ``PERFORMANCE_HINT``
LATENCY (one stream); ``INFERENCE_PRECISION_HINT`` f32, because OpenVINO would otherwise run
bf16 on CPUs that have it (AMX Xeons) while the profile says fp32. ``inter_op_threads``,
``execution_mode`` and ``graph_optimization`` are ONNX Runtime's and do not apply.

Per-node times come from OpenVINO's performance counters (``PERF_COUNT``), joined with the shapes
of the compiled model's execution graph, so the latency surrogate charges them to layers the way
it charges ONNX Runtime's (:func:`edgeprune.profiling.surrogate.assign_nodes`).

Like :class:`~edgeprune.profiling.ort.OrtBackend` this runs in the torch-free worker
(:mod:`edgeprune.profiling.worker`), under its deadline and memory cap. openvino is imported only
here, lazily: it is an extra (``pip install 'edgeprune[openvino]'``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgeprune.errors import UserError
from edgeprune.profiling import extras
from edgeprune.profiling.stats import NodeTime, NodeTimes
from edgeprune.profiling.targets import Profile
from edgeprune.profiling.timing import MEASURE_LOCK, ProtocolBackend, Run

INSTALL_HINT = "pip install 'edgeprune[openvino]'"
# OpenVINO's layer types for a linear layer -> the ONNX op the surrogate matches linear layers by.
_LINEAR_TYPES = {"FullyConnected": "Gemm", "MatMul": "MatMul"}


def require_openvino(profile: Profile) -> None:
    """Refuse, in one line, a profile whose runtime is not installed (cheap: nothing imported)."""
    extras.require(profile, "openvino", "OpenVINO", INSTALL_HINT)


class OpenVinoBackend(ProtocolBackend):
    """Times ONNX graphs with OpenVINO under one target profile, in this process (the worker's)."""

    supports_node_times = True

    def __init__(self, profile: Profile):
        self._ov = extras.load(profile, "openvino", "OpenVINO", INSTALL_HINT)
        self._core = self._ov.Core()
        devices = list(self._core.available_devices)
        if profile.provider not in devices:
            raise UserError(
                f"target '{profile.name}' needs the OpenVINO device {profile.provider}, which this host "
                f"lacks (it has: {', '.join(devices) or 'none'}); choose another target"
            )
        self.profile = profile

    def node_times(self, onnx_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        """Median time of every node OpenVINO executed, from its performance counters over
        ``runs`` timed runs of a compilation with counters on (for *where* the time goes, never
        for the latency :meth:`measure` reports). Shapes from the execution graph."""
        if runs < 1:
            raise ValueError(f"node_times needs at least one run, got {runs}")
        with MEASURE_LOCK:
            run, request = self._request(onnx_bytes, input_shape, perf_count=True)
            walls: list[float] = []
            samples: dict[str, list[float]] = {}
            kinds: dict[str, str] = {}
            for _ in range(runs):
                t0 = time.perf_counter()
                run()
                walls.append((time.perf_counter() - t0) * 1e3)
                for info in request.get_profiling_info():
                    if info.status == self._ov.ProfilingInfo.Status.EXECUTED:
                        samples.setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1e3)
                        kinds.setdefault(info.node_name, info.node_type)
            shapes = _execution_shapes(request.get_compiled_model())
        nodes = [_node_time(name, kinds[name], ms, shapes.get(name, ([], []))) for name, ms in samples.items()]
        return NodeTimes(nodes, float(np.median(walls)), runs)

    def close(self) -> None:
        """Nothing to release: every compiled model lives only as long as one measurement."""

    def _warm(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> Run:
        return self._request(onnx_bytes, input_shape)[0]

    def _request(self, onnx_bytes: bytes, input_shape: tuple[int, ...], perf_count: bool = False) -> tuple[Run, Any]:
        """A freshly compiled model's infer request, its input set (seed 0), after the profile's
        warm-up runs: the function to time, and the request."""
        request = self._compile(onnx_bytes, input_shape, perf_count).create_infer_request()
        x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
        request.set_input_tensor(self._ov.Tensor(x))
        for _ in range(self.profile.measure.warmup_runs):
            request.infer()
        return request.infer, request

    def _compile(self, onnx_bytes: bytes, input_shape: tuple[int, ...], perf_count: bool) -> Any:
        """ONNX bytes → OpenVINO model → compiled for the profile's device, all in memory."""
        p = self.profile
        try:
            model = self._core.read_model(model=onnx_bytes, weights=b"")
            if not model.inputs[0].get_partial_shape().is_static:
                model.reshape({model.inputs[0]: list(input_shape)})
            config = {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": p.intra_op_threads,
                "INFERENCE_PRECISION_HINT": "f32",
                "PERF_COUNT": perf_count,
            }
            return self._core.compile_model(model, p.provider, config)
        except RuntimeError as e:
            raise ValueError(f"onnx_bytes is not a model OpenVINO can load: {e}") from e


def _execution_shapes(compiled: Any) -> dict[str, tuple[list[list[int]], list[list[int]]]]:
    """Input and output shapes of every node of the compiled model's execution graph, by the name
    its performance counters use (a convolution's inputs include its weights)."""
    shapes = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        ins = [_static(i.get_partial_shape()) for i in op.inputs()]
        outs = [_static(o.get_partial_shape()) for o in op.outputs()]
        shapes[op.get_friendly_name()] = (ins, outs)
    return shapes


def _static(shape: Any) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in shape]


def _node_time(name: str, layer_type: str, ms: list[float], shapes: tuple[list[list[int]], list[list[int]]]) -> NodeTime:
    """One node's times and shapes in the form ONNX Runtime's trace gives: a grouped
    convolution's 5-D weights ``[G, O/G, I/G, kh, kw]`` as ``[O, I/G, kh, kw]``, a linear layer
    under its ONNX op name."""
    ins, outs = [list(s) for s in shapes[0]], shapes[1]
    if "Convolution" in layer_type and len(ins) > 1 and len(ins[1]) == 5:  # GroupConvolution
        g, o, i, kh, kw = ins[1]
        ins[1] = [g * o, i, kh, kw]
    arr = np.asarray(ms)
    return NodeTime(
        name=name,
        op_type=_LINEAR_TYPES.get(layer_type, layer_type),
        median_ms=float(np.median(arr)),
        mean_ms=float(arr[arr <= np.percentile(arr, 90)].mean()),
        input_shapes=ins,
        output_shapes=[list(s) for s in outs],
    )
