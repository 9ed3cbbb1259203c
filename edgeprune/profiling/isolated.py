"""ONNX Runtime measurements in a torch-free child process (see :mod:`edgeprune.profiling.worker`)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

from edgeprune.profiling.fingerprint import host_fingerprint
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

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fingerprint)

    def _child(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "edgeprune.profiling.worker", self.profile.source],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        return self._proc

    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> LatencyStats:
        with self._lock:
            proc = self._child()
            try:
                write_frame(proc.stdin, json.dumps({"shape": list(input_shape)}).encode())
                write_frame(proc.stdin, onnx_bytes)
                reply = read_frame(proc.stdout)
            except (BrokenPipeError, EOFError):
                reply = None
            if reply is None:
                self.close()
                raise RuntimeError(f"the measurement process for {self.profile.name} died (exit {proc.poll()})")
        result = json.loads(reply)
        if not result["ok"]:
            raise ValueError(result["error"])
        return LatencyStats.from_dict(result["stats"])

    def close(self) -> None:
        if self._proc is not None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except Exception:
                self._proc.kill()
            self._proc = None
