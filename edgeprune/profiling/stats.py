"""Latency statistics: the numbers a measurement is reduced to, cached and reported.

The median is what the search optimises (robust to the odd descheduled run); p90/p99 are what a
deployment budget is really about; CV is how we tell a trustworthy measurement from a noisy one.
"""

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

    def to_dict(self) -> dict[str, Any]:
        """The report.json shape: ``latency_ms{median, p90, p99, mean, std, cv, n, noisy}``."""
        return {
            "n": self.n,
            "median": self.median_ms,
            "p90": self.p90_ms,
            "p99": self.p99_ms,
            "mean": self.mean_ms,
            "std": self.std_ms,
            "cv": self.cv,
            "noisy": self.noisy,
        }

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
        )


def summarize(times_s: Sequence[float]) -> LatencyStats:
    """Reduce per-run wall times (seconds) to statistics in milliseconds."""
    if len(times_s) == 0:
        raise ValueError("summarize() needs at least one timed run")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    median, p90, p99 = np.percentile(ms, [50, 90, 99])
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
    )
