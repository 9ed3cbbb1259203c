"""Search rounds: prune → fine-tune → search again from the fine-tuned model (``--rounds T``).

Pruning in one step to a tight budget asks adaptive-BN scoring to rank networks that have lost
half their channels at once; pruning in rounds (NetAdapt, CCEP/CCSRP) lets fine-tuning recover
before the next cut, and each round's importance order comes from the recovered weights. Round
``k`` of ``T`` aims at ``baseline × (budget / baseline)^(k/T)``; the last round at the budget.

Each round searches a :class:`ChannelSpace` of the *current* (already pruned) model; its plan is
composed with the earlier rounds' so the final ``plan.json`` still refers to the original model
and :func:`edgeprune.load_pruned` rebuilds it from the original spec.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from collections.abc import Callable

from edgeprune.tasks import outputs
from edgeprune.select.budget import BudgetPolicy
from edgeprune.jobs.checkpoint import RunCheckpoint, SearchJournal
from edgeprune.jobs.settings import RecipeSettings, SearchSettings
from edgeprune.errors import UserError
from edgeprune.problem.latency import LatencySource
from edgeprune.problem.pruning import PruningProblem
from edgeprune.profiling.macs_surrogate import MacsSurrogate
from edgeprune.profiling.surrogate import LatencySurrogate
from edgeprune.progress import console
from edgeprune.problem.screening import Screen
from edgeprune.search.coevolution import run_coevolution
from edgeprune.records import Candidate
from edgeprune.search.nsga import SearchResult, run_nsga2
from edgeprune.search.steady import run_steady_state
from edgeprune.select.selection import Selection, WidenBudget, ratio_seeds, select
from edgeprune.space.channels import ChannelPlan, ChannelSpace, apply_plan


@dataclass(frozen=True)
class RoundSettings:
    """The settings the rounds read: the search's, the selection and fine-tune recipe's, the seed."""

    search: SearchSettings
    recipe: RecipeSettings
    seed: int
    progress: bool


@dataclass
class _Context:
    """What every round of a run shares."""

    settings: RoundSettings
    original: nn.Module
    first: PruningProblem  # the job's problem on the original model (it scored the baseline)
    budgets: list[float]
    policy: BudgetPolicy
    checkpoint: RunCheckpoint
    make_encoding: Callable[[ChannelSpace], object]


@dataclass
class Round:
    number: int
    budget_ms: float
    space: ChannelSpace
    problem: PruningProblem
    result: SearchResult | None
    picked: Candidate
    model: nn.Module
    plan: ChannelPlan  # relative to the original model
    summary: dict = field(default_factory=dict)


def round_budgets(baseline_ms: float, budget_ms: float, rounds: int) -> list[float]:
    """Geometric steps from the baseline's latency down to the budget; the last is the budget."""
    return [baseline_ms * (budget_ms / baseline_ms) ** (k / rounds) for k in range(1, rounds)] + [budget_ms]


def compose(outer: ChannelPlan, inner: ChannelPlan) -> ChannelPlan:
    """``inner`` (indices into the ``outer``-pruned model) expressed on the original model."""
    kept = {name: list(idxs) for name, idxs in outer.kept.items()}
    for name, idxs in inner.kept.items():
        if name not in kept:
            raise RuntimeError(f"group {name} of a later round has no counterpart in the first round's plan")
        kept[name] = [kept[name][i] for i in idxs]
    dropped = [*outer.dropped, *(n for n in inner.dropped if n not in outer.dropped)]
    return ChannelPlan(kept=kept, model_spec=outer.model_spec, input_shape=outer.input_shape, dropped=dropped)


def rebuild(original: nn.Module, plan: ChannelPlan, state_dict: dict) -> nn.Module:
    model = copy.deepcopy(original)
    apply_plan(model, plan, torch.zeros(1, *plan.input_shape))
    model.load_state_dict(state_dict)
    return model.eval()


