"""The pruning problem: channel choices → objectives and a latency constraint (pymoo's split).

:class:`PruningProblem` owns the channel space, the task (accuracy), the latency source and the
round's latency limit, and exposes to the searches only what :class:`edgeprune.search.interface.
SearchProblem` declares: evaluate a choice, and the candidates' objectives ``F`` and constraints
``G``. New objectives are plug-ins (:data:`OBJECTIVES` and :class:`ModelScore`), never edits of
an algorithm.

Accuracy proxy (EagleEye): a freshly pruned network's BatchNorm statistics belong to the unpruned
network, which makes raw accuracy of candidates almost meaningless. Re-estimating the statistics on
a few hundred training images (train-mode forward, no gradient) and scoring on a held-out split of
TRAIN ranks candidates the way fine-tuning will. The test split is never looked at here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from edgeprune.records import Candidate, Choice, widths_of
from edgeprune.problem.latency import LatencySource
from edgeprune.profiling.stats import LatencyStats
from edgeprune.problem import skipping
from edgeprune.problem.screening import Screen
from edgeprune.problem.streaming import CandidateStream
from edgeprune.space.channels import ChannelSpace, macs_and_params
from edgeprune.tasks.task import Task


def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Adaptive-BN: replace running statistics by a cumulative average over ``batches``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return model.eval()


def scores_of(model: nn.Module, task: Task, model_scores: Sequence[ModelScore]) -> dict[str, float]:
    """``{"accuracy": ..., score name: ...}`` of a network as it is now: what a candidate, a
    short-tuned network or a Ray task reports, computed the same way wherever it runs."""
    return {"accuracy": task.score(model)} | {s.name: float(s.measure(model)) for s in model_scores}


class ModelScore(Protocol):
    """A further objective measured on each candidate network (higher is better), e.g. robust
    accuracy; its value lands in ``Candidate.scores[name]`` and becomes a column of ``F``."""

    name: str

    def measure(self, model: nn.Module) -> float: ...


class Workers(Protocol):
    """Where candidates' accuracy is scored besides this process (:mod:`edgeprune.problem.workers`)."""

    def score(self, space: ChannelSpace, task: Task, model_scores: Sequence[ModelScore], plans: list) -> list[tuple[float, dict[str, float], float]]:
        """``(accuracy, model scores, seconds)`` of each plan's shrunk network after adaptive BN,
        exactly as this process would score it."""

    def short_tune(self, space: ChannelSpace, task: Task, model_scores: Sequence[ModelScore], teacher: nn.Module, plans: list, epochs: float, seed: int) -> list[dict[str, float]]:
        """Accuracy and model scores of each plan's network after ``epochs`` of the task's fine-tune."""


class MemorySource(Protocol):
    """Peak memory of an architecture in the target's runtime (:mod:`edgeprune.problem.memory`)."""

    def measure(self, widths: tuple[int, ...], model: nn.Module | None = None): ...


class CandidateLog(Protocol):
    """Where each evaluated candidate is recorded as it completes (the checkpoint journal)."""

    def record(self, cand: Candidate) -> None: ...


# The built-in objectives, each a minimised column of F. Latency is floored at ``focus`` of the
# limit (see PruningProblem); MACs stand in for energy and memory traffic where those matter.
OBJECTIVES: dict[str, Callable[[Candidate, "PruningProblem"], float]] = {
    "accuracy": lambda c, p: -c.accuracy,
    "latency": lambda c, p: max(c.latency.median_ms, p.focus * p.limit_ms),
    "macs": lambda c, p: float(c.macs),
    # Accuracy on the round's shared adversarial set (edgeprune.problem.robustness); needs that ModelScore.
    "robustness": lambda c, p: -c.scores.get("robustness", 0.0),
    # Peak memory of one inference in the target's runtime (edgeprune.problem.memory); needs the
    # problem's memory source. A screened candidate was never measured: 0, and infeasible anyway.
    "memory": lambda c, p: c.memory_mb or 0.0,
}
# The objectives that say how good a network is; the pick ranks by their mean (CCSRP ranks by
# (ACC + ACCr) / 2), latency and MACs only decide between equals.
QUALITY = ("accuracy", "robustness")
DEFAULT_OBJECTIVES = ("accuracy", "latency")
_BUILT_IN = ("accuracy", "latency", "macs", "memory")


