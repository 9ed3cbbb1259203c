"""Latency statistics: the numbers a measurement is reduced to, cached and reported.

The median is what the search optimises (robust to the odd descheduled run); p90/p99 are what a
deployment budget is really about; CV is how we tell a trustworthy measurement from a noisy one.
The trimmed mean is what two models timed together are compared by: on a shared CPU the per-run
times are bimodal (measured: one mobilenet_v2 variant at 0.072 ms and 0.11-0.12 ms within one
session, the mix shifting from second to second), so a median flips between the modes while a
mean of the central runs moves smoothly with the mix (ratio CV 2-4 % against 5-10 %).
Per-node times (:class:`NodeTimes`, from ONNX Runtime's profiler) say where that time goes; they
live here, free of any runtime, because the cache, the latency surrogate and the backend
interface all carry them.
"""

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class LatencyStats:
    """Summary of one measurement, in milliseconds. ``noisy`` results must never be cached."""

    n: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    noisy: bool = False
    # Mean of the runs between the 5th and 90th percentiles; None where only a summary was
    # given (a cache row, trtexec's own statistics).
    trimmed_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report.json shape: ``latency_ms{median, p90, p99, mean, std, cv, n, noisy}``."""
        d = {
            "n": self.n,
            "median": self.median_ms,
            "p90": self.p90_ms,
            "p99": self.p99_ms,
            "mean": self.mean_ms,
            "std": self.std_ms,
            "cv": self.cv,
            "noisy": self.noisy,
        }
        if self.trimmed_ms is not None:
            d["trimmed"] = self.trimmed_ms
        return d

    def scaled(self, factor: float) -> "LatencyStats":
        """The same distribution with every time multiplied by ``factor`` (CV unchanged)."""
        return LatencyStats(
            n=self.n,
            median_ms=self.median_ms * factor,
            p90_ms=self.p90_ms * factor,
            p99_ms=self.p99_ms * factor,
            mean_ms=self.mean_ms * factor,
            std_ms=self.std_ms * factor,
            cv=self.cv,
            noisy=self.noisy,
            trimmed_ms=None if self.trimmed_ms is None else self.trimmed_ms * factor,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyStats":
        return cls(
            n=int(d["n"]),
            median_ms=float(d["median"]),
            p90_ms=float(d["p90"]),
            p99_ms=float(d["p99"]),
            mean_ms=float(d["mean"]),
            std_ms=float(d["std"]),
            cv=float(d["cv"]),
            noisy=bool(d.get("noisy", False)),
            trimmed_ms=float(d["trimmed"]) if d.get("trimmed") is not None else None,
        )


def ratio(candidate: LatencyStats, reference: LatencyStats) -> float:
    """How much slower ``candidate`` ran than ``reference`` when the two were timed together: by
    their trimmed means when both have a usable one (a remote agent's reply may lack it), else
    by their medians."""
    pair = (candidate.trimmed_ms, reference.trimmed_ms)
    if all(t is not None and math.isfinite(t) and t > 0 for t in pair):
        return pair[0] / pair[1]
    return candidate.median_ms / reference.median_ms


def summarize(times_s: Sequence[float]) -> LatencyStats:
    """Reduce per-run wall times (seconds) to statistics in milliseconds."""
    if len(times_s) == 0:
        raise ValueError("summarize() needs at least one timed run")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p5, median, p90, p99 = np.percentile(ms, [5, 50, 90, 99])
    central = ms[(ms >= p5) & (ms <= p90)]
    mean = float(ms.mean())
    std = float(ms.std())
    return LatencyStats(
        n=len(ms),
        median_ms=float(median),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=mean,
        std_ms=std,
        cv=std / mean if mean > 0 else 0.0,
        trimmed_ms=float(central.mean()) if central.size else float(median),
    )


@dataclass
class NodeTime:
    """One node of the *optimised* graph ORT ran (Conv+BN+ReLU and residual adds fused into one).

    The shapes come from ORT's trace, so a node can be matched to the layer it computes without
    trusting its name (fused nodes are named after their last fused output, e.g. a ReLU's).
    """

    name: str
    op_type: str
    median_ms: float
    # Mean of the runs at or below the 90th percentile: ORT's trace has 1 us resolution, so for
    # nodes of a few microseconds the median moves in 0.5 us steps while this does not.
    mean_ms: float
    input_shapes: list[list[int]]
    output_shapes: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NodeTime":
        return cls(
            name=str(d["name"]),
            op_type=str(d["op_type"]),
            median_ms=float(d["median_ms"]),
            mean_ms=float(d["mean_ms"]),
            input_shapes=[[int(v) for v in s] for s in d["input_shapes"]],
            output_shapes=[[int(v) for v in s] for s in d["output_shapes"]],
        )


@dataclass
class NodeTimes:
    """Per-node times of one model, in execution order, and the whole profiled run they add up to.

    ``run_ms`` (median ``model_run`` with profiling on) is larger than the sum of the nodes by
    the executor's and the profiler's own per-node overhead; callers that compare nodes with an
    unprofiled latency should use the nodes' *share* of ``run_ms``, not their absolute times.
    """

    nodes: list[NodeTime]
    run_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": [n.to_dict() for n in self.nodes], "run_ms": self.run_ms, "runs": self.runs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NodeTimes":
        return cls([NodeTime.from_dict(n) for n in d["nodes"]], float(d["run_ms"]), int(d["runs"]))
