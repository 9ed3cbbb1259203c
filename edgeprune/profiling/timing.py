"""The measurement protocol every in-process CPU runtime times with (DESIGN.md "Measurement
protocol"), written once: ONNX Runtime, OpenVINO, LiteRT and ExecuTorch differ only in how a fresh, warmed-up
model is made ready to run, so each backend gives :meth:`ProtocolBackend._warm` and inherits the
rest.

Absolute numbers pool the runs of ``measure.sessions`` fresh sessions (one session's median on a
shared CPU swings by a quarter from one second to the next; measured, mobilenet_v2 at 3x32x32: 10
repeats of one 0.6 s ONNX Runtime session scatter with CV 0.11, of 5 pooled sessions 0.034) and
are re-taken while noisy. Paired numbers time the candidate and the reference in alternating
short blocks, so both see the same spells of a machine whose speed drifts; compare them by
:func:`~edgeprune.profiling.stats.ratio`. Everything is summarised by
:func:`~edgeprune.profiling.stats.summarize`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

from edgeprune.profiling.backend import Backend
from edgeprune.profiling.fingerprint import host_fingerprint
from edgeprune.profiling.stats import LatencyStats, summarize
from edgeprune.profiling.targets import MeasureSpec, Profile

# Interleaved blocks per model in measure_pair: 20 blocks of 30 ms (at a 0.6 s window), compared
# by trimmed means, gave a candidate/reference ratio with CV 2-4 % over fresh session pairs; 4
# blocks of 150 ms compared by medians 6-8 %. 120 blocks of 5 ms moved the ratio itself (each
# block starts with the other model's weights in the caches).
BLOCKS = 20

# Two measurements running at once on the same cores would time each other, not the model.
MEASURE_LOCK = threading.Lock()

Run = Callable[[], Any]


def timed_runs(run: Run, spec: MeasureSpec) -> list[float]:
    """Per-run wall times (s): at least ``min_runs`` and ``max_seconds``, at most ``max_runs``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < spec.max_runs:
        t0 = time.perf_counter()
        run()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if len(times) >= spec.min_runs and t1 - start >= spec.max_seconds:
            break
    return times


class ProtocolBackend(Backend):
    """``measure``, ``set_reference`` and ``measure_pair`` of the shared protocol, for a runtime
    that can hand over one inference as a call (:meth:`_warm`), and the fingerprint of this host.
    Subclasses set ``profile`` and give ``node_times`` and ``close``."""

    profile: Profile
    _reference: tuple[bytes, tuple[int, ...]] | None = None
    _fingerprint: dict[str, Any] | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The device fingerprint for this host + profile, the runtime's version in it (computed
        once: it reads /proc)."""
        if self._fingerprint is None:
            self._fingerprint = host_fingerprint(self.profile)
        return dict(self._fingerprint)

    @abstractmethod
    def _warm(self, model_bytes: bytes, input_shape: tuple[int, ...]) -> Run:
        """One inference of a freshly loaded ``model_bytes`` on a fixed input (seed 0) of
        ``input_shape``, after the profile's warm-up runs; ValueError when the runtime cannot
        load the bytes."""

    def inference(self, model_bytes: bytes, input_shape: tuple[int, ...]) -> Run:
        """One inference of a freshly loaded and warmed-up ``model_bytes``: what
        :mod:`edgeprune.profiling.memory` measures the peak of."""
        return self._warm(model_bytes, input_shape)

    def measure(self, model_bytes: bytes, input_shape: tuple[int, ...]) -> LatencyStats:
        """Runs of ``measure.sessions`` fresh sessions, pooled; re-taken while the CV is above the
        profile's threshold. ``noisy=True`` when even the least noisy repeat stays above it:
        callers report it but must not cache it."""
        spec = self.profile.measure
        with MEASURE_LOCK:  # loading a model optimises it: keep that off the timed cores
            best = self._pooled(model_bytes, input_shape, spec)
            for _ in range(spec.repeats_if_noisy):
                if best.cv <= spec.cv_threshold:
                    break
                again = self._pooled(model_bytes, input_shape, spec)
                if again.cv < best.cv:
                    best = again
        best.noisy = best.cv > spec.cv_threshold
        return best

    def _pooled(self, model_bytes: bytes, input_shape: tuple[int, ...], spec: MeasureSpec) -> LatencyStats:
        times: list[float] = []
        for _ in range(spec.sessions):
            run = self._warm(model_bytes, input_shape)
            times.extend(timed_runs(run, spec))
            del run  # the session goes before the next one loads
        return summarize(times)

    def set_reference(self, model_bytes: bytes, input_shape: tuple[int, ...]) -> None:
        """The model that :meth:`measure_pair` times alongside every candidate."""
        self._reference = (model_bytes, tuple(input_shape))

    def measure_pair(self, model_bytes: bytes, input_shape: tuple[int, ...]) -> tuple[LatencyStats, LatencyStats]:
        """Candidate and reference timed in :data:`BLOCKS` alternating blocks of one session each,
        so both see the same CPU state (the module docstring says why)."""
        if self._reference is None:
            raise ValueError("set_reference() must be called before measure_pair()")
        ref_bytes, ref_shape = self._reference
        spec = self.profile.measure
        block = dataclasses.replace(spec, min_runs=max(1, spec.min_runs // BLOCKS), max_seconds=spec.max_seconds / BLOCKS, max_runs=max(1, spec.max_runs // BLOCKS))
        with MEASURE_LOCK:
            runs = [(self._warm(model_bytes, input_shape), []), (self._warm(ref_bytes, ref_shape), [])]
            for _ in range(BLOCKS):
                for run, times in runs:
                    times.extend(timed_runs(run, block))
        cand, ref = (summarize(times) for _, times in runs)
        for stats in (cand, ref):
            stats.noisy = stats.cv > spec.cv_threshold
        return cand, ref
