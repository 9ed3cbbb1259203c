"""The surrogate screen: skips only what it predicts far over the limit, and only once its
recent predictions have proved accurate; skipped candidates are never reported."""

from pathlib import Path

import pytest
import torch
from tiny_models import TinyResNet

from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.jobs.checkpoint import SearchJournal
from edgeprune.profiling.stats import LatencyStats
from edgeprune.records import Candidate
from edgeprune.profiling.ort import OrtBackend
from edgeprune.profiling.macs_surrogate import MacsSurrogate, work
from edgeprune.profiling.surrogate import Layer, LatencySurrogate
from edgeprune.search.nsga import run_nsga2
from edgeprune.select import selection
from edgeprune.problem.screening import Screen
from edgeprune.profiling.targets import load_profile


class _Surrogate:
    """Predicts ``scale ×`` the MACs of the layers it is given; counts what it was taught."""

    needs_node_times = True

    def __init__(self, scale: float, input_shape=(1, 1, 1, 1)):
        self.scale, self.input_shape, self.observations, self.with_nodes = scale, input_shape, 0, 0

    def predict(self, layers) -> float:
        return self.scale * sum(layer.macs() for layer in layers)

    def observe(self, layers, measured_ms, node_times=None):
        self.observations += 1
        self.with_nodes += node_times is not None


def _model(width: int) -> torch.nn.Module:
    return torch.nn.Conv2d(1, width, 1, bias=False)  # width MACs on the 1x1 input


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


def test_skipped_candidates_steer_the_search_but_are_never_reported(tiny_problem):
    space, profiler = tiny_problem.space, tiny_problem.profiler
    budget = 10 * tiny_problem.latency.measure(space.widths_from_indices(space.full_indices()))[0].median_ms
    screen = Screen(_Surrogate(1.0, tiny_problem.latency.shape), warmup=0, window=5, limit_ms=budget)
    screen.errors.extend([0.0] * 5)  # trusted from the start; every model "predicts" ≫ budget
    problem = tiny_problem.make(limit_ms=budget, screen=screen)
    result = run_nsga2(problem, population=6, generations=2, seed=0, show_progress=False)
    predicted = [c for c in problem.results.values() if c.predicted]
    assert predicted and screen.skips == len(predicted)
    assert profiler.measurements <= 1  # only the reference-free first latency above was timed
    assert not [c for c in result.pareto if c.predicted]


