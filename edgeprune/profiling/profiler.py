"""The one door to latency: memory, then the SQLite cache, then a real measurement.

The search asks for the latency of the same widths again and again (elitism, converged
populations, resumed runs); a measurement costs seconds, a lookup microseconds. ONNX export is
also deferred (``onnx_fn``) so a cache hit never pays for it.
"""

import dataclasses
from concurrent.futures import Future
from dataclasses import dataclass
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeprune.profiling.backend import AsyncBackend
from edgeprune.profiling.cache import LatencyCache, default_cache_path
from edgeprune.profiling.factory import make_backend
from edgeprune.profiling.fingerprint import fingerprint_hash
from edgeprune.profiling.reference import Reference
from edgeprune.profiling.stats import LatencyStats, NodeTimes
from edgeprune.profiling.targets import Profile


@dataclass
class Pending:
    """A measurement :meth:`Profiler.start` began: its ``future`` (on a farm; ``paired`` when it
    answers ``(candidate, reference)``) or its ``answer``."""

    arch_key: str
    shape: tuple[int, ...]
    paired: bool = False
    future: Future | None = None
    answer: tuple[LatencyStats, bool] | None = None


class Profiler:
    """Latency of architectures on one target, measured at most once per (arch, input shape)."""

    def __init__(
        self, profile: Profile, cache_path: Path | None = None, use_cache: bool = True,
        agents: list[str] | None = None, warn: Callable[[str], None] = lambda _m: None,
    ):
        self.profile = profile
        # A farm of ``agents`` or a profile with ``agent:`` is measured on those devices whatever
        # the runtime; the others here. Every backend is cached alike, keyed by the fingerprint
        # of the devices it times on.
        self.backend = make_backend(profile, agents=agents, warn=warn)
        self.fingerprint = self.backend.fingerprint()
        self.fingerprint_hash = fingerprint_hash(self.fingerprint)
        self._cache = LatencyCache(cache_path or default_cache_path()) if use_cache else None
        if self._cache is not None:  # so `edgeprune cache stats/export` can say what the rows belong to
            self._cache.remember_fingerprint(self.fingerprint_hash, self.fingerprint)
        self._memory: dict[tuple[str, tuple[int, ...]], LatencyStats] = {}
        self._node_memory: dict[tuple[str, tuple[int, ...]], NodeTimes] = {}
        self.measurements = 0
        self.cache_hits = 0
        self.reference = Reference(profile.measure.anchor_tolerance)
        # Cache rows created before this (Unix time) were measured against an anchor that is no
        # longer the one in use: ignored on read, replaced on write.
        self._not_before: float | None = None
        self._pending: dict[tuple[str, tuple[int, ...]], Pending] = {}

    @property
    def anchor(self) -> LatencyStats | None:
        """The reference's latency, the unit of every later measurement (None before one is set)."""
        return self.reference.anchor

    @property
    def anchor_check(self) -> dict | None:
        """What the re-check of a cached anchor found (see set_reference); None when none was cached."""
        return self.reference.check

    def drift(self, window: int = 5) -> dict | None:
        """How the reference's speed moved during the run (:meth:`Reference.drift`)."""
        return self.reference.drift(window)

    def set_reference(
        self,
        arch_key: str,
        input_shape: Sequence[int],
        onnx_bytes: bytes,
        anchor: LatencyStats | None = None,
        recheck: bool = True,
    ) -> LatencyStats:
        """Time every later candidate next to this model and report it in this model's units.

        The CPU's speed drifts (measured: 1.4x between minutes on a shared VM), but the ratio of
        two models timed in alternating blocks does not. Each later measurement is therefore
        ``candidate / reference (timed together) x anchor``, where the anchor is the reference's
        own latency: the cached one if this fingerprint has it and a fresh measurement agrees
        with it (so every number in the cache stays in one unit across runs), else the fresh one,
        which then replaces it and retires every row measured against the old one. A resumed run
        passes the ``anchor`` it used before; ``recheck=False`` takes a cached anchor as it is
        (an export timing its files next to the FP32 file the prune run already timed, so that
        the manifest and the report agree). Returns the anchor.
        """
        shape = tuple(int(d) for d in input_shape)
        self.reference = Reference(self.profile.measure.anchor_tolerance)  # drift is of this reference only
        self._not_before = None
        if anchor is not None:
            self._not_before = self._rows_valid_since(arch_key, shape, anchor)
        elif recheck and (cached := self.peek(arch_key, shape)) is not None:
            anchor = self._checked_anchor(cached, arch_key, shape, onnx_bytes)
        else:
            anchor, _ = self.latency(arch_key, shape, lambda: onnx_bytes)
            self._not_before = self._created(arch_key, shape)
        self.backend.set_reference(onnx_bytes, shape)
        self.reference.anchor = anchor
        return anchor

    def _checked_anchor(self, cached: LatencyStats, arch_key: str, shape: tuple[int, ...], onnx_bytes: bytes) -> LatencyStats:
        """``cached`` while a fresh measurement agrees with it, else the fresh one, which then
        replaces it in the cache and retires the rows created before it."""
        fresh, agreed = self.reference.recheck(cached, lambda: self._measure(onnx_bytes, shape))
        if agreed:
            self.cache_hits += 1
            self._not_before = self._created(arch_key, shape)
            return cached
        self._memory.clear()  # anything remembered so far is in the retired unit
        self._memory[(arch_key, shape)] = fresh
        if self._cache is not None:
            self._cache.put(self.fingerprint_hash, arch_key, shape, fresh, replace_before=time.time())
        self._not_before = self._created(arch_key, shape)
        return fresh

    def _rows_valid_since(self, arch_key: str, shape: tuple[int, ...], anchor: LatencyStats) -> float | None:
        """For a resumed run: rows are in its units from its anchor's row on; if that row has
        been replaced since, no cached row is (the run's journal still has its own)."""
        cached = self._cache.get(self.fingerprint_hash, arch_key, shape) if self._cache is not None else None
        if cached is not None and math.isclose(cached.median_ms, anchor.median_ms, rel_tol=1e-9):
            return self._created(arch_key, shape)
        return time.time()

    def _created(self, arch_key: str, shape: tuple[int, ...]) -> float | None:
        return self._cache.created(self.fingerprint_hash, arch_key, shape) if self._cache is not None else None

    def latency(
        self,
        arch_key: str,
        input_shape: Sequence[int],
        onnx_fn: Callable[[], bytes],
        fresh: bool = False,
        sessions: int = 1,
    ) -> tuple[LatencyStats, bool]:
        """``(stats, from_cache)`` for the architecture ``arch_key``.

        ``fresh=True`` ignores both caches and measures: the final model's reported number must
        be an independent measurement, not the one the search happened to select it by.
        A measurement takes ``sessions`` fresh sessions and keeps the one with the median
        latency: on a shared machine one session can land several percent off the next (see
        ``edgeprune.select.selection.SessionNoise``). Noisy results are returned (so the caller can report them)
        but never stored, so the next request measures again.
        """
        if sessions < 1:
            raise ValueError(f"sessions must be at least 1, got {sessions}")
        shape = tuple(int(d) for d in input_shape)
        if not fresh:
            stats = self._memory.get((arch_key, shape))
            if stats is None and self._cache is not None:
                stats = self._cache.get(self.fingerprint_hash, arch_key, shape, self._not_before)
                if stats is not None:
                    self._memory[(arch_key, shape)] = stats
            if stats is not None:
                self.cache_hits += 1
                return stats, True
        runs = self.sessions(arch_key, shape, onnx_fn(), sessions)
        return sorted(runs, key=lambda s: s.median_ms)[sessions // 2], False

    def start(self, arch_key: str, input_shape: Sequence[int], onnx_fn: Callable[[], bytes], fresh: bool = False) -> "Pending":
        """Begin measuring ``arch_key`` and return at once where the backend is a farm (the
        measurement runs on a free agent while the caller works on), else measure now; read the
        answer with :meth:`finish`. Unless ``fresh`` (one more fresh session, see
        :meth:`latency`), known architectures are answered from memory or the cache, and one
        already under way is not started twice."""
        shape = tuple(int(d) for d in input_shape)
        if not fresh and (arch_key, shape) in self._pending:
            return self._pending[arch_key, shape]
        if not isinstance(self.backend, AsyncBackend) or (not fresh and self.peek(arch_key, shape) is not None):
            return Pending(arch_key, shape, answer=self.latency(arch_key, shape, onnx_fn, fresh=fresh))
        self.measurements += 1
        paired = self.anchor is not None
        pending = Pending(arch_key, shape, paired, future=self.backend.submit(onnx_fn(), shape, paired, arch_key))
        if not fresh:
            self._pending[arch_key, shape] = pending
        return pending

    def finish(self, pending: "Pending") -> tuple[LatencyStats, bool]:
        """``(stats, from_cache)`` of a measurement :meth:`start` began (waits for it). A farm's
        measurement asked for again before it was answered (two choices of one architecture) is
        a cache hit the second time, as it is when measured here."""
        if pending.answer is None:
            raw = pending.future.result()
            stats = self.reference.scale(*raw) if pending.paired else self._absolute(raw)
            self._pending.pop((pending.arch_key, pending.shape), None)
            self._remember(pending.arch_key, pending.shape, stats)
            pending.answer = (stats, False)
            return pending.answer
        if pending.future is not None:
            self.cache_hits += 1
            return pending.answer[0], True
        return pending.answer

    def sessions(self, arch_key: str, input_shape: Sequence[int], onnx: bytes, count: int) -> list[LatencyStats]:
        """``count`` fresh sessions of ``onnx``, in the order measured. The session with the
        median latency is the one remembered and cached (when it is not noisy)."""
        shape = tuple(int(d) for d in input_shape)
        runs = [self._measure(onnx, shape) for _ in range(count)]
        self._remember(arch_key, shape, sorted(runs, key=lambda s: s.median_ms)[count // 2])
        return runs

    def _remember(self, arch_key: str, shape: tuple[int, ...], typical: LatencyStats) -> None:
        if not typical.noisy:
            self._memory.setdefault((arch_key, shape), typical)
            if self._cache is not None:
                self._cache.put(self.fingerprint_hash, arch_key, shape, typical, replace_before=self._not_before)

    def _measure(self, onnx: bytes, shape: tuple[int, ...]) -> LatencyStats:
        """One fresh measurement, in the reference's units when a reference is set (without the
        trimmed mean, so a cached answer is the same as the fresh one it came from).

        A paired measurement flagged noisy (a competing process, an interrupt storm) is taken
        again, up to the profile's ``repeats_if_noisy`` times, and the least noisy kept: a noisy
        number would otherwise rank a candidate in the search by the machine's bad moment. (The
        backends repeat an absolute measurement themselves.)"""
        self.measurements += 1
        if self.anchor is None:
            return self._absolute(self.backend.measure(onnx, shape))
        stats = self.reference.scale(*self.backend.measure_pair(onnx, shape))
        for _ in range(self.profile.measure.repeats_if_noisy):
            if not stats.noisy:
                break
            self.measurements += 1
            again = self.reference.scale(*self.backend.measure_pair(onnx, shape))
            if (again.noisy, again.cv) < (stats.noisy, stats.cv):
                stats = again
        return stats

    def _absolute(self, raw: LatencyStats) -> LatencyStats:
        return dataclasses.replace(raw, trimmed_ms=None)

    def peek(self, arch_key: str, input_shape: Sequence[int]) -> LatencyStats | None:
        """The known latency of ``arch_key`` (memory or cache), without measuring anything."""
        shape = tuple(int(d) for d in input_shape)
        stats = self._memory.get((arch_key, shape))
        if stats is None and self._cache is not None:
            stats = self._cache.get(self.fingerprint_hash, arch_key, shape, self._not_before)
        return stats

    @property
    def capacity(self) -> int:
        """How many measurements :meth:`start` can have under way at once: a farm's agents in
        rotation, else 1 (this host measures one model at a time)."""
        return self.backend.capacity() if isinstance(self.backend, AsyncBackend) else 1

    @property
    def has_node_times(self) -> bool:
        """Whether :meth:`node_times` can be asked for (the search's surrogate needs it)."""
        return self.backend.supports_node_times

    def node_times(self, arch_key: str, input_shape: Sequence[int], onnx_fn: Callable[[], bytes]) -> NodeTimes:
        """ORT's per-node profile of ``arch_key``: memory, then the cache, then the backend."""
        shape = tuple(int(d) for d in input_shape)
        found = self._node_memory.get((arch_key, shape))
        if found is None and self._cache is not None:
            stored = self._cache.get_node_times(self.fingerprint_hash, arch_key, shape)
            found = NodeTimes.from_dict(stored) if stored is not None else None
        if found is None:
            found = self.backend.node_times(onnx_fn(), shape)
            if self._cache is not None:
                self._cache.put_node_times(self.fingerprint_hash, arch_key, shape, found.to_dict())
        self._node_memory[(arch_key, shape)] = found
        return found

    def close(self) -> None:
        self.backend.close()
        if self._cache is not None:
            self._cache.close()
