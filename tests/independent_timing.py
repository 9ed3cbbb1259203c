"""A latency check that shares no code with edgeprune's profiler, for tests that judge a verdict.

Two ONNX files are timed in alternating fresh onnxruntime sessions (A B A B ...), one intra-op
thread and sequential execution like the shipped CPU profiles, and judged as the median of the
per-pair ratios: a burst of load on a shared machine hits both files of a pair alike, so the ratio
holds where absolute times drift by tens of percent.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np


def _session_median_ms(path: Path, runs: int, warmup: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([int(d) for d in inp.shape]).astype(np.float32)
    feed = {inp.name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def paired_ratio(model: Path, reference: Path, pairs: int = 9, runs: int = 200, warmup: int = 20) -> float:
    """Median over ``pairs`` of (``model``'s session median / ``reference``'s session median)."""
    ratios = []
    for i in range(pairs):
        # Alternate which file goes first, so neither always gets the warmer cache.
        first, second = (model, reference) if i % 2 == 0 else (reference, model)
        a = _session_median_ms(first, runs, warmup)
        b = _session_median_ms(second, runs, warmup)
        ratios.append(a / b if first == model else b / a)
    return statistics.median(ratios)


def ratio_check(ratios: list[float], allowed: float = 0.05) -> tuple[float, float]:
    """``(median ratio, bound)`` of paired ratios that should be 1: the median's log must be within
    ``log(1 + allowed)`` plus three standard errors of the median, estimated from the ratios' own
    scatter (1.4826 x their median absolute log-deviation; 1.25 sigma / sqrt(n)). A fixed band
    is either too tight for a busy machine or blind on a quiet one; this one widens only with the
    scatter the test itself measured. Assert ``abs(log(median)) <= log(bound)``."""
    import math

    logs = [math.log(r) for r in ratios]
    centre = statistics.median(logs)
    sigma = 1.4826 * statistics.median(abs(x - centre) for x in logs)  # one stalled session barely moves it
    return math.exp(centre), math.exp(math.log1p(allowed) + 3 * 1.25 * sigma / math.sqrt(len(logs)))
