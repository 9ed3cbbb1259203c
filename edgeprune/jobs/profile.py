"""The latency of one model on a target, through the Profiler and its cache: what ``edgeprune
profile`` prints and ``edgeprune.profile()`` returns. Nothing here imports torch (a CI runner that
only profiles has onnxruntime alone); a model object is converted by the caller.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import UserError
from edgeprune.profiling.stats import LatencyStats
from edgeprune.profiling.targets import Profile


@dataclass(frozen=True)
class ProfileResult:
    """One model's latency on one target: each measurement (or the cached one) and their median."""

    model: str
    target: str
    input_shape: tuple[int, ...]
    fingerprint: dict
    fingerprint_hash: str
    runs: tuple[LatencyStats, ...]
    from_cache: bool
    cache: str | None

    @property
    def median_ms(self) -> float:
        """The median of the measurements' medians (of one measurement: its median)."""
        return statistics.median(r.median_ms for r in self.runs)

    def to_dict(self) -> dict:
        """``edgeprune profile --json``'s object."""
        return {
            "model": self.model, "target": self.target, "input_shape": list(self.input_shape),
            "fingerprint": self.fingerprint, "fingerprint_hash": self.fingerprint_hash, "median_ms": self.median_ms,
            "from_cache": self.from_cache, "cache": self.cache, "runs": [r.to_dict() for r in self.runs],
        }


def require_onnx_target(profile: Profile) -> None:
    """``profile`` times ONNX files; a target that runs its runtime's own format is gated on that
    file instead (profiling one is not built yet)."""
    if profile.model_format != "onnx":
        raise UserError(
            f"target '{profile.name}' runs .{profile.model_format} files, which `profile` does not time; "
            f"time one with `edgeprune gate MODEL.{profile.model_format} --budget-ms MS --target {profile.name}`"
        )


def profile_bytes(
    blob: bytes, shape: tuple[int, ...], profile: Profile, name: str, *,
    repeats: int = 1, fresh: bool = False, cache: str | None = None, no_cache: bool = False,
) -> ProfileResult:
    """Time ``blob`` (the target's format, input ``shape``) ``repeats`` times in fresh sessions,
    or answer from the cache when it knows the graph and neither ``fresh`` nor ``repeats`` > 1 asks
    for new measurements."""
    from edgeprune.profiling.cache import default_cache_path
    from edgeprune.profiling.keys import graph_key
    from edgeprune.profiling.profiler import Profiler

    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")
    profiler = Profiler(profile, cache_path=Path(cache) if cache else None, use_cache=not no_cache)
    arch = graph_key(blob)
    try:
        hit = None if fresh or repeats > 1 else profiler.peek(arch, shape)
        try:
            runs = [hit] if hit is not None else profiler.sessions(arch, shape, blob, repeats)
        except ValueError:  # the runtime's text may quote the model's data (external data files): never shown
            raise UserError(f"{name} does not run on {profile.name}; export it again (or load it in onnxruntime yourself to see why)") from None
    finally:
        profiler.close()
    return ProfileResult(
        name, profile.name, tuple(shape), profiler.fingerprint, profiler.fingerprint_hash, tuple(runs),
        hit is not None, None if no_cache else (cache or str(default_cache_path())),
    )
