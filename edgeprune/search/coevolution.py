"""Cooperative co-evolution (CCEP / CCSRP Algorithm 1): one small EA per channel group.

For every group, a subpopulation of ``d`` channel masks starts from the all-ones mask plus ``d-1``
mutants (bit-flip rate ``p1``, never pruning more than the ratio bound ``r`` of the group's
channels at once); for ``G`` generations, ``d`` parents drawn with replacement produce ``d``
offspring by bit flips at rate ``p2`` under the same bound; each offspring is scored by splicing
its mask into the base network (every other group as in the base); the best ``d`` of parents and
offspring survive. The best mask of each group is combined into the next network.

Two adaptations to a latency budget, both described in docs/how-it-works.md:

* Ranking: the paper ranks by accuracy and breaks ties by FLOPs. With adaptive-BN accuracy on
  thousands of images exact ties are rare, so masks within ``tolerance`` of the subpopulation's
  best accuracy count as tied and the one with fewer MACs wins — otherwise the all-ones mask
  always survives and nothing is pruned.
* Iterations: one pass prunes at most ``r`` of each group, so passes repeat (each from the last
  combined network, without fine-tuning; ``--rounds`` adds fine-tuning between searches) until the
  combined network's *measured* latency meets the budget. Only combined networks are measured
  and they are the search's candidates: per-group scoring needs accuracy and MACs only.

Kept counts are snapped to the target's step grid by importance (dropping the least important
kept channels, or restoring the most important removed ones), rounding stochastically (see snap).
"""

from __future__ import annotations

import time

import numpy as np

from edgeprune.records import P1, RATIO_BOUND, Choice, Group, bounded_bit_flip
from edgeprune.progress import progress_bar
from edgeprune.search.interface import GenerationLog, SearchProblem
from edgeprune.search.nsga import SearchResult, finish, record_generation

# CCSRP's settings (section 4): p1 = 0.05 and r = 0.1 (shared with the robustness objective's
# sub-nets, so they live beside the operator in records.py), p2 = 0.1.
P2 = 0.1
# Masks whose accuracy is within this of the best count as tied (then fewer MACs wins).
TOLERANCE = 0.005
# Passes over all groups before giving up on reaching the budget.
MAX_PASSES = 30


def snap(group: Group, live: np.ndarray, bits: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
    """Channels of ``live`` kept by ``bits``, the count moved onto the step grid by importance
    (drop the least important kept ones, or restore the most important removed ones).

    The count is rounded *stochastically* between the two neighbouring widths, in proportion to
    its distance from each: the ratio bound (10 %) is smaller than half a step for most groups
    (16 of 96 channels), so rounding to the nearest width would undo every mutation.
    """
    count = int(bits.sum())
    below = max((w for w in group.options if w <= count), default=group.options[0])
    above = min((w for w in group.options if w >= count), default=group.options[-1])
    width = below if above == below or rng.random() < (above - count) / (above - below) else above
    rank = {c: i for i, c in enumerate(group.order)}
    kept = sorted(live[bits].tolist(), key=rank.__getitem__)
    removed = sorted(live[~bits].tolist(), key=rank.__getitem__)
    kept = kept[:width] if len(kept) > width else kept + removed[: width - len(kept)]
    return tuple(sorted(int(c) for c in kept))


def run_coevolution(
    problem: SearchProblem,
    population: int,
    generations: int,
    seed: int,
    show_progress: bool = True,
    journal: GenerationLog | None = None,
    p1: float = P1,
    p2: float = P2,
    ratio_bound: float = RATIO_BOUND,
    tolerance: float = TOLERANCE,
    max_passes: int = MAX_PASSES,
) -> SearchResult:
    """Co-evolve group masks pass after pass until the combined network meets the problem's
    latency limit."""
    layout = problem.layout
    rng = np.random.default_rng(seed)
    base: Choice = layout.full_choice()
    start = time.perf_counter()
    history: list[dict] = []
    combined = problem.evaluate(base)
    with progress_bar(show_progress) as bar:
        task = bar.add_task("co-evolution", total=max_passes, status="", every_step=True)  # off a terminal: a line per pass
        for number in range(1, max_passes + 1):
            if combined.latency.median_ms <= problem.limit_ms:
                break
            chosen = []
            for gi, group in enumerate(layout.groups):
                chosen.append(_evolve_group(problem, base, gi, group, population, generations, p1, p2, ratio_bound, tolerance, rng))
                bar.update(task, status=f"pass {number} · group {gi + 1}/{len(layout.groups)}")
            new = tuple(chosen)
            if new == base:
                break  # every group kept its mask: more passes would repeat this one
            base = new
            combined = problem.evaluate(base)
            record_generation(number, problem, start, history, journal)
            bar.update(task, advance=1, status=f"pass {number}: {combined.latency.median_ms:.4f} ms, acc {combined.accuracy:.4f}")
    return finish(problem, history, start)


def _evolve_group(problem: SearchProblem, base, gi, group, d, generations, p1, p2, bound, tolerance, rng) -> tuple[int, ...]:
    """Algorithm 1, lines 7-19, for one group: the best mask of the group's final subpopulation.

    Masks cover the channels the base network still has, so the ratio bound limits what one pass
    removes, and channels removed by earlier passes stay removed.
    """
    live = np.array(base[gi])
    ones = np.ones(len(live), dtype=bool)

    def score(bits: np.ndarray) -> tuple[tuple[int, ...], float, int]:
        kept = snap(group, live, bits, rng)
        accuracy, macs = problem.partial_score(base[:gi] + (kept,) + base[gi + 1 :])
        return kept, accuracy, macs

    def rank(pool):
        top = max(acc for _, _, acc, _ in pool)
        return sorted(pool, key=lambda p: (p[2] < top - tolerance, p[3], -p[2]))

    subpop = [(ones, *score(ones))]
    while len(subpop) < d:
        bits = bounded_bit_flip(ones, p1, bound, rng)
        subpop.append((bits, *score(bits)))
    for _ in range(generations):
        parents = [subpop[i] for i in rng.integers(0, len(subpop), size=d)]
        offspring = []
        for bits, *_ in parents:
            child = bounded_bit_flip(bits, p2, bound, rng)
            offspring.append((child, *score(child)))
        subpop = rank(subpop + offspring)[:d]
    return rank(subpop)[0][1]
