"""The interface every latency backend implements, so the Profiler and the device agent can use
any of them (ONNX Runtime here or in a child process, TensorRT, a remote agent) without knowing
which one it is.

A backend times ONNX graphs on one target under one profile. ``measure`` is one fresh session.
``measure_pair`` times a candidate in alternating blocks with the model given to
``set_reference``: the CPU's speed drifts between minutes, the ratio of two models timed together
does not, so the Profiler reports ``candidate / reference x anchor``. ``node_times`` is ONNX
Runtime's per-node profile, which the search's latency surrogate learns from; a backend that
cannot take one says so in ``supports_node_times`` (the search then runs without the surrogate).

A farm of agents is an :class:`AsyncBackend`: it can also start a measurement and return at once,
which is how the Profiler keeps every agent busy.

Backends subclass :class:`Backend`, so one lacking a method cannot be constructed; test doubles
may match it structurally instead. Pick one with :func:`edgeprune.profiling.factory.make_backend`.
"""

from __future__ import annotations

from abc import abstractmethod
from concurrent.futures import Future
from typing import Any, Protocol, runtime_checkable

from edgeprune.profiling.stats import LatencyStats, NodeTimes


class Backend(Protocol):
    """Times ONNX graphs under one profile; see the module docstring for the contract."""

    supports_node_times: bool

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What the numbers are valid for (:mod:`edgeprune.profiling.fingerprint`); its hash keys
        the cache. A copy: callers may change it."""

    @abstractmethod
    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> LatencyStats:
        """Latency of one inference of ``onnx_bytes`` on an input of ``input_shape``, in a fresh
        session; ``noisy`` set when the profile's CV threshold was not met (never cached)."""

    @abstractmethod
    def set_reference(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> None:
        """The model :meth:`measure_pair` times alongside every later candidate."""

    @abstractmethod
    def measure_pair(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> tuple[LatencyStats, LatencyStats]:
        """``(candidate, reference)`` timed in alternating blocks; ValueError before
        :meth:`set_reference`."""

    @abstractmethod
    def node_times(self, onnx_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        """ONNX Runtime's per-node profile over ``runs`` timed runs; NotImplementedError where
        ``supports_node_times`` is False."""

    @abstractmethod
    def close(self) -> None:
        """Release what the backend holds (a child process, say), once its user is done."""


@runtime_checkable
class AsyncBackend(Backend, Protocol):
    """What a farm adds to a :class:`Backend`: measurements started without waiting (the Profiler
    tells the two apart with ``isinstance``), and an account of who measured what."""

    @abstractmethod
    def submit(self, onnx_bytes: bytes, input_shape: tuple[int, ...], paired: bool, label: str) -> Future:
        """A measurement under way, labelled ``label`` in errors and logs: its result is
        ``LatencyStats``, or where ``paired`` the ``(candidate, reference)`` pair of
        :meth:`Backend.measure_pair`."""

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """Which devices measured how much, and which were left out or removed (report.json's
        ``search.farm``)."""

    def capacity(self) -> int:
        """How many measurements run at once (a farm: its devices in rotation)."""
        return 1
