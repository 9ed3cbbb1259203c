"""The GA with real evaluations: a tiny residual net on sklearn's digits, measured in onnxruntime."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_models import TinyResNet

from edgeprune.budget import BudgetPolicy
from edgeprune.data import load_data
from edgeprune.fitness import Candidate, Evaluator, recalibrate_bn
from edgeprune.profiling.stats import LatencyStats
from edgeprune.profiling.profiler import Profiler
from edgeprune.search.nsga import objectives, run_nsga2
from edgeprune.select import Recipe, SessionNoise, confirm, confirmed, ratio_seeds, refine, shortlist, widen
from edgeprune.space import ChannelSpace, macs_and_params
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


class _WidthClock:
    """Stands in for an Evaluator: the search's latency is the total width (deterministic); a
    fresh re-measure is 1 ms, or far over any budget for the widths in ``over``."""

    def __init__(self, space, over=()):
        self.space, self.over, self.asked = space, set(over), []

    def evaluate_widths(self, widths):
        self.asked.append(tuple(widths))
        return SimpleNamespace(latency=SimpleNamespace(median_ms=float(sum(widths))))

    def latency(self, widths, fresh=False):
        return SimpleNamespace(median_ms=1e9 if tuple(widths) in self.over else 1.0)


def test_seeds_are_the_widest_ratio_of_each_profile_within_the_budget(setup):
    space = setup[1]
    clock = _WidthClock(space)
    widths = lambda r, a: space.widths_from_indices(space.scaled_indices(r, a))  # noqa: E731
    budget = sum(widths(0.5, 0.0)) + 0.5
    seeds = [space.widths_from_indices(s) for s in ratio_seeds(clock, budget, alphas=(0.0, 1.0))]
    grid = [round(0.05 * k, 2) for k in range(1, 61)]
    for alpha in (0.0, 1.0):
        widest = max((r for r in grid if sum(widths(r, alpha)) <= budget), key=lambda r: widths(r, alpha))
        assert widths(widest, alpha) in seeds
    assert len(clock.asked) <= 12  # bisection per profile, not a scan of the ratio grid
    # alpha = 1 prunes the widest group (64) harder than the narrowest (32) relative to their widths
    wide, narrow = space.groups[0], space.groups[1]
    assert (wide.full, narrow.full) == (64, 32)
    kept = dict(zip((g.name for g in space.groups), widths(0.5, 1.0)))
    assert kept[wide.name] / wide.full < kept[narrow.name] / narrow.full
    assert widths(0.5, 0.0) == tuple(g.options[i] for g, i in zip(space.groups, space.uniform_indices(0.5)))
    # full_ratio: the first ratio at which every group is whole (64 / median 48 for alpha = 1)
    assert space.full_ratio(1.0) == pytest.approx(64 / 48) and space.full_ratio(0.0) == 1.0
    assert space.scaled_indices(space.full_ratio(1.0), 1.0) == space.full_indices()
    assert space.scaled_indices(0.7 * space.full_ratio(1.0), 1.0) != space.full_indices()


def test_shortlist_always_short_tunes_the_seeds_and_a_narrower_one_only_in_place_of_a_wider(setup):
    space = setup[1]
    stats = LatencyStats(10, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    cand = lambda w, acc: Candidate(space.choice(w), acc, stats, 0, 0)  # noqa: E731
    full = space.widths_from_indices(space.full_indices())
    half = space.widths_from_indices(space.uniform_indices(0.5))
    small = space.widths_from_indices(space.min_indices())
    seeds = [cand(half, 0.1), cand(small, 0.1)]  # one profile's widest ratio, then its next narrower
    others = [cand(full, 0.9), *seeds]
    picked = shortlist(_WidthClock(space), others, 2.0, size=1, seeds=seeds)
    assert [c.widths for c in picked] == [half, full]  # the seed despite its accuracy, then the best other
    picked = shortlist(_WidthClock(space, over=[half]), others, 2.0, size=1, seeds=seeds)
    assert [c.widths for c in picked] == [small, full]  # the wider seed's re-measure missed


def test_shortlist_skips_candidates_whose_fresh_measurement_misses_the_budget(setup):
    space = setup[1]
    full = space.widths_from_indices(space.full_indices())
    small = space.widths_from_indices(space.min_indices())
    mid = space.widths_from_indices(space.uniform_indices(0.5))
    cands = [
        Candidate(space.choice(w), acc, LatencyStats(10, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0), 0, 0)
        for w, acc in ((full, 0.9), (mid, 0.8), (small, 0.7))
    ]
    picked = shortlist(_WidthClock(space, over=[full]), cands, 2.0, size=2)
    assert [c.widths for c in picked] == [mid, small]  # most accurate first; the lucky one dropped


def test_refine_ranks_by_recovery_after_the_short_tune_and_reports_all(setup):
    data, space = setup
    evaluator = SimpleNamespace(space=space, data=data)
    recipe = Recipe(lr=0.01, batch_size=64, kd_alpha=0.5, kd_temperature=4.0, progress=False)
    tiny = space.widths_from_indices(space.min_indices())
    full = space.widths_from_indices(space.full_indices())
    stats = LatencyStats(10, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    # Adaptive-BN says the narrowest network is best; after the short tune the full one wins.
    cands = [Candidate(space.choice(tiny), 0.99, stats, 0, 0), Candidate(space.choice(full), 0.10, stats, 0, 0)]
    ranked, rows = refine(recipe, 2, 0, evaluator, space.model, cands)
    assert [r["holdout_accuracy_adaptive_bn"] for r in rows] == [0.99, 0.10]
    assert rows[1]["holdout_accuracy_short_tune"] > rows[0]["holdout_accuracy_short_tune"]
    assert ranked == [cands[1], cands[0]]  # best after the short tune first
    # 0 epochs: off, the shortlist's order (most accurate by adaptive BN first)
    assert refine(recipe, 0, 0, evaluator, space.model, cands) == (cands, [])


class _SessionClock:
    """Stands in for an Evaluator in ``confirm``: fresh sessions of ``widths`` measure the next
    values of ``sessions[widths]`` in turn."""

    def __init__(self, sessions):
        self.sessions = {w: iter(v) for w, v in sessions.items()}

    def latency(self, widths, fresh=False):
        assert fresh  # a confirmation never takes a cached number
        return SimpleNamespace(median_ms=next(self.sessions[tuple(widths)]))


def test_confirm_margin_grows_with_the_spread_between_fresh_sessions():
    quiet = confirm(_SessionClock({(1,): [0.95, 0.951, 0.949, 0.95, 0.95]}), (1,), 1.0, BudgetPolicy(search_margin=0.03), SessionNoise())
    assert quiet.median_ms == 0.95 and quiet.limit_ms == pytest.approx(0.97)  # spread ~0: the fixed margin
    assert quiet.passed and quiet.to_dict()["sessions_ms"] == [0.95, 0.951, 0.949, 0.95, 0.95]
    # The same median with sessions 5 % apart: 2 standard errors of the gap to another such check.
    noisy = confirm(_SessionClock({(1,): [0.90, 0.95, 1.00, 0.95, 0.95 * 0.95]}), (1,), 1.0, BudgetPolicy(search_margin=0.03), SessionNoise())
    assert noisy.spread == pytest.approx(1.4826 * math.log(1.00 / 0.95))  # robust: the median |log deviation|
    assert noisy.limit_ms == pytest.approx(1 - 2 * 1.25 * noisy.spread * (2 / 5) ** 0.5)
    assert noisy.limit_ms < 0.95 and not noisy.passed


def test_confirmed_takes_the_best_ranked_that_passes_else_the_fastest(setup):
    space = setup[1]
    stats = LatencyStats(10, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    a, b, c = (space.widths_from_indices(space.uniform_indices(r)) for r in (1.0, 0.5, 0.0))
    ranked = [Candidate(space.choice(w), 0.5, stats, 0, 0) for w in (a, b, c)]
    clock = _SessionClock({a: [1.0] * 5, b: [0.9] * 5, c: [0.5] * 5})
    picked, check = confirmed(clock, ranked, 1.0, BudgetPolicy(search_margin=0.03), SessionNoise())
    assert picked is ranked[1] and check.median_ms == 0.9  # the first was over budget less 3 %
    clock = _SessionClock({a: [1.2] * 5, b: [1.1] * 5, c: [1.3] * 5})
    picked, check = confirmed(clock, ranked, 1.0, BudgetPolicy(search_margin=0.03), SessionNoise())
    assert picked is ranked[1] and not check.passed  # none passes: the fastest, flagged


def test_seeds_join_the_first_population(setup, tmp_path):
    data, space = setup
    profiler = Profiler(load_profile(str(PROFILE)), cache_path=tmp_path / "c.sqlite")
    evaluator = Evaluator(space, data, profiler, opset=17, seed=0)
    seed = [0] * len(space.groups)
    seed[-1] = len(space.groups[-1].options) - 1
    run_nsga2(evaluator, 1e9, population=4, generations=1, seed=0, show_progress=False, seeds=[seed], focus=0.9)
    profiler.close()
    assert space.choice(space.widths_from_indices(seed)) in evaluator.results


def test_focus_ties_latencies_under_the_floor_but_keeps_the_constraint(setup):
    space = setup[1]
    stats = lambda ms: LatencyStats(10, ms, ms, ms, ms, 0.0, 0.0)  # noqa: E731
    choice = space.choice(space.widths_from_indices(space.full_indices()))
    cands = [Candidate(choice, 0.8, stats(ms), 0, 0) for ms in (0.2, 0.5, 0.95, 1.2)]
    F, G = objectives(cands, budget_ms=1.0, focus=0.9)
    assert F[:, 1].tolist() == [0.9, 0.9, 0.95, 1.2]  # far under the budget: no better than 0.9
    assert G[:, 0].tolist() == pytest.approx([-0.8, -0.5, -0.05, 0.2])  # feasibility: real latency
    assert objectives(cands, 1.0)[0][:, 1].tolist() == [0.2, 0.5, 0.95, 1.2]  # focus off


class _SumClock:
    """Stands in for an Evaluator in ``widen``: a network's latency is its total width / 16 ms
    (each grid step costs 1 ms); a fresh re-measure of the widths in ``over`` is far over."""

    def __init__(self, space, over=()):
        self.space, self.over = space, set(over)

    def latency(self, widths, fresh=False):
        return SimpleNamespace(median_ms=1e9 if fresh and tuple(widths) in self.over else sum(widths) / 16)

    def evaluate(self, choice):
        widths = tuple(len(k) for k in choice)
        stats = LatencyStats(10, *(self.latency(widths).median_ms,) * 4, 0.0, 0.0)
        return Candidate(choice, 0.5, stats, macs_and_params(self.space.shrink(self.space.plan_of(choice)), (1, 8, 8))[0], 0)


def test_widen_spends_the_budget_the_pick_leaves_most_macs_first(setup):
    space = setup[1]
    clock = _SumClock(space)
    picked = clock.evaluate(space.choice(space.widths_from_indices(space.min_indices())))  # 3 ms
    widened, steps = widen(clock, picked, 5.5, _within(clock, 5.5))
    assert sum(widened.widths) == 80 and len(steps) == 2  # two 1-ms steps fit under 5.5 ms, a third does not
    gains = {}
    for g, group in enumerate(space.groups):
        widths = list(picked.widths)
        widths[g] = group.options[1]
        gains[group.name] = macs_and_params(space.shrink(space.plan(widths)), (1, 8, 8))[0]
    assert steps[0]["group"] == max(gains, key=gains.get)  # the step that buys the most MACs goes first
    assert all(w in g.options for g, w in zip(space.groups, widened.widths))
    assert all(set(old) <= set(new) for old, new in zip(picked.choice, widened.choice))  # channels added, none swapped


def test_widen_undoes_a_step_whose_fresh_measurement_misses_and_keeps_a_pick_with_no_room(setup):
    space = setup[1]
    small = space.widths_from_indices(space.min_indices())
    picked = _SumClock(space).evaluate(space.choice(small))
    first, _ = widen(_SumClock(space), picked, 5.5, _within(_SumClock(space), 5.5))
    clock = _SumClock(space, over=[first.widths])  # the final widths re-measure over the budget
    undone, steps = widen(clock, picked, 5.5, _within(clock, 5.5))
    assert sum(undone.widths) == 64 and len(steps) == 1
    assert widen(_SumClock(space), picked, 3.5, _within(_SumClock(space), 3.5)) == (picked, [])  # no step fits


def test_widen_keeps_the_most_steps_whose_fresh_check_passes(setup):
    space = setup[1]
    picked = _SumClock(space).evaluate(space.choice(space.widths_from_indices(space.min_indices())))  # 3 ms
    checked = []

    def check(widths):  # steps cost 1 ms each on the cached clock; fresh sessions say 1.5 ms each
        checked.append(widths)
        return 3 + (sum(widths) / 16 - 3) * 1.5 <= 6.5

    widened, steps = widen(_SumClock(space), picked, 9.5, check, passes=3)
    assert sum(widened.widths) / 16 == 5 and len(steps) == 2  # 3 + 2 x 1.5 = 6 fits, 7.5 does not
    assert len(checked) <= 4  # the last widths, then a bisection over the accepted steps


def _within(clock, limit_ms):
    return lambda widths: clock.latency(widths, fresh=True).median_ms <= limit_ms
