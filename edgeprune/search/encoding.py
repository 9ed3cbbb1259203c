"""Genome encodings: how the GA's integer vectors map onto channel widths.

The *width* encoding holds, per prunable group, an index into that group's allowed widths (the
target's step grid), so every genome decodes to a network the target runs on fast kernels.
"""

from __future__ import annotations

import numpy as np
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair

from edgeprune.space import ChannelSpace, Choice


class WidthEncoding:
    """Genome = one integer per group: the index of its kept width on the step grid."""

    def __init__(self, space: ChannelSpace):
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

    def initial(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """The unpruned model, uniform-ratio models, then jittered uniform models.

        Seeding with uniform pruning means the search starts from the best simple baseline and
        can only improve on it; jitter around random ratios covers the rest of the front.
        """
        space = self.space
        rows = [space.full_indices()]
        for ratio in (0.75, 0.5, 0.35, 0.25):
            rows.append(space.uniform_indices(ratio))
        while len(rows) < size:
            ratio = rng.uniform(0.2, 1.0)
            jitter = rng.uniform(-0.2, 0.2, size=self.n_var)
            rows.append([g.nearest_option((ratio + j) * g.full) for g, j in zip(space.groups, jitter)])
        unique = list(dict.fromkeys(tuple(r) for r in rows))[:size]
        return np.array(unique, dtype=int)
