"""Interleaved A/B latency of two ONNX files on a target: medians per round and their ratio.

Why: on shared or virtualised CPUs the absolute speed of onnxruntime drifts (measured here: the
same model at 0.107 or 0.148 ms depending on the process and the minute). Alternating A and B in
the same measurement process, round after round, puts both under the same conditions, so the
ratio B/A is what to trust; the absolute numbers are printed for reference.

    python tools/bench_ab.py baseline.onnx pruned.onnx --target x86-cpu --rounds 10
    python tools/bench_ab.py --smoke      # two tiny CNNs, 2 rounds, millisecond windows (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeprune.errors import UserError
from edgeprune.profiling.isolated import IsolatedOrtBackend
from edgeprune.profiling.onnx_file import load_onnx
from edgeprune.profiling.targets import load_profile

sys.path.insert(0, str(Path(__file__).parent))
from smoke import SMOKE_NOTE, smoke_profile, tiny_cnn  # noqa: E402


def smoke_files(folder: Path) -> tuple[str, str]:
    """Two tiny CNNs (32 and 16 channels) as ONNX files in ``folder``: A and B for --smoke."""
    from edgeprune.exporters.onnx_bytes import export_onnx_bytes

    paths = []
    for width in (32, 16):
        path = folder / f"tiny-{width}.onnx"
        path.write_bytes(export_onnx_bytes(tiny_cnn(width=width), (1, 3, 16, 16), 17))
        paths.append(str(path))
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", nargs="?", help="reference ONNX (e.g. the unpruned model)")
    parser.add_argument("b", nargs="?", help="ONNX to compare (e.g. the pruned model)")
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--rounds", type=int, default=10, help="A,B pairs (default 10)")
    parser.add_argument("--processes", type=int, default=2, help="fresh measurement processes, rounds split between them (default 2)")
    parser.add_argument("--smoke", action="store_true", help=f"two tiny CNNs instead of A and B, 2 rounds in 1 process ({SMOKE_NOTE})")
    args = parser.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory() as folder:
            args.a, args.b = smoke_files(Path(folder))
            args.rounds, args.processes = 2, 1
            return _run(args)
    if args.a is None or args.b is None:
        parser.error("pass the two ONNX files A and B (or --smoke)")
    return _run(args)


def _run(args) -> int:
    try:
        profile = load_profile(args.target)
        (blob_a, shape_a), (blob_b, shape_b) = load_onnx(args.a), load_onnx(args.b)
    except UserError as exc:
        print(f"bench_ab: error: {exc}", file=sys.stderr)
        return 2
    if args.smoke:
        profile = smoke_profile(profile)
    table = Table(title=f"A/B on {profile.name}: A={args.a}  B={args.b}{'  (' + SMOKE_NOTE + ')' if args.smoke else ''}")
    for col in ("round", "process", "A median ms", "B median ms", "B/A"):
        table.add_column(col, justify="right")
    a_ms, b_ms, ratios = [], [], []
    per_process = max(1, args.rounds // args.processes)
    for r in range(args.rounds):
        if r % per_process == 0:
            if r:
                backend.close()
            backend = IsolatedOrtBackend(profile)
        first, second = (blob_a, shape_a, "a"), (blob_b, shape_b, "b")
        order = (first, second) if r % 2 == 0 else (second, first)  # alternate who goes first
        got = {tag: backend.measure(blob, shape).median_ms for blob, shape, tag in order}
        a_ms.append(got["a"])
        b_ms.append(got["b"])
        ratios.append(got["b"] / got["a"])
        table.add_row(str(r + 1), str(r // per_process + 1), f"{got['a']:.4f}", f"{got['b']:.4f}", f"{ratios[-1]:.3f}")
    backend.close()
    table.add_row("median", "", f"{statistics.median(a_ms):.4f}", f"{statistics.median(b_ms):.4f}", f"{statistics.median(ratios):.3f}")
    Console(width=200).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
