"""The one way a pruning problem gets memory: the architecture in the target's format (the bytes
the latency was measured on) → its peak in a fresh session of the target's runtime
(:func:`edgeprune.profiling.memory.measure_memory`).

Memory, like latency, belongs to the architecture: it is keyed by widths and measured once per
run. Unlike latency it hardly varies between sessions (three measurements agree within 1 MB), so
one measurement decides, and selection re-measures latency only.
"""

from __future__ import annotations

from torch import nn

from edgeprune.errors import UserError
from edgeprune.problem.latency import ProfiledLatency
from edgeprune.profiling.memory import MEMORY_BACKENDS, MemoryStats, can_measure_here, measure_memory
from edgeprune.profiling.targets import Profile


def require_memory_target(profile: Profile, remote: bool) -> None:
    """A one-line refusal where memory cannot be measured: TensorRT and the simulated device have
    no per-session call to measure, and the agent protocol carries latency only."""
    if profile.backend not in MEMORY_BACKENDS:
        raise UserError(
            f"--max-memory-mb and the memory objective need a runtime edgeprune can measure memory on ({', '.join(MEMORY_BACKENDS)}); "
            f"target {profile.name} runs {profile.backend}: choose e.g. --target x86-cpu"
        )
    if remote:
        raise UserError(
            f"--max-memory-mb and the memory objective are measured on this host; target {profile.name} measures on an agent, "
            "which reports latency only: drop --agents (or the profile's agent) to prune for memory"
        )
    if not can_measure_here():
        raise UserError(
            "--max-memory-mb and the memory objective read a process's peak memory through Linux's /proc/self/clear_refs, "
            "which this host does not allow; prune for memory on a Linux host"
        )


def search_limit_mb(limit_mb: float) -> float:
    """The memory limit the search, the shortlist and widening hold candidates to: the user's
    less the larger of 1 MiB and 2 %. The verdict measures the delivered file afresh (other bytes:
    slimmed, with metadata) and measurements of one model agree within about 1 MB, so a pick that
    fits by a hair would fail it."""
    return limit_mb - max(1.0, 0.02 * limit_mb)


class ProfiledMemory:
    """Peak memory of the architectures of ``latency``'s space, in the target's runtime."""

    def __init__(self, latency: ProfiledLatency, profile: Profile):
        self.latency, self.profile = latency, profile
        self._known: dict[tuple[int, ...], MemoryStats] = {}

    def for_latency(self, latency: ProfiledLatency) -> "ProfiledMemory":
        """The same measurement for another space (a later round's), sharing nothing measured."""
        return ProfiledMemory(latency, self.profile)

    def measure(self, widths: tuple[int, ...], model: nn.Module | None = None) -> MemoryStats:
        key = tuple(int(w) for w in widths)
        if key not in self._known:
            blob = self.latency.model_bytes(key, model)
            self._known[key] = measure_memory(self.profile, blob, self.latency.shape)
        return self._known[key]
