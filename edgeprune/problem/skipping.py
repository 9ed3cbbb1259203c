"""Which candidates keep the screen's predicted latency instead of a measurement.

Three kinds, all only while the screen is trusted (:mod:`edgeprune.problem.screening`): a
candidate predicted far over the limit (neither timed nor scored: it enters the GA as
infeasible); one predicted under the focus floor even at its pessimistic latency (scored, not
timed: its latency objective is the floor whatever it measures; ``floored``, so the shortlist may
take it and re-measure it); and one that at least as many candidates measured or floored within
the limit outrank in quality as the shortlist takes (scored, not timed: the shortlist ranks by
quality alone, so it cannot take this one, whatever its latency). None is ever a Pareto point or
a reported number. A latency the cache already knows is never left out: it costs nothing. The
last two need a problem that measures no memory (a candidate's memory is measured with its
latency).
"""

from __future__ import annotations

import math
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


def before_scoring(problem, choice: Choice, widths, model: nn.Module, start: float, floors: bool) -> tuple[Candidate | None, float | None]:
    """``(the candidate skipped as far over the limit, else None; the predicted latency of one
    under the focus floor, where ``floors`` and it is, else None)``."""
    skipped = over_limit(problem, choice, widths, model, start)
    return skipped, (under_floor(problem, widths, model) if skipped is None and floors else None)


def after_scoring(problem, choice: Choice, pending, scored: tuple, qualities: np.ndarray | None) -> Candidate | None:
    """The untimed candidate for a scored choice that is floored (:func:`before_scoring`) or
    outranked by enough of ``qualities`` (:func:`rivals`; None: none is), else None."""
    if pending.floor is not None:
        return floored(choice, pending, pending.floor, scored, problem.space.input_shape)
    return None if qualities is None else outranked(problem, choice, pending, scored, qualities)


def under_floor(problem, widths, model: nn.Module) -> float | None:
    """The predicted latency of a candidate predicted under the focus floor with a margin (it is
    scored and not timed), else None. Without a finite limit there is no floor."""
    screen = problem.screen
    if screen is None or problem.memory is not None or problem.focus <= 0 or not math.isfinite(problem.limit_ms):
        return None
    if problem.latency.peek(widths) is not None:
        return None
    return screen.under(model, problem.focus * problem.limit_ms)


def _untimed(choice: Choice, pending, predicted: float, scored: tuple, input_shape, floored: bool = False) -> Candidate:
    """A scored candidate left untimed: its accuracy and scores, its predicted latency."""
    accuracy, scores, seconds = scored
    macs, params = macs_and_params(pending.model, input_shape)
    return Candidate(choice, accuracy, _at(predicted), macs, params, False, pending.seconds + seconds, True, scores, floored=floored)


def floored(choice: Choice, pending, predicted: float, scored: tuple, input_shape) -> Candidate:
    """The candidate :func:`under_floor` let go untimed, with its accuracy and its prediction."""
    return _untimed(choice, pending, predicted, scored, input_shape, floored=True)


def rivals(problem) -> np.ndarray | None:
    """The quality of every candidate measured (or floored) within the limit so far, when the
    screen may leave outranked candidates unmeasured: while it is trusted, and without a memory
    limit or objective."""
    screen = problem.screen
    if screen is None or problem.memory is not None or screen.trusted_error() is None:
        return None
    pool = [c for c in problem.results.values() if (c.floored or not c.predicted) and c.latency.median_ms <= problem.limit_ms]
    return np.array([problem.quality(c) for c in pool]) if len(pool) >= screen.depth else None


def outranked(problem, choice: Choice, pending, scored: tuple, qualities: np.ndarray) -> Candidate | None:
    """The candidate with its predicted latency when at least ``screen.depth`` of ``qualities``
    (:func:`rivals`) are at least its quality, else None.

    The shortlist takes the ``depth`` most accurate feasible candidates, by quality alone: one
    that ``depth`` feasible ones already match cannot be among them, whatever it measures. The
    GA still ranks it, by its real accuracy and its predicted latency."""
    screen = problem.screen
    predicted = None if problem.latency.peek(pending.widths) is not None else screen.estimate(pending.model)
    if predicted is None:
        return None
    cand = _untimed(choice, pending, predicted, scored, problem.space.input_shape)
    if int((qualities >= problem.quality(cand)).sum()) < screen.depth:
        return None
    screen.skips += 1
    screen.outranked += 1
    return cand