def test_the_screen_teaches_the_real_surrogate_the_models_layer_descriptors():
    shape = (1, 1, 8, 8)
    model = TinyResNet().eval()
    profile = load_profile(str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml"))
    nodes = OrtBackend(profile).node_times(export_onnx_bytes(model, shape, 17), shape, runs=3)
    screen = Screen(LatencySurrogate(shape), warmup=1, window=1, limit_ms=0.5)
    screen.learn(model, 1.0, lambda: nodes)  # warm-up: per-node times fill the table
    screen.learn(model, 1.0, lambda: None)  # then: predicted (exactly), scored, observed
    assert screen.surrogate.observations == 2 and screen.recent_error == pytest.approx(0.0, abs=1e-9)
    assert screen.skip(model) == pytest.approx(1.0)


def _net(dense: int, depthwise: int) -> list[Layer]:
    return [
        Layer("a", "conv", 16, dense, (3, 3), (1, 1), 1, (8, 8), (8, 8)),
        Layer("b", "conv", depthwise, depthwise, (3, 3), (1, 1), depthwise, (8, 8), (8, 8)),
        Layer("c", "linear", depthwise, 10, (1, 1), (1, 1), 1, (1, 1), (1, 1)),
    ]


def test_the_macs_surrogate_prices_dense_depthwise_and_linear_work_apart():
    def truth(layers):  # a device on which depthwise MACs cost 7x dense ones, plus a fixed cost
        dense, depthwise, linear, _ = work(layers)
        return 0.3 * dense + 2.1 * depthwise + 0.1 * linear + 0.05

    surrogate = MacsSurrogate((1, 16, 8, 8))
    for dense, depthwise in [(16, 16), (32, 16), (16, 48), (64, 32), (48, 64), (80, 16)]:
        surrogate.observe(_net(dense, depthwise), truth(_net(dense, depthwise)))
    assert surrogate.observations == 6 and not surrogate.needs_node_times
    assert surrogate.predict(_net(96, 80)) == pytest.approx(truth(_net(96, 80)), rel=1e-9)
    plain = MacsSurrogate((1, 16, 8, 8))  # no depthwise layer varies: that column is left out, not singular
    for dense in (16, 32, 48):
        plain.observe(_net(dense, 16), 0.3 * work(_net(dense, 16))[0] + 1.0)
    assert plain.predict(_net(64, 16)) == pytest.approx(0.3 * work(_net(64, 16))[0] + 1.0, rel=1e-6)


class _Spy:
    """A surrogate that records how many measurements had been started whenever it is taught."""

    needs_node_times = False

    def __init__(self, input_shape, started):
        self.input_shape, self.started, self.seen, self.observations = input_shape, started, [], 0

    def predict(self, layers) -> float:
        return 0.0

    def observe(self, layers, measured_ms, node_times=None):
        assert node_times is None  # never asked of a device that gives none
        self.seen.append(len(self.started))
        self.observations += 1


@pytest.mark.parametrize("immediate", [True, False])
def test_a_generation_wise_screen_starts_a_whole_generation_before_it_learns(tiny_problem, monkeypatch, immediate):
    """On a farm every measurement of a generation must be in flight at once: a screen that
    learns per generation decides on all of them first; one that learns per candidate cannot."""
    space, latency = tiny_problem.space, tiny_problem.latency
    started = []
    start = latency.start
    monkeypatch.setattr(latency, "start", lambda *a, **k: started.append(a[0]) or start(*a, **k))
    screen = Screen(_Spy(latency.shape, started), warmup=8, limit_ms=1e9, immediate=immediate)
    problem = tiny_problem.make(limit_ms=1e9, screen=screen)
    choices = [space.choice(space.widths_from_indices(space.uniform_indices(r))) for r in (0.25, 0.5, 0.75, 1.0)]
    problem.evaluate_batch(choices)
    assert len(started) == 4
    assert screen.surrogate.seen == ([1, 2, 3, 4] if immediate else [4, 4, 4, 4])


def test_a_candidate_enough_measured_ones_outrank_keeps_its_prediction_and_is_never_timed(tiny_problem):
    """Past the warm-up only what the shortlist could take is timed: a candidate that ``depth``
    measured feasible ones match or beat in accuracy keeps its predicted latency (here far under
    every measured one: latency does not save it); the others are measured."""
    space, profiler = tiny_problem.space, tiny_problem.profiler
    screen = Screen(_Surrogate(0.0, tiny_problem.latency.shape), warmup=0, window=5, limit_ms=1e9, depth=3)
    screen.errors.extend([0.0] * 5)  # trusted, and kept so: this test is about the decision, not the learning
    screen.learn = lambda *a, **k: None
    problem = tiny_problem.make(limit_ms=1e9, screen=screen)  # no focus floor: nothing is floored
    first = problem.evaluate_batch([space.choice(w) for w in [(32, 16, 16), (48, 16, 32), (16, 16, 16)]])
    assert not any(c.predicted for c in first) and profiler.measurements == 3  # too few rivals yet: all timed
    second = problem.evaluate_batch([space.choice(w) for w in [(32, 16, 32), (64, 32, 48), (48, 32, 32)]])
    for cand in second:
        outranked_by = sum(r.accuracy >= cand.accuracy for r in first)
        assert cand.predicted == (outranked_by >= 3), (cand.accuracy, [r.accuracy for r in first])
        assert (cand.latency.n == 0) == cand.predicted  # a prediction, not a measurement
    outranked = [c for c in second if c.predicted]
    assert 0 < len(outranked) < len(second)  # this seed's accuracies give both kinds
    assert profiler.measurements == 3 + len(second) - len(outranked)
    assert screen.outranked == screen.skips == len(outranked)
    assert all(c.accuracy > 0 and not c.floored for c in outranked)  # scored: the GA ranks it by its real accuracy
    assert not [c for c in selection.shortlist(problem, problem.evaluated(), 1e9, size=3) if c.predicted]
    seed = problem.evaluate_widths((16, 32, 16))  # the seeds' bisection and the job ask for latencies
    assert sum(r.accuracy >= seed.accuracy for r in first) >= 3 and not seed.predicted and seed.latency.n > 0


def test_the_screen_floors_only_what_is_under_the_floor_at_its_pessimistic_latency():
    screen = Screen(_Surrogate(1.0), warmup=0, window=2, limit_ms=1000.0)
    assert screen.under(_model(1), 100.0) is None  # not trusted yet: everything is timed
    screen.errors.extend([0.1, 0.1])  # trusted at a 10 % error: pessimistic = 1.3 x the prediction
    assert screen.under(_model(76), 100.0) == 76.0  # 98.8 <= 100
    assert screen.under(_model(77), 100.0) is None  # 100.1 > 100
    assert screen.floored == screen.skips == 1


def test_a_candidate_predicted_under_the_focus_floor_is_scored_not_timed_and_the_shortlist_measures_it(tiny_problem):
    """Every latency under ``focus x limit`` is one value of the search's latency objective, so a
    candidate surely under it is not timed in the search; it is feasible for sure, so the
    shortlist may take it, and its fresh re-measure is then its first measurement."""
    space, profiler = tiny_problem.space, tiny_problem.profiler
    screen = Screen(_Surrogate(0.0, tiny_problem.latency.shape), warmup=0, window=5, limit_ms=1e9, depth=100)
    screen.errors.extend([0.0] * 5)
    screen.learn = lambda *a, **k: None
    choices = [space.choice(w) for w in [(32, 16, 16), (48, 16, 32), (16, 16, 16)]]
    unfocused = tiny_problem.make(limit_ms=1e9, focus=0.0, screen=screen).evaluate_batch(choices)
    assert not any(c.predicted for c in unfocused) and profiler.measurements == 3  # no floor: all timed
    unlimited = tiny_problem.make(focus=0.9, screen=screen).evaluate_batch([space.choice((16, 32, 32))])
    assert not unlimited[0].predicted and profiler.measurements == 4  # no finite limit, no floor
    problem = tiny_problem.make(limit_ms=1e9, focus=0.9, screen=screen)
    floored = problem.evaluate_batch([space.choice(w) for w in [(64, 32, 48), (48, 32, 32), (32, 16, 32)]])
    assert profiler.measurements == 4 and screen.floored == 3
    assert all(c.predicted and c.floored and c.latency.n == 0 and c.accuracy > 0 for c in floored)
    assert not problem.evaluate_widths((16, 32, 16)).predicted  # the seeds' bisection is always timed
    picked = selection.shortlist(problem, floored, 1e9, size=2)
    assert profiler.measurements == 4 + 1 + 2  # the two most accurate, re-measured
    best = sorted(floored, key=lambda c: -c.accuracy)[:2]
    assert [c.choice for c in picked] == [c.choice for c in best]
    assert all(not c.predicted and not c.floored and c.latency.n > 0 for c in picked)  # they carry the measurement


def test_a_floored_candidate_survives_the_journal_and_its_replay_counts_as_floored(tiny_problem, tmp_path):
    """A resumed run hands the journal's candidates to the replayed search: a floored one must
    come back floored (or the shortlist would never take it) and be counted as such."""
    space = tiny_problem.space
    journal = SearchJournal(tmp_path / "round-1", space)
    stats = LatencyStats(0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0)
    journal.record(Candidate(space.choice((32, 16, 16)), 0.5, stats, 1000, 100, False, 0.1, True, floored=True))
    journal.record(Candidate(space.choice((48, 16, 16)), 0.4, stats, 1000, 100, False, 0.1, True))
    floored, outranked = SearchJournal(tmp_path / "round-1", space).candidates()
    assert floored.floored and floored.predicted and not outranked.floored
    screen = Screen(_Surrogate(0.0))
    for cand in (floored, outranked):
        screen.replay_skip(True, cand.floored)
    assert (screen.skips, screen.floored, screen.outranked) == (2, 1, 1)
