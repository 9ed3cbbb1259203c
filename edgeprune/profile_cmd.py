"""`edgeprune profile`: the latency of one ONNX file on a target, through the latency cache.

The cache key of a file is the hash of its graph and opsets (metadata excluded) plus its input
shape — the same key `gate` and `export` use — so re-profiling the same export (a CI job on
every commit) costs a lookup, while any change to the graph or the weights measures again. ``--fresh`` (and ``--repeats N`` > 1) always measure.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from edgeprune.errors import UserError
from edgeprune.exporters.measure import graph_key


def run_profile(args) -> int:
    from edgeprune.targets import load_profile

    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    profile = load_profile(args.target)
    if args.validate_surrogate:
        return _validate_surrogate(args, profile)
    for flag in ("input_shape", "num_classes"):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag.replace('_', '-')} only applies with --validate-surrogate; remove it (an ONNX file has its own shape)")
    return _profile_file(args, profile)


def _profile_file(args, profile) -> int:
    from edgeprune.profiling.cache import LatencyCache, default_cache_path
    from edgeprune.profiling.fingerprint import fingerprint_hash
    from edgeprune.profiling.isolated import IsolatedOrtBackend
    from edgeprune.profiling.onnx_file import load_onnx

    blob, shape = load_onnx(args.onnx, batch=profile.batch)
    backend = IsolatedOrtBackend(profile)  # the measuring child starts only when needed
    fingerprint = backend.fingerprint()
    fp_hash, arch = fingerprint_hash(fingerprint), graph_key(blob)
    cache = None if args.no_cache else LatencyCache(Path(args.cache) if args.cache else default_cache_path())
    try:
        hit = None if cache is None or args.fresh or args.repeats > 1 else cache.get(fp_hash, arch, shape)
        if hit is not None:
            runs = [hit.to_dict()]
        else:
            try:
                measured = [backend.measure(blob, shape) for _ in range(args.repeats)]
            except ValueError as exc:
                raise UserError(f"{args.onnx} does not run in onnxruntime ({exc}); export it again") from None
            runs = [m.to_dict() for m in measured]
            keep = [m for m in measured if not m.noisy]
            if cache is not None and keep:
                cache.remember_fingerprint(fp_hash, fingerprint)
                # The run whose median is the median of the runs: one real measurement, typical.
                cache.put(fp_hash, arch, shape, sorted(keep, key=lambda m: m.median_ms)[(len(keep) - 1) // 2])
    finally:
        backend.close()
        if cache is not None:
            cache.close()
    result = {
        "model": args.onnx,
        "target": profile.name,
        "input_shape": list(shape),
        "fingerprint": fingerprint,
        "fingerprint_hash": fp_hash,
        "median_ms": statistics.median(r["median"] for r in runs),
        "from_cache": hit is not None,
        "cache": None if cache is None else str(cache.path),
        "runs": runs,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        source = " (from cache)" if hit is not None else ""
        for r in runs:
            print(f"{args.onnx} on {profile.name}{source}: median {r['median']:.4f} ms  p90 {r['p90']:.4f}  p99 {r['p99']:.4f}  cv {r['cv']:.3f}  n {r['n']}")
        if len(runs) > 1:
            print(f"median of {len(runs)} medians: {result['median_ms']:.4f} ms")
    return 0


def _validate_surrogate(args, profile) -> int:
    from edgeprune.models import parse_shape
    from edgeprune.profiling.surrogate import validate_surrogate

    if args.input_shape is None:
        raise UserError("--validate-surrogate needs --input-shape CxHxW (e.g. 3x32x32) for MODEL")
    if args.fit < 2 or args.validate < 1:
        raise UserError(f"--fit must be at least 2 and --validate at least 1 (got {args.fit}, {args.validate})")
    result = validate_surrogate(
        args.onnx, profile, parse_shape(args.input_shape), num_classes=args.num_classes,
        n_fit=args.fit, n_validate=args.validate, seed=args.seed,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return 0
