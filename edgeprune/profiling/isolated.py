"""Measurements in a torch-free child process (see :mod:`edgeprune.profiling.worker`): every ONNX
Runtime and OpenVINO measurement, and on the device agent every backend (TensorRT and simulated
too), so a model from the network is bounded by the same deadline and memory cap whatever times it.

Every exchange with the child has a deadline, so neither the prune loop nor the device agent can
wait forever on a model that runs for hours or a runtime that hangs: past it the child is killed,
with everything it started (trtexec), and the request raises :class:`MeasurementTimeout`; the next
request starts a fresh child. The pipes are non-blocking and waited on with a selector, because a
deadline cannot interrupt a blocking ``read()`` on the buffered pipe objects.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from edgeprune.errors import UserError
from edgeprune.profiling.backend import Backend
from edgeprune.profiling.fingerprint import host_fingerprint
from edgeprune.profiling.stats import LatencyStats, NodeTimes
from edgeprune.profiling.targets import Profile

# Generous for the prune loop (per-node traces of a large model on a slow CPU); the agent, which
# times models from the network, passes a deadline derived from the request's profile.
DEFAULT_TIMEOUT_S = 3600.0
# Starting the child (importing onnxruntime) on a busy board; not part of a request's deadline.
START_TIMEOUT_S = 120.0
_CHUNK = 1 << 20
_MAX_REPLY = 1 << 30
_LEN_SIZE = 8
# Session set-up, warm-up and models slower than the profile's window, on top of the window itself.
MEASURE_MARGIN_S = 120.0


def measurement_timeout(profile: Profile, cap: float) -> float:
    """Seconds one measurement under ``profile`` may take before its process is killed: the timed
    window (``measure.max_seconds``), once per repeat, for the two models of a paired measurement
    or the pooled sessions of an absolute one, doubled, plus a margin for set-up and slow models
    (and, on a simulated device, twice its ``device_seconds``); at most ``cap``. A TensorRT
    profile gets ``cap`` itself: the first measurement of a graph builds its engine, which takes
    as long as the model and the device make it, not the profile."""
    if profile.backend == "tensorrt":
        return float(cap)
    spec = profile.measure
    window = spec.max_seconds * (1 + spec.repeats_if_noisy)
    seconds = MEASURE_MARGIN_S + 2 * max(2, spec.sessions) * window
    if profile.backend == "simulated" and profile.simulated is not None:
        seconds += 2 * profile.simulated.device_seconds
    return min(float(cap), seconds)


class MeasurementFailed(ValueError):
    """The child could not load or run the model. ``kind`` is a category that quotes nothing from
    the runtime (ORT's status name such as ``INVALID_GRAPH``, or an exception class), fit for a
    remote client; ``detail`` (also ``str()``) is the runtime's own text, for logs only."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,39}", kind) else "Error"
        self.detail = detail


class MeasurementTimeout(RuntimeError):
    """The child did not answer within the deadline; it was killed. ``trtexec``: it was trtexec's
    own time limit that ran out (the child answered, trtexec was stopped)."""

    def __init__(self, profile_name: str, seconds: float, trtexec: bool = False):
        what = "trtexec" if trtexec else "the measurement process"
        super().__init__(f"{what} for {profile_name} did not finish within {seconds:g} s and was stopped")
        self.seconds = seconds
        self.trtexec = trtexec


class WorkerDied(RuntimeError):
    """The child exited (crashed, killed by its memory limit, ...) instead of answering.
    ``starting``: before any model was sent, so the installation's fault, not a model's."""

    def __init__(self, message: str, returncode: int | None, starting: bool = False):
        super().__init__(message)
        self.returncode = returncode
        self.starting = starting


class _Deadline(Exception):
    pass


class IsolatedBackend(Backend):
    """The measurements of the backend ``profile.backend`` names (ONNX Runtime, OpenVINO, LiteRT,
    ExecuTorch, TensorRT or simulated), taken in a torch-free child (ExecuTorch's runtime brings torch into its own).

    ``timeout_s`` bounds each request (the child, and whatever it started, is killed past it);
    ``max_memory_mb`` caps the child's memory (None: no cap). Per-node times for ONNX Runtime
    and OpenVINO."""

    supports_node_times = True

    def __init__(self, profile: Profile, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_memory_mb: int | None = None):
        self.profile = profile
        self.supports_node_times = profile.backend in ("onnxruntime", "openvino")
        self.timeout_s = float(timeout_s)
        self.max_memory_mb = max_memory_mb
        self._fingerprint: dict[str, Any] | None = None
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._reference: tuple[bytes, tuple[int, ...]] | None = None
        self._reference_sent = False

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:  # reads /proc and may run probes: only when asked
            self._fingerprint = host_fingerprint(self.profile)
        return dict(self._fingerprint)

    def _child(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._discard()
            self._reference_sent = False
            argv = [sys.executable, "-m", "edgeprune.profiling.worker", json.dumps(self.profile.to_dict())]
            if self.max_memory_mb:
                argv.append(str(int(self.max_memory_mb)))
            # A session of its own: past the deadline the whole group goes, trtexec included.
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
            os.set_blocking(self._proc.stdin.fileno(), False)
            os.set_blocking(self._proc.stdout.fileno(), False)
            try:
                ready = _receive(self._proc, time.monotonic() + START_TIMEOUT_S)
            except (_Deadline, EOFError, OSError):
                ready = None
            try:
                answer = json.loads(ready) if ready is not None else {}
            except ValueError:
                answer = {}
            answer = answer if isinstance(answer, dict) else {}
            if answer.get("user_error"):  # e.g. trtexec missing: the device's set-up, said in one line
                self._kill()
                raise UserError(str(answer.get("error", "the measuring backend could not start"))[:500])
            if not answer.get("ready"):
                code = self._kill()
                raise WorkerDied(f"the measurement process for {self.profile.name} did not start (exit {code}); its error is in the log above", code, starting=True)
        return self._proc

    def _request(self, header: dict, blob: bytes) -> dict:
        with self._lock:
            proc = self._child()
            if self._reference is not None and not self._reference_sent:
                self._reference_sent = True  # a restarted child needs the reference again
                self._request_locked(proc, {"op": "reference", "shape": list(self._reference[1])}, self._reference[0])
            return self._request_locked(proc, header, blob)

    def _request_locked(self, proc: subprocess.Popen, header: dict, blob: bytes) -> dict:
        deadline = time.monotonic() + self.timeout_s
        try:
            _send(proc, json.dumps(header).encode(), deadline)
            _send(proc, blob, deadline)
            reply = _receive(proc, deadline)
        except _Deadline:
            self._kill()
            raise MeasurementTimeout(self.profile.name, self.timeout_s) from None
        except (OSError, EOFError):  # BrokenPipeError, or the child closed its end mid-reply
            reply = None
        if reply is None:
            code = self._kill()
            raise WorkerDied(f"the measurement process for {self.profile.name} died (exit {code})", code)
        result = json.loads(reply)
        if not result["ok"]:
            if result.get("kind") == "TrtexecTimeout":
                raise MeasurementTimeout(self.profile.name, float(result.get("seconds") or self.timeout_s), trtexec=True)
            raise MeasurementFailed(str(result.get("kind", "Error")), str(result["error"]))
        return result

    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> LatencyStats:
        return LatencyStats.from_dict(self._request({"shape": list(input_shape)}, onnx_bytes)["stats"])

    def set_reference(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> None:
        """The model that :meth:`measure_pair` times alongside every candidate."""
        self._reference = (onnx_bytes, tuple(input_shape))
        self._reference_sent = False

    def measure_pair(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> tuple[LatencyStats, LatencyStats]:
        """(candidate, reference) timed in alternating blocks in the same process."""
        if self._reference is None:
            raise ValueError("set_reference() must be called before measure_pair()")
        result = self._request({"shape": list(input_shape), "with_reference": True}, onnx_bytes)
        return LatencyStats.from_dict(result["stats"]), LatencyStats.from_dict(result["reference"])

    def node_times(self, onnx_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        """Per-node ORT profile (see :meth:`OrtBackend.node_times`), taken in the child as well:
        node times taken next to torch would be as distorted as whole-model latencies."""
        result = self._request({"op": "node_times", "shape": list(input_shape), "runs": int(runs)}, onnx_bytes)
        return NodeTimes.from_dict(result["node_times"])

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        """Let the child finish (end of its input), kill it if it does not."""
        if self._proc is not None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except Exception:
                self._kill()
            self._discard()

    def _kill(self) -> int | None:
        """Kill the child and everything it started (its process group) now; its exit status
        (negative: the signal)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:  # not reaped yet, so its pid is still its group's id
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own group (start_new_session)
            except (ProcessLookupError, PermissionError):
                pass
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        self._discard()
        return code

    def _discard(self) -> None:
        if self._proc is not None:
            for pipe in (self._proc.stdin, self._proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            self._proc = None


# The name this backend had when only ONNX Runtime ran in the child.
IsolatedOrtBackend = IsolatedBackend


def _wait(fd: int, event: int, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Deadline
    with selectors.DefaultSelector() as selector:
        selector.register(fd, event)
        if not selector.select(left):
            raise _Deadline


def _send(proc: subprocess.Popen, payload: bytes, deadline: float) -> None:
    """One frame (8-byte big-endian length + payload) to the child's stdin, by the deadline."""
    fd = proc.stdin.fileno()
    for data in (len(payload).to_bytes(_LEN_SIZE, "big"), payload):
        view = memoryview(data)
        while view:
            _wait(fd, selectors.EVENT_WRITE, deadline)
            try:
                view = view[os.write(fd, view[:_CHUNK]):]
            except BlockingIOError:
                continue


def _receive(proc: subprocess.Popen, deadline: float) -> bytes:
    """One frame from the child's stdout, by the deadline; EOFError if it closes it first."""
    size = int.from_bytes(_read_exact(proc.stdout.fileno(), _LEN_SIZE, deadline), "big")
    if size > _MAX_REPLY:
        raise EOFError(f"the measurement process sent a {size}-byte frame")
    return _read_exact(proc.stdout.fileno(), size, deadline)


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        _wait(fd, selectors.EVENT_READ, deadline)
        try:
            chunk = os.read(fd, min(size - len(buf), _CHUNK))
        except BlockingIOError:
            continue
        if not chunk:
            raise EOFError("the measurement process closed its output")
        buf += chunk
    return bytes(buf)
