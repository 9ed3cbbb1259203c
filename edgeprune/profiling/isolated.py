"""ONNX Runtime measurements in a torch-free child process (see :mod:`edgeprune.profiling.worker`)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

from edgeprune.profiling.fingerprint import host_fingerprint
from edgeprune.profiling.ort import NodeTimes
from edgeprune.profiling.stats import LatencyStats
from edgeprune.profiling.worker import read_frame, write_frame
from edgeprune.targets import Profile


class IsolatedOrtBackend:
    """Same interface as :class:`~edgeprune.profiling.ort.OrtBackend`; the timing happens in a child."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self._fingerprint = host_fingerprint(profile)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._reference: tuple[bytes, tuple[int, ...]] | None = None
        self._reference_sent = False

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fingerprint)

    def _child(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._reference_sent = False
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "edgeprune.profiling.worker", json.dumps(self.profile.to_dict())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        return self._proc

    def _request(self, header: dict, blob: bytes) -> dict:
        with self._lock:
            proc = self._child()
            if self._reference is not None and not self._reference_sent:
                self._reference_sent = True  # a restarted child needs the reference again
                self._request_locked(proc, {"op": "reference", "shape": list(self._reference[1])}, self._reference[0])
            return self._request_locked(proc, header, blob)

    def _request_locked(self, proc: subprocess.Popen, header: dict, blob: bytes) -> dict:
        try:
            write_frame(proc.stdin, json.dumps(header).encode())
            write_frame(proc.stdin, blob)
            reply = read_frame(proc.stdout)
        except (BrokenPipeError, EOFError):
            reply = None
        if reply is None:
            self._stop()
            raise RuntimeError(f"the measurement process for {self.profile.name} died (exit {proc.poll()})")
        result = json.loads(reply)
        if not result["ok"]:
            raise ValueError(result["error"])
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
        if self._proc is not None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except Exception:
                self._proc.kill()
            self._proc = None
