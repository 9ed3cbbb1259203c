"""What a search algorithm sees of the pruning problem (pymoo's split: algorithm vs problem).

The algorithms in this package (NSGA-II, co-evolution) and the encodings know a
:class:`~edgeprune.records.GroupLayout` (the groups and their width grids), can ask the problem to
evaluate a choice of channels, and read back each candidate's objectives and constraints as
arrays (the candidate is a ground-floor record, :class:`edgeprune.records.Candidate`, since every
later stage passes it on). How a candidate is scored (a task on held-out data, a profiler on a
device, a surrogate screen, a checkpoint that answers repeats) is
:class:`edgeprune.problem.pruning.PruningProblem`'s business; nothing here imports torch, the
channel space, the profiler or training, which an import-linter contract in pyproject.toml
enforces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from edgeprune.records import Candidate, Choice, GroupLayout


class SearchProblem(Protocol):
    """The problem an algorithm optimises: minimise every column of ``objectives``, subject to
    every column of ``constraints`` being <= 0 (pymoo's convention)."""

    layout: GroupLayout
    limit_ms: float  # the latency constraint; a search stops or ranks against it
    reference_ms: float | None  # the unpruned network's latency, the unit of the hypervolume
    # Names of Candidate.scores that are objectives (higher is better), e.g. ("robustness",): the
    # Pareto front and its hypervolume span them as well as accuracy and latency.
    front_scores: tuple[str, ...]

    @property
    def n_obj(self) -> int: ...

    @property
    def n_constr(self) -> int:
        """How many columns :meth:`constraints` has."""

    def evaluate(self, choice: Choice) -> Candidate:
        """The candidate for ``choice`` (each choice is evaluated once per problem)."""

    def evaluate_batch(self, choices: Sequence[Choice]) -> list[Candidate]:
        """The candidates for ``choices``, in order: a generation at once, so that the problem
        can spread it over devices and workers; the same candidates as one by one."""

    def partial_score(self, choice: Choice) -> tuple[float, int]:
        """``(quality, MACs)`` without a latency measurement, for searches that rank partial
        changes and measure only the networks they combine (co-evolution). Quality is accuracy,
        or the mean of accuracy and robust accuracy where robustness is an objective."""

    def stream(self) -> CandidateStream:
        """Evaluations started one at a time and told back as they complete (the steady-state
        search: :mod:`edgeprune.search.steady`)."""

    def evaluated(self) -> list[Candidate]:
        """Every candidate evaluated so far, in order."""

    def objectives(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """One row per candidate, one minimised column per objective."""

    def constraints(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """One row per candidate, one column per constraint (feasible when <= 0)."""


class CandidateStream(Protocol):
    """Evaluations under way, answered one at a time in the order they complete."""

    @property
    def in_flight(self) -> int:
        """Started and not yet answered by :meth:`next_done`."""

    def start(self, choice: Choice) -> int:
        """Begin evaluating ``choice`` (at most once per search); returns its ticket."""

    def next_done(self) -> tuple[int, Candidate]:
        """``(ticket, candidate)`` of the next evaluation to complete (waits for one)."""

    def settle(self) -> None:
        """A generation's end: whatever learns from completions in batches (the screen) learns now."""


class GenerationLog(Protocol):
    """Where a search records each finished generation (the run's checkpoint journal)."""

    def record_generation(self, entry: dict) -> None: ...
