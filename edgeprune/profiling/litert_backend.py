"""LiteRT backend (TensorFlow Lite): a .tflite flatbuffer, converted from the candidate on the host
(:mod:`edgeprune.exporters.tflite`), run by LiteRT's interpreter with the XNNPACK delegate on the
CPU, the way a Raspberry Pi or an Android phone runs it.

The interpreter (``ai_edge_litert.interpreter.Interpreter``) applies XNNPACK itself (its default
delegate: the ``AUTO`` op resolver) and runs ``num_threads`` = the profile's
``intra_op_threads``. Measured here on mobilenet_v2 at 3x32x32, one thread: 0.55 ms with XNNPACK,
3.5 ms with the delegate turned off, so which one ran matters; :meth:`LiteRtBackend._warm`
refuses a model XNNPACK took nothing of. The protocol is :mod:`edgeprune.profiling.timing`'s, as
for ONNX Runtime and OpenVINO: a fresh interpreter per session, one fixed seeded input, warm-up,
pooled sessions, paired blocks.

No per-operator times: LiteRT's Python interpreter exposes no profiler (its op profiling lives in
the C++ ``benchmark_model`` tool, which the wheel does not ship), so ``supports_node_times`` is
False and a search on this target runs without the latency surrogate.

Like the other runtimes it runs in the torch-free worker (:mod:`edgeprune.profiling.worker`),
under its deadline and memory cap; on the device agent the upload is first checked by
:mod:`edgeprune.profiling.tflite_check`. ai-edge-litert is imported only here, lazily: it is an
extra (``pip install 'edgeprune[litert]'``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeprune.profiling import extras
from edgeprune.profiling.stats import NodeTimes
from edgeprune.profiling.targets import Profile
from edgeprune.profiling.timing import ProtocolBackend, Run

INSTALL_HINT = "pip install 'edgeprune[litert]'"
# The one device: XNNPACK on the CPU. (LiteRT's GPU and NPU accelerators are another API.)
DEVICE = "CPU"


def require_litert(profile: Profile) -> None:
    """Refuse, in one line, a profile whose runtime is not installed (cheap: nothing imported)."""
    extras.require(profile, "ai_edge_litert", "LiteRT", INSTALL_HINT)


class LiteRtBackend(ProtocolBackend):
    """Times .tflite models with LiteRT + XNNPACK under one target profile, in this process."""

    supports_node_times = False

    def __init__(self, profile: Profile):
        extras.require_device(profile, "LiteRT", DEVICE, "XNNPACK on the CPU")
        self._lite = extras.load(profile, "ai_edge_litert.interpreter", "LiteRT", INSTALL_HINT)
        self.profile = profile

    def node_times(self, model_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        raise NotImplementedError("LiteRT's Python interpreter has no per-operator profiler")

    def close(self) -> None:
        """Nothing to release: every interpreter lives only as long as one measurement."""

    def _warm(self, model_bytes: bytes, input_shape: tuple[int, ...]) -> Run:
        """A fresh interpreter with XNNPACK, its input set (seed 0), after the warm-up runs."""
        interpreter = self._interpreter(model_bytes)
        inputs = interpreter.get_input_details()
        if len(inputs) != 1 or tuple(int(d) for d in inputs[0]["shape"]) != tuple(input_shape):
            found = ", ".join("x".join(str(int(d)) for d in i["shape"]) for i in inputs)
            raise ValueError(f"the .tflite model's inputs ({found}) are not the one {'x'.join(map(str, input_shape))} input measured")
        x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
        interpreter.set_tensor(inputs[0]["index"], x)
        for _ in range(self.profile.measure.warmup_runs):
            interpreter.invoke()
        return interpreter.invoke

    def _interpreter(self, model_bytes: bytes) -> Any:
        """The bytes in an interpreter with the default delegate (XNNPACK), tensors allocated;
        ValueError when LiteRT cannot load them or XNNPACK took none of the graph."""
        lite = self._lite
        try:
            interpreter = lite.Interpreter(
                model_content=bytes(model_bytes),
                num_threads=self.profile.intra_op_threads,
                experimental_op_resolver_type=lite.OpResolverType.AUTO,
            )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"model_bytes is not a model LiteRT can load: {e}") from e
        if not any(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details()):
            raise ValueError("XNNPACK delegated none of the model; LiteRT would time its reference kernels")
        return interpreter
