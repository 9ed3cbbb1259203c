"""Co-evolution (CCSRP Algorithm 1 adapted to a latency budget)."""

import numpy as np
import pytest
import torch

from edgeprune.records import bounded_bit_flip
from edgeprune.search.coevolution import run_coevolution, snap
from edgeprune.space.channels import ChannelSpace
from tiny_models import TinyResNet


@pytest.mark.parametrize("rate", [0.05, 0.5, 1.0])
def test_bit_flip_never_removes_more_than_the_ratio_bound(rate):
    rng = np.random.default_rng(0)
    for _ in range(200):
        bits = bounded_bit_flip(np.ones(64, dtype=bool), rate, 0.1, rng)
        assert (~bits).sum() <= 6
    assert (~bounded_bit_flip(np.ones(64, dtype=bool), 1.0, 0.1, rng)).sum() == 6


def test_snap_lands_on_the_grid_and_prefers_important_channels():
    torch.manual_seed(0)
    space = ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=16)
    group = next(g for g in space.groups if g.full == 32)
    live = np.arange(32)
    rng = np.random.default_rng(0)
    bits = np.zeros(32, dtype=bool)
    bits[list(group.order[-20:])] = True  # 20 kept: 16 (75 %) or 32 (25 %)
    kept = [snap(group, live, bits, rng) for _ in range(400)]
    assert {len(k) for k in kept} == {16, 32}
    assert 0.65 < sum(len(k) == 16 for k in kept) / 400 < 0.85  # unbiased: E[width] = 20
    # down: the 16 most important of the kept; up: the kept plus the most important removed
    assert {k for k in kept if len(k) == 16} == {tuple(sorted(group.order[-20:][:16]))}
    assert {k for k in kept if len(k) == 32} == {tuple(range(32))}
    bits[:] = False
    bits[list(group.order[:16])] = True  # on the grid: kept as is
    assert snap(group, live, bits, rng) == tuple(sorted(group.order[:16]))


def test_coevolution_reaches_the_budget_with_measured_candidates(tiny_problem):
    space = tiny_problem.space
    full = tiny_problem.latency.measure(space.widths_from_indices(space.full_indices()))[0]
    smallest = tiny_problem.latency.measure(space.widths_from_indices(space.min_indices()))[0]
    budget = (full.median_ms + smallest.median_ms) / 2
    problem = tiny_problem.make(limit_ms=budget)
    result = run_coevolution(problem, population=3, generations=1, seed=0, show_progress=False, tolerance=1.0)
    assert result.history and result.pareto
    assert all(c.latency.median_ms <= budget for c in result.pareto)
    assert all(c.choice in problem.results for c in result.candidates)  # every candidate was measured
