"""The reference's side of paired timing: the anchor every candidate is reported in, the re-check
of a cached anchor, and how the machine's speed moved while the reference was timed (drift).

The CPU's speed drifts between minutes, the ratio of two models timed in alternating blocks does
not, so the Profiler reports each candidate as ``candidate / reference (timed together) x
anchor`` (see :meth:`edgeprune.profiling.profiler.Profiler.set_reference` for how the anchor is
chosen). This unit holds what that takes and what it found; it measures nothing itself.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable

from edgeprune.profiling.stats import LatencyStats, ratio


class Reference:
    """One reference model's timing record: ``anchor`` (None until set: measurements are then
    absolute), ``check`` (what the re-check of a cached anchor found; None when none was cached)
    and ``sessions`` (the reference's own median in every session timed next to it, in order)."""

    def __init__(self, tolerance: float):
        self.tolerance = tolerance
        self.anchor: LatencyStats | None = None
        self.check: dict | None = None
        self.sessions: list[float] = []

    def recheck(self, cached: LatencyStats, measure: Callable[[], LatencyStats]) -> tuple[LatencyStats, bool]:
        """``(the last fresh measurement of the reference, whether it agrees with cached)``:
        it disagrees only when two in a row are off beyond the tolerance. One pooled measurement
        of a tiny model still lands 25 % off the next now and then on a shared VM; a cached spell
        the machine has left disagrees every time. A noisy measurement never overturns the cache.
        ``measure`` is absolute (the anchor is not set yet). The finding is kept in ``check``."""
        bound = math.log1p(self.tolerance)
        for _ in range(2):
            fresh = measure()
            agreed = fresh.noisy or abs(math.log(fresh.median_ms / cached.median_ms)) <= bound
            if agreed:
                break
        self.check = {"cached_ms": cached.median_ms, "fresh_ms": fresh.median_ms, "kept_cached": agreed, "tolerance": self.tolerance}
        return fresh, agreed

    def scale(self, raw: LatencyStats, ref: LatencyStats) -> LatencyStats:
        """A candidate timed next to the reference (``raw``, ``ref``) in the anchor's units. The
        trimmed mean is how the two were compared, not a number reported or cached."""
        self.sessions.append(ref.median_ms)
        stats = raw.scaled(self.anchor.median_ms * ratio(raw, ref) / raw.median_ms)
        return dataclasses.replace(stats, noisy=raw.noisy or ref.noisy, trimmed_ms=None)

    def drift(self, window: int = 5) -> dict | None:
        """How fast the reference ran, relative to its anchor, in the first and the last
        ``window`` sessions timed next to it (None before any).

        Every latency is reported as ``candidate / reference x anchor``, so a ratio budget is
        judged by ratios timed together whatever the machine does; an absolute budget is judged in
        the anchor's units, i.e. at the speed the machine had when the anchor was timed. A factor
        far from 1 says the machine (or, with a cached anchor, an earlier spell) ran at another
        speed, and how far an absolute verdict leans on that assumption."""
        if self.anchor is None or not self.sessions:
            return None
        first = statistics.median(self.sessions[:window])
        last = statistics.median(self.sessions[-window:])
        return {
            "anchor_ms": self.anchor.median_ms,
            "sessions": len(self.sessions),
            "first_ms": first,
            "last_ms": last,
            "first_factor": first / self.anchor.median_ms,
            "last_factor": last / self.anchor.median_ms,
        }
