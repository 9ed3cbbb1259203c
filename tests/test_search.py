"""The searches and the selection stage on real pruning problems: a tiny residual net on sklearn's
digits, timed in onnxruntime or, where a test needs latencies it chooses, by a formula (:class:`Clock`,
a LatencySource like the profiler's)."""

import math
from pathlib import Path

import pytest
import torch
from tiny_models import TinyResNet

from edgeprune.select.budget import BudgetPolicy
from edgeprune.tasks.data import load_data
from edgeprune.errors import UserError
from edgeprune.problem.latency import ProfiledLatency
from edgeprune.api.settings import parse_objectives
from edgeprune.problem.pruning import PruningProblem, recalibrate_bn
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.stats import LatencyStats
from edgeprune.records import Candidate
from edgeprune.search.nsga import run_nsga2
from edgeprune.select.selection import SessionNoise, WidenBudget, confirm, confirmed, ratio_seeds, refine, shortlist, widen
from edgeprune.space.channels import ChannelSpace, macs_and_params
from edgeprune.profiling.targets import load_profile
from edgeprune.tasks.task import Classification, Recipe

PROFILE = Path(__file__).parent / "fixtures" / "fast-cpu.yaml"
RECIPE = Recipe(lr=0.01, batch_size=64, kd_alpha=0.5, kd_temperature=4.0, progress=False)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_data("digits", holdout=300, seed=0)
    model = TinyResNet().eval()
    space = ChannelSpace(model, (1, 8, 8), step=16)
    return data, space


def _stats(ms: float) -> LatencyStats:
    return LatencyStats(10, ms, ms, ms, ms, 0.0, 0.0)


class Clock:
    """A LatencySource whose target measures ``cached(widths)`` ms, and ``fresh(widths)`` ms in a
    fresh session (each a function of the widths, or an iterator of values per widths)."""

    has_node_times = False
    shape = (1, 1, 8, 8)

    def __init__(self, cached, fresh=None):
        self.cached, self.fresh, self.asked = cached, fresh or cached, []

    def measure(self, widths, model=None, fresh=False):
        self.asked.append((tuple(widths), fresh))
        source = self.fresh if fresh else self.cached
        ms = next(source[tuple(widths)]) if isinstance(source, dict) else source(tuple(widths))
        return _stats(ms), False

    def start(self, widths, model=None, fresh=False):
        return self.measure(widths, model, fresh)

    def finish(self, answer):
        return answer

    def peek(self, widths):
        return None

    def node_times(self, widths, model):
        raise AssertionError("a clock has no node times")


def _on_clock(setup, clock: Clock, **options) -> PruningProblem:
    data, space = setup
    return PruningProblem(space, Classification(data, RECIPE), clock, **options)


def _search(setup, cache: Path, seed: int = 0, **options):
    data, space = setup
    profiler = Profiler(load_profile(str(PROFILE)), cache_path=cache)
    latency = ProfiledLatency(space, profiler, opset=17)
    full_ms = latency.measure(space.widths_from_indices(space.full_indices()))[0].median_ms
    budget = 10 * full_ms  # generous: these tests check bookkeeping, not speed
    problem = PruningProblem(space, Classification(data, RECIPE, seed=seed), latency, limit_ms=budget, **options)
    result = run_nsga2(problem, population=6, generations=3, seed=seed, show_progress=False)
    profiler.close()
    return problem, profiler, result, budget


def test_each_architecture_is_evaluated_and_measured_once(setup, tmp_path):
    problem, profiler, result, budget = _search(setup, tmp_path / "c.sqlite")
    assert problem.evaluations == len(problem.results) == len(result.candidates)
    assert profiler.measurements == len(problem.results)  # the full model's was a memory hit
    assert result.history[-1]["generation"] == 3
    assert all(c.latency.median_ms <= budget for c in result.pareto)
    space = setup[1]
    assert space.full_choice() in problem.results  # unpruned seeded