def run_rounds(
    settings: RoundSettings,
    original: nn.Module,
    first: PruningProblem,
    budgets: list[float],
    policy: BudgetPolicy,
    checkpoint: RunCheckpoint,
    make_encoding: Callable[[ChannelSpace], object],
    latency_for: Callable[[ChannelSpace], LatencySource],
    scores_for: Callable[[int, ChannelSpace], tuple] | None = None,
) -> list[Round]:
    """Every round's search, selection and fine-tune; finished rounds come back from ``checkpoint``.

    ``first`` is the job's problem on the original model (it scored the baseline);
    ``latency_for`` gives the latency source of a later round's space, ``scores_for`` its model
    scores (a round's shared adversarial set is made from that round's base network)."""
    ctx = _Context(settings, original, first, budgets, policy, checkpoint, make_encoding)
    rounds: list[Round] = []
    plan = first.space.plan(first.space.widths_from_indices(first.space.full_indices()))
    model, space = original, first.space
    for number, budget in enumerate(budgets, 1):
        if number > 1:
            space = ChannelSpace(model, first.space.input_shape, first.space.step, model_spec=first.space.model_spec, mode=first.space.mode)
            if not space.groups:
                console.print(f"round {number}: no group is wider than one step any more; stopping after round {number - 1}")
                break
        latency = first.latency if number == 1 else latency_for(space)
        finished = checkpoint.finished_round(number, first.space)
        if finished is not None and number < len(budgets):
            problem = PruningProblem(space, first.task, latency, reference_ms=first.reference_ms)
            done = _restored(number, budget, problem, None, None, finished, original, plan)
            console.print(f"round {number}: restored from the checkpoint ({done.summary['latency_ms']:.4f} ms)")
        else:
            scores = first.model_scores if number == 1 or scores_for is None else scores_for(number, space)
            done = _round(ctx, number, space, latency, finished, plan, scores)
        rounds.append(done)
        model, plan = done.model, done.plan
    return rounds


def _round(ctx: _Context, number: int, space: ChannelSpace, latency: LatencySource, finished, plan: ChannelPlan, scores: tuple) -> Round:
    """Search, then select and fine-tune, of a round that did not finish before a kill (or the
    last round, whose pick is looked up again when it did)."""
    t = time.perf_counter()
    budgets, checkpoint, original = ctx.budgets, ctx.checkpoint, ctx.original
    budget = budgets[number - 1]
    problem = _problem(ctx, number, space, latency, scores)
    if len(budgets) > 1:
        console.print(f"round {number}/{len(budgets)}: budget {budget:.4f} ms")
    result, seeded = _search(ctx.settings, problem, ctx.make_encoding, budget)
    if finished is not None:  # the last round finished before the kill: same pick, same weights
        picked = next((c for c in problem.known_candidates() if list(c.widths) == finished[0]["group_widths_round"]), None)
        if picked is None:
            raise UserError(
                f"checkpoint {checkpoint.round_folder(number)}/done.json names a pick the round never evaluated; "
                f"delete the checkpoint folder {checkpoint.folder} and start again"
            )
        return _restored(number, budget, problem, result, picked, finished, original, plan)
    recipe = ctx.settings.recipe
    selection = select(
        problem, result.candidates, seeded, budget, ctx.policy, original,
        refine_top=recipe.refine_top, refine_epochs=recipe.refine_epochs, widen_passes=recipe.widen_passes, seed=ctx.settings.seed,
        widen_budget=WidenBudget.of_search(result.candidates, result.wall_s, len(space.groups)),
    )
    done = _finish(ctx, number, problem, result, seeded, selection, plan, time.perf_counter() - t)
    checkpoint.save_round(number, done.summary, done.plan.to_dict(), done.model.state_dict())
    return done


def _problem(ctx: _Context, number: int, space: ChannelSpace, latency: LatencySource, scores: tuple) -> PruningProblem:
    """The round's problem against the search limit, journaled so that a kill can resume it: the
    journal's candidates answer the replayed search, and its generations are written again."""
    first, policy, search = ctx.first, ctx.policy, ctx.settings.search
    limit_ms = policy.search_limit(ctx.budgets[number - 1])
    journal = SearchJournal(ctx.checkpoint.round_folder(number), space)
    restored = journal.candidates()
    journal.generations_path.unlink(missing_ok=True)
    screen = None
    depth = max(1, ctx.settings.recipe.refine_top)  # a candidate the shortlist could take is always measured
    if search.screen and search.strategy != "coevolution" and latency.has_node_times:
        screen = Screen(LatencySurrogate(latency.shape), limit_ms=limit_ms, depth=depth)
    elif search.screen and search.strategy != "coevolution":  # whole-network times only: a MACs model, learnt per generation
        screen = Screen(MacsSurrogate(latency.shape), limit_ms=limit_ms, immediate=False, depth=depth)
    return PruningProblem(
        space, first.task, latency, limit_ms=limit_ms, focus=policy.focus, reference_ms=first.reference_ms,
        objective_names=first.objective_names, model_scores=scores, journal=journal, screen=screen,
        known=first.evaluated() if number == 1 else (), restored=restored, workers=first.workers,
        memory=first.memory if number == 1 or first.memory is None else first.memory.for_latency(latency), max_memory_mb=first.max_memory_mb,
    )


