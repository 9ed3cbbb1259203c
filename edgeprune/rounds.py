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

from edgeprune.budget import BudgetPolicy
from edgeprune.errors import UserError
from edgeprune.fitness import Candidate, Evaluator
from edgeprune.progress import console
from edgeprune.search.checkpoint import RunCheckpoint, SearchJournal
from edgeprune.search.coevolution import run_coevolution
from edgeprune.search.nsga import SearchResult, run_nsga2
from edgeprune.select import Recipe, Selection, ratio_seeds, select
from edgeprune.search.screening import Screen
from edgeprune.profiling.surrogate import LatencySurrogate
from edgeprune.space import ChannelPlan, ChannelSpace, apply_plan
from edgeprune.training import evaluate

@dataclass
class Round:
    number: int
    budget_ms: float
    space: ChannelSpace
    evaluator: Evaluator
    result: SearchResult
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
    return ChannelPlan(kept=kept, model_spec=outer.model_spec, input_shape=outer.input_shape)


def rebuild(original: nn.Module, plan: ChannelPlan, state_dict: dict) -> nn.Module:
    model = copy.deepcopy(original)
    apply_plan(model, plan, torch.zeros(1, *plan.input_shape))
    model.load_state_dict(state_dict)
    return model.eval()


def run_rounds(
    cfg,
    original: nn.Module,
    first: Evaluator,
    budgets: list[float],
    policy: BudgetPolicy,
    checkpoint: RunCheckpoint,
    make_encoding,
) -> list[Round]:
    """Every round's search, selection and fine-tune; finished rounds come back from ``checkpoint``."""
    rounds: list[Round] = []
    plan = first.space.plan(first.space.widths_from_indices(first.space.full_indices()))
    model, evaluator = original, first
    for number, budget in enumerate(budgets, 1):
        if number > 1:
            space = ChannelSpace(model, first.space.input_shape, first.space.step, model_spec=first.space.model_spec)
            if not space.groups:
                console.print(f"round {number}: no group is wider than one step any more; stopping after round {number - 1}")
                break
            evaluator = Evaluator(space, first.data, first.profiler, first.opset, batch=first.batch, seed=cfg.seed)
        finished = checkpoint.finished_round(number, first.space)
        if finished is not None and number < len(budgets):
            done = _restored(number, budget, evaluator, None, None, finished, original, plan)
            console.print(f"round {number}: restored from the checkpoint ({done.summary['latency_ms']:.4f} ms)")
        else:
            t = time.perf_counter()
            result, seeded = _search(cfg, number, budgets, evaluator, first, policy, checkpoint, make_encoding)
            if finished is not None:  # the last round finished before the kill: same pick, same weights
                picked = next((c for c in evaluator.known() if list(c.widths) == finished[0]["group_widths_round"]), None)
                if picked is None:
                    raise UserError(
                        f"checkpoint {checkpoint.round_folder(number)}/done.json names a pick the round never evaluated; "
                        f"delete the checkpoint folder {checkpoint.folder} and start again"
                    )
                done = _restored(number, budget, evaluator, result, picked, finished, original, plan)
            else:
                selection = select(
                    evaluator, result.candidates, seeded, budget, policy, Recipe.of(cfg), original,
                    refine_top=cfg.refine_top, refine_epochs=cfg.refine_epochs, widen_passes=cfg.widen_passes, seed=cfg.seed,
                )
                done = _finish(cfg, number, budgets, evaluator, result, seeded, selection, original, plan, time.perf_counter() - t)
                checkpoint.save_round(number, done.summary, done.plan.to_dict(), done.model.state_dict())
        rounds.append(done)
        model, plan = done.model, done.plan
    return rounds


def _restored(number, budget, evaluator, result, picked, finished, original, plan) -> Round:
    summary, plan_dict, state_path = finished
    plan = ChannelPlan(kept=plan_dict["kept"], model_spec=plan.model_spec, input_shape=plan.input_shape)
    model = rebuild(original, plan, torch.load(state_path, map_location="cpu", weights_only=True))
    return Round(number, budget, evaluator.space, evaluator, result, picked, model, plan, summary)


