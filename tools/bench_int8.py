"""Benchmark: which INT8 format pays on a target, against FP32, at a small and a large input.

For each model and input size, the FP32 ONNX export and its INT8 variants in every format
edgeprune makes (``exporters/int8.py``: NNCF QDQ, ONNX Runtime QDQ, ONNX Runtime QOperator)
are timed in the torch-free worker in alternating blocks with the FP32 file, so each INT8/FP32
ratio is measured under the same machine state; the table prints the median ratio of
``--pairs`` fresh session pairs (below 1 = INT8 faster) and the QDQ nodes that ONNX Runtime left
unfused (a Q/DQ pair it could not fold into an integer kernel runs as float work of its own).

Latency only: the calibration set is 16 seeded random inputs (ranges do not change the speed of
integer kernels); test accuracy per format is what ``edgeprune export --int8`` measures.

    python tools/bench_int8.py                                  # mobilenet_v2, resnet18 at 32 and 224
    python tools/bench_int8.py --models torchvision:mobilenet_v2 --sizes 32
    python tools/bench_int8.py --smoke     # a tiny CNN at 16x16, one session pair per format (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from edgeprune.errors import UserError
from edgeprune.exporters.int8 import INT8_FORMATS, nncf_available, quantize_int8
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.tasks.models import load_model
from edgeprune.profiling.isolated import IsolatedOrtBackend
from edgeprune.profiling.stats import ratio
from edgeprune.profiling.targets import load_profile

sys.path.insert(0, str(Path(__file__).parent))
from smoke import SMOKE_NOTE, smoke_profile, tiny_cnn  # noqa: E402



def unfused_qdq(onnx_bytes: bytes) -> tuple[int, int]:
    """(QuantizeLinear + DequantizeLinear nodes left after ORT's optimiser, integer ops) in the
    graph ORT actually runs (its optimised model written out by a session)."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(folder) / "optimised.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    qdq = sum(op in ("QuantizeLinear", "DequantizeLinear") for op in ops)
    integer = sum(op.startswith(("QLinear", "QGemm", "ConvInteger", "MatMulInteger")) for op in ops)
    return qdq, integer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--models", default="torchvision:mobilenet_v2,torchvision:resnet18")
    parser.add_argument("--sizes", default="32,224", help="input sides, comma-separated (default 32,224)")
    parser.add_argument("--pairs", type=int, default=3, help="fresh session pairs per format (default 3)")
    parser.add_argument("--smoke", action="store_true", help=f"a tiny CNN at 16x16, 1 session pair per format ({SMOKE_NOTE})")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.sizes, args.pairs = "smoke:tiny_cnn", "16", 1
    try:
        profile = load_profile(args.target)
        sizes = [int(s) for s in args.sizes.split(",")]
    except (UserError, ValueError) as exc:
        print(f"bench_int8: error: {exc}", file=sys.stderr)
        return 2
    if args.smoke:
        profile = smoke_profile(profile)
    formats = [f for f in INT8_FORMATS if f != "nncf-qdq" or nncf_available()]
    table = Table(title=f"INT8 / FP32 latency on {profile.name} (median of {args.pairs} interleaved session pairs; < 1 = INT8 faster)"
                        + (f" ({SMOKE_NOTE})" if args.smoke else ""))
    for col in ("model", "input", "FP32 ms", *formats, "unfused Q/DQ nodes", "integer ops"):
        table.add_column(col)
    for spec in args.models.split(","):
        model, _ = load_model(spec, 10)
        for side in sizes:
            shape = (profile.batch, 3, side, side)
            fp32 = export_onnx_bytes(model, shape, profile.opset)
            name = onnx.load_from_string(fp32).graph.input[0].name
            rng = np.random.default_rng(0)
            calibration = [rng.standard_normal(shape, dtype=np.float32) for _ in range(16)]
            backend = IsolatedOrtBackend(dataclasses.replace(profile))
            backend.set_reference(fp32, shape)
            cells, fused, fp32_ms = [], [], []
            try:
                for fmt in formats:
                    q = quantize_int8(fp32, calibration, name, progress=False, fmt=fmt)
                    ratios = []
                    for _ in range(args.pairs):
                        cand, ref = backend.measure_pair(q, shape)
                        ratios.append(ratio(cand, ref))
                        fp32_ms.append(ref.median_ms)
                    cells.append(f"{statistics.median(ratios):.2f}")
                    qdq, integer = unfused_qdq(q)
                    fused.append((fmt, qdq, integer))
            finally:
                backend.close()
            table.add_row(
                spec.removeprefix("torchvision:"), f"{side}x{side}", f"{statistics.median(fp32_ms):.3f}", *cells,
                ", ".join(f"{f}: {q}" for f, q, _ in fused), ", ".join(f"{f}: {i}" for f, _, i in fused),
            )
            print(f"done {spec} {side}", file=sys.stderr, flush=True)
    Console(width=200).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
