"""Which backend measures a profile: one decision, shared by the Profiler and the device agent, so
the two cannot drift apart on what a profile means."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeprune.errors import UserError
from edgeprune.profiling.backend import Backend
from edgeprune.profiling.farm import FarmBackend
from edgeprune.profiling.isolated import IsolatedBackend
from edgeprune.profiling.remote import RemoteBackend
from edgeprune.profiling.simulated import SimulatedBackend
from edgeprune.profiling.tensorrt import TensorRTBackend, require_trtexec
from edgeprune.profiling.targets import Profile


def make_backend(profile: Profile, *, local: bool = False, agents: list[str] | None = None, warn: Callable[[str], None] = lambda _m: None, **options: Any) -> Backend:
    """The backend for ``profile``: a farm of ``agents`` when given (``--agents``; ``warn`` hears
    of agents left out or taken out of rotation), else its device agent when it names one, else
    this host.

    ``local=True`` measures on this host whatever ``agent`` says: the agent itself passes it, as
    the profile's ``agent`` is the very device it runs on. ``options`` are the keyword options of
    :class:`~edgeprune.profiling.isolated.IsolatedBackend` (``timeout_s``, ``max_memory_mb``),
    with which the agent bounds models from the network: given them, every backend (TensorRT and
    simulated too) measures in that bounded child. ONNX Runtime, OpenVINO, LiteRT and ExecuTorch always do.
    """
    if agents:
        return FarmBackend(profile, agents, warn)
    if profile.agent and not local:
        return RemoteBackend(profile)
    if profile.backend == "tensorrt":
        if options:
            require_trtexec()  # here, in one line: the child could only die of it
            return IsolatedBackend(profile, **options)
        return TensorRTBackend(profile)
    if profile.backend == "onnxruntime":
        # Here, not at the top: a TensorRT-only device may have no onnxruntime at all.
        from edgeprune.profiling.ort import require_provider  # noqa: PLC0415

        require_provider(profile)  # in this process: the child could only die of it, unexplained
        return IsolatedBackend(profile, **options)
    if profile.backend == "openvino":
        from edgeprune.profiling.openvino_backend import require_openvino  # noqa: PLC0415 - an extra

        require_openvino(profile)  # the install hint here, in one line; the child imports it
        return IsolatedBackend(profile, **options)
    if profile.backend == "litert":
        from edgeprune.profiling.litert_backend import require_litert  # noqa: PLC0415 - an extra

        require_litert(profile)
        return IsolatedBackend(profile, **options)
    if profile.backend == "executorch":
        from edgeprune.profiling.executorch_backend import require_executorch  # noqa: PLC0415 - an extra

        require_executorch(profile)
        return IsolatedBackend(profile, **options)
    if profile.backend == "simulated":
        if profile.simulated is None:
            raise UserError(f"target '{profile.name}' ({profile.source}) uses backend 'simulated' without a 'simulated' section; add one (see profiles/simulated.yaml)")
        return IsolatedBackend(profile, **options) if options else SimulatedBackend(profile)
    raise UserError(
        f"target '{profile.name}' ({profile.source}) uses backend '{profile.backend}', "
        f"which edgeprune cannot run; set backend to one of: onnxruntime, tensorrt, openvino, litert, executorch, simulated"
    )
