"""The surrogate screen: skips only what it predicts far over the limit, and only once its
recent predictions have proved accurate; skipped candidates are never reported."""

import torch

from edgeprune.search.nsga import run_nsga2
from edgeprune.search.screening import Screen


class _Surrogate:
    """Predicts ``scale ×`` the number of parameters; counts what it was taught."""

    def __init__(self, scale: float):
        self.scale, self.observations, self.with_nodes = scale, 0, 0

    def predict(self, model) -> float:
        return self.scale * sum(p.numel() for p in model.parameters())

    def observe(self, model, measured_ms, node_times=None):
        self.observations += 1
        self.with_nodes += node_times is not None


def _model(width: int) -> torch.nn.Module:
    return torch.nn.Linear(width, 1, bias=False)  # width parameters


def test_screen_waits_for_warmup_and_accuracy_then_skips_only_far_over_the_limit():
    screen = Screen(_Surrogate(1.0), warmup=2, window=2, limit_ms=100.0)
    for width in (50, 60):  # warm-up: node times taken, no prediction trusted yet
        assert screen.skip(_model(1000)) is None
        screen.learn(_model(width), float(width), lambda: "nodes")
    assert screen.surrogate.with_nodes == 2 and screen.threshold_ms() is None
    for width in (70, 80):  # accurate predictions (error 0) → trusted
        screen.learn(_model(width), float(width), lambda: "unused")
    assert screen.threshold_ms() == 100.0
    assert screen.skip(_model(99)) is None and screen.skip(_model(101)) == 101.0
    assert screen.skips == 1


def test_an_inaccurate_surrogate_never_screens():
    screen = Screen(_Surrogate(2.0), warmup=1, window=2, limit_ms=100.0)  # predicts 2× the truth
    for width in (50, 60, 70):
        screen.learn(_model(width), float(width), lambda: "nodes")
    assert screen.recent_error == 1.0 and screen.threshold_ms() is None
    assert screen.skip(_model(10_000)) is None


def test_skipped_candidates_steer_the_search_but_are_never_reported(tiny_evaluator):
    evaluator, profiler = tiny_evaluator, tiny_evaluator.profiler
    space = evaluator.space
    budget = 10 * evaluator.latency(space.widths_from_indices(space.full_indices())).median_ms
    screen = Screen(_Surrogate(1.0), warmup=0, window=5, limit_ms=budget)
    screen.errors.extend([0.0] * 5)  # trusted from the start; every model "predicts" ≫ budget
    evaluator.screen = screen
    result = run_nsga2(evaluator, budget, population=6, generations=2, seed=0, show_progress=False)
    predicted = [c for c in evaluator.results.values() if c.predicted]
    assert predicted and screen.skips == len(predicted)
    assert profiler.measurements <= 1  # only the reference-free first latency above was timed
    assert not [c for c in result.pareto if c.predicted]