@dataclass
class PruningProblem:
    """Scores channel choices of ``space``; each is evaluated once, whatever the search asks.

    ``limit_ms`` is the constraint (latency <= limit); ``focus`` (a fraction of the limit) makes
    latencies below ``focus * limit`` count as equal in the latency objective: the job picks ONE
    network at the budget, and a front spread down to tiny models spends most evaluations where
    no pick will come from (the report's fronts use the real latencies). ``known`` candidates
    (evaluated by the job before this problem, e.g. the baseline) answer repeats without being
    journaled; ``restored`` ones (from the journal of an interrupted run) are handed out as the
    replayed search asks for them, in the original order, so that the screen learns from them
    exactly as it did before the interruption.
    """

    space: ChannelSpace
    task: Task
    latency: LatencySource
    limit_ms: float = math.inf
    focus: float = 0.0
    reference_ms: float | None = None
    objective_names: tuple[str, ...] = DEFAULT_OBJECTIVES
    model_scores: tuple[ModelScore, ...] = ()
    journal: CandidateLog | None = None
    screen: Screen | None = None
    known: Iterable[Candidate] = ()
    restored: Iterable[Candidate] = ()
    workers: Workers | None = None
    # Peak memory per candidate (edgeprune.problem.memory.ProfiledMemory): measured when memory
    # is an objective or ``max_memory_mb`` a constraint, else None.
    memory: MemorySource | None = None
    max_memory_mb: float = math.inf

    def __post_init__(self):
        self.results: dict[Choice, Candidate] = {c.choice: c for c in self.known}
        self._restored = {c.choice: c for c in self.restored if c.choice not in self.results}
        self.restored_count = len(self._restored)
        self.evaluations = 0
        self._scores: dict[Choice, tuple[float, int]] = {}
        self._columns = [OBJECTIVES[n] for n in self.objective_names]
        # A screened candidate was never scored: 0, like its accuracy (it is infeasible anyway).
        self._columns += [(lambda c, p, name=s.name: -c.scores.get(name, 0.0)) for s in self.model_scores if s.name not in self.objective_names]
        missing = [n for n in self.objective_names if n not in _BUILT_IN and n not in {s.name for s in self.model_scores}]
        if missing:
            raise ValueError(f"objectives {missing} need a model score of that name")
        if self.memory is None and ("memory" in self.objective_names or math.isfinite(self.max_memory_mb)):
            raise ValueError("the memory objective and max_memory_mb need a memory source")
        self.quality_names = tuple(n for n in QUALITY if n in self.objective_names) or ("accuracy",)

    # --- what a search sees (SearchProblem) ---------------------------------------------------

    @property
    def layout(self) -> ChannelSpace:
        """The space's groups and width grids (a ChannelSpace is a GroupLayout)."""
        return self.space

    @property
    def n_obj(self) -> int:
        return len(self._columns)

    @property
    def n_constr(self) -> int:
        return 2 if math.isfinite(self.max_memory_mb) else 1

    def objectives(self, candidates: Sequence[Candidate]) -> np.ndarray:
        return np.array([[column(c, self) for column in self._columns] for c in candidates], dtype=float)

    def constraints(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """``G <= 0`` is feasible: latency within the limit, and peak memory within
        ``max_memory_mb`` when that is set."""
        rows = [[c.latency.median_ms - self.limit_ms] for c in candidates]
        if math.isfinite(self.max_memory_mb):
            rows = [[*row, (c.memory_mb or 0.0) - self.max_memory_mb] for row, c in zip(rows, candidates)]
        return np.array(rows, dtype=float)

    def fits_memory(self, cand: Candidate) -> bool:
        """Whether ``cand`` is within ``max_memory_mb`` (always, without that limit)."""
        return cand.memory_mb is None or cand.memory_mb <= self.max_memory_mb

    def widths_fit_memory(self, widths: tuple[int, ...]) -> bool:
        """Whether the architecture ``widths`` is within ``max_memory_mb``, measured if need be
        (widening asks this of networks the search never evaluated)."""
        return not math.isfinite(self.max_memory_mb) or self.memory.measure(tuple(widths)).peak_mb <= self.max_memory_mb

    @property
    def front_scores(self) -> tuple[str, ...]:
        """The model scores that are objectives: the Pareto front is non-dominated in them too."""
        return tuple(n for n in self.objective_names if n not in _BUILT_IN)

    def quality(self, cand: Candidate) -> float:
        """How good a candidate is: the mean of its accuracy and robust accuracy where robustness
        is an objective (CCSRP's (ACC + ACCr) / 2), else its accuracy."""
        values = [cand.accuracy if n == "accuracy" else cand.scores.get(n, 0.0) for n in self.quality_names]
        return sum(values) / len(values)

    def model_quality(self, model: nn.Module) -> dict[str, float]:
        """A network's accuracy and every model score, measured now (after a short tune), with
        ``quality`` their mean as :meth:`quality` takes it."""
        return self.with_quality(scores_of(model, self.task, self.model_scores))

    def with_quality(self, values: dict[str, float]) -> dict[str, float]:
        """A network's accuracy and model scores, plus ``quality`` (see :meth:`quality`)."""
        return values | {"quality": sum(values[n] for n in self.quality_names) / len(self.quality_names)}

    def evaluated(self) -> list[Candidate]:
        return list(self.results.values())

    def partial_score(self, choice: Choice) -> tuple[float, int]:
        choice = _normal(choice)
        known = self.results.get(choice)
        if known is not None and not known.predicted:
            return self.quality(known), known.macs
        if choice not in self._scores:
            model = self._calibrated(self.space.shrink(self.space.plan_of(choice)))
            quality = self.model_quality(model)["quality"] if self.front_scores else self.task.score(model)
            self._scores[choice] = (quality, macs_and_params(model, self.space.input_shape)[0])
        return self._scores[choice]

    def evaluate(self, choice: Choice) -> Candidate:
        """The candidate for ``choice`` (see :meth:`evaluate_batch`)."""
        return self.evaluate_batch([choice])[0]

    def stream(self):
        """Evaluations started one at a time and told as they complete, for the steady-state
        search (:class:`edgeprune.problem.streaming.CandidateStream`)."""
        return CandidateStream(self)

    def evaluate_batch(self, choices: Sequence[Choice], dominance: bool = True) -> list[Candidate]:
        """The candidates for ``choices``, in order; each choice is evaluated once.

        Latency first, for every choice: on this host's CPU it is measured there and then (on
        an idle CPU: nothing else of ours runs while the profiler times); on a farm of agents
        every measurement is started at once and answered while accuracy is scored here. Then
        accuracy after BN recalibration, here or on the problem's ``workers`` (Ray). While the
        screen is trusted some candidates are not timed (:mod:`~edgeprune.problem.skipping`;
        with ``dominance`` off only those predicted far over the limit). Candidates are journaled
        in the order given, so the result is the same whichever way the work was spread."""
        order = [_normal(c) for c in choices]
        fresh: dict[Choice, _Pending] = {}
        later = self.screen is not None and not self.screen.immediate
        lessons: list[tuple] = []  # (widths, model, candidate) a generation-wise screen learns from at the end
        rivals = skipping.rivals(self) if dominance else None
        for choice in order:
            if choice in self.results or choice in fresh:
                continue
            start = time.perf_counter()
            widths = widths_of(choice)
            model = self.space.shrink(self.space.plan_of(choice))
            restored = self._restored.pop(choice, None)
            if restored is not None:
                if later:
                    lessons.append((widths, model, restored))
                else:
                    self._teach_screen(widths, model, restored)
                self.results[choice] = restored
                continue
            skipped, floor = skipping.before_scoring(self, choice, widths, model, start, dominance)
            pending = _Pending(widths, model, None, skipped, 0.0, floor=floor)
            if skipped is None and floor is None and rivals is None:
                self._start(pending, later)
            pending.seconds = time.perf_counter() - start
            fresh[choice] = pending
        scored = [c for c, p in fresh.items() if p.skipped is None]
        accuracies = self._accuracies(scored, [fresh[c].model for c in scored])
        for choice in (c for c in scored if fresh[c].floor is not None or rivals is not None):
            pending, start = fresh[choice], time.perf_counter()
            pending.skipped = skipping.after_scoring(self, choice, pending, accuracies[choice], rivals)
            if pending.skipped is None:
                self._start(pending, later)
            pending.seconds += time.perf_counter() - start
        for choice, pending in fresh.items():
            if pending.skipped is not None:
                self._keep(pending.skipped)
                continue
            start = time.perf_counter()
            stats, cached = self.latency.finish(pending.latency)
            (accuracy, scores, seconds) = accuracies[choice]
            macs, params = macs_and_params(pending.model, self.space.input_shape)
            took = pending.seconds + seconds + time.perf_counter() - start
            cand = self._keep(Candidate(choice, accuracy, stats, macs, params, cached, took, False, scores, pending.memory))
            if later:
                lessons.append((pending.widths, pending.model, cand))
        for widths, model, cand in lessons:
            self._teach_screen(widths, model, cand)
        return [self.results[c] for c in order]

    def _start(self, pending: _Pending, later: bool) -> None:
        """Begin measuring a candidate's latency (an immediate screen learns from it at once),
        then its memory, while its converted bytes are the newest the latency source keeps."""
        widths, model = pending.widths, pending.model
        pending.latency = self.latency.start(widths, model)
        if self.screen is not None and not later:
            # This screen learns from each measurement before deciding on the next choice.
            stats = self.latency.finish(pending.latency)[0]
            self.screen.learn(model, stats.median_ms, lambda: self.latency.node_times(widths, model))
        if self.memory is not None:
            pending.memory = self.memory.measure(widths, model).peak_mb

    def _accuracies(self, choices: list[Choice], models: list[nn.Module]) -> dict[Choice, tuple[float, dict[str, float], float]]:
        """``{choice: (accuracy, model scores, seconds)}`` after BN recalibration."""
        if self.workers is not None and choices:
            answers = self.workers.score(self.space, self.task, self.model_scores, [self.space.plan_of(c) for c in choices])
            return dict(zip(choices, answers))
        out = {}
        for choice, model in zip(choices, models):
            start = time.perf_counter()
            scores = scores_of(self._calibrated(model), self.task, self.model_scores)
            out[choice] = (scores.pop("accuracy"), scores, time.perf_counter() - start)
        return out

    # --- what the job and the selection stage use -----------------------------------------------

    def evaluate_widths(self, widths) -> Candidate:
        """Evaluate the most important ``widths`` channels of every group, timed even where
        measured candidates outrank it: the seeds' bisection and the job need its latency."""
        return self.evaluate_batch([self.space.choice(widths)], dominance=False)[0]

    def latency_of(self, widths: tuple[int, ...], fresh: bool = False) -> LatencyStats:
        """Measured latency of an architecture (the cache answers repeats unless ``fresh``)."""
        return self.latency.measure(tuple(widths), None, fresh)[0]

    def fresh_sessions(self, widths: tuple[int, ...], count: int) -> list[LatencyStats]:
        """``count`` fresh sessions of an architecture, in the order started: one after the
        other on this host, several at once on a farm of agents."""
        started = [self.latency.start(tuple(widths), None, True) for _ in range(count)]
        return [self.latency.finish(p)[0] for p in started]

    def known_candidates(self) -> list[Candidate]:
        """Every candidate evaluated in this run or restored from its checkpoint: a resumed run
        looks its finished pick up here (the pick may be a widened network the GA never saw)."""
        return [*self.results.values(), *self._restored.values()]

    def _calibrated(self, model: nn.Module) -> nn.Module:
        return recalibrate_bn(model, self.task.calibration_batches())

    def _teach_screen(self, widths, model, restored: Candidate) -> None:
        if self.screen is not None and restored.predicted:
            self.screen.replay_skip(restored.accuracy > 0 or bool(restored.scores), restored.floored)
        elif self.screen is not None:
            self.screen.learn(model, restored.latency.median_ms, lambda: self.latency.node_times(widths, model))

    def _keep(self, cand: Candidate) -> Candidate:
        self.results[cand.choice] = cand
        self.evaluations += 1
        if self.journal is not None:
            self.journal.record(cand)
        return cand


@dataclass
class _Pending:
    """A choice of :meth:`PruningProblem.evaluate_batch` between its latency and its accuracy."""

    widths: tuple[int, ...]
    model: nn.Module
    latency: object  # what LatencySource.start returned; None when skipped
    skipped: Candidate | None
    seconds: float
    memory: float | None = None  # peak MiB, where the problem measures memory
    floor: float | None = None  # the predicted latency, where it is under the focus floor (not timed)


def _normal(choice) -> Choice:
    return tuple(tuple(int(i) for i in idxs) for idxs in choice)
