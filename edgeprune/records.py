"""What a search chooses and what comes back, without the network: channel groups, their widths
and kept channels, and the evaluated :class:`Candidate`.

A search only needs to know, per prunable group, how wide it is, which widths the target's step
grid allows and which channels matter most. That is plain data, so it lives here, apart from the
torch model and Torch-Pruning's graph (:class:`edgeprune.space.channels.ChannelSpace` adds those): the
searches (``edgeprune.search``) work on a :class:`GroupLayout` and never import torch. Every stage
after the search (problem, select, jobs, report) passes candidates around, so the record sits on
the ground floor, as pymoo keeps ``Individual`` in its core, and none of them imports the search
to name it. The ratio-bounded bit flip is here for the same reason: co-evolution mutates group
masks with it and the robustness objective mutates sub-nets with it, two stages, one operator.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# Kept channel indices per group (ascending), in layout order: what a genome decodes to. Two
# choices with the same widths are the same architecture (same latency) but different networks
# (different accuracy).
Choice = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Group:
    """One prunable channel group, named after its root layer (the layer whose outputs it prunes).

    A *depth* group is a whole residual block instead (``depth=True``, named ``depth:BLOCK``):
    width 1 keeps it, width 0 replaces it by the identity, so a genome of widths carries depth
    genes without the searches knowing the difference."""

    name: str
    full: int
    options: tuple[int, ...]
    order: tuple[int, ...]  # channel indices of the root layer, most important first
    coupled: tuple[str, ...]
    depth: bool = False

    def nearest_option(self, width: float) -> int:
        """Index of the allowed width closest to ``width`` (ties go to the wider option)."""
        return min(range(len(self.options)), key=lambda i: (abs(self.options[i] - width), -i))

    def kept(self, width: int) -> list[int]:
        """The ``width`` most important channels, in their original order."""
        if width not in self.options:
            raise ValueError(f"width {width} of group {self.name} is not on its grid {self.options}")
        return sorted(self.order[:width])


def widths_of(choice: Choice) -> tuple[int, ...]:
    """The architecture of a choice: how many channels each group keeps."""
    return tuple(len(kept) for kept in choice)


class GroupLayout:
    """The prunable groups of one network and the maps genome indices → widths → kept channels."""

    def __init__(self, groups: Sequence[Group]):
        self.groups: list[Group] = list(groups)

    def widths_from_indices(self, indices) -> tuple[int, ...]:
        return tuple(g.options[int(i)] for g, i in zip(self.groups, indices))

    def full_indices(self) -> list[int]:
        return [len(g.options) - 1 for g in self.groups]

    def min_indices(self) -> list[int]:
        return [0 for _ in self.groups]

    def uniform_indices(self, keep_ratio: float) -> list[int]:
        """Every group at ``keep_ratio`` of its width, snapped to the grid."""
        return self.scaled_indices(keep_ratio, 0.0)

    def scaled_indices(self, keep_ratio: float, alpha: float) -> list[int]:
        """Every group at ``keep_ratio * (median width / its width) ** alpha`` of its width
        (at most all of it), snapped to the grid: ``alpha = 0`` is uniform pruning, larger
        ``alpha`` takes more from the wide groups and less from the narrow ones.

        Why: on small inputs a narrow layer's cost is mostly per-operator overhead that pruning
        does not remove, while a wide layer's cost is its weights and MACs; and narrow layers
        (MobileNetV2's bottlenecks) are the network's information bottlenecks. Measured on ORT
        CPU at 0.5x of MobileNetV2's latency (Fashion-MNIST, 3x32x32), after the same 1-epoch
        distillation: uniform kept 2.29 M MACs and scored 87.96 %; ``alpha`` 0.5, 1 and 2 kept
        3.02, 3.16 and 3.48 M and scored 89.66, 90.04 and 90.28 % (the unpruned model, fine-tuned
        alike: 90.61 %). ResNet-18 at 0.5x barely cares: 91.77 % uniform, 91.93 % at ``alpha`` 1.
        """
        median = self._median_width
        return [
            len(g.options) - 1 if g.depth else g.nearest_option(min(1.0, keep_ratio * (median / g.full) ** alpha) * g.full)
            for g in self.groups
        ]  # channel profiles: every block kept

    def full_ratio(self, alpha: float) -> float:
        """The smallest ``keep_ratio`` at which :meth:`scaled_indices` keeps every group whole."""
        return max(((g.full / self._median_width) ** alpha for g in self.groups if not g.depth), default=1.0)

    @property
    def _median_width(self) -> float:
        widths = [g.full for g in self.groups if not g.depth]
        return statistics.median(widths) if widths else 1.0

    def choice(self, widths) -> Choice:
        """The ``widths`` most important channels of every group (what the width encoding keeps)."""
        return tuple(tuple(g.kept(int(w))) for g, w in zip(self.groups, widths))

    def full_choice(self) -> Choice:
        """Every channel of every group: the unpruned network."""
        return self.choice(self.widths_from_indices(self.full_indices()))


class Latency(Protocol):
    """A latency measurement as the stages read it (``edgeprune.profiling.stats.LatencyStats``)."""

    median_ms: float


@dataclass
class Candidate:
    """One evaluated network. ``latency`` is a measurement unless ``predicted`` (see below)."""

    choice: Choice
    accuracy: float
    latency: Latency
    macs: int
    params: int
    from_cache: bool = False
    seconds: float = 0.0
    # Not measured: ``latency`` is the screen's prediction, because the candidate is predicted far
    # over the limit (accuracy not scored: 0), outranked by enough measured ones or under the focus
    # floor (both scored; edgeprune.problem.screening). Such candidates steer the GA but are never a
    # Pareto point or a reported number; only a floored one may be shortlisted, once re-measured.
    predicted: bool = False
    # Values of the problem's further objectives, by name (higher is better), e.g. robustness.
    scores: dict[str, float] = field(default_factory=dict)
    # Peak memory of one inference in the target's runtime (MiB), where the run measures memory.
    memory_mb: float | None = None
    # Of ``predicted``: predicted under the search's focus floor with a margin, so certainly within
    # the limit; the shortlist may take it, and its re-measure is then its first measurement.
    floored: bool = False

    @property
    def widths(self) -> tuple[int, ...]:
        return widths_of(self.choice)

    def summary(self, layout: GroupLayout) -> dict:
        return {
            "accuracy": self.accuracy,
            "latency_ms": self.latency.median_ms,
            "macs": self.macs,
            "params": self.params,
            "widths": {g.name: int(w) for g, w in zip(layout.groups, self.widths)},
            **({"scores": dict(self.scores)} if self.scores else {}),
            **({"memory_mb": self.memory_mb} if self.memory_mb is not None else {}),
        }


# CCSRP's mutation settings (section 4): bit-flip rate p1 for a fresh mutant, ratio bound r.
P1, RATIO_BOUND = 0.05, 0.1


def bounded_bit_flip(bits: np.ndarray, rate: float, bound: float, rng: np.random.Generator) -> np.ndarray:
    """Flip each bit with probability ``rate``; then, if more than ``bound`` of the channels are
    off, switch random off-bits back on until exactly that many are (CCEP's ratio bound)."""
    out = bits ^ (rng.random(len(bits)) < rate)
    max_off = int(np.floor(bound * len(bits)))
    off = np.flatnonzero(~out)
    if len(off) > max_off:
        out[rng.choice(off, size=len(off) - max_off, replace=False)] = True
    return out
