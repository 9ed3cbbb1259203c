"""The benches' final timing: files timed in alternating fresh sessions in one run (A B C A B C ...),
so a burst of other tenants' load on a shared VM hits every file alike; the median per file."""

from __future__ import annotations

import hashlib
import statistics


def blob_digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:16]


def time_alternating(profiler, files: dict[str, bytes], shape: tuple[int, ...], sessions: int = 5, tag: str = "bench") -> dict[str, float]:
    """Median ms of each file over ``sessions`` fresh sessions, the files taking turns; in the
    profiler's units (its anchor's, when one is set)."""
    times: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(sessions):
        for name, blob in files.items():
            key = f"{tag}-{blob_digest(blob)}"
            times[name].append(profiler.latency(key, shape, lambda b=blob: b, fresh=True)[0].median_ms)
    return {name: statistics.median(values) for name, values in times.items()}
