"""NSGA-II over channel choices: the problem's objectives (accuracy, latency, ...) under its
latency constraint.

pymoo supplies the algorithm (constraint domination, crowding, elitism, duplicate elimination);
this module only runs it in ask-and-tell form so that each generation shows progress and every
genome goes through the problem (:class:`~edgeprune.search.interface.SearchProblem`), which
evaluates each choice once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator as PymooEvaluator
from pymoo.core.problem import Problem
from pymoo.indicators.hv import HV
from pymoo.problems.static import StaticProblem
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from edgeprune.progress import progress_bar
from edgeprune.records import Candidate
from edgeprune.search.encoding import WidthEncoding
from edgeprune.search.interface import GenerationLog, SearchProblem


@dataclass
class SearchResult:
    candidates: list[Candidate]
    pareto: list[Candidate]
    history: list[dict] = field(default_factory=list)
    generations: int = 0
    wall_s: float = 0.0


def pareto_front(candidates: list[Candidate], budget_ms: float | None = None, scores: tuple[str, ...] = ()) -> list[Candidate]:
    """Non-dominated (accuracy and each of ``scores`` up, latency down) candidates within the
    budget, fastest first."""
    pool = [c for c in candidates if not c.predicted and (budget_ms is None or c.latency.median_ms <= budget_ms)]
    if not pool:
        return []
    objectives = np.array([[-c.accuracy, c.latency.median_ms, *(-c.scores.get(n, 0.0) for n in scores)] for c in pool])
    front = NonDominatedSorting().do(objectives, only_non_dominated_front=True)
    return sorted((pool[i] for i in front), key=lambda c: c.latency.median_ms)


def best_feasible(candidates: list[Candidate], budget_ms: float) -> Candidate | None:
    feasible = [c for c in candidates if not c.predicted and c.latency.median_ms <= budget_ms]
    return max(feasible, key=lambda c: (c.accuracy, -c.latency.median_ms), default=None)


def within_memory(candidates: list[Candidate], problem: SearchProblem) -> list[Candidate]:
    """The candidates within the problem's memory limit (all, without one): the best feasible
    and the reported front respect both budgets, as the pick does (PruningProblem.fits_memory)."""
    fits = getattr(problem, "fits_memory", None)
    return list(candidates) if fits is None else [c for c in candidates if fits(c)]


def hypervolume(candidates: list[Candidate], reference_ms: float, scores: tuple[str, ...] = ()) -> float:
    """Volume dominated by the candidates in (error, latency / reference, 1 - score...) space,
    reference point (1, 1.1, 1.1...).

    Normalising latency by the unpruned model's makes the number comparable across runs and
    targets; 1.1 leaves the unpruned model itself a sliver of volume, and a candidate with a
    score of 0 (no robust accuracy left) still counts through its other objectives.
    """
    if not candidates:
        return 0.0
    ref = np.array([1.0, 1.1, *(1.1 for _ in scores)])
    points = np.array([[1.0 - c.accuracy, c.latency.median_ms / reference_ms, *(1.0 - c.scores.get(n, 0.0) for n in scores)] for c in candidates])
    points = points[(points < ref).all(axis=1)]
    if not len(points):
        return 0.0
    return float(HV(ref_point=ref)(points))


def run_nsga2(
    problem: SearchProblem,
    population: int,
    generations: int,
    seed: int,
    show_progress: bool = True,
    encoding=None,
    journal: GenerationLog | None = None,
    seeds: list[list[int]] | None = None,
    patience: int = 0,
) -> SearchResult:
    """Search ``generations`` generations; with a ``journal``, record each one (see checkpoint.py).

    ``seeds`` (width indices) join the first population. With ``patience`` > 0 the search stops
    early once that many generations in a row improved neither the best feasible accuracy nor
    the hypervolume (:class:`Stagnation`): on a machine where an evaluation costs seconds, the
    generations after the front has settled are the most expensive part of a run that changes
    nothing. The stop depends only on the history, so a resumed run stops at the same point.
    """
    encoding = encoding or WidthEncoding(problem.layout)
    pymoo_problem = Problem(n_var=encoding.n_var, n_obj=problem.n_obj, n_ieq_constr=problem.n_constr, xl=0, xu=encoding.upper, vtype=int)
    rng = np.random.default_rng(seed)
    algorithm = NSGA2(
        pop_size=population,
        sampling=encoding.initial(population, rng, seeds=seeds or ()),
        crossover=encoding.crossover(),
        mutation=encoding.mutation(),
        eliminate_duplicates=True,
    )
    algorithm.setup(pymoo_problem, termination=("n_gen", generations), seed=seed, verbose=False)
    start = time.perf_counter()
    history = []
    stagnation = Stagnation(patience)
    with progress_bar(show_progress) as bar:
        task = bar.add_task("search", total=generations, status="", every_step=True)  # off a terminal: a line per generation
        for gen in range(generations):
            pop = algorithm.ask()
            if pop is None or len(pop) == 0:
                # Every reachable genome was already evaluated (small spaces, late rounds).
                bar.update(task, completed=generations, status=f"space exhausted after {gen} generations")
                break
            cands = problem.evaluate_batch([encoding.decode(x) for x in pop.get("X")])
            F, G = problem.objectives(cands), problem.constraints(cands)
            PymooEvaluator().eval(StaticProblem(pymoo_problem, F=F, G=G), pop)
            algorithm.tell(infills=pop)
            entry = record_generation(gen + 1, problem, start, history, journal)
            status = (
                f"best feasible acc {entry['best_accuracy']:.4f} @ {entry['best_latency_ms']:.4f} ms"
                if entry["best_accuracy"] is not None
                else "no feasible yet"
            )
            bar.update(task, advance=1, status=f"gen {gen + 1}/{generations} · {entry['evaluations']} evals · {status}")
            if stagnation.settled(entry):
                bar.update(task, completed=generations, status=f"front unchanged for {patience} generations: stopped after {gen + 1}")
                break
    return finish(problem, history, start)


class Stagnation:
    """Whether the last ``patience`` generations improved neither the best feasible accuracy nor
    the hypervolume (relative gains under ``tolerance`` count as none); never with patience 0."""

    def __init__(self, patience: int, tolerance: float = 1e-4):
        self.patience, self.tolerance = patience, tolerance
        self.best: tuple[float, float] | None = None
        self.idle = 0

    def settled(self, entry: dict) -> bool:
        now = (entry["best_accuracy"] if entry["best_accuracy"] is not None else -1.0, entry["hypervolume"])
        better = self.best is None or any(n > b + self.tolerance * max(abs(b), 1e-12) for n, b in zip(now, self.best))
        self.best = now if self.best is None else tuple(max(n, b) for n, b in zip(now, self.best))
        self.idle = 0 if better else self.idle + 1
        return self.patience > 0 and self.idle >= self.patience


def record_generation(number: int, problem: SearchProblem, start: float, history: list, journal: GenerationLog | None) -> dict:
    """One generation's summary (best feasible, Pareto front, hypervolume) into ``history`` and the
    journal; shared by every strategy so that reports read the same. The hypervolume's latency
    unit is the problem's ``reference_ms`` (the unpruned model's), else the slowest seen."""
    seen = problem.evaluated()
    best = best_feasible(within_memory(seen, problem), problem.limit_ms)
    scores = getattr(problem, "front_scores", ())
    front = pareto_front(seen, scores=scores)
    entry = {
        "generation": number,
        "evaluations": len(seen),
        "best_accuracy": best.accuracy if best else None,
        "best_latency_ms": best.latency.median_ms if best else None,
        "hypervolume": hypervolume(front, problem.reference_ms or max(c.latency.median_ms for c in seen), scores),
        "pareto": [{"accuracy": c.accuracy, "latency_ms": c.latency.median_ms, "macs": c.macs, **({"scores": dict(c.scores)} if c.scores else {})} for c in front],
        "wall_s": time.perf_counter() - start,
    }
    history.append(entry)
    if journal is not None:
        journal.record_generation(entry)
    return entry


def finish(problem: SearchProblem, history: list[dict], start: float) -> SearchResult:
    candidates = problem.evaluated()
    return SearchResult(
        candidates=candidates,
        pareto=pareto_front(within_memory(candidates, problem), problem.limit_ms, getattr(problem, "front_scores", ())),
        history=history,
        generations=len(history),
        wall_s=time.perf_counter() - start,
    )
