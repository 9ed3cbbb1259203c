"""``edgeprune.gate(...)``: the CI latency gate from Python, the same budgets, statistics and
verdict as ``edgeprune gate``, returned as :class:`~edgeprune.jobs.gate.GateResult` objects
(``passed``, ``measured_ms``, ``to_dict()``) instead of an exit code."""

from __future__ import annotations

from pathlib import Path

from edgeprune.errors import UserError


def gate(
    model: str | Path | None = None, budget_ms: float | None = None, *, budgets: str | Path | None = None,
    target: str | None = None, percentile: int | None = None, tolerance: float | None = None,
    min_robust_accuracy: float | None = None, cache: str | Path | None = None, no_cache: bool = False,
    progress: bool = False, allow_external_data: bool = False,
) -> list:
    """Judge ``model`` (an ONNX file) against ``budget_ms``, or every entry of a ``budgets`` YAML
    file; one result per model, each ``passed`` when within its budget."""
    from edgeprune.jobs.gate import load_budgets, run_gate, single_budget

    if budgets is not None and (model is not None or budget_ms is not None):
        raise UserError("pass either a budgets file (--budgets FILE; budgets=) or one model and its budget (MODEL.onnx --budget-ms X; model=, budget_ms=), not both")
    if budgets is not None:
        judged = load_budgets(str(budgets), target, percentile, tolerance, min_robust_accuracy)
    elif model is not None and budget_ms is not None:
        judged = [single_budget(str(model), budget_ms, target, percentile, tolerance, min_robust_accuracy)]
    else:
        raise UserError("nothing to gate; pass a budgets file (--budgets FILE; budgets=), or one model and its budget (MODEL.onnx --budget-ms X [--target T]; model=, budget_ms=)")
    return run_gate(judged, cache=str(cache) if cache else None, no_cache=no_cache, progress=progress, allow_external_data=allow_external_data)
