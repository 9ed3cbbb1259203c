"""Latency in OpenVINO, LiteRT and ExecuTorch by code that shares nothing with edgeprune's
backends, for tests that judge a verdict on those targets (the ONNX Runtime one is
:mod:`independent_timing`).

Each file is loaded the way its runtime's own documentation loads it (one inference thread, as the
shipped profiles), warmed up, and timed run by run; two files are timed in alternating fresh loads
(A B A B ...) and judged as the median of the per-pair ratios, so that a burst of load on a shared
machine hits both files of a pair alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _openvino(path: Path, shape: tuple[int, ...]) -> Callable[[], object]:
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return lambda: request.infer([x])


def _litert(path: Path, shape: tuple[int, ...]) -> Callable[[], object]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)  # XNNPACK is LiteRT's default CPU delegate
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return interpreter.invoke


def _executorch(path: Path, shape: tuple[int, ...]) -> Callable[[], object]:
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    # One thread, as the profile runs it: ExecuTorch's pool otherwise takes every core, and there
    # pruning pays differently (TinyCNN width 256 / 160 on this 2-core VM: 0.245 / 0.187 ms on two
    # threads, 0.444 / 0.182 ms on one).
    portable_lib._unsafe_reset_threadpool(1)
    method = Runtime.get().load_program(path).load_method("forward")
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return lambda: method.execute([x])


LOADERS = {"openvino": _openvino, "litert": _litert, "executorch": _executorch}


def _session_median_ms(kind: str, path: Path, shape: tuple[int, ...], runs: int, warmup: int) -> float:
    run = LOADERS[kind](path, shape)
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def paired_runtime_ratio(kind: str, model: Path, reference: Path, shape: tuple[int, ...], pairs: int = 9, runs: int = 200, warmup: int = 20) -> float:
    """Median over ``pairs`` of (``model``'s session median / ``reference``'s) in runtime ``kind``."""
    ratios = []
    for i in range(pairs):
        first, second = (model, reference) if i % 2 == 0 else (reference, model)
        a = _session_median_ms(kind, first, shape, runs, warmup)
        b = _session_median_ms(kind, second, shape, runs, warmup)
        ratios.append(a / b if first == model else b / a)
    return statistics.median(ratios)
