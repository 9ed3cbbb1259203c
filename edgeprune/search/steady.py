"""Steady-state (asynchronous) NSGA-II: a new candidate as soon as any evaluation completes.

pymoo's generational NSGA-II asks for a generation and waits for all of it, so at most
``population`` measurements are ever in flight and the slowest of them holds every device: a
farm larger than the population idles. Here up to ``in_flight`` evaluations run at once (a farm's
agents); whenever one completes it joins the population through NSGA-II's own survival on the
population plus the newcomer (constraint domination, then rank and crowding: pymoo's
RankAndCrowding, as in :mod:`edgeprune.search.nsga`), and one child is bred from the survivors
(pymoo's mating: binary tournament, the encoding's crossover and mutation, duplicates
eliminated) and started. The first candidates are the generational search's initial population,
extended with jittered models where more can be in flight than the population holds. A child
already started in this search is bred again, so every start is a new network.

Every ``population`` completions count as a generation: its summary goes to the history and the
journal (:func:`record_generation`: reports, the per-generation log line, ``patience``), and the
problem's screen learns from those completions (:meth:`CandidateStream.settle`): it decides on
each candidate with what it knew at the last generation's end, as the generational search's
screen does on a farm.

Determinism: what is asked for depends on the seed, ``in_flight`` and the order in which the
evaluations complete, which on a farm is the devices' order. The journal records candidates in
the order they completed and were told; a resumed run replays them as completions in that order,
with the first run's ``in_flight`` (the job keeps it in the round's checkpoint), so it asks for
the same candidates up to the kill and goes on from there (see :mod:`edgeprune.problem.streaming`).
On this host, where nothing is asynchronous, ``in_flight`` is 1 and the search is a (μ + 1)
NSGA-II, deterministic for a seed.
"""

from __future__ import annotations

import time

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator as PymooEvaluator
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.problems.static import StaticProblem

from edgeprune.progress import progress_bar
from edgeprune.records import Candidate
from edgeprune.search.encoding import WidthEncoding
from edgeprune.search.interface import GenerationLog, SearchProblem
from edgeprune.search.nsga import SearchResult, Stagnation, finish, record_generation

# Children bred in a row that were all started before: the population has converged onto what
# was tried, and the search waits for the next completion (or ends when none is in flight).
BREED_TRIES = 10


class _Population:
    """pymoo's NSGA-II machinery, one individual at a time: survival on tell, mating on ask."""

    def __init__(self, problem: SearchProblem, encoding, population: int, seed: int):
        self.problem, self.encoding, self.size = problem, encoding, population
        self.pymoo = Problem(n_var=encoding.n_var, n_obj=problem.n_obj, n_ieq_constr=problem.n_constr, xl=0, xu=encoding.upper, vtype=int)
        self.algorithm = NSGA2(pop_size=population, crossover=encoding.crossover(), mutation=encoding.mutation(), eliminate_duplicates=True)
        self.algorithm.setup(self.pymoo, seed=seed, verbose=False)
        self.pop = Population.empty()
        self.started: set[tuple[int, ...]] = set()

    def claim(self, genome) -> bool:
        """Mark ``genome`` started; False when it was already."""
        key = tuple(int(v) for v in np.rint(genome))
        if key in self.started:
            return False
        self.started.add(key)
        return True

    def breed(self):
        """A child of the survivors not started before, or None (too few survivors, or only repeats)."""
        if len(self.pop) < 2:
            return None
        algorithm = self.algorithm
        for _ in range(BREED_TRIES):
            child = algorithm.mating.do(self.pymoo, self.pop, 1, algorithm=algorithm, random_state=algorithm.random_state)
            if len(child) and self.claim(child.get("X")[0]):
                return child.get("X")[0]
        return None

    def tell(self, genome, cand: Candidate) -> None:
        """The completed ``cand`` joins the population by NSGA-II survival (constraint domination,
        rank, crowding), which keeps ``population`` of them."""
        newcomer = Population.new(X=np.array([genome], dtype=float))
        F, G = self.problem.objectives([cand]), self.problem.constraints([cand])
        PymooEvaluator().eval(StaticProblem(self.pymoo, F=F, G=G), newcomer)
        merged = Population.merge(self.pop, newcomer)
        self.pop = self.algorithm.survival.do(self.pymoo, merged, n_survive=self.size, algorithm=self.algorithm, random_state=self.algorithm.random_state)


def run_steady_state(
    problem: SearchProblem,
    population: int,
    generations: int,
    seed: int,
    in_flight: int = 1,
    show_progress: bool = True,
    encoding=None,
    journal: GenerationLog | None = None,
    seeds: list[list[int]] | None = None,
    patience: int = 0,
) -> SearchResult:
    """Evaluate ``population * generations`` candidates, up to ``in_flight`` at once, breeding
    each new one from the population as it stands when an evaluation completes (see the module
    docstring). ``seeds`` and ``patience`` as :func:`edgeprune.search.nsga.run_nsga2`'s."""
    encoding = encoding or WidthEncoding(problem.layout)
    in_flight = max(1, in_flight)
    rng = np.random.default_rng(seed)
    initial = list(encoding.initial(max(population, in_flight), rng, seeds=seeds or ()))
    breeder = _Population(problem, encoding, population, seed)
    stream = problem.stream()
    budget, told, genomes = population * generations, 0, {}
    start, history, stagnation, stopped = time.perf_counter(), [], Stagnation(patience), None
    with progress_bar(show_progress) as bar:
        task = bar.add_task("search", total=generations, status="", every_step=True)  # off a terminal: a line per generation
        while True:
            while stopped is None and told + stream.in_flight < budget and stream.in_flight < in_flight:
                genome = _next_genome(initial, breeder)
                if genome is None:
                    break
                genomes[stream.start(encoding.decode(genome))] = genome
            if stream.in_flight == 0:
                break
            ticket, cand = stream.next_done()
            breeder.tell(genomes.pop(ticket), cand)
            told += 1
            if told % population == 0:
                entry = _generation(told // population, problem, stream, start, history, journal)
                bar.update(task, advance=1, status=_status(entry, generations, stream.in_flight))
                if stagnation.settled(entry):
                    stopped = f"front unchanged for {patience} generations: stopped after {told // population}"
        if told % population:  # the space ran out, or patience stopped it, between generation ends
            _generation(told // population + 1, problem, stream, start, history, journal)
        bar.update(task, completed=generations, status=stopped or (f"space exhausted after {told} evaluations" if told < budget else ""))
    return finish(problem, history, start)


def _next_genome(initial: list, breeder: _Population):
    """The next initial model not started yet, else a child of the population (None: none now)."""
    while initial:
        genome = initial.pop(0)
        if breeder.claim(genome):
            return genome
    return breeder.breed()


def _generation(number: int, problem: SearchProblem, stream, start: float, history: list, journal: GenerationLog | None) -> dict:
    stream.settle()  # the screen learns from this generation's completions
    return record_generation(number, problem, start, history, journal)


def _status(entry: dict, generations: int, in_flight: int) -> str:
    best = (
        f"best feasible acc {entry['best_accuracy']:.4f} @ {entry['best_latency_ms']:.4f} ms"
        if entry["best_accuracy"] is not None
        else "no feasible yet"
    )
    return f"gen {entry['generation']}/{generations} · {entry['evaluations']} evals · {in_flight} in flight · {best}"
