"""The one way a pruning problem gets latency: shrunk torch model → the target's format (ONNX, or
the runtime's own) → the target's Profiler.

:class:`LatencySource` is what :class:`edgeprune.problem.pruning.PruningProblem` and the selection stage
ask; :class:`ProfiledLatency` answers through :class:`edgeprune.profiling.profiler.Profiler`
(cache, reference interleaving, backend: ORT, TensorRT or an agent). Latency belongs to the
architecture, so everything is keyed by widths; a conversion happens only on a cache miss.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from edgeprune.exporters.measured import measured_bytes
from edgeprune.profiling.profiler import Pending, Profiler
from edgeprune.profiling.stats import LatencyStats, NodeTimes
from edgeprune.space.channels import ChannelSpace

# Converted architectures kept (a .tflite or .pte conversion takes 8-18 s; a candidate's memory
# is measured right after its latency, from the same bytes).
_RECENT = 4


class LatencySource(Protocol):
    shape: tuple[int, ...]  # what the target runs, batch included
    has_node_times: bool
    capacity: int  # measurements under way at once: a farm's agents, else 1

    def measure(self, widths: tuple[int, ...], model: nn.Module | None = None, fresh: bool = False) -> tuple[LatencyStats, bool]:
        """``(stats, from_cache)`` of the architecture ``widths`` (``model``: its shrunk network,
        when the caller has it already). ``fresh`` measures again whatever is known."""

    def start(self, widths: tuple[int, ...], model: nn.Module | None = None, fresh: bool = False) -> Pending:
        """Begin measuring ``widths``: at once on a farm of agents (the answer comes while the
        caller scores accuracy), else now; :meth:`finish` gives ``(stats, from_cache)``.
        ``fresh``: one more fresh session, whatever is known."""

    def finish(self, pending: Pending) -> tuple[LatencyStats, bool]:
        """The answer of :meth:`start` (waits for it)."""

    def peek(self, widths: tuple[int, ...]) -> LatencyStats | None:
        """The known latency of ``widths``, without measuring."""

    def node_times(self, widths: tuple[int, ...], model: nn.Module) -> NodeTimes:
        """Per-node times of ``widths`` (only when ``has_node_times``)."""

    def set_reference(self, widths: tuple[int, ...], anchor: LatencyStats | None = None) -> LatencyStats:
        """Time every later architecture next to ``widths``; returns the anchor (its latency)."""


class ProfiledLatency:
    """:class:`LatencySource` over the target's Profiler, for the architectures of ``space``."""

    def __init__(self, space: ChannelSpace, profiler: Profiler, opset: int, batch: int = 1, model_format: str = "onnx"):
        self.space, self.profiler, self.opset, self.model_format = space, profiler, opset, model_format
        self.shape = (batch, *space.input_shape)
        self._recent: dict[tuple[int, ...], bytes] = {}

    @property
    def has_node_times(self) -> bool:
        return self.profiler.has_node_times

    @property
    def capacity(self) -> int:
        return self.profiler.capacity

    def set_reference(self, widths: tuple[int, ...], anchor: LatencyStats | None = None) -> LatencyStats:
        """Time all later architectures next to ``widths`` (see Profiler.set_reference)."""
        return self.profiler.set_reference(self._key(widths), self.shape, self._onnx(widths), anchor=anchor)

    def measure(self, widths, model=None, fresh=False):
        onnx = lambda: self._onnx(widths, model)  # noqa: E731 - deferred: a cache hit never exports
        return self.profiler.latency(self._key(widths), self.shape, onnx, fresh=fresh)

    def start(self, widths, model=None, fresh=False):
        return self.profiler.start(self._key(widths), self.shape, lambda: self._onnx(widths, model), fresh)

    def finish(self, pending):
        return self.profiler.finish(pending)

    def peek(self, widths):
        return self.profiler.peek(self._key(widths), self.shape)

    def node_times(self, widths, model):
        return self.profiler.node_times(self._key(widths), self.shape, lambda: self._onnx(widths, model))

    def _key(self, widths) -> str:
        return self.space.arch_key(widths)

    def model_bytes(self, widths, model=None) -> bytes:
        """The architecture in the target's format, as the profiler measures it (the last few are
        kept: a memory measurement of the same candidate needs no second conversion)."""
        return self._onnx(tuple(widths), model)

    def _onnx(self, widths, model=None) -> bytes:
        """The architecture in the target's format (shrunk from the original unless ``model`` is
        given): ONNX for most targets, whatever the profile's backend runs otherwise."""
        key = tuple(widths)
        if key not in self._recent:
            model = model if model is not None else self.space.shrink(self.space.plan(widths))
            self._recent[key] = measured_bytes(model, self.shape, self.opset, self.model_format)
            while len(self._recent) > _RECENT:
                self._recent.pop(next(iter(self._recent)))
        return self._recent[key]
