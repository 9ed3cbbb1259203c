"""The GA with real evaluations: a tiny residual net on sklearn's digits, measured in onnxruntime."""

from pathlib import Path

import pytest
import torch
from tiny_models import TinyResNet

from edgeprune.data import load_data
from edgeprune.fitness import Evaluator, recalibrate_bn
from edgeprune.profiling.profiler import Profiler
from edgeprune.search.nsga import run_nsga2
from edgeprune.space import ChannelSpace
from edgeprune.targets import load_profile

PROFILE = Path(__file__).parent / "fixtures" / "fast-cpu.yaml"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_data("digits", holdout=300, seed=0)
    model = TinyResNet().eval()
    space = ChannelSpace(model, (1, 8, 8), step=16)
    return data, space


def _search(setup, cache: Path, seed: int = 0):
    data, space = setup
    profiler = Profiler(load_profile(str(PROFILE)), cache_path=cache)
    evaluator = Evaluator(space, data, profiler, opset=17, seed=seed)
    full_ms = evaluator.latency(space.widths_from_indices(space.full_indices())).median_ms
    budget = 10 * full_ms  # generous: these tests check bookkeeping, not speed
    result = run_nsga2(evaluator, budget, population=6, generations=3, seed=seed, show_progress=False)
    profiler.close()
    return evaluator, profiler, result, budget


def test_each_architecture_is_evaluated_and_measured_once(setup, tmp_path):
    evaluator, profiler, result, budget = _search(setup, tmp_path / "c.sqlite")
    assert evaluator.evaluations == len(evaluator.results) == len(result.candidates)
    assert profiler.measurements == len(evaluator.results)  # the full model's was a memory hit
    assert result.history[-1]["generation"] == 3
    assert all(c.latency.median_ms <= budget for c in result.pareto)
    space = setup[1]
    assert space.choice(space.widths_from_indices(space.full_indices())) in evaluator.results  # unpruned seeded


def test_a_second_run_on_the_same_cache_measures_nothing_and_repeats_the_result(setup, tmp_path):
    cache = tmp_path / "c.sqlite"
    first = _search(setup, cache)
    second = _search(setup, cache)
    assert second[1].measurements == 0 and second[1].cache_hits > 0
    assert [c.widths for c in first[2].pareto] == [c.widths for c in second[2].pareto]


def test_adaptive_bn_restores_statistics_of_a_pruned_model(setup):
    data, space = setup
    model = space.shrink(space.plan(space.widths_from_indices(space.min_indices())))
    bn = model.stem[1]
    bn.running_mean.fill_(123.0)
    batches = [x for x, _ in data.train.batches(64, limit=256)]
    recalibrate_bn(model, batches)
    assert not model.training
    assert bn.running_mean.abs().max() < 50 and bn.momentum == 0.1
