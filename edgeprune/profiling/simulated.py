"""A simulated device: latency from a fixed model of the network, for tests and for planning.

``backend: simulated`` (see ``profiles/simulated.yaml``) answers like a device without one: the
farm of agents (:mod:`edgeprune.profiling.farm`) can be exercised at 1, 2, 4 or 8 agents on one
machine, and a search's scheduling can be studied apart from a real device's noise.

The model: every Conv, Gemm and MatMul costs its multiply-accumulates with channel counts rounded
up to the profile's ``channel_step`` (real kernels run an odd width at the next step's speed),
``ms_per_mmac`` per million, plus ``base_ms``; the total is multiplied by a log-normal deviation
of ``noise`` drawn from a generator seeded by the layers' weight shapes, so the same network
always gets the same latency on every simulated agent, and networks of nearly equal MACs still
differ the way measured ones do. Each measurement then sleeps ``device_seconds``: the device's
time, which is what a farm shares out. Nothing here reads the clock to produce a number.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import numpy as np
import onnx
from onnx import shape_inference

from edgeprune.profiling.backend import Backend
from edgeprune.profiling.fingerprint import compose_fingerprint, device_facts
from edgeprune.profiling.stats import LatencyStats, NodeTimes
from edgeprune.profiling.targets import Profile, SimulatedSpec

_RUN_SPREAD = 0.02  # the per-run spread around the median a session reports (its CV)


class SimulatedBackend(Backend):
    """Latency of ONNX graphs on the device ``profile.simulated`` describes."""

    supports_node_times = False

    def __init__(self, profile: Profile):
        if profile.simulated is None:
            raise ValueError(f"profile {profile.name} has no 'simulated' section")
        self.profile = profile
        self.spec: SimulatedSpec = profile.simulated
        self._reference: bytes | None = None

    def fingerprint(self) -> dict[str, Any]:
        """This host's facts with the model's settings (see compose_fingerprint): a simulated
        agent on this host keys its numbers the same way, and never like a real device."""
        return compose_fingerprint(self.profile, device_facts(tensorrt=False))

    def latency_ms(self, onnx_bytes: bytes) -> float:
        """The device's latency for one inference of this graph (no sleep)."""
        model = shape_inference.infer_shapes(onnx.load_from_string(onnx_bytes))
        mmacs = _macs(model, self.profile.channel_step) / 1e6
        deviation = math.exp(self.spec.noise * _rng(model, self.spec.seed).standard_normal())
        return (self.spec.base_ms + self.spec.ms_per_mmac * mmacs) * deviation

    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> LatencyStats:
        median = self.latency_ms(onnx_bytes)
        time.sleep(self.spec.device_seconds)
        return _stats(median, self.profile.measure.min_runs)

    def set_reference(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> None:
        self._reference = onnx_bytes

    def measure_pair(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> tuple[LatencyStats, LatencyStats]:
        """One device slot for both models, as the alternating blocks of a real pair take."""
        if self._reference is None:
            raise ValueError("set_reference() must be called before measure_pair()")
        cand, ref = self.latency_ms(onnx_bytes), self.latency_ms(self._reference)
        time.sleep(self.spec.device_seconds)
        n = self.profile.measure.min_runs
        return _stats(cand, n), _stats(ref, n)

    def node_times(self, onnx_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        raise NotImplementedError("the simulated device has no per-node times")

    def close(self) -> None:
        """Nothing is held."""


def _stats(median: float, n: int) -> LatencyStats:
    spread = median * _RUN_SPREAD
    return LatencyStats(n, median, median + 1.28 * spread, median + 2.33 * spread, median, spread, _RUN_SPREAD, False, median)


def _rng(model: onnx.ModelProto, seed: int) -> np.random.Generator:
    """Seeded by the architecture, not by the weights' values: the weight shapes of the Conv,
    Gemm and MatMul nodes in graph order. Biases and BatchNorm parameters are left out, so the
    delivered file (slimmed, BatchNorm folded into the convolutions) draws the deviation its
    architecture had in the search."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    shapes = ";".join(
        f"{weights[n.input[1]]}" for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in weights
    )
    digest = hashlib.sha256(f"{seed}|{shapes}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _macs(model: onnx.ModelProto, step: int) -> float:
    """Multiply-accumulates of Conv, Gemm and MatMul nodes, channel counts rounded up to ``step``."""
    up = lambda c: step * math.ceil(c / step) if c > 1 else c  # noqa: E731 - a depthwise conv's 1 stays 1
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    total = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in weights and node.output[0] in shapes:
            c_out, c_in, *kernel = weights[node.input[1]]
            spatial = math.prod(shapes[node.output[0]][2:])
            total += up(c_out) * up(c_in) * math.prod(kernel) * spatial
        elif node.op_type in ("Gemm", "MatMul"):
            dims = [weights.get(name) or shapes.get(name) for name in node.input[:2]]
            if all(dims) and all(len(d) >= 2 for d in dims):
                rows = math.prod(dims[0][:-1])
                k, n = dims[0][-1], dims[1][0] if node.op_type == "Gemm" and _transposed(node) else dims[1][-1]
                total += rows * up(k) * up(n)
    return total


def _transposed(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)
