"""Latency surrogate: predicts a pruned candidate's measured latency from per-layer timings.

Why: a measurement costs an export, a session and about a second of timed runs; the search only
needs that for candidates that may end up on the Pareto front. The surrogate decides which ones
are worth it, and is never reported as a latency (DESIGN.md: "latency is measured, not estimated").

How (each step chosen from what ONNX Runtime does; :func:`edgeprune.jobs.surrogate_check.validate_surrogate`
is the check):

* ORT fuses Conv+BN+ReLU/Clip (and residual adds) into one node, so a *layer* here is a Conv or
  Linear together with every node that runs after it until the next Conv/Linear (pools, reorders,
  unfused adds). ORT's per-node trace carries input/output shapes, so nodes are matched to the
  layers by shape signature, not by their names (fused nodes are named after whatever op
  came last).
* Node times are taken with ORT's profiler on, which adds its own per-node overhead and runs at
  whatever speed the CPU has at that minute. Each observed candidate's node times are therefore
  rescaled by ``measured_ms / profiled run time``: they become that node's share of the latency
  the search measured (drift-corrected against the reference), in the same units.
* The table key is (layer position, shape signature). The position fixes what ORT fused into the
  node and what runs after it (a residual add, a pool), which the shape alone does not; within a
  position, widths the table has not seen are interpolated by least squares in the channel counts
  (time ~ a + b*cin*cout + c*cin + d*cout for dense convs, ~ a + b*c for depthwise ones): with
  widths on the profile's channel step, MLAS's staircase is sampled at its steps and is close to
  linear there. Positions never observed fall back to the same shape elsewhere, then to every
  layer of the same kernel/stride/spatial family.
* The sum of layer times misses the executor's fixed overhead, so ``predict = a * sum + b`` with
  (a, b) fitted by least squares on all observed candidates.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from edgeprune.profiling.stats import NodeTime, NodeTimes

_TIMED_KINDS = ("conv", "linear")


@dataclass(frozen=True)
class Layer:
    """What decides a layer's cost: its kind, channels, kernel, stride, groups and spatial size.

    Plain data, so the surrogate needs no torch: :func:`edgeprune.space.layers.layer_descriptors` takes
    them from a model."""

    name: str  # module path in the torch model: the layer's position
    kind: str  # conv | linear | bn | pool
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def signature(self) -> tuple:
        return (self.kind, self.cin, self.cout, self.kernel, self.stride, self.groups, self.in_hw, self.out_hw)

    @property
    def family(self) -> tuple:
        """Layers whose time is one smooth function of the channel counts."""
        return (self.kind, self.kernel, self.stride, self.depthwise, self.in_hw, self.out_hw)

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.cin

    def features(self) -> list[float]:
        """Regressors of the layer's time at one position (see the module docstring)."""
        if self.depthwise:
            return [1.0, float(self.cin)]
        return [1.0, float(self.cin * self.cout // self.groups), float(self.cin), float(self.cout)]

    def macs(self) -> float:
        h, w = self.out_hw
        return float(self.cin // self.groups * self.cout * self.kernel[0] * self.kernel[1] * h * w)


def assign_nodes(layers: Sequence[Layer], node_times: NodeTimes, use_mean: bool = True) -> dict[int, float]:
    """Time (ms, as profiled) of each Conv/Linear layer, by index into ``layers``.

    ORT nodes are matched to layers by shape, in execution order when shapes repeat; a node that
    matches no layer (pool, reorder, flatten, unfused add) is charged to the layer that ran before
    it, the way ORT would have fused it if it could. ORT's NCHWc layout pads channel counts to its
    block size (8 or 16 on x86) and the trace shows the padded shapes, so a node also matches a
    layer whose channels it exceeds by less than one block, when no exact match is left.
    """
    unmatched = [i for i, layer in enumerate(layers) if layer.kind in _TIMED_KINDS]
    times: dict[int, float] = {}
    owner: int | None = None
    pending = 0.0  # nodes before the first matched layer (an input reorder): charged to it
    for node in node_times.nodes:
        t = node.mean_ms if use_mean else node.median_ms
        key = _node_match_key(node)
        match = None
        if key is not None:
            match = next((i for i in unmatched if _layer_match_key(layers[i]) == key), None)
            if match is None:
                match = next((i for i in unmatched if _padded_match(layers[i], key)), None)
        if match is not None:
            unmatched.remove(match)
            owner = match
            times[owner] = t + pending
            pending = 0.0
        elif owner is None:
            pending += t
        else:
            times[owner] += t
    return times


# Channels of an NCHWc node exceed the layer's by less than this (the largest x86 block).
_MAX_PAD = 16


def _padded_match(layer: Layer, key: tuple) -> bool:
    mine = _layer_match_key(layer)
    if mine[0] != key[0]:
        return False
    if mine[0] == "conv":
        _, cin, _, kernel, groups, in_hw, out_hw = key
        if (kernel, in_hw, out_hw) != (layer.kernel, layer.in_hw, layer.out_hw):
            return False
        depthwise = groups > 1 and groups == cin
        if depthwise != layer.depthwise or (not depthwise and groups != layer.groups):
            return False
    return all(0 <= theirs - own < _MAX_PAD for own, theirs in zip(mine[1:3], key[1:3]))


def _layer_match_key(layer: Layer) -> tuple:
    if layer.kind == "linear":
        return ("linear", layer.cin, layer.cout)
    return ("conv", layer.cin, layer.cout, layer.kernel, layer.groups, layer.in_hw, layer.out_hw)


def _node_match_key(node: NodeTime) -> tuple | None:
    shapes, outs = node.input_shapes, node.output_shapes
    if not shapes or not outs:
        return None
    x, y = shapes[0], outs[0]
    if len(shapes) >= 2 and len(x) == 4 and len(shapes[1]) == 4 and len(y) == 4 and "Conv" in node.op_type:
        w = shapes[1]
        if w[1] <= 0 or x[1] % w[1]:
            return None
        return ("conv", x[1], w[0], (w[2], w[3]), x[1] // w[1], (x[2], x[3]), (y[2], y[3]))
    if len(x) == 2 and len(y) == 2 and node.op_type in ("Gemm", "MatMul", "FusedMatMul", "FusedGemm"):
        return ("linear", x[1], y[1])
    return None


@dataclass
class _Observation:
    layers: list[Layer]
    measured_ms: float


@dataclass
class LatencySurrogate:
    """Per-layer latency table + learned correction, for one base model on one target.

    ``observe`` measured candidates (with ORT node times when available), then ``predict`` any
    candidate from its layer descriptors, taken at ``input_shape``; ``fit`` is implicit but may be
    called to pay its cost up front.
    """

    input_shape: tuple[int, ...]
    use_mean: bool = True
    needs_node_times: ClassVar[bool] = True  # the per-layer table is built from them
    _observations: list[_Observation] = field(default_factory=list)
    _exact: dict[tuple, list[float]] = field(default_factory=lambda: defaultdict(list))
    _by_shape: dict[tuple, list[float]] = field(default_factory=lambda: defaultdict(list))
    _by_slot: dict[str, list[tuple[Layer, float]]] = field(default_factory=lambda: defaultdict(list))
    _by_family: dict[tuple, list[tuple[Layer, float]]] = field(default_factory=lambda: defaultdict(list))
    _slot_fit: dict[str, np.ndarray] = field(default_factory=dict)
    _family_fit: dict[tuple, np.ndarray] = field(default_factory=dict)
    _global_fit: np.ndarray | None = None
    _correction: tuple[float, float] = (1.0, 0.0)
    _dirty: bool = True

    @property
    def observations(self) -> int:
        return len(self._observations)

    def observe(self, layers: Sequence[Layer], measured_ms: float, node_times: NodeTimes | None = None) -> None:
        """Learn from one measured candidate. ``node_times`` (ORT's per-node profile of the same
        model) fills the per-layer table; without it the candidate only refines the correction."""
        if not np.isfinite(measured_ms) or measured_ms <= 0:
            raise ValueError(f"measured_ms must be a finite positive latency, got {measured_ms}")
        layers = list(layers)
        self._observations.append(_Observation(layers, float(measured_ms)))
        if node_times is not None and node_times.run_ms > 0:
            scale = measured_ms / node_times.run_ms
            for i, t in assign_nodes(layers, node_times, self.use_mean).items():
                layer, ms = layers[i], t * scale
                self._exact[(layer.name, layer.signature)].append(ms)
                self._by_shape[layer.signature].append(ms)
                self._by_slot[layer.name].append((layer, ms))
                self._by_family[layer.family].append((layer, ms))
        self._dirty = True

    def fit(self) -> None:
        """Fit the per-position and per-family regressions, then the correction ``a*sum + b``."""
        if not self._exact:
            raise ValueError("the surrogate has no per-layer times yet: observe() a candidate with node_times first")
        self._slot_fit = {k: _lstsq(v) for k, v in self._by_slot.items()}
        self._family_fit = {k: _lstsq(v) for k, v in self._by_family.items()}
        everything = [(layer, t) for v in self._by_slot.values() for layer, t in v]
        self._global_fit = np.linalg.lstsq(
            np.array([[1.0, layer.macs()] for layer, _ in everything]), np.array([t for _, t in everything]), rcond=None
        )[0]
        self._dirty = False  # _layer_sum below needs the regressions
        sums = np.array([self._layer_sum(o.layers) for o in self._observations])
        measured = np.array([o.measured_ms for o in self._observations])
        if len(set(np.round(sums, 12))) >= 3:
            a, b = np.linalg.lstsq(np.stack([sums, np.ones_like(sums)], axis=1), measured, rcond=None)[0]
            self._correction = (float(a), float(b))
        else:  # too few distinct candidates to fit a slope: keep it at 1, fit the offset only
            self._correction = (1.0, float(np.median(measured - sums)))

    def predict(self, layers: Sequence[Layer]) -> float:
        """Predicted latency (ms, in the units of the observed ``measured_ms``)."""
        if self._dirty:
            self.fit()
        a, b = self._correction
        return a * self._layer_sum(layers) + b

    def _layer_sum(self, layers: Sequence[Layer]) -> float:
        return sum(self._layer_ms(layer) for layer in layers if layer.kind in _TIMED_KINDS)

    def _layer_ms(self, layer: Layer) -> float:
        exact = self._exact.get((layer.name, layer.signature))
        if exact and len(exact) >= 2:
            return statistics.median(exact)
        coef = self._slot_fit.get(layer.name)
        if coef is not None and len(coef) == len(layer.features()):
            return max(0.0, float(np.dot(coef, layer.features())))
        if exact:
            return exact[0]
        same_shape = self._by_shape.get(layer.signature)
        if same_shape:
            return statistics.median(same_shape)
        coef = self._family_fit.get(layer.family)
        if coef is not None and len(coef) == len(layer.features()):
            return max(0.0, float(np.dot(coef, layer.features())))
        return max(0.0, float(np.dot(self._global_fit, [1.0, layer.macs()])))


def _lstsq(points: list[tuple[Layer, float]]) -> np.ndarray | None:
    """Least squares of time on the layer's features; None where the points cannot pin them."""
    x = np.array([layer.features() for layer, _ in points])
    y = np.array([t for _, t in points])
    distinct = len({tuple(r) for r in x})
    if distinct < x.shape[1] + 1:  # one spare point at least, or the fit just interpolates noise
        return None
    return np.linalg.lstsq(x, y, rcond=None)[0]


# --- fidelity check -------------------------------------------------------------------------------


@dataclass
class SurrogateValidation:
    """How close the surrogate's predictions came to measurements it was not fitted on."""

    model: str
    target: str
    n_fit: int
    errors_pct: list[float]  # (predicted - measured) / measured * 100, one per validation candidate
    measured_ms: list[float]  # mean of the two independent measurements below
    predicted_ms: list[float]
    # Each validation candidate is measured twice, in two passes minutes apart (fresh sessions):
    # how often two measurements of the SAME network agree within ±10 % shows how far this
    # machine agrees with itself, which caps what any predictor can be shown to reach.
    first_ms: list[float] = field(default_factory=list)
    second_ms: list[float] = field(default_factory=list)

    @property
    def within_10(self) -> float:
        return float(np.mean(np.abs(self.errors_pct) <= 10.0))

    @property
    def repeat_within_10(self) -> float:
        """Share of candidates whose second measurement is within ±10 % of their first."""
        a, b = np.array(self.first_ms), np.array(self.second_ms)
        return float(np.mean(np.abs(b - a) / a <= 0.10)) if len(a) else float("nan")

    @property
    def median_abs_pct(self) -> float:
        return float(np.median(np.abs(self.errors_pct)))

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "target": self.target,
            "n_fit": self.n_fit,
            "n_validate": len(self.errors_pct),
            "within_10pct": self.within_10,
            "median_abs_error_pct": self.median_abs_pct,
            "p90_abs_error_pct": float(np.percentile(np.abs(self.errors_pct), 90)),
            "remeasure_within_10pct": self.repeat_within_10,
            "candidates": [
                {"measured_ms": m, "first_ms": a, "second_ms": b, "predicted_ms": p, "error_pct": e}
                for m, a, b, p, e in zip(self.measured_ms, self.first_ms, self.second_ms, self.predicted_ms, self.errors_pct)
            ],
        }

    def summary(self) -> str:
        d = self.to_dict()
        return (
            f"surrogate for {self.model} on {self.target}: fitted on {self.n_fit} measured candidates, "
            f"validated on {d['n_validate']}\n"
            f"  within ±10 %: {100 * self.within_10:.1f} % ({int(round(self.within_10 * d['n_validate']))}/{d['n_validate']})\n"
            f"  median |error|: {self.median_abs_pct:.2f} %   p90 |error|: {d['p90_abs_error_pct']:.2f} %\n"
            f"  noise reference: a re-measure of the same network is within ±10 % of the first "
            f"measurement for {100 * self.repeat_within_10:.1f} % of them"
        )
