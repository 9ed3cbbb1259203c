"""Per-layer latency, before and after pruning: where the time went, layer by layer.

ONNX Runtime's per-node profile of each network (the backend's ``node_times``: one profiled run of
a few dozen inferences, cached like latencies) is charged to the Conv/Linear layers it computes by
:func:`edgeprune.profiling.surrogate.assign_nodes` (pools, reorders and unfused adds go to the
layer before them). Profiling adds per-node overhead, so a layer's milliseconds are its *share*
of the profiled run times the model's measured median, not the profiled number itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from edgeprune.space.layers import layer_descriptors
from edgeprune.profiling.stats import NodeTimes
from edgeprune.profiling.surrogate import assign_nodes


def layer_shares(model: nn.Module, input_shape: Sequence[int], nodes: NodeTimes, latency_ms: float) -> dict[str, dict]:
    """``{layer name: {"kind", "out", "share", "ms"}}`` of the timed layers of ``model``."""
    layers = layer_descriptors(model, input_shape)
    times = assign_nodes(layers, nodes)
    total = sum(times.values())
    if total <= 0:
        return {}
    return {
        layers[i].name: {"kind": layers[i].kind, "out": layers[i].cout, "share": t / total, "ms": latency_ms * t / total}
        for i, t in sorted(times.items())
    }


def per_layer_table(baseline: dict[str, dict], pruned: dict[str, dict]) -> list[dict]:
    """One row per layer of the baseline, in its order: widths and milliseconds before and after
    (``None`` after where the pruned network's profile had no node for it)."""
    rows = []
    for name, before in baseline.items():
        after = pruned.get(name)
        rows.append({
            "layer": name,
            "kind": before["kind"],
            "out_before": before["out"],
            "out_after": after["out"] if after else None,
            "ms_before": before["ms"],
            "ms_after": after["ms"] if after else None,
            "share_before": before["share"],
            "share_after": after["share"] if after else None,
        })
    return rows
