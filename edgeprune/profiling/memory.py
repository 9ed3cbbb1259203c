"""Memory of one inference, measured on this host: how much resident memory a fresh session of a
model adds to a fresh process, from loading the bytes through the warm-up to one inference.

A runtime's peak is the number a board's memory budget is about: weights as the runtime holds
them (repacked for its kernels, sometimes twice), the arena for the activations, the delegate's
scratch. The file size is not it: a MobileNetV2 of 8.5 MB at 224×224 peaks at 49 MB in ONNX Runtime
and 69 MB in OpenVINO here (three measurements each within 1 MB).
Each measurement runs in a process of its own, started for it, so no allocator cache of an
earlier session hides memory this one needs; the peak is read from the kernel (``VmHWM``, reset
after the runtime is imported and the input made, so it counts the session alone).

Only the runtimes whose backend hands over one inference as a call (ONNX Runtime, OpenVINO,
LiteRT, ExecuTorch) are measured; TensorRT, the simulated device and agents are refused by the
caller before a search starts (:data:`MEMORY_BACKENDS`).

Wire format: the profile (JSON) and the input shape (JSON) are arguments, the model's bytes come
on stdin, and the child prints one JSON line, ``{"ok": true, "peak_mb": ...}`` or ``{"ok": false,
"kind": ..., "error": ...}``. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

from edgeprune.errors import UserError
from edgeprune.profiling.targets import Profile

MEMORY_BACKENDS = ("onnxruntime", "openvino", "litert", "executorch")
# Importing a runtime (ExecuTorch's brings torch) and loading a large model on a busy host.
TIMEOUT_S = 300.0
_MB = 1024 * 1024


@dataclass(frozen=True)
class MemoryStats:
    """``peak_mb``: the resident memory one fresh session added at its peak; ``file_mb``: the size
    of the bytes the runtime loaded."""

    peak_mb: float
    file_mb: float

    def to_dict(self) -> dict:
        return {"peak_mb": round(self.peak_mb, 3), "file_mb": round(self.file_mb, 3)}


class MemoryMeasurementFailed(UserError):
    """The child could not load or run the model, or died; the text says which (one line: a run
    that limits memory cannot go on without it)."""


def measure_memory(profile: Profile, model_bytes: bytes, input_shape: tuple[int, ...], timeout_s: float = TIMEOUT_S) -> MemoryStats:
    """The peak resident memory of one fresh session of ``model_bytes`` under ``profile``."""
    if profile.backend not in MEMORY_BACKENDS:
        raise ValueError(f"memory is measured for {', '.join(MEMORY_BACKENDS)}, not {profile.backend}")
    argv = [sys.executable, "-m", "edgeprune.profiling.memory", json.dumps(profile.to_dict()), json.dumps(list(input_shape))]
    try:
        done = subprocess.run(argv, input=model_bytes, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise MemoryMeasurementFailed(f"measuring the memory of a model on {profile.name} took over {timeout_s:.0f} s") from None
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if not isinstance(answer, dict) or not answer.get("ok"):
        why = answer.get("error") if isinstance(answer, dict) and answer.get("error") else f"exit {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}"
        raise MemoryMeasurementFailed(f"the memory measurement on {profile.name} failed: {why}")
    return MemoryStats(float(answer["peak_mb"]), len(model_bytes) / _MB)


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def can_measure_here() -> bool:
    """Whether this host lets a process reset its peak memory, which every measurement needs
    (Linux ≥ 4.0; resetting this process's own peak is harmless)."""
    return _reset_peak()


def _reset_peak() -> bool:
    """Start ``VmHWM`` again from the current RSS (Linux ≥ 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_of_one_session(backend, model_bytes: bytes, input_shape: tuple[int, ...]) -> float:
    """MiB the process grew to at its peak while ``backend`` loaded ``model_bytes``, warmed it up
    and ran it once, over what it held before."""
    if not _reset_peak():
        raise OSError("this kernel does not let a process reset its peak memory (/proc/self/clear_refs)")
    before = _status_kb("VmRSS")
    run = backend.inference(model_bytes, input_shape)
    run()
    peak = _status_kb("VmHWM")
    del run
    return max(0, peak - before) / 1024


def main(argv: list[str]) -> None:
    """The child: load the profile's runtime, read the model from stdin, print the peak."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what a runtime prints cannot corrupt the answer
    try:
        from edgeprune.profiling.worker import make_local_backend

        backend = make_local_backend(Profile.from_dict(json.loads(argv[0])))
        shape = tuple(int(d) for d in json.loads(argv[1]))
        answer = {"ok": True, "peak_mb": peak_of_one_session(backend, sys.stdin.buffer.read(), shape)}
    except Exception as exc:  # reported to the parent, which raises it there
        answer = {"ok": False, "kind": type(exc).__name__, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    out.write(json.dumps(answer) + "\n")
    out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