def _restored(number, budget, problem, result, picked, finished, original, plan) -> Round:
    summary, plan_dict, state_path = finished
    plan = ChannelPlan(kept=plan_dict["kept"], model_spec=plan.model_spec, input_shape=plan.input_shape, dropped=list(plan_dict.get("dropped", [])))
    model = rebuild(original, plan, torch.load(state_path, map_location="cpu", weights_only=True))
    return Round(number, budget, problem.space, problem, result, picked, model, plan, summary)


def _search(settings: RoundSettings, problem: PruningProblem, make_encoding, budget_ms: float) -> tuple[SearchResult, list[Candidate]]:
    """The round's search; returns the result and the evaluated ratio-profile seeds. When even the
    smallest allowed network misses the budget, nothing else can meet it: that network is the
    round's only candidate, and the run's verdict is "not met" (the same when it misses the
    memory limit)."""
    smallest = problem.evaluate_widths(problem.space.widths_from_indices(problem.space.min_indices()))
    if smallest.latency.median_ms > budget_ms or not problem.fits_memory(smallest):
        return SearchResult([smallest], [smallest]), []
    seeds = ratio_seeds(problem, problem.limit_ms)  # NSGA-II starts from them; both short-tune them
    s = settings.search
    if s.strategy == "coevolution":
        result = run_coevolution(problem, s.population, s.generations, settings.seed, settings.progress, journal=problem.journal)
    elif s.strategy == "steady-state":  # as many in flight as the farm has agents, fixed for the round (resume)
        result = run_steady_state(
            problem, s.population, s.generations, settings.seed, problem.journal.in_flight(problem.latency.capacity), settings.progress,
            encoding=make_encoding(problem.space), journal=problem.journal, seeds=seeds, patience=s.patience,
        )
    else:
        result = run_nsga2(
            problem, s.population, s.generations, settings.seed, settings.progress,
            encoding=make_encoding(problem.space), journal=problem.journal, seeds=seeds, patience=s.patience,
        )
    seeded = [problem.evaluate_widths(problem.space.widths_from_indices(s)) for s in seeds]  # evaluated already
    return result, seeded


def _finish(ctx: _Context, number: int, problem: PruningProblem, result: SearchResult, seeded: list[Candidate], selection: Selection, plan: ChannelPlan, search_s: float) -> Round:
    """Fine-tune the pick, compose its plan onto the original model (checked to rebuild it
    exactly) and summarise the round."""
    space, picked = problem.space, selection.picked
    budgets, original, epochs, seed = ctx.budgets, ctx.original, ctx.settings.recipe.finetune_epochs, ctx.settings.seed
    round_plan = space.plan_of(picked.choice)
    pruned = space.shrink(round_plan)
    tuned = next((r["holdout_accuracy_short_tune"] for r in selection.short_tune if r.get("picked")), None)
    console.print(
        f"picked {picked.latency.median_ms:.4f} ms, held-out {problem.task.metric} {picked.accuracy:.2%} after BN recalibration"
        + (f", {tuned:.2%} after the short fine-tune" if tuned is not None else "")
        + f"; fine-tuning {epochs:g} epoch(s)"
    )
    t = time.perf_counter()
    finetune = {"epochs": epochs}
    if epochs > 0:
        finetune |= problem.task.fine_tune(
            pruned, original, epochs, seed + number - 1,
            f"fine-tune (round {number})" if len(budgets) > 1 else "fine-tune",
        )
    pruned.eval()
    plan = compose(plan, round_plan)
    _check_rebuilds(number, original, plan, pruned)
    summary = {
        "round": number,
        "budget_ms": budgets[number - 1],
        "latency_ms": picked.latency.median_ms,
        "holdout_accuracy_before_finetune": picked.accuracy,
        "holdout_accuracy": problem.task.score(pruned),
        **({"holdout_scores": {m.name: float(m.measure(pruned)) for m in problem.model_scores}} if problem.model_scores else {}),
        "macs": picked.macs,
        "params": picked.params,
        "group_widths_round": list(picked.widths),
        "evaluations": len(problem.results),
        "screen": problem.screen.to_dict() if problem.screen else None,
        "seeds": [list(c.widths) for c in seeded],
        "short_tune": selection.short_tune,
        "widened": selection.widened,
        "confirmation": selection.confirmation.to_dict(),
        "search_s": search_s,
        "finetune_s": time.perf_counter() - t,
        "finetune": finetune,
        "pareto": [c.summary(space) for c in result.pareto],
    }
    return Round(number, budgets[number - 1], space, problem, result, picked, pruned, plan, summary)


def _check_rebuilds(number: int, original: nn.Module, plan: ChannelPlan, pruned: nn.Module) -> None:
    check = rebuild(original, plan, pruned.state_dict())
    probe = torch.randn(2, *plan.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not outputs.equal(check(probe), pruned(probe)):
            raise RuntimeError(f"round {number}: the composed plan does not rebuild the pruned model")
