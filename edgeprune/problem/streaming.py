"""Evaluations of a :class:`~edgeprune.problem.pruning.PruningProblem` started one at a time and
answered in the order they complete: what the steady-state search (:mod:`edgeprune.search.steady`)
sees of the problem.

:meth:`CandidateStream.start` does the host's part at once: shrink, the screen's decision, the
latency measurement started (on a farm it runs on a free agent; on this host it is measured there
and then), memory, and the accuracy after BN recalibration, scored here while the farm measures.
:meth:`CandidateStream.next_done` hands back the next completed candidate and journals it, so the
journal holds candidates in the order the search was told them. Which comes next:

1. a choice the problem already knew (the unpruned model, the ratio seeds): at once, in start
   order, never journaled again;
2. while a resumed run replays, the restored candidates the search has started, in journal order:
   the interrupted run was told them in that order, so the replay is told the same and asks for
   the same candidates; a measurement that was in flight at the kill is started again and waits
   until the replay has caught up;
3. the others in the order they arrived: a farm's measurement when its agent answers (a
   callback on its future), and at once those with nothing to wait for (measured on this host,
   cached, or skipped by the screen).

The screen decides on each candidate when it starts. A screen that learns from every
measurement (``immediate``) learns as each is told; the other (a farm's MACs screen) learns from
the completions of a generation when the search says the generation ended (:meth:`settle`), so
its decisions do not depend on which agent answers first within a generation.
"""

from __future__ import annotations

import itertools
import queue
import time
from dataclasses import dataclass

from torch import nn

from edgeprune.problem import skipping
from edgeprune.records import Candidate, Choice, widths_of
from edgeprune.space.channels import macs_and_params


@dataclass
class _Flight:
    """A started evaluation: ``done`` once its candidate is known (known, restored, skipped),
    else its latency measurement under way and its accuracy."""

    choice: Choice
    widths: tuple[int, ...] = ()
    model: nn.Module | None = None
    done: Candidate | None = None
    fresh: bool = False  # a new evaluation: journaled when told
    latency: object = None  # what LatencySource.start returned
    scored: tuple = ()  # (accuracy, model scores, seconds)
    memory: float | None = None
    seconds: float = 0.0
    journal_index: int | None = None  # restored: its place in the interrupted run's journal
    lesson: bool = True  # the screen learns from it (not from its own skips)


class CandidateStream:
    """The problem's evaluations, started one at a time and told in completion order (see the
    module docstring). Part of ``problem``, a :class:`~edgeprune.problem.pruning.PruningProblem`,
    kept in a module of its own (which that module imports)."""

    def __init__(self, problem):
        self.problem = problem
        self._journal_order = {choice: i for i, choice in enumerate(problem._restored)}
        self._flights: dict[int, _Flight] = {}
        self._known: list[int] = []
        self._replays: dict[int, int] = {}  # ticket: journal index
        self._arrivals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._lessons: list[_Flight] = []
        self._tickets = itertools.count()

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def start(self, choice: Choice) -> int:
        problem, ticket, t0 = self.problem, next(self._tickets), time.perf_counter()
        choice = tuple(tuple(int(i) for i in idxs) for idxs in choice)
        if choice in problem.results:
            self._flights[ticket] = _Flight(choice, done=problem.results[choice])
            self._known.append(ticket)
            return ticket
        widths = widths_of(choice)
        model = problem.space.shrink(problem.space.plan_of(choice))
        restored = problem._restored.pop(choice, None)
        if restored is not None:
            self._flights[ticket] = _Flight(choice, widths, model, done=restored, journal_index=self._journal_order[choice])
            self._replays[ticket] = self._journal_order[choice]
            return ticket
        skipped = skipping.over_limit(problem, choice, widths, model, t0)
        if skipped is not None:
            self._flights[ticket] = _Flight(choice, widths, model, done=skipped, fresh=True, lesson=False)
            self._arrivals.put(ticket)
            return ticket
        self._flights[ticket] = flight = self._launch(choice, widths, model)
        flight.seconds = time.perf_counter() - t0 - flight.scored[2]
        future = getattr(flight.latency, "future", None)
        if future is None:  # measured on this host, or known: nothing to wait for
            self._arrivals.put(ticket)
        else:
            future.add_done_callback(lambda _f, t=ticket: self._arrivals.put(t))
        return ticket

    def _launch(self, choice: Choice, widths: tuple[int, ...], model: nn.Module) -> _Flight:
        """Start the latency measurement, then memory and accuracy here while it runs."""
        problem = self.problem
        latency = problem.latency.start(widths, model)
        # Memory right after, while this candidate's converted bytes are the newest kept.
        memory = problem.memory.measure(widths, model).peak_mb if problem.memory is not None else None
        scored = problem._accuracies([choice], [model])[choice]
        return _Flight(choice, widths, model, fresh=True, latency=latency, scored=scored, memory=memory)

    def next_done(self) -> tuple[int, Candidate]:
        if self._known:
            ticket = self._known.pop(0)
        elif self._replays:
            ticket = min(self._replays, key=self._replays.get)
            del self._replays[ticket]
        else:
            ticket = self._arrivals.get()
        return ticket, self._land(self._flights.pop(ticket))

    def _land(self, flight: _Flight) -> Candidate:
        """The flight's candidate, kept and journaled when new; the screen's lesson taken or noted."""
        problem = self.problem
        if flight.done is not None and not flight.fresh:
            if flight.journal_index is None:
                return flight.done  # known before: neither journaled nor taught again
            problem.results[flight.choice] = flight.done
            cand = flight.done
        elif flight.done is not None:
            cand = problem._keep(flight.done)
        else:
            t0 = time.perf_counter()
            stats, cached = problem.latency.finish(flight.latency)
            accuracy, scores, seconds = flight.scored
            macs, params = macs_and_params(flight.model, problem.space.input_shape)
            took = flight.seconds + seconds + time.perf_counter() - t0
            cand = problem._keep(Candidate(flight.choice, accuracy, stats, macs, params, cached, took, False, scores, flight.memory))
        if flight.lesson and problem.screen is not None:
            if problem.screen.immediate:
                problem._teach_screen(flight.widths, flight.model, cand)
            else:
                self._lessons.append(flight)
        return cand

    def settle(self) -> None:
        lessons, self._lessons = self._lessons, []
        for flight in lessons:
            self.problem._teach_screen(flight.widths, flight.model, self.problem.results[flight.choice])
