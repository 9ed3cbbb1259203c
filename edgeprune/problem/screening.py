"""Which candidates are worth measuring: the latency surrogate as a screen, never as a result.

A measurement costs an ONNX export, a session and about a second of timed runs; most of a
search's late candidates are mutants of networks that are already too slow. The screen predicts
each uncached candidate's latency from its torch model (:class:`LatencySurrogate`) and skips the
measurement — and the accuracy evaluation — of those predicted clearly over the budget. Such a
candidate enters the GA as infeasible with its *predicted* latency, and is never a Pareto point,
a pick or a number in the report.

"Clearly" is earned, not assumed: the screen first measures ``warmup`` candidates with ORT
per-node times to build the surrogate's table, then keeps predicting every candidate it lets
through and comparing with the measurement. It skips only while the median error of the last
``window`` predictions is at most ``max_error``, and only candidates predicted above
``limit × (1 + 3 × that error)`` — so a surrogate that is off on this model (a different
architecture family, a noisy machine) simply stops screening.

A candidate the screen lets through is measured only where the measurement can change a
decision. Its accuracy is scored first; when at least ``depth`` candidates already measured
within the limit are at least as good (its quality: accuracy, or the mean with the robust
accuracy), it cannot reach the shortlist (the ``depth`` best feasible candidates, ranked by
quality alone), so it too keeps its predicted latency. The GA still ranks it, by its real
accuracy and that prediction; the report's Pareto front is drawn from measured candidates.

A candidate predicted under the search's focus floor even at its *pessimistic* latency (the
prediction plus 3 recent errors) is scored and not timed either: every latency under ``focus ×
limit`` is the same value of the latency objective, so no measurement could move it in the GA.
It is certainly within the limit, so unlike the two kinds above it may be shortlisted, and the
shortlist's fresh re-measure is then its first measurement (``Candidate.floored``).

Where the target gives no per-node times (TensorRT through an agent, a farm, the simulated
device) the surrogate is :class:`~edgeprune.profiling.macs_surrogate.MacsSurrogate`, and the
screen learns once per generation (``immediate=False``): it decides on a whole generation with
what it knew before it, so every measurement of the generation can be in flight at once on a
farm, and the decisions do not depend on which agent answers first.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from torch import nn

from edgeprune.space.layers import layer_descriptors
from edgeprune.profiling.surrogate import LatencySurrogate

WARMUP = 8
WINDOW = 8
MAX_ERROR = 0.10


@dataclass
class Screen:
    surrogate: LatencySurrogate
    warmup: int = WARMUP
    window: int = WINDOW
    max_error: float = MAX_ERROR
    limit_ms: float | None = None  # the round's latency constraint (PruningProblem.limit_ms)
    # Learn from each measurement before deciding on the next candidate (True), or from a whole
    # generation's measurements once it is measured (False: see the module docstring).
    immediate: bool = True
    # A candidate this many measured feasible ones outrank in quality is not measured (the job
    # sets it to the shortlist's size).
    depth: int = 6
    skips: int = 0
    outranked: int = 0  # of ``skips``: let through, scored, and outranked (see the module docstring)
    floored: int = 0  # of ``skips``: scored, predicted under the focus floor (see the module docstring)
    _with_nodes: int = 0

    def __post_init__(self):
        self.errors: deque[float] = deque(maxlen=self.window)  # relative errors of recent predictions

    @property
    def recent_error(self) -> float | None:
        return statistics.median(self.errors) if len(self.errors) >= self.window else None

    def trusted_error(self) -> float | None:
        """The recent median error while it is small enough to act on, else None."""
        error = self.recent_error
        return None if self.limit_ms is None or error is None or error > self.max_error else error

    def threshold_ms(self) -> float | None:
        """Predictions above this are not measured (None: the screen is not trusted right now)."""
        error = self.trusted_error()
        return None if error is None else self.limit_ms * (1 + 3 * error)

    def estimate(self, model: nn.Module) -> float | None:
        """The predicted latency of ``model`` while the screen is trusted, else None."""
        return None if self.trusted_error() is None else self.surrogate.predict(self._layers(model))

    def under(self, model: nn.Module, floor_ms: float) -> float | None:
        """The predicted latency when ``model`` is under ``floor_ms`` even at its pessimistic
        latency (the prediction plus 3 recent errors), else None (also while not trusted)."""
        error = self.trusted_error()
        if error is None:
            return None
        predicted = self.surrogate.predict(self._layers(model))
        if predicted * (1 + 3 * error) > floor_ms:
            return None
        self.skips += 1
        self.floored += 1
        return predicted

    def skip(self, model: nn.Module) -> float | None:
        """The predicted latency when ``model`` need not be measured, else None."""
        threshold = self.threshold_ms()
        if threshold is None:
            return None
        predicted = self.surrogate.predict(self._layers(model))
        if predicted > threshold:
            self.skips += 1
            return predicted
        return None

    def learn(self, model: nn.Module, measured_ms: float, node_times) -> None:
        """After a real measurement: score the prediction, then teach the surrogate.

        ``node_times()`` gives the model's ORT per-node profile (cached like latencies, so a
        resumed or repeated run on the same cache builds the same table); it is only asked for
        during the warm-up."""
        layers = self._layers(model)
        if self._with_nodes >= self.warmup:
            predicted = self.surrogate.predict(layers)
            self.errors.append(abs(predicted - measured_ms) / measured_ms)
            self.surrogate.observe(layers, measured_ms)
        else:
            self.surrogate.observe(layers, measured_ms, node_times() if self.surrogate.needs_node_times else None)
            self._with_nodes += 1

    def _layers(self, model: nn.Module):
        """What the surrogate reads: the model's layer descriptors at the shape it is fitted for."""
        return layer_descriptors(model, self.surrogate.input_shape)

    def replay_skip(self, scored: bool, floored: bool) -> None:
        """A skip of the interrupted run, replayed from its journal (``scored``: an outranked or a
        floored one; ``floored``: predicted under the focus floor)."""
        self.skips += 1
        self.floored += floored
        self.outranked += scored and not floored

    def to_dict(self) -> dict:
        return {
            "skips": self.skips,
            "outranked": self.outranked,
            "floored": self.floored,
            "observed": self.surrogate.observations,
            "recent_median_error": self.recent_error,
        }
