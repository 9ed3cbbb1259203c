"""A torch-free child process that times ONNX models: the local stand-in for the target (ONNX
Runtime), and on the device agent the process every backend times in (TensorRT, simulated too).

Measured here: importing torch into the timing process makes onnxruntime's CPU kernels run
~1.4x slower and bimodal across sessions (0.145 vs 0.104 ms for the same mobilenet_v2 variant),
while a process holding only onnxruntime gives ±3 %. A deployed model does not share its process
with torch either, so every local measurement runs in this process. The parent blocks while the
child times, so no evaluation of ours competes with the timed runs for the cores.

The device agent runs models from the network here too: a model that crashes the runtime, eats
all memory or never finishes takes down this process, not the agent, which kills it on a deadline
(:mod:`edgeprune.profiling.isolated`). The optional second argument caps this process's memory
(MiB); the cap is set here, before anything is read from the parent, rather than by the parent's
``preexec_fn``, which is unsafe in a threaded parent such as the agent.

Wire format on stdin/stdout (both directions): 8-byte big-endian length + JSON header, and for
requests 8-byte length + ONNX bytes. Once the runtime is loaded the child sends ``{"ok": true,
"ready": true}``. Requests: ``{"shape"}`` times a model; ``{"op": "reference", "shape"}`` stores a
reference model; ``{"shape", "with_reference": true}`` times a model and the reference in
alternating blocks; ``{"op": "node_times", "shape", "runs"}`` returns ORT's per-node profile of a
model (:meth:`OrtBackend.node_times`). A failure is ``{"ok": false, "error": TEXT, "kind": KIND}``:
TEXT is the runtime's own message (for logs), KIND a fixed category safe to show anyone (ORT's
status name such as ``INVALID_GRAPH``, else the exception's class name). Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from typing import BinaryIO

_LEN = struct.Struct(">Q")
# onnxruntime's Python exception classes -> the status names its C API uses.
_ORT_STATUS = {
    "Fail": "FAIL", "InvalidArgument": "INVALID_ARGUMENT", "NoSuchFile": "NO_SUCHFILE", "NoModel": "NO_MODEL",
    "EngineError": "ENGINE_ERROR", "RuntimeException": "RUNTIME_EXCEPTION", "InvalidProtobuf": "INVALID_PROTOBUF",
    "ModelLoaded": "MODEL_LOADED", "NotImplemented": "NOT_IMPLEMENTED", "InvalidGraph": "INVALID_GRAPH",
    "EPFail": "EP_FAIL", "ModelLoadCanceled": "MODEL_LOAD_CANCELED", "ModelRequiresCompilation": "MODEL_REQUIRES_COMPILATION",
    "NotFound": "NOT_FOUND", "DeviceReset": "DEVICE_RESET",
}


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_LEN.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame, or None at a clean end of stream."""
    head = stream.read(_LEN.size)
    if not head:
        return None
    if len(head) != _LEN.size:
        raise EOFError("truncated frame header")
    (size,) = _LEN.unpack(head)
    body = stream.read(size)
    if len(body) != size:
        raise EOFError("truncated frame body")
    return body


def error_kind(exc: BaseException) -> str:
    """A category for ``exc`` that carries none of its text: ORT's status name or a class name.
    ``OrtBackend`` wraps load errors in ValueError, so the cause is looked at first."""
    for candidate in (exc.__cause__, exc):
        if candidate is None:
            continue
        name = type(candidate).__name__
        if name in _ORT_STATUS:
            return _ORT_STATUS[name]
    name = type(exc).__name__
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,39}", name) else "Error"


