"""Genome encodings: how the GA's integer vectors map onto channels to keep.

Both decode to a :data:`~edgeprune.records.Choice` (kept channel indices per group) whose widths
lie on the target's step grid, so every genome is a network the target runs on fast kernels.

* *width* (default) holds, per prunable group, an index into that group's allowed widths; the
  channels kept are the most important ones. Small genome, fast convergence.
* *mask* holds one bit per channel, as CCEP / CCSRP do, so the search can also pick *which*
  channels survive. Their ratio-bounded bit-flip mutation keeps a group from being pruned away;
  decoding snaps each group's count of ones to the grid by importance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair

from edgeprune.errors import UserError
from edgeprune.records import Choice, Group, GroupLayout

ENCODINGS = ("width", "mask")
UNIFORM_SEEDS = (0.75, 0.5, 0.35, 0.25)


class WidthEncoding:
    """Genome = one integer per group: the index of its kept width on the step grid."""

    def __init__(self, space: GroupLayout):
        self.space = space
        self.upper = np.array([len(g.options) - 1 for g in space.groups], dtype=int)

    name = "width"

    @property
    def n_var(self) -> int:
        return len(self.upper)

    def crossover(self):
        """Simulated binary crossover on the width indices, rounded back to the grid."""
        return SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair())

    def mutation(self):
        return PM(eta=20, vtype=float, repair=RoundingRepair())

    def decode(self, genome) -> Choice:
        widths = self.space.widths_from_indices(np.clip(np.rint(genome).astype(int), 0, self.upper))
        return self.space.choice(widths)

    def initial(self, size: int, rng: np.random.Generator, seeds: Sequence[Sequence[int]] = ()) -> np.ndarray:
        """The unpruned model, ``seeds`` (width indices), uniform-ratio models, then jittered ones.

        Seeding with uniform pruning (the caller passes the uniform ratio that just meets the
        budget) means the search starts from the best simple baseline and can only improve on
        it; jitter around random ratios covers the rest of the front.
        """
        space = self.space
        rows = [space.full_indices(), *(list(r) for r in seeds)]
        for ratio in UNIFORM_SEEDS:
            rows.append(space.uniform_indices(ratio))
        while len(rows) < size:
            ratio = rng.uniform(0.2, 1.0)
            jitter = rng.uniform(-0.2, 0.2, size=self.n_var)
            rows.append([g.nearest_option((ratio + j) * g.full) for g, j in zip(space.groups, jitter)])
        unique = list(dict.fromkeys(tuple(r) for r in rows))[:size]
        return np.array(unique, dtype=int)


def snap_mask(group: Group, bits) -> tuple[int, ...]:
    """Kept channels of ``group`` for a bit mask: its count snapped to the grid, fixed by importance.

    The count of ones goes to the nearest allowed width; if that is fewer than the ones, the
    least important kept channels are dropped, if more, the most important dropped channels come
    back. A mask that already has a grid count decodes to exactly its ones.
    """
    ones = [int(i) for i in np.flatnonzero(np.asarray(bits) > 0.5)]
    width = group.options[group.nearest_option(len(ones))]
    rank = {c: r for r, c in enumerate(group.order)}
    if len(ones) > width:
        ones = sorted(ones, key=rank.__getitem__)[:width]
    elif len(ones) < width:
        on = set(ones)
        ones += [c for c in group.order if c not in on][: width - len(ones)]
    return tuple(sorted(ones))


class GroupCrossover(Crossover):
    """Each child takes every group's whole mask from one parent or the other (coin flip per group).

    Bits of one group only make sense together (the kept set is what matters), so groups are
    the unit of exchange rather than single bits.
    """

    def __init__(self, slices: list[slice], prob: float = 0.9):
        super().__init__(2, 2, prob=prob)
        self.slices = slices

    def _do(self, _problem, X, random_state=None, **kwargs):
        _, n_matings, _ = X.shape
        out = X.copy()
        swap = random_state.random((n_matings, len(self.slices))) < 0.5
        for j, sl in enumerate(self.slices):
            rows = swap[:, j]
            out[0, rows, sl], out[1, rows, sl] = X[1, rows, sl], X[0, rows, sl]
        return out


class RatioBoundedBitflip(Mutation):
    """CCEP/CCSRP's bit-flip mutation: flip each bit with probability ``rate``, but a group whose
    kept ratio would fall below ``ratio_bound`` is mutated again (up to ``retries`` times, then
    left as it was), so no group is ever pruned below the bound.
    """

    def __init__(self, slices: list[slice], rate: float, ratio_bound: float, retries: int = 10):
        super().__init__(prob=1.0)
        self.slices, self.rate, self.ratio_bound, self.retries = slices, rate, ratio_bound, retries

    def _do(self, _problem, X, random_state=None, **kwargs):
        out = np.rint(X).astype(int)
        for row in out:
            for sl in self.slices:
                bits = row[sl]
                for _ in range(self.retries):
                    flip = random_state.random(bits.shape) < self.rate
                    trial = np.where(flip, 1 - bits, bits)
                    if trial.mean() >= self.ratio_bound:
                        row[sl] = trial
                        break
        return out


class MaskEncoding:
    """Genome = one bit per channel of every group (1 = keep), groups laid out one after another.

    ``mutation_rate`` is CCEP's p (per-bit flip probability); ``ratio_bound`` is the smallest
    kept fraction of a group that mutation may produce (CCEP's r, read as a floor on what stays).
    """

    name = "mask"

    def __init__(self, space: GroupLayout, mutation_rate: float = 0.05, ratio_bound: float = 0.1):
        if not 0.0 < mutation_rate <= 0.5:
            raise UserError(f"mask mutation rate {mutation_rate} must be in (0, 0.5]; the papers use 0.05-0.1")
        if not 0.0 <= ratio_bound < 1.0:
            raise UserError(f"mask ratio bound {ratio_bound} must be in [0, 1); CCEP uses 0.1")
        self.space = space
        self.mutation_rate = mutation_rate
        self.ratio_bound = ratio_bound
        self.slices, start = [], 0
        for g in space.groups:
            self.slices.append(slice(start, start + g.full))
            start += g.full
        self.upper = np.ones(start, dtype=int)

    @property
    def n_var(self) -> int:
        return len(self.upper)

    def crossover(self):
        return GroupCrossover(self.slices)

    def mutation(self):
        return RatioBoundedBitflip(self.slices, self.mutation_rate, self.ratio_bound)

    def decode(self, genome) -> Choice:
        genome = np.asarray(genome)
        return tuple(snap_mask(g, genome[sl]) for g, sl in zip(self.space.groups, self.slices))

    def encode(self, choice: Choice) -> np.ndarray:
        """The mask with exactly ``choice``'s channels on."""
        genome = np.zeros(self.n_var, dtype=int)
        for sl, kept in zip(self.slices, choice):
            genome[sl.start + np.asarray(kept, dtype=int)] = 1
        return genome

    def initial(self, size: int, rng: np.random.Generator, seeds: Sequence[Sequence[int]] = ()) -> np.ndarray:
        """The unpruned model, ``seeds`` and uniform-ratio models (top-k by importance), then
        random masks.

        The random ones draw a ratio per individual and keep each bit with that probability per
        group, never below the ratio bound, so the population spans the whole size range.
        """
        space = self.space
        rows = [self.encode(space.choice(space.widths_from_indices(space.full_indices())))]
        rows += [self.encode(space.choice(space.widths_from_indices(r))) for r in seeds]
        for ratio in UNIFORM_SEEDS:
            rows.append(self.encode(space.choice(space.widths_from_indices(space.uniform_indices(ratio)))))
        low = max(self.ratio_bound, 0.2)
        while len(rows) < size:
            ratio = rng.uniform(low, 1.0)
            genome = (rng.random(self.n_var) < ratio).astype(int)
            for sl in self.slices:
                if genome[sl].mean() < self.ratio_bound:
                    genome[sl] = 1
            rows.append(genome)
        unique = list(dict.fromkeys(tuple(int(v) for v in r) for r in rows))[:size]
        return np.array(unique, dtype=int)


def make_encoding(name: str, space: GroupLayout, **opts):
    """The encoding called ``name`` over ``space`` (``opts`` go to its constructor)."""
    if name == "width":
        return WidthEncoding(space, **opts)
    if name == "mask":
        return MaskEncoding(space, **opts)
    raise UserError(f"unknown encoding {name!r}; pass one of: {', '.join(ENCODINGS)}")
