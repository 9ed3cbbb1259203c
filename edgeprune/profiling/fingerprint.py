"""Device fingerprint: what a latency number is only valid for.

Cached latencies are keyed by a hash of this dict, so anything that changes the speed of the same
ONNX graph (the CPU, the runtime and its version, threads, precision, graph optimisation) must be
in it; anything that does not (hostname, time of day) must stay out, or the cache never hits.
"""

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import onnxruntime

from edgeprune.targets import Profile


def host_fingerprint(profile: Profile) -> dict[str, Any]:
    """Fingerprint of this host running ``profile`` through ONNX Runtime."""
    return {
        "profile": profile.name,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.system(),
        "runtime": "onnxruntime",
        "runtime_version": onnxruntime.__version__,
        "provider": profile.provider,
        "intra_op_threads": profile.intra_op_threads,
        "inter_op_threads": profile.inter_op_threads,
        "execution_mode": profile.execution_mode,
        "precision": profile.precision,
        "graph_optimization": profile.graph_optimization,
        # The exported graph (and so its speed) depends on the opset, not only on the widths.
        "opset": profile.opset,
    }


def fingerprint_hash(fp: dict[str, Any]) -> str:
    """Short stable hash of a fingerprint: key order and whitespace do not matter."""
    canonical = json.dumps(fp, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _cpu_model() -> str:
    # /proc/cpuinfo names the exact part ("AMD EPYC 7B13"); platform.processor() is often just
    # "x86_64" on Linux, so it is only the fallback (macOS, Windows, ARM boards without the field).
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
