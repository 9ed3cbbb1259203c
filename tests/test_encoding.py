"""Genome encodings: both decode onto the step grid, and agree on uniform (top-k) genomes."""

import numpy as np
import pytest
import torch
import torchvision
from pymoo.core.problem import Problem

from edgeprune.errors import UserError
from edgeprune.search.encoding import MaskEncoding, WidthEncoding, make_encoding, snap_mask
from edgeprune.space.channels import ChannelSpace


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    model = torchvision.models.get_model("mobilenet_v2", weights=None, num_classes=10).eval()
    return ChannelSpace(model, (3, 32, 32), step=16)


def _on_grid(space, choice):
    return all(len(kept) in g.options and len(set(kept)) == len(kept) and max(kept) < g.full for g, kept in zip(space.groups, choice))


def test_mask_decode_always_lands_on_the_grid(space):
    enc = MaskEncoding(space)
    rng = np.random.default_rng(0)
    for ratio in (0.0, 0.03, 0.3, 0.5, 0.77, 1.0):
        genome = (rng.random(enc.n_var) < ratio).astype(int)
        choice = enc.decode(genome)
        assert _on_grid(space, choice)


def test_snap_keeps_the_ones_and_fixes_the_count_by_importance(space):
    g = next(g for g in space.groups if g.full >= 64)
    order = list(g.order)
    # 17 ones: the nearest grid width is 16, so the least important of the 17 is dropped
    bits = np.zeros(g.full, dtype=int)
    bits[order[-17:]] = 1
    kept = snap_mask(g, bits)
    assert len(kept) == 16 and set(kept) == set(order[-17:-1])
    # 31 ones (the least important ones): width 32, the most important channel comes back
    bits = np.zeros(g.full, dtype=int)
    bits[order[-31:]] = 1
    kept = snap_mask(g, bits)
    assert len(kept) == 32 and set(kept) == set(order[-31:]) | {order[0]}
    # a mask with a grid count decodes to exactly its ones
    bits = np.zeros(g.full, dtype=int)
    bits[order[5:21]] = 1
    assert snap_mask(g, bits) == tuple(sorted(order[5:21]))


def test_width_and_mask_agree_on_uniform_genomes(space):
    width, mask = WidthEncoding(space), MaskEncoding(space)
    for ratio in (1.0, 0.75, 0.5, 0.25):
        idx = space.uniform_indices(ratio)
        expected = width.decode(np.array(idx))
        assert mask.decode(mask.encode(expected)) == expected
        assert expected == space.choice(space.widths_from_indices(idx))


def test_ratio_bound_holds_after_mutation(space):
    enc = MaskEncoding(space, mutation_rate=0.3, ratio_bound=0.4)
    problem = Problem(n_var=enc.n_var, xl=0, xu=enc.upper, vtype=int)
    rng = np.random.default_rng(1)
    # parents right at the bound: a 30 % flip rate pushes most groups below it unless prevented
    parents = np.zeros((20, enc.n_var), dtype=int)
    for sl in enc.slices:
        n = sl.stop - sl.start
        parents[:, sl.start : sl.start + int(np.ceil(0.4 * n))] = 1
    children = enc.mutation()._do(problem, parents, random_state=rng)
    assert not np.array_equal(children, parents)  # it does mutate
    for row in children:
        for sl in enc.slices:
            assert row[sl].mean() >= 0.4


def test_group_crossover_swaps_whole_groups(space):
    enc = MaskEncoding(space)
    problem = Problem(n_var=enc.n_var, xl=0, xu=enc.upper, vtype=int)
    X = np.stack([np.zeros((8, enc.n_var), dtype=int), np.ones((8, enc.n_var), dtype=int)])
    children = enc.crossover()._do(problem, X, random_state=np.random.default_rng(0))
    assert children.shape == X.shape
    for child in children.reshape(-1, enc.n_var):
        for sl in enc.slices:
            assert len(set(child[sl])) == 1  # a group comes whole from one parent
    assert 0 < children.mean() < 1  # and both parents contribute


def test_initial_population_seeds_full_and_uniform_models(space):
    enc = MaskEncoding(space, ratio_bound=0.2)
    pop = enc.initial(12, np.random.default_rng(0))
    assert pop.shape == (12, enc.n_var) and set(np.unique(pop)) <= {0, 1}
    assert pop[0].all()  # the unpruned model
    half = WidthEncoding(space).decode(np.array(space.uniform_indices(0.5)))
    assert any(enc.decode(row) == half for row in pop)
    for row in pop:
        assert all(row[sl].mean() >= 0.2 for sl in enc.slices)
    assert len({tuple(r) for r in pop}) == 12


def test_make_encoding(space):
    assert make_encoding("width", space).name == "width"
    mask = make_encoding("mask", space, mutation_rate=0.1)
    assert mask.name == "mask" and mask.mutation_rate == 0.1
    assert mask.n_var == sum(g.full for g in space.groups)
    with pytest.raises(UserError, match="width, mask"):
        make_encoding("bits", space)
    with pytest.raises(UserError, match="ratio bound"):
        MaskEncoding(space, ratio_bound=1.5)
