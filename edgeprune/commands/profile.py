"""``edgeprune profile``: the latency of one ONNX file on a target, through the latency cache.

The cache key of a file is the hash of its graph and opsets (metadata excluded) plus its input
shape — the same key `gate` and `export` use — so re-profiling the same export (a CI job on
every commit) costs a lookup, while any change to the graph or the weights measures again. ``--fresh`` (and ``--repeats N`` > 1) always measure.
"""

from __future__ import annotations

import argparse
import json

from edgeprune.commands.args import add_cache_args
from edgeprune.errors import UserError


def add_parser(sub) -> None:
    pr = sub.add_parser("profile", help="measure an ONNX model's latency on a target (the cache answers repeats)")
    pr.add_argument("onnx", help="ONNX file with a fixed input shape, or a symbolic batch timed at the target's batch (with --validate-surrogate: a model spec such as torchvision:mobilenet_v2)")
    pr.add_argument("--target", default="x86-cpu", help="target profile name or YAML path (default x86-cpu)")
    pr.add_argument("--repeats", type=int, default=1, help="independent measurements (each pools the profile's measure.sessions fresh sessions); the median of their medians is shown (default 1)")
    pr.add_argument("--json", action="store_true", help="print the stats as JSON")
    add_cache_args(pr)
    pr.add_argument("--fresh", action="store_true", help="measure even when the cache has the model (the result is still stored if new)")
    pr.add_argument("--allow-external-data", action="store_true", help="time a model whose tensors are in separate data files (plain files beside the model only: no subfolder, nothing hidden, no link); refused by default")
    sv = pr.add_argument_group("surrogate check (--validate-surrogate MODEL)")
    sv.add_argument("--validate-surrogate", action="store_true", help="fit the latency surrogate on random pruned variants of MODEL and print its error on others")
    sv.add_argument("--input-shape", help="CxHxW of MODEL, e.g. 3x32x32")
    sv.add_argument("--num-classes", type=int, help="classes for torchvision:NAME / factory models")
    sv.add_argument("--fit", type=int, default=40, help="variants measured with per-node times to fit the surrogate (default 40)")
    sv.add_argument("--validate", type=int, default=60, help="other variants measured to score it (default 60)")
    sv.add_argument("--seed", type=int, default=0, help="seed of the random widths (default 0)")


def run(args: argparse.Namespace) -> int:
    from edgeprune.profiling.targets import load_profile

    profile = load_profile(args.target)
    if args.validate_surrogate:
        return _validate_surrogate(args, profile)
    for flag in ("input_shape", "num_classes"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag.replace('_', '-')} only applies with --validate-surrogate; remove it (an ONNX file has its own shape)")
    return _profile_file(args, profile)


def _profile_file(args, profile) -> int:
    """Through the Profiler, like prune and gate: a profile with ``agent:`` times on the device."""
    from edgeprune.jobs.profile import profile_bytes, require_onnx_target
    from edgeprune.profiling.onnx_file import load_onnx

    require_onnx_target(profile)
    blob, shape = load_onnx(args.onnx, batch=profile.batch, allow_external_data=args.allow_external_data)
    result = profile_bytes(blob, shape, profile, args.onnx, repeats=args.repeats, fresh=args.fresh, cache=args.cache, no_cache=args.no_cache)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    source = " (from cache)" if result.from_cache else ""
    for r in result.runs:
        print(f"{args.onnx} on {profile.name}{source}: median {r.median_ms:.4f} ms  p90 {r.p90_ms:.4f}  p99 {r.p99_ms:.4f}  cv {r.cv:.3f}  n {r.n}")
    if len(result.runs) > 1:
        print(f"median of {len(result.runs)} medians: {result.median_ms:.4f} ms")
    return 0


def _validate_surrogate(args, profile) -> int:
    from edgeprune.commands.args import check_num_classes
    from edgeprune.api.settings import parse_shape
    from edgeprune.jobs.surrogate_check import validate_surrogate

    if args.input_shape is None:
        raise UserError("--validate-surrogate needs --input-shape CxHxW (e.g. 3x32x32) for MODEL")
    if args.fit < 2 or args.validate < 1:
        raise UserError(f"--fit must be at least 2 and --validate at least 1 (got {args.fit}, {args.validate})")
    check_num_classes(args.num_classes)
    result = validate_surrogate(
        args.onnx, profile, parse_shape(args.input_shape), num_classes=args.num_classes,
        n_fit=args.fit, n_validate=args.validate, seed=args.seed,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return 0
