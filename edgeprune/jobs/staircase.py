"""Which channel step a measured width staircase asks for (``edgeprune targets probe``).

A runtime's kernels work in blocks of channels: a width that is not a multiple of the block is
padded up to the next one, or takes a slower generic path (ONNX Runtime here ran 63 and 65
channels 22-30 % slower than 64). A search should then only try widths on the staircase's lower
envelope: the widths no wider width beats. A width is *dominated* when some wider probed width
costs no more than it does (within ``tolerance``): pruning to it would give up channels and buy no
speed. The step proposed is the smallest power of two whose probed multiples are all undominated:
a width just above a multiple costs a clear jump, and the widths between two multiples cost no
less than the upper one. A step is only judged on two or more of its multiples, and where no step
passes the staircase shows no block the grid could follow (cost rises smoothly, or the noise hides
the jumps): None.

Torch-free and clock-free: the numbers come from :mod:`edgeprune.jobs.probe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Widths within this fraction of each other's cost count as equally fast. Paired ratios of small
# models on the shared VM spread 2-4 % (CV, see profiling/ort.py); a step's jump at 64 channels is
# 6 % (4-wide blocks) to 50 % (32-wide), and ONNX Runtime's odd widths cost 20-40 % more.
TOLERANCE = 0.05


@dataclass(frozen=True)
class Point:
    """One probed width: its median (ms) and the reference's in the same pair, their ratio (by
    trimmed means, :func:`edgeprune.profiling.stats.ratio`) and whether a pair was noisy. Timed
    in several rounds, each is the median over the rounds, and ``ratios`` holds every round's."""

    width: int
    ms: float
    reference_ms: float
    ratio: float
    noisy: bool = False
    ratios: tuple[float, ...] = ()


def dominated(points: Sequence[Point], tolerance: float = TOLERANCE) -> set[int]:
    """The widths some wider probed width costs no more than (within ``tolerance``)."""
    return {p.width for p in points if any(q.width > p.width and q.ratio <= p.ratio * (1 + tolerance) for q in points)}


def candidate_steps(widths: Sequence[int]) -> list[int]:
    """Powers of two with at least two multiples among ``widths``, smallest first."""
    steps, step = [], 1
    while step <= max(widths):
        if sum(w % step == 0 for w in widths) >= 2:
            steps.append(step)
        step *= 2
    return steps


def choose_step(points: Sequence[Point], tolerance: float = TOLERANCE) -> int | None:
    """The smallest step whose probed multiples are all on the lower envelope (None: no step)."""
    off = dominated(points, tolerance)
    widths = [p.width for p in points]
    for step in candidate_steps(widths):
        if not any(w % step == 0 and w in off for w in widths):
            return step
    return None
