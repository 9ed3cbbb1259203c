"""Latency surrogate: predicts a pruned candidate's measured latency from per-layer timings.

Why: a measurement costs an export, a session and about a second of timed runs; the search only
needs that for candidates that may end up on the Pareto front. The surrogate decides which ones
are worth it, and is never reported as a latency (DESIGN.md: "latency is measured, not estimated").

How (each step chosen from what ONNX Runtime does, see ``validate_surrogate`` for the check):

* ORT fuses Conv+BN+ReLU/Clip (and residual adds) into one node, so a *layer* here is a Conv or
  Linear together with every node that runs after it until the next Conv/Linear (pools, reorders,
  unfused adds). ORT's per-node trace carries input/output shapes, so nodes are matched to the
  torch layers by shape signature, not by their names (fused nodes are named after whatever op
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

import numpy as np
import torch
from torch import nn

from edgeprune.profiling.ort import NodeTime, NodeTimes

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_TIMED_KINDS = ("conv", "linear")


@dataclass(frozen=True)
class Layer:
    """What decides a layer's cost: its kind, channels, kernel, stride, groups and spatial size."""

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


def layer_descriptors(model: nn.Module, input_shape: Sequence[int]) -> list[Layer]:
    """Conv/Linear/BatchNorm/pool layers of ``model`` in execution order, with the shapes they see.

    Found with forward hooks on one zero input of ``input_shape`` (C, H, W or N, C, H, W), so
    it works on any pruned copy without exporting it; the model's training flags are restored.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    names = {m: n for n, m in model.named_modules()}
    found: list[Layer] = []

    def hook(module, inputs, output):
        x = inputs[0]
        found.append(_describe(names[module], module, tuple(x.shape), tuple(output.shape)))

    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, *_POOLS)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        first = next(model.parameters(), None)
        with torch.no_grad():
            model(torch.zeros(shape, device=first.device if first is not None else "cpu"))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return found


def _describe(name: str, module: nn.Module, x: tuple[int, ...], y: tuple[int, ...]) -> Layer:
    hw = lambda s: (int(s[2]), int(s[3])) if len(s) == 4 else (1, 1)  # noqa: E731
    pair = lambda v: (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))  # noqa: E731
    if isinstance(module, nn.Conv2d):
        return Layer(name, "conv", module.in_channels, module.out_channels, pair(module.kernel_size),
                     pair(module.stride), module.groups, hw(x), hw(y))
    if isinstance(module, nn.Linear):
        return Layer(name, "linear", module.in_features, module.out_features, (1, 1), (1, 1), 1, (1, 1), (1, 1))
    channels = int(x[1])
    if isinstance(module, nn.BatchNorm2d):
        return Layer(name, "bn", channels, channels, (1, 1), (1, 1), 1, hw(x), hw(y))
    kernel = getattr(module, "kernel_size", None) or getattr(module, "output_size", 1)
    stride = getattr(module, "stride", None) or 1
    return Layer(name, "pool", channels, channels, pair(kernel), pair(stride), 1, hw(x), hw(y))


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
    candidate from its torch model; ``fit`` is implicit but may be called to pay its cost up front.
    """

    input_shape: tuple[int, ...]
    use_mean: bool = True
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

    def layers(self, model_or_layers: nn.Module | Sequence[Layer]) -> list[Layer]:
        if isinstance(model_or_layers, nn.Module):
            return layer_descriptors(model_or_layers, self.input_shape)
        return list(model_or_layers)

    @property
    def observations(self) -> int:
        return len(self._observations)

    def observe(self, model_or_layers: nn.Module | Sequence[Layer], measured_ms: float,
                node_times: NodeTimes | None = None) -> None:
        """Learn from one measured candidate. ``node_times`` (ORT's per-node profile of the same
        model) fills the per-layer table; without it the candidate only refines the correction."""
        if not np.isfinite(measured_ms) or measured_ms <= 0:
            raise ValueError(f"measured_ms must be a finite positive latency, got {measured_ms}")
        layers = self.layers(model_or_layers)
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

    def predict(self, model_or_layers: nn.Module | Sequence[Layer]) -> float:
        """Predicted latency (ms, in the units of the observed ``measured_ms``)."""
        if self._dirty:
            self.fit()
        a, b = self._correction
        return a * self._layer_sum(self.layers(model_or_layers)) + b

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


def validate_surrogate(
    spec: str,
    profile,
    input_shape: tuple[int, int, int],
    num_classes: int | None = None,
    n_fit: int = 40,
    n_validate: int = 60,
    seed: int = 0,
    node_runs: int = 50,
    progress: bool = True,
) -> SurrogateValidation:
    """Fit on ``n_fit`` random pruned variants of ``spec`` (the unpruned model first) and score on
    ``n_validate`` others, all measured as the search measures them: timed in the torch-free
    worker in alternating blocks with the unpruned model, in the unpruned model's units.

    Validation candidates are measured twice, in two passes (so minutes apart), and scored
    against the mean; the agreement of the two passes is reported as the noise reference."""
    from edgeprune.models import load_model
    from edgeprune.profiling.isolated import IsolatedOrtBackend
    from edgeprune.profiling.onnx_bytes import export_onnx_bytes
    from edgeprune.progress import progress_bar
    from edgeprune.space import ChannelSpace

    model, model_spec = load_model(spec, num_classes)
    space = ChannelSpace(model, input_shape, profile.channel_step, model_spec=model_spec)
    shape = (profile.batch, *input_shape)
    rng = np.random.default_rng(seed)
    widths = [tuple(g.full for g in space.groups)] + [
        tuple(int(rng.choice(g.options)) for g in space.groups) for _ in range(n_fit + n_validate - 1)
    ]
    surrogate = LatencySurrogate(shape)
    backend = IsolatedOrtBackend(profile)
    measured, predicted = [], []
    try:
        reference = export_onnx_bytes(model, shape, profile.opset)
        anchor = backend.measure(reference, shape).median_ms
        backend.set_reference(reference, shape)
        def measure(onnx: bytes) -> float:
            cand, ref = backend.measure_pair(onnx, shape)
            return cand.median_ms / ref.median_ms * anchor

        with progress_bar(progress) as bar:
            task = bar.add_task(f"surrogate check {spec}", total=n_fit + 2 * (len(widths) - n_fit), status="")
            held_out = []  # (layers, onnx, first measurement)
            for i, w in enumerate(widths):
                pruned = space.shrink(space.plan(w))
                onnx = export_onnx_bytes(pruned, shape, profile.opset)
                ms = measure(onnx)
                if i < n_fit:
                    surrogate.observe(pruned, ms, backend.node_times(onnx, shape, node_runs))
                else:
                    held_out.append((surrogate.layers(pruned), onnx, ms))
                bar.update(task, advance=1, status="fitting" if i < n_fit else "validating")
            second = []
            for _, onnx, _ in held_out:
                second.append(measure(onnx))
                bar.update(task, advance=1, status="re-measuring")
    finally:
        backend.close()
    surrogate.fit()
    first = [ms for _, _, ms in held_out]
    for (layers, _, a), b in zip(held_out, second):
        measured.append((a + b) / 2)
        predicted.append(surrogate.predict(layers))
    errors = [(p - m) / m * 100.0 for p, m in zip(predicted, measured)]
    return SurrogateValidation(spec, profile.name, n_fit, errors, measured, predicted, first, second)