def test_a_third_objective_is_a_plug_in_the_search_optimises_without_change(setup, tmp_path):
    class Params:
        """A model score (higher is better): fewer parameters."""

        name = "small"

        def measure(self, model):
            return -sum(p.numel() for p in model.parameters())

    problem, _, result, _ = _search(setup, tmp_path / "c.sqlite", objective_names=parse_objectives("accuracy,latency,macs"), model_scores=(Params(),))
    assert problem.n_obj == 4
    cands = result.candidates
    F = problem.objectives(cands)
    assert F.shape == (len(cands), 4)
    assert F[:, 0].tolist() == [-c.accuracy for c in cands] and F[:, 2].tolist() == [c.macs for c in cands]
    assert F[:, 3].tolist() == [-c.scores["small"] for c in cands] and all(c.scores["small"] < 0 for c in cands)
    with pytest.raises(UserError, match="must name accuracy or robustness"):
        parse_objectives("latency,macs")
    with pytest.raises(UserError, match="known: accuracy, latency, macs, robustness"):
        parse_objectives("accuracy,energy")


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


def test_seeds_are_the_widest_ratio_of_each_profile_within_the_budget(setup, capsys):
    space = setup[1]
    clock = Clock(lambda w: float(sum(w)))  # latency = the total width
    widths = lambda r, a: space.widths_from_indices(space.scaled_indices(r, a))  # noqa: E731
    budget = sum(widths(0.5, 0.0)) + 0.5
    seeds = [space.widths_from_indices(s) for s in ratio_seeds(_on_clock(setup, clock), budget, alphas=(0.0, 1.0))]
    grid = [round(0.05 * k, 2) for k in range(1, 61)]
    for alpha in (0.0, 1.0):
        widest = max((r for r in grid if sum(widths(r, alpha)) <= budget), key=lambda r: widths(r, alpha))
        assert widths(widest, alpha) in seeds
    assert len(clock.asked) <= 12  # bisection per profile, not a scan of the ratio grid
    said = capsys.readouterr()
    assert "width profile 2/2 (alpha 1)" in said.out + said.err  # a log is not silent while the seeds are found
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


def _fresh_over(over=()):
    """Every fresh session measures 1 ms, those of the widths in ``over`` far over any budget."""
    return Clock(lambda w: 1.0, lambda w: 1e9 if w in set(over) else 1.0)


def test_shortlist_always_short_tunes_the_seeds_and_a_narrower_one_only_in_place_of_a_wider(setup):
    space = setup[1]
    cand = lambda w, acc: Candidate(space.choice(w), acc, _stats(1.0), 0, 0)  # noqa: E731
    full = space.widths_from_indices(space.full_indices())
    half = space.widths_from_indices(space.uniform_indices(0.5))
    small = space.widths_from_indices(space.min_indices())
    seeds = [cand(half, 0.1), cand(small, 0.1)]  # one profile's widest ratio, then its next narrower
    others = [cand(full, 0.9), *seeds]
    picked = shortlist(_on_clock(setup, _fresh_over()), others, 2.0, size=1, seeds=seeds)
    assert [c.widths for c in picked] == [half, full]  # the seed despite its accuracy, then the best other
    picked = shortlist(_on_clock(setup, _fresh_over([half])), others, 2.0, size=1, seeds=seeds)
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
    picked = shortlist(_on_clock(setup, _fresh_over([full])), cands, 2.0, size=2)
    assert [c.widths for c in picked] == [mid, small]  # most accurate first; the lucky one dropped


