"""Which candidates keep the screen's predicted latency instead of a measurement.

Two kinds, both only while the screen is trusted (:mod:`edgeprune.problem.screening`): a
candidate predicted far over the limit (neither timed nor scored: it enters the GA as
infeasible), and one that enough candidates measured within the limit dominate even at its
optimistic latency (scored, not timed: it can reach neither the Pareto front nor the shortlist).
Neither is ever a Pareto point, a pick or a reported number. A latency the cache already knows is
never left out: it costs nothing.
"""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from edgeprune.profiling.stats import LatencyStats
from edgeprune.records import Candidate, Choice
from edgeprune.space.channels import macs_and_params

# ``problem`` below is the PruningProblem asking, ``pending`` its record of a choice between
# latency and accuracy (not imported: pruning.py imports this module).

def _at(ms: float) -> LatencyStats:
    """A predicted latency, as a candidate carries it (no runs: ``n`` is 0)."""
    return LatencyStats(0, ms, ms, ms, ms, 0.0, 0.0)


def over_limit(problem, choice: Choice, widths, model: nn.Module, start: float) -> Candidate | None:
    """The candidate the screen skips (predicted far over the limit, accuracy not scored), else None."""
    if problem.screen is None or problem.latency.peek(widths) is not None:
        return None
    predicted = problem.screen.skip(model)
    if predicted is None:
        return None
    macs, params = macs_and_params(model, problem.space.input_shape)
    return Candidate(choice, 0.0, _at(predicted), macs, params, False, time.perf_counter() - start, True)


def rivals(problem) -> np.ndarray | None:
    """Objective rows of the candidates measured within the limit so far, when the screen may
    leave dominated candidates unmeasured: while it is trusted, and without a memory limit or
    objective (a candidate's memory is measured with its latency)."""
    screen = problem.screen
    if screen is None or problem.memory is not None or screen.trusted_error() is None:
        return None
    pool = [c for c in problem.results.values() if not c.predicted and c.latency.median_ms <= problem.limit_ms]
    return problem.objectives(pool) if len(pool) >= screen.depth else None


def dominated(problem, choice: Choice, pending, scored: tuple, rows: np.ndarray) -> Candidate | None:
    """The candidate with its predicted latency when at least ``screen.depth`` of ``rows``
    (:func:`rivals`) dominate it at its optimistic latency, else None."""
    screen = problem.screen
    estimate = None if problem.latency.peek(pending.widths) is not None else screen.estimate(pending.model)
    if estimate is None:
        return None
    (predicted, optimistic), (accuracy, scores, seconds) = estimate, scored
    macs, params = macs_and_params(pending.model, problem.space.input_shape)
    row = problem.objectives([Candidate(choice, accuracy, _at(optimistic), macs, params, scores=scores)])[0]
    if int(((rows <= row).all(axis=1) & (rows < row).any(axis=1)).sum()) < screen.depth:
        return None
    screen.skips += 1
    screen.dominated += 1
    return Candidate(choice, accuracy, _at(predicted), macs, params, False, pending.seconds + seconds, True, scores)
