"""Latency cache keys and percentiles for finished ONNX files (torch-free: the CI gate imports it).

A search candidate is keyed by its widths; a deployable file is keyed by its *graph*. Metadata is
left out of the key on purpose: export writes the measured latency into the file's metadata after
timing it, and the gate must still find that measurement in the cache for the finished file.
"""

from __future__ import annotations

import hashlib

from edgeprune.profiling.stats import LatencyStats

# The percentiles every measurement records (see LatencyStats), by the number users write.
PERCENTILES = {50: "median_ms", 90: "p90_ms", 99: "p99_ms"}


def graph_key(onnx_bytes: bytes) -> str:
    """Cache key of an ONNX file: hash of its graph and opsets, independent of metadata_props."""
    import onnx  # lazily: the CLI imports this module to build its parser

    proto = onnx.load_from_string(onnx_bytes)
    digest = hashlib.sha256(proto.graph.SerializeToString(deterministic=True))
    for opset in proto.opset_import:
        digest.update(f"|{opset.domain}:{opset.version}".encode())
    return "onnx-" + digest.hexdigest()[:24]


def percentile_ms(stats: LatencyStats, percentile: int) -> float:
    """The ``percentile`` (50, 90 or 99) of a measurement, in ms."""
    return float(getattr(stats, PERCENTILES[percentile]))
