"""Which channel step a measured width staircase asks for (``edgeprune targets probe``).

A runtime's kernels work in blocks of channels: a width off the block is padded up to the next
one or takes a slower generic path (ONNX Runtime here runs 56 and 60 channels no faster than 64,
and 62 or 63 slower). A grid of widths on multiples of a step ``s`` is worth its points when each
point runs clearly faster than the next one up (``m`` against ``m + s``: ``tolerance`` faster, more
than the noise of a paired ratio) and than every probed width between them (a width just above a
multiple costs no less than it: one noisy point cannot pass a grid whose points between cost the
same); a grid finer than the blocks has points that buy no speed. The step proposed is the
smallest power of two whose every probed link (``m`` and ``m + s`` both probed) saves time; None
when even the coarsest probed link does not (the widths cost the same).

Why links between grid points and not the lower envelope of every probed width: on LiteRT
(XNNPACK) here cost rises gently between blocks, so 48 and 49 channels cost the same and a chain
of 1 % steps makes every width "no faster than a slightly wider one", which proposed 32 although
48 ran 12 % faster than 64; on ONNX Runtime's linear layer it proposed 16 where 56 ran 7 % faster
than 64. A search asks what a grid point buys against its neighbour, which is what a link measures.

Torch-free and clock-free: the numbers come from :mod:`edgeprune.jobs.probe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# How much faster a grid point must run than the next one up. Paired ratios of small models on
# the shared VM spread 2-4 % (CV, see profiling/ort.py); the next block at 64 channels is 6 %
# (4-wide blocks) to 100 % (32-wide) more work, and ONNX Runtime's odd widths cost 20-40 % more.
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


def links(widths: Sequence[int], step: int) -> list[tuple[int, int]]:
    """Neighbouring points of the grid of ``step`` that were both probed: ``(m, m + step)``."""
    probed = set(widths)
    return [(m, m + step) for m in sorted(probed) if m % step == 0 and m + step in probed]


def candidate_steps(widths: Sequence[int]) -> list[int]:
    """Powers of two with at least one probed link, smallest first."""
    steps, step = [], 1
    while step <= max(widths):
        if links(widths, step):
            steps.append(step)
        step *= 2
    return steps


def saves(points: Sequence[Point], step: int, tolerance: float = TOLERANCE) -> bool:
    """Whether every probed point of the grid of ``step`` runs clearly faster than the next one
    up, and faster than every probed width between the two."""
    ratio = {p.width: p.ratio for p in points}
    return all(
        ratio[m] * (1 + tolerance) < ratio[up] and all(ratio[w] > ratio[m] for w in ratio if m < w < up)
        for m, up in links(list(ratio), step)
    )


def choose_step(points: Sequence[Point], tolerance: float = TOLERANCE) -> int | None:
    """The smallest step whose every grid point saves time over the next (None: no step)."""
    return next((s for s in candidate_steps([p.width for p in points]) if saves(points, s, tolerance)), None)