def _search(cfg, number, budgets, evaluator, first, policy, checkpoint, make_encoding) -> tuple[SearchResult, list[Candidate]]:
    """One round's search against the policy's search limit, journaled so a kill can resume it;
    returns the result and the evaluated ratio-profile seeds."""
    budget, space = budgets[number - 1], evaluator.space
    search_budget = policy.search_limit(budget)
    journal = SearchJournal(checkpoint.round_folder(number), space)
    evaluator.journal = journal
    evaluator.restore(journal.candidates())
    journal.generations_path.unlink(missing_ok=True)  # the replay writes them again
    if len(budgets) > 1:
        console.print(f"round {number}/{len(budgets)}: budget {budget:.4f} ms")
    reference_ms = first.profiler.anchor.median_ms if first.profiler.anchor else None
    if cfg.screen and cfg.strategy == "nsga2" and first.profiler.has_node_times:
        evaluator.screen = Screen(LatencySurrogate(evaluator.shape), limit_ms=search_budget)
    seeds = ratio_seeds(evaluator, search_budget)  # NSGA-II starts from them; both short-tune them
    if cfg.strategy == "coevolution":
        result = run_coevolution(
            evaluator, search_budget, cfg.population, cfg.generations, cfg.seed, cfg.progress,
            journal=journal, reference_ms=reference_ms,
        )
    else:
        result = run_nsga2(
            evaluator, search_budget, cfg.population, cfg.generations, cfg.seed, cfg.progress,
            encoding=make_encoding(space), journal=journal, reference_ms=reference_ms,
            seeds=seeds, focus=policy.focus,
        )
    seeded = [evaluator.evaluate_widths(space.widths_from_indices(s)) for s in seeds]  # evaluated already
    return result, seeded


def _finish(cfg, number, budgets, evaluator, result, seeded, selection: Selection, original, plan, search_s: float) -> Round:
    """Fine-tune the pick, compose its plan onto the original model (checked to rebuild it
    exactly) and summarise the round."""
    space, picked = evaluator.space, selection.picked
    round_plan = space.plan_of(picked.choice)
    pruned = space.shrink(round_plan)
    tuned = next((r["holdout_accuracy_short_tune"] for r in selection.short_tune if r.get("picked")), None)
    console.print(
        f"picked {picked.latency.median_ms:.4f} ms, held-out {picked.accuracy:.2%} after BN recalibration"
        + (f", {tuned:.2%} after the short fine-tune" if tuned is not None else "")
        + f"; fine-tuning {cfg.finetune_epochs:g} epoch(s) with distillation from the original"
    )
    t = time.perf_counter()
    finetune = {"epochs": cfg.finetune_epochs, "lr": cfg.lr, "kd_alpha": cfg.kd_alpha, "kd_temperature": cfg.kd_temperature}
    if cfg.finetune_epochs > 0:
        finetune |= Recipe.of(cfg).distill(
            pruned, evaluator.data.train, cfg.finetune_epochs, original, cfg.seed + number - 1,
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
        "holdout_accuracy": evaluate(pruned, evaluator.data.holdout),
        "macs": picked.macs,
        "params": picked.params,
        "group_widths_round": list(picked.widths),
        "evaluations": len(evaluator.results),
        "screen": evaluator.screen.to_dict() if evaluator.screen else None,
        "seeds": [list(c.widths) for c in seeded],
        "short_tune": selection.short_tune,
        "widened": selection.widened,
        "confirmation": selection.confirmation.to_dict(),
        "search_s": search_s,
        "finetune_s": time.perf_counter() - t,
        "finetune": finetune,
        "pareto": [c.summary(space) for c in result.pareto],
    }
    return Round(number, budgets[number - 1], space, evaluator, result, picked, pruned, plan, summary)


def _check_rebuilds(number: int, original: nn.Module, plan: ChannelPlan, pruned: nn.Module) -> None:
    check = rebuild(original, plan, pruned.state_dict())
    probe = torch.randn(2, *plan.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(check(probe), pruned(probe)):
            raise RuntimeError(f"round {number}: the composed plan does not rebuild the pruned model")
