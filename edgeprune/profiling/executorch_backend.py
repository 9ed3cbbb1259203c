"""ExecuTorch backend: an ExecuTorch program (.pte) lowered to the XNNPACK delegate, converted from
the candidate on the host (:mod:`edgeprune.exporters.pte`), loaded by ExecuTorch's runtime from
memory and run on the CPU, the way a phone or an embedded Linux board runs a PyTorch-native model.

Threads: the runtime's one thread pool, which the XNNPACK delegate runs on, is resized to the
profile's ``intra_op_threads`` before any program loads (``_unsafe_reset_threadpool``: unsafe only
while the pool is in use, and nothing runs yet; checked here, 1 thread adds no worker thread, 2
add one). The protocol is :mod:`edgeprune.profiling.timing`'s, as for ONNX Runtime, OpenVINO and
LiteRT: a freshly loaded program per session, one fixed seeded input set once, warm-up, pooled
sessions, paired blocks. Every program is first checked by
:func:`~edgeprune.profiling.pte_check.check_program_bytes` (XNNPACK only, nothing outside the file,
one fixed float input) and loaded with the runtime's own FlatBuffer verifier; one that XNNPACK took
nothing of is refused, since ExecuTorch would time its portable kernels instead.

Torch in the measuring child: ExecuTorch's Python runtime (``executorch.runtime``, the
``portable_lib`` extension) links libtorch and imports torch itself, and takes its inputs only as
torch tensors. So the child that times this backend holds torch, unlike the other runtimes' (a
device needs the torch wheel next to executorch's; a C++ deployment does not). This module imports
neither at module level, so :mod:`edgeprune.profiling` stays torch-free and the agent's own process
never loads them; libtorch's mappings need about 3 GiB of address space, which is why the worker
caps this child's data, not its address space (:func:`edgeprune.profiling.worker.limit_memory`).

No per-operator times yet: ETDump (``enable_etdump``) does give XNNPACK's per-operator times from
Python (e.g. ``Convolution (NHWC, F32) IGEMM #1``), but without shapes, and the surrogate charges
node times to layers by their shapes; joining them would need the XNNPACK payload's graph.
``supports_node_times`` is False and a search on this target runs without the surrogate.
executorch is an extra (``pip install 'edgeprune[executorch]'``), imported only by the child.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from edgeprune.errors import UserError
from edgeprune.profiling import extras
from edgeprune.profiling.onnx_check import ModelRejected
from edgeprune.profiling.pte_check import DELEGATE, check_program_bytes
from edgeprune.profiling.stats import NodeTimes
from edgeprune.profiling.targets import Profile
from edgeprune.profiling.timing import ProtocolBackend, Run

INSTALL_HINT = "pip install 'edgeprune[executorch]'"
# The device the profile names: XNNPACK on the CPU.
DEVICE = "XNNPACK"
_RUNTIME = "executorch.extension.pybindings.portable_lib"


def require_executorch(profile: Profile) -> None:
    """Refuse, in one line, a profile whose runtime is not installed (cheap: nothing imported)."""
    extras.require(profile, "executorch", "ExecuTorch", INSTALL_HINT)


class ExecuTorchBackend(ProtocolBackend):
    """Times .pte programs with ExecuTorch + XNNPACK under one target profile, in this process."""

    supports_node_times = False

    def __init__(self, profile: Profile):
        extras.require_device(profile, "ExecuTorch", DEVICE, "XNNPACK on the CPU")
        self._et = extras.load(profile, _RUNTIME, "ExecuTorch", INSTALL_HINT)
        if DELEGATE not in self._et._get_registered_backend_names():
            raise UserError(f"target '{profile.name}' needs ExecuTorch's {DELEGATE}, which this executorch build lacks; {INSTALL_HINT}")
        self._torch = importlib.import_module("torch")  # the runtime's own dependency (module docstring)
        self._et._unsafe_reset_threadpool(profile.intra_op_threads)
        self.profile = profile

    def node_times(self, model_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        raise NotImplementedError("ExecuTorch's per-operator times (ETDump) carry no shapes to charge layers by")

    def close(self) -> None:
        """Nothing to release: every program lives only as long as one measurement."""

    def _warm(self, model_bytes: bytes, input_shape: tuple[int, ...]) -> Run:
        """A freshly loaded program's ``forward``, its input set (seed 0), after the warm-up runs."""
        method = self._method(model_bytes, input_shape)
        x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
        method.set_inputs([self._torch.from_numpy(x)])
        for _ in range(self.profile.measure.warmup_runs):
            method.execute()
        return method.execute

    def _method(self, model_bytes: bytes, input_shape: tuple[int, ...]) -> Any:
        """``forward`` of the checked, verified program; ValueError when it is not one to time."""
        try:
            checked = check_program_bytes(bytes(model_bytes))
        except ModelRejected as e:
            raise ValueError(f"model_bytes is not a program ExecuTorch will run here: {e}") from e
        if checked.dims != tuple(input_shape):
            raise ValueError(f"the program's input ({'x'.join(map(str, checked.dims))}) is not the {'x'.join(map(str, input_shape))} input measured")
        if not checked.delegates:
            raise ValueError("XNNPACK delegated none of the program; ExecuTorch would time its portable kernels")
        verification = self._et.Verification.InternalConsistency
        try:
            program = self._et._load_program_from_buffer(bytes(model_bytes), enable_etdump=False, debug_buffer_size=0, program_verification=verification)
            return program.load_method("forward")
        except RuntimeError as e:
            raise ValueError(f"model_bytes is not a program ExecuTorch can load: {e}") from e