def test_refine_ranks_by_recovery_after_the_short_tune_and_reports_all(setup):
    space = setup[1]
    problem = _on_clock(setup, Clock(lambda w: 1.0))
    tiny = space.widths_from_indices(space.min_indices())
    full = space.widths_from_indices(space.full_indices())
    stats = LatencyStats(10, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    # Adaptive-BN says the narrowest network is best; after the short tune the full one wins.
    cands = [Candidate(space.choice(tiny), 0.99, stats, 0, 0), Candidate(space.choice(full), 0.10, stats, 0, 0)]
    ranked, rows = refine(2, 0, problem, space.model, cands)
    assert [r["holdout_accuracy_adaptive_bn"] for r in rows] == [0.99, 0.10]
    assert rows[1]["holdout_accuracy_short_tune"] > rows[0]["holdout_accuracy_short_tune"]
    assert ranked == [cands[1], cands[0]]  # best after the short tune first
    # 0 epochs: off, the shortlist's order (most accurate by adaptive BN first)
    assert refine(0, 0, problem, space.model, cands) == (cands, [])


def _sessions(setup, sessions: dict) -> PruningProblem:
    """Fresh sessions of ``widths`` measure the next values of ``sessions[widths]`` in turn; the
    cache is never asked (a confirmation takes no cached number)."""
    clock = Clock(lambda w: pytest.fail("a confirmation asked for a cached latency"), {w: iter(v) for w, v in sessions.items()})
    return _on_clock(setup, clock)


def test_confirm_margin_grows_with_the_spread_between_fresh_sessions(setup):
    quiet = confirm(_sessions(setup, {(1,): [0.95, 0.951, 0.949, 0.95, 0.95]}), (1,), 1.0, BudgetPolicy(search_margin=0.03), SessionNoise())
    assert quiet.median_ms == 0.95 and quiet.limit_ms == pytest.approx(0.97)  # spread ~0: the fixed margin
    assert quiet.passed and quiet.to_dict()["sessions_ms"] == [0.95, 0.951, 0.949]  # 3 within: 2 more cannot move the median out
    # The same median with sessions 5 % apart: 2 standard errors of the gap to another such check.
    noisy = confirm(_sessions(setup, {(1,): [0.90, 0.95, 1.00, 0.95, 0.95 * 0.95]}), (1,), 1.0, BudgetPolicy(search_margin=0.03), SessionNoise())
    assert noisy.spread == pytest.approx(1.4826 * math.log(1.00 / 0.95))  # robust: the median |log deviation|
    assert noisy.limit_ms == pytest.approx(1 - 2 * 1.25 * noisy.spread * (2 / 5) ** 0.5)
    assert noisy.limit_ms < 0.95 and not noisy.passed and len(noisy.sessions_ms) == 3  # 3 over: decided


def test_confirm_takes_the_remaining_sessions_only_while_the_first_ones_disagree(setup):
    split = confirm(_sessions(setup, {(1,): [0.95, 0.99, 0.94, 0.96, 0.95]}), (1,), 1.0, BudgetPolicy(search_margin=0.03), SessionNoise())
    assert split.sessions_ms == [0.95, 0.99, 0.94, 0.96, 0.95] and split.median_ms == 0.95 and split.passed  # 2 within, 1 over: all 5


def test_confirmed_takes_the_best_ranked_that_passes_else_the_fastest(setup):
    space = setup[1]
    a, b, c = (space.widths_from_indices(space.uniform_indices(r)) for r in (1.0, 0.5, 0.0))
    ranked = [Candidate(space.choice(w), 0.5, _stats(1.0), 0, 0) for w in (a, b, c)]
    clock = _sessions(setup, {a: [1.0] * 5, b: [0.9] * 5, c: [0.5] * 5})
    picked, check = confirmed(clock, ranked, 1.0, BudgetPolicy(search_margin=0.03), SessionNoise())
    assert picked is ranked[1] and check.median_ms == 0.9  # the first was over budget less 3 %
    clock = _sessions(setup, {a: [1.2] * 5, b: [1.1] * 5, c: [1.3] * 5})
    picked, check = confirmed(clock, ranked, 1.0, BudgetPolicy(search_margin=0.03), SessionNoise())
    assert picked is ranked[1] and not check.passed  # none passes: the fastest, flagged


def test_seeds_join_the_first_population(setup, tmp_path):
    space = setup[1]
    problem = _on_clock(setup, Clock(lambda w: float(sum(w))), limit_ms=1e9, focus=0.9)
    seed = [0] * len(space.groups)
    seed[-1] = len(space.groups[-1].options) - 1
    run_nsga2(problem, population=4, generations=1, seed=0, show_progress=False, seeds=[seed])
    assert space.choice(space.widths_from_indices(seed)) in problem.results


def test_focus_ties_latencies_under_the_floor_but_keeps_the_constraint(setup):
    space = setup[1]
    choice = space.full_choice()
    cands = [Candidate(choice, 0.8, _stats(ms), 0, 0) for ms in (0.2, 0.5, 0.95, 1.2)]
    problem = _on_clock(setup, Clock(lambda w: 1.0), limit_ms=1.0, focus=0.9)
    F, G = problem.objectives(cands), problem.constraints(cands)
    assert F[:, 1].tolist() == [0.9, 0.9, 0.95, 1.2]  # far under the budget: no better than 0.9
    assert G[:, 0].tolist() == pytest.approx([-0.8, -0.5, -0.05, 0.2])  # feasibility: real latency
    unfocused = _on_clock(setup, Clock(lambda w: 1.0), limit_ms=1.0)
    assert unfocused.objectives(cands)[:, 1].tolist() == [0.2, 0.5, 0.95, 1.2]  # focus off


def _sum_clock(setup, over=()) -> PruningProblem:
    """A network's latency is its total width / 16 ms (each grid step costs 1 ms); a fresh
    session of the widths in ``over`` measures far over."""
    return _on_clock(setup, Clock(lambda w: sum(w) / 16, lambda w: 1e9 if w in set(over) else sum(w) / 16))


def test_widen_spends_the_budget_the_pick_leaves_most_macs_first(setup):
    space = setup[1]
    clock = _sum_clock(setup)
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
    picked = _sum_clock(setup).evaluate(space.choice(small))
    first, _ = widen(_sum_clock(setup), picked, 5.5, _within(_sum_clock(setup), 5.5))
    clock = _sum_clock(setup, over=[first.widths])  # the final widths re-measure over the budget
    undone, steps = widen(clock, picked, 5.5, _within(clock, 5.5))
    assert sum(undone.widths) == 64 and len(steps) == 1
    assert widen(_sum_clock(setup), picked, 3.5, _within(_sum_clock(setup), 3.5)) == (picked, [])  # no step fits


def test_widen_stops_where_its_budget_of_measurements_or_time_is_spent(setup):
    space = setup[1]
    smallest = space.choice(space.widths_from_indices(space.min_indices()))  # 3 ms; steps of 1 ms fit up to 9.5 ms
    unbounded = _sum_clock(setup)
    _, all_steps = widen(unbounded, unbounded.evaluate(smallest), 9.5, lambda widths: True)
    groups = len(space.groups)
    bounded = _sum_clock(setup)
    picked = bounded.evaluate(smallest)
    start = len(bounded.latency.asked)
    _, steps = widen(bounded, picked, 9.5, lambda widths: True, budget=WidenBudget(measurements=groups + 2))
    measured = len(bounded.latency.asked) - start - 1  # the last one evaluates the widened pick
    assert len(all_steps) == 6 and len(steps) == 2 and measured == groups + 2  # one per group to rank them, then two steps
    timed_out = _sum_clock(setup)
    picked = timed_out.evaluate(smallest)
    assert widen(timed_out, picked, 9.5, lambda widths: True, budget=WidenBudget(seconds=0.0)) == (picked, [])


class _StepSurrogate:
    """Predicts 1 ms for networks of at most ``most`` MACs and far over any limit above."""

    needs_node_times = False
    input_shape = (1, 1, 8, 8)

    def __init__(self, most: int):
        self.most = most

    def predict(self, layers) -> float:
        return 1.0 if sum(layer.macs() for layer in layers) <= self.most else 1e9

    def observe(self, layers, measured_ms, node_times=None):
        pass  # this screen stays trusted: the test is about widening, not learning


def test_a_trusted_screen_ranks_the_widening_and_spares_the_steps_it_predicts_over(setup):
    """With a trusted screen widening measures only the steps it may keep: none to rank the
    groups, none predicted over the limit; every step it keeps is still measured."""
    from edgeprune.problem.screening import Screen

    space = setup[1]
    smallest = space.choice(space.widths_from_indices(space.min_indices()))  # 3 ms; steps of 1 ms fit up to 9.5 ms
    plain = _sum_clock(setup)
    picked = plain.evaluate(smallest)
    from edgeprune.space.layers import layer_descriptors

    work = lambda w: sum(layer.macs() for layer in layer_descriptors(space.shrink(space.plan(w)), (1, 1, 8, 8)))  # noqa: E731 - what the surrogate sees
    macs = [work(_grown(space, picked.widths, g)) for g in range(len(space.groups))]
    most = min(macs)  # only the cheapest step is predicted within the limit; every wider network over it
    assert sorted(macs)[1] > most  # the premise: one cheapest step
    screen = Screen(_StepSurrogate(most), window=1, limit_ms=9.5)
    screen.errors.append(0.0)  # trusted
    screened = _on_clock(setup, Clock(lambda w: sum(w) / 16), screen=screen)
    picked = screened.evaluate(smallest)
    start = len(screened.latency.asked)
    widened, steps = widen(screened, picked, 9.5, lambda widths: True)
    assert len(steps) == 1 and sum(widened.widths) == sum(picked.widths) + 16  # the other steps are predicted over
    assert len(screened.latency.asked) - start - 1 == 1  # only the kept step was measured (the last ask evaluates the pick)
    _, unscreened = widen(plain, plain.evaluate(smallest), 9.5, lambda widths: True)
    assert len(unscreened) == 6  # without the screen the same clock takes six steps


def _grown(space, widths, g):
    grown = list(widths)
    grown[g] = min([w for w in space.groups[g].options if w > widths[g]], default=widths[g])
    return tuple(grown)


def test_the_widening_budget_is_what_the_search_spent(setup):
    space = setup[1]
    clock = _sum_clock(setup)
    cands = [clock.evaluate(space.choice(space.widths_from_indices(i))) for i in (space.min_indices(), space.full_indices())]
    for c, seconds, cached in zip(cands, (4.0, 6.0), (False, True)):
        c.seconds, c.from_cache = seconds, cached
    assert WidenBudget.of_search(cands, 3.0, 1) == WidenBudget(1, 10.0)  # a replayed search took no time: its candidates did
    assert WidenBudget.of_search(cands, 30.0, 5) == WidenBudget(5, 30.0)  # at least one measurement per group


def test_widen_keeps_the_most_steps_whose_fresh_check_passes(setup):
    space = setup[1]
    picked = _sum_clock(setup).evaluate(space.choice(space.widths_from_indices(space.min_indices())))  # 3 ms
    checked = []

    def check(widths):  # steps cost 1 ms each on the cached clock; fresh sessions say 1.5 ms each
        checked.append(widths)
        return 3 + (sum(widths) / 16 - 3) * 1.5 <= 6.5

    widened, steps = widen(_sum_clock(setup), picked, 9.5, check, passes=3)
    assert sum(widened.widths) / 16 == 5 and len(steps) == 2  # 3 + 2 x 1.5 = 6 fits, 7.5 does not
    assert len(checked) <= 4  # the last widths, then a bisection over the accepted steps


def _within(problem, limit_ms):
    return lambda widths: problem.latency_of(widths, fresh=True).median_ms <= limit_ms


def test_a_screened_candidate_steers_as_infeasible_even_with_a_model_score_and_is_scored_again_for_coevolution(setup):
    """A candidate the screen skipped has no scores: its objective row is still finite (0, like its
    accuracy), and a partial score for co-evolution does not take its placeholder accuracy."""
    space = setup[1]

    class Width:
        name = "width"

        def measure(self, model):
            return 1.0

    problem = _on_clock(setup, Clock(lambda w: 1.0), limit_ms=1.0, model_scores=(Width(),))
    choice = space.full_choice()
    skipped = Candidate(choice, 0.0, _stats(9.0), 0, 0, predicted=True)
    problem.results[choice] = skipped
    assert problem.objectives([skipped]).tolist() == [[0.0, 9.0, 0.0]]
    accuracy, macs = problem.partial_score(choice)
    assert accuracy > 0.0 and macs > 0


def test_stagnation_counts_generations_that_improve_neither_accuracy_nor_hypervolume():
    from edgeprune.search.nsga import Stagnation

    gens = [(0.5, 0.1), (0.6, 0.1), (0.6, 0.1), (0.6, 0.12), (0.6, 0.12), (0.6, 0.12)]
    stop = Stagnation(patience=2)
    settled = [stop.settled({"best_accuracy": a, "hypervolume": hv}) for a, hv in gens]
    assert settled == [False, False, False, False, False, True]  # two idle generations after the last gain
    assert not any(Stagnation(0).settled({"best_accuracy": 0.5, "hypervolume": 0.1}) for _ in range(5))  # off
    no_feasible = Stagnation(1)
    assert [no_feasible.settled({"best_accuracy": None, "hypervolume": 0.0}) for _ in range(2)] == [False, True]


def test_a_search_with_patience_stops_when_the_front_settles_and_not_before(setup):
    problem = _on_clock(setup, Clock(lambda w: float(sum(w))), limit_ms=1e9)
    result = run_nsga2(problem, population=4, generations=12, seed=0, show_progress=False, patience=1)
    history = result.history
    assert len(history) < 12  # a 3-group space settles long before 12 generations
    last, before = history[-1], history[-2]
    assert (last["best_accuracy"], last["hypervolume"]) == (before["best_accuracy"], before["hypervolume"])
    for prev, gen in zip(history[:-2], history[1:-1]):  # every earlier generation improved something
        assert gen["best_accuracy"] > prev["best_accuracy"] or gen["hypervolume"] > prev["hypervolume"]


def test_the_seeds_probe_where_the_measured_latencies_reach_the_budget(setup):
    """Each probe of the seeds' search goes where the bracket's two latencies, interpolated in
    ratio², reach the budget: on a network whose latency is that curve, the widest ratio within
    the budget is found in 2 probes after the full ratio's, where a bisection of the 20-ratio grid
    took 4 (here the smallest network, which a run has measured before the seeds, is one more)."""
    fine = ChannelSpace(TinyResNet().eval(), (1, 8, 8), step=4)  # 16 widths per group: the ratios differ
    latency = lambda w: 1.0 + sum(x * x for x in w) / 1000  # noqa: E731
    widths = lambda r: fine.widths_from_indices(fine.scaled_indices(r, 0.0))  # noqa: E731
    grid = [round(0.05 * k, 2) for k in range(1, 21)]
    budget = (latency(widths(0.55)) + latency(widths(0.6))) / 2
    clock = Clock(latency)
    problem = PruningProblem(fine, Classification(setup[0], RECIPE), clock)
    (seed, narrower), = [ratio_seeds(problem, budget, alphas=(0.0,))]
    widest = max((r for r in grid if latency(widths(r)) <= budget), key=widths)
    assert fine.widths_from_indices(seed) == widths(widest) == widths(0.55)
    assert fine.widths_from_indices(narrower) == widths(0.5)
    assert len(clock.asked) <= 4, clock.asked  # the smallest network, the full ratio, 0.55 and 0.6