def limit_memory(max_mb: int, provider: str) -> None:
    """Cap this process's memory (soft and hard, so the model cannot raise it back).

    RLIMIT_AS (all mapped memory) for a CPU device (ONNX Runtime's CPU provider, OpenVINO's
    ``CPU``, which timed a small model under 1 GiB of it); a GPU runtime reserves tens of GB of
    address space it never touches, so for other providers only RLIMIT_DATA (private writable
    memory) is capped. ExecuTorch's ``XNNPACK`` is one of those: its runtime links libtorch, whose
    mappings alone fail to load under 2 GiB of RLIMIT_AS (measured), while RLIMIT_DATA at 1 GiB
    runs mobilenet_v2 and refuses a 2 GiB allocation."""
    import resource

    limit = int(max_mb) * 1024 * 1024
    kind = resource.RLIMIT_AS if provider in ("CPUExecutionProvider", "CPU") else resource.RLIMIT_DATA
    resource.setrlimit(kind, (limit, limit))


def _handle(backend, request: dict, blob: bytes) -> dict:
    shape = tuple(int(d) for d in request["shape"])
    if request.get("op") == "reference":
        backend.set_reference(blob, shape)
        return {"ok": True}
    if request.get("op") == "node_times":
        return {"ok": True, "node_times": backend.node_times(blob, shape, int(request["runs"])).to_dict()}
    if request.get("with_reference"):
        stats, ref = backend.measure_pair(blob, shape)
        return {"ok": True, "stats": stats.to_dict(), "reference": ref.to_dict()}
    return {"ok": True, "stats": backend.measure(blob, shape).to_dict()}


def make_local_backend(profile):
    """The in-process backend this child runs for ``profile.backend``: ONNX Runtime, OpenVINO,
    LiteRT, ExecuTorch, TensorRT (trtexec) or the simulated device. Imported here, so a child loads only its runtime."""
    if profile.backend == "tensorrt":
        from edgeprune.profiling.tensorrt import TensorRTBackend

        return TensorRTBackend(profile)
    if profile.backend == "simulated":
        from edgeprune.profiling.simulated import SimulatedBackend

        return SimulatedBackend(profile)
    if profile.backend == "openvino":
        from edgeprune.profiling.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(profile)
    if profile.backend == "litert":
        from edgeprune.profiling.litert_backend import LiteRtBackend

        return LiteRtBackend(profile)
    if profile.backend == "executorch":
        from edgeprune.profiling.executorch_backend import ExecuTorchBackend

        return ExecuTorchBackend(profile)
    from edgeprune.profiling.ort import OrtBackend

    return OrtBackend(profile)


def serve(profile_json: str, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Serve requests until stdin closes. ``profile_json`` is the parent's whole profile (not a
    file name), so overrides made in memory apply here too. A backend that cannot start for a
    reason the user can fix (trtexec missing) answers ``{"ok": false, "user_error": true,
    "error": TEXT}`` instead of ready, TEXT being edgeprune's own one-line message."""
    from edgeprune.errors import UserError
    from edgeprune.profiling.targets import Profile

    try:
        backend = make_local_backend(Profile.from_dict(json.loads(profile_json)))
    except UserError as exc:
        write_frame(stdout, json.dumps({"ok": False, "user_error": True, "error": str(exc)}).encode())
        return
    write_frame(stdout, json.dumps({"ok": True, "ready": True}).encode())
    while True:
        header = read_frame(stdin)
        if header is None:
            return
        blob = read_frame(stdin) or b""
        try:
            reply = _handle(backend, json.loads(header), blob)
        except Exception as exc:  # reported to the parent, which raises it there
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "kind": error_kind(exc)}
            if isinstance(getattr(exc, "seconds", None), (int, float)):  # trtexec's own time limit
                reply["seconds"] = float(exc.seconds)
        write_frame(stdout, json.dumps(reply).encode())


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[1] != "0":
        limit_memory(int(argv[1]), json.loads(argv[0]).get("provider", ""))
    # Frames go to a private copy of stdout; anything a runtime prints lands on stderr instead of
    # corrupting them.
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(argv[0], sys.stdin.buffer, frames)


if __name__ == "__main__":
    main(sys.argv[1:])
