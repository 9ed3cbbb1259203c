"""Whole-network latency from multiply-accumulates, for targets that give no per-layer times.

TensorRT through an agent, a farm of boards and the simulated device time whole networks only, so
:class:`~edgeprune.profiling.surrogate.LatencySurrogate`'s per-layer table cannot be built there.
What such a device still shows is how latency grows with work: this surrogate fits

    latency ≈ a · dense-conv MACs + b · depthwise MACs + c · linear MACs + d

by least squares on the run's own measured candidates (depthwise convolutions run far below a
dense one's MACs per second on every runtime, so they get their own slope). It serves the screen
(:mod:`edgeprune.problem.screening`), which trusts it only while its recent predictions are
within 10 % of the measurements that follow them; a device where MACs do not predict latency
simply keeps measuring everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from edgeprune.profiling.surrogate import Layer

_MEGA = 1e6


def work(layers: Sequence[Layer]) -> list[float]:
    """The regressors of one network: dense-conv, depthwise and linear MACs (millions), and 1."""
    dense = depthwise = linear = 0.0
    for layer in layers:
        if layer.kind == "linear":
            linear += layer.cin * layer.cout
        elif layer.kind == "conv" and layer.depthwise:
            depthwise += layer.macs()
        elif layer.kind == "conv":
            dense += layer.macs()
    return [dense / _MEGA, depthwise / _MEGA, linear / _MEGA, 1.0]


@dataclass
class MacsSurrogate:
    """``observe`` measured networks, then ``predict`` any network of the same model from its layer
    descriptors (taken at ``input_shape``)."""

    input_shape: tuple[int, ...]
    needs_node_times: ClassVar[bool] = False
    _rows: list[list[float]] = field(default_factory=list)
    _measured: list[float] = field(default_factory=list)
    _coef: np.ndarray | None = None

    @property
    def observations(self) -> int:
        return len(self._rows)

    def observe(self, layers: Sequence[Layer], measured_ms: float, node_times=None) -> None:
        """Learn from one measured network (``node_times`` is not used: the device gave none)."""
        if not np.isfinite(measured_ms) or measured_ms <= 0:
            raise ValueError(f"measured_ms must be a finite positive latency, got {measured_ms}")
        self._rows.append(work(layers))
        self._measured.append(float(measured_ms))
        self._coef = None

    def predict(self, layers: Sequence[Layer]) -> float:
        """Predicted latency (ms, in the units of the observed latencies)."""
        if not self._rows:
            raise ValueError("the surrogate has observed no network yet")
        if self._coef is None:
            x, y = np.array(self._rows), np.array(self._measured)
            # Columns no observed network varies (a model without depthwise layers) are left out.
            used = [j for j in range(x.shape[1]) if j == x.shape[1] - 1 or np.ptp(x[:, j]) > 0]
            coef = np.zeros(x.shape[1])
            coef[used] = np.linalg.lstsq(x[:, used], y, rcond=None)[0]
            self._coef = coef
        return float(np.dot(work(layers), self._coef))
