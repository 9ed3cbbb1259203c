"""Fitness of a candidate: an accuracy proxy and the latency measured on the target.

Accuracy proxy (EagleEye): a freshly pruned network's BatchNorm statistics belong to the unpruned
network, which makes raw accuracy of candidates almost meaningless. Re-estimating the statistics on a
few hundred training images (train-mode forward, no gradient) and scoring on a held-out split of
TRAIN ranks candidates the way fine-tuning will. The test split is never looked at here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from typing import TYPE_CHECKING

from edgeprune.data import DataBundle, Split
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.stats import LatencyStats
from edgeprune.space import ChannelSpace, Choice, macs_and_params
from edgeprune.training import evaluate

if TYPE_CHECKING:  # these modules import this one
    from edgeprune.search.checkpoint import SearchJournal
    from edgeprune.search.screening import Screen


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


@dataclass
class Candidate:
    """One evaluated network. ``latency`` is a measurement unless ``predicted`` (see below)."""

    choice: Choice
    accuracy: float
    latency: LatencyStats
    macs: int
    params: int
    from_cache: bool = False
    seconds: float = 0.0
    # Not measured: the screen predicted it far over the latency limit. Such candidates steer the
    # GA (as infeasible) but are never a Pareto point, a pick or a reported number.
    predicted: bool = False

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(len(k) for k in self.choice)

    def summary(self, space: ChannelSpace) -> dict:
        return {
            "accuracy": self.accuracy,
            "latency_ms": self.latency.median_ms,
            "macs": self.macs,
            "params": self.params,
            "widths": {g.name: int(w) for g, w in zip(space.groups, self.widths)},
        }


@dataclass
class Evaluator:
    """Scores channel choices; each is evaluated once per run, whatever the search asks.

    Latency belongs to the architecture (the widths) and is cached by it across runs; accuracy
    belongs to the exact channels kept.
    """

    space: ChannelSpace
    data: DataBundle
    profiler: Profiler
    opset: int
    batch: int = 1
    calib_images: int = 512
    calib_batch: int = 128
    seed: int = 0
    results: dict[Choice, Candidate] = field(default_factory=dict)
    evaluations: int = 0
    journal: SearchJournal | None = None
    restored: int = 0
    screen: Screen | None = None

    def __post_init__(self):
        calib: Split = self.data.train.subset(min(self.calib_images, len(self.data.train)), seed=self.seed)
        self._calib = [x for x, _ in calib.batches(self.calib_batch)]
        self.shape = (self.batch, *self.space.input_shape)  # what the target runs: batch included
        self._scores: dict[Choice, tuple[float, int]] = {}
        self._restored: dict[Choice, Candidate] = {}

    def set_reference(self, widths: tuple[int, ...], anchor: LatencyStats | None = None) -> LatencyStats:
        """Time all later candidates next to this architecture (see Profiler.set_reference)."""
        return self.profiler.set_reference(self.space.arch_key(widths), self.shape, self._onnx(widths), anchor=anchor)

    def latency(self, widths: tuple[int, ...], fresh: bool = False) -> LatencyStats:
        """Measured latency of an architecture (the cache answers repeats unless ``fresh``)."""
        stats, _ = self._measure(widths, None, fresh)
        return stats

    def _onnx(self, widths, model=None) -> bytes:
        """ONNX of the architecture (shrunk from the original unless ``model`` is given)."""
        model = model if model is not None else self.space.shrink(self.space.plan(widths))
        return export_onnx_bytes(model, self.shape, self.opset)

    def _measure(self, widths, model, fresh=False):
        onnx = lambda: self._onnx(widths, model)  # noqa: E731 - deferred: a cache hit never exports
        return self.profiler.latency(self.space.arch_key(widths), self.shape, onnx, fresh=fresh)

    def restore(self, candidates: list[Candidate]) -> None:
        """Answer these choices from a checkpoint instead of evaluating them again.

        They are handed out as the replayed search asks for them, in the original order, so
        that the screen learns from them exactly as it did before the interruption."""
        for cand in candidates:
            if cand.choice not in self.results and cand.choice not in self._restored:
                self._restored[cand.choice] = cand
                self.restored += 1

    def known(self) -> list[Candidate]:
        """Every candidate evaluated in this run or restored from its checkpoint: a resumed run
        looks its finished pick up here (the pick may be a widened network the GA never saw)."""
        return [*self.results.values(), *self._restored.values()]

    def score(self, choice: Choice) -> tuple[float, int]:
        """``(accuracy, MACs)`` without a latency measurement, for searches that rank partial
        changes by accuracy and measure only the networks they combine (co-evolution)."""
        choice = tuple(tuple(int(i) for i in idxs) for idxs in choice)
        if choice in self.results:
            return self.results[choice].accuracy, self.results[choice].macs
        if choice not in self._scores:
            model = self.space.shrink(self.space.plan_of(choice))
            recalibrate_bn(model, self._calib)
            self._scores[choice] = (evaluate(model, self.data.holdout), macs_and_params(model, self.space.input_shape)[0])
        return self._scores[choice]

    def evaluate_widths(self, widths) -> Candidate:
        """Evaluate the most important ``widths`` channels of every group."""
        return self.evaluate(self.space.choice(widths))

    def evaluate(self, choice: Choice) -> Candidate:
        choice = tuple(tuple(int(i) for i in idxs) for idxs in choice)
        if choice in self.results:
            return self.results[choice]
        start = time.perf_counter()
        widths = tuple(len(k) for k in choice)
        model = self.space.shrink(self.space.plan_of(choice))
        key = self.space.arch_key(widths)
        nodes = lambda: self.profiler.node_times(key, self.shape, lambda: self._onnx(widths, model))  # noqa: E731

        restored = self._restored.pop(choice, None)
        if restored is not None:
            if self.screen is not None and restored.predicted:
                self.screen.replay_skip()
            elif self.screen is not None:
                self.screen.learn(model, restored.latency.median_ms, nodes)
            self.results[choice] = restored
            return restored

        if self.screen is not None and self.profiler.peek(key, self.shape) is None:
            predicted = self.screen.skip(model)
            if predicted is not None:
                macs, params = macs_and_params(model, self.space.input_shape)
                stats = LatencyStats(0, predicted, predicted, predicted, predicted, 0.0, 0.0)
                return self._keep(Candidate(choice, 0.0, stats, macs, params, False, time.perf_counter() - start, True))

        # Latency first, on an idle CPU: nothing else of ours runs while the profiler times.
        stats, cached = self._measure(widths, model)
        if self.screen is not None:
            self.screen.learn(model, stats.median_ms, nodes)
        recalibrate_bn(model, self._calib)
        accuracy = evaluate(model, self.data.holdout)
        macs, params = macs_and_params(model, self.space.input_shape)
        return self._keep(Candidate(choice, accuracy, stats, macs, params, cached, time.perf_counter() - start))

    def _keep(self, cand: Candidate) -> Candidate:
        self.results[cand.choice] = cand
        self.evaluations += 1
        if self.journal is not None:
            self.journal.record(cand)
        return cand
