"""report.json, assembled in one place: the stages hand over typed records, this module builds the
dict and checks it against the schema (:mod:`edgeprune.report.schema`) before anyone writes it.

CI jobs and users parse report.json, so its keys are an interface, and one module that builds
every section is where that interface can be read whole. Each section is built from a record
whose fields say what the stage measured: the prune job's :class:`PruneParts` and the
exporters' :class:`ExportRecord`, which a re-export (``edgeprune export``) applies to the
report.json of an earlier run. Writing the validated dict is the packager's job
(``edgeprune.exporters.package.finalize``), together with the manifest that hashes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import edgeprune
from edgeprune.profiling.stats import LatencyStats
from edgeprune.report.schema import check_report


@dataclass(frozen=True)
class RunFacts:
    """What was pruned, for which target and budget, and how long each phase took."""

    target: str
    fingerprint: dict
    profile: dict
    budget_ms: float
    budget_met: bool
    budget_kind: str  # "speedup" or "absolute": how the user stated the budget
    drift: dict | None
    anchor_check: dict | None
    budget_policy: dict
    model: dict
    task: dict
    input_shape: tuple[int, ...]
    data: dict
    preprocess: dict
    phases: dict


@dataclass(frozen=True)
class Baseline:
    """The unpruned model: test score, held-out score (the search's proxy), latency and size."""

    accuracy: float
    holdout_accuracy: float
    latency: LatencyStats
    macs: int
    params: int


@dataclass(frozen=True)
class Pruned:
    """The delivered model: test score after the fine-tune, the pick's proxy score before it,
    the latency of its shipped file, its size and widths."""

    accuracy: float
    holdout_accuracy_before_finetune: float
    latency: LatencyStats
    macs: int
    params: int
    widths: dict
    group_widths: dict
    dropped_blocks: tuple[str, ...]


@dataclass(frozen=True)
class SearchSummary:
    """How the search ran and what it cost."""

    strategy: str
    mode: str
    encoding: str
    objectives: tuple[str, ...]
    population: int
    generations: int
    rounds: int
    evaluations: int  # distinct networks scored, a resumed run's included
    restored: int  # of them, answered from the interrupted run's checkpoint (--resume)
    latency_measurements: int
    surrogate_skips: int  # not timed: predicted far over the limit or under the focus floor, or outranked (edgeprune.problem.skipping)
    cache_hits: int
    workers: dict  # where candidates were scored: this process, or Ray workers
    farm: dict | None  # the agents' share of the timing (--agents), else None
    wall_s: float
    seed: int
    history: tuple[dict, ...]


@dataclass(frozen=True)
class RoundRecord:
    """One search round's summary (the checkpoint keeps the same dict) and whether the run kept
    its model files under ``rounds/round-N/`` (a run of several rounds does)."""

    number: int
    summary: Mapping[str, Any]
    files: bool


@dataclass(frozen=True)
class Robustness:
    """Robust accuracy under the run's attack: on the test split of each model itself, and on the
    shared adversarial set the search ranked by (None where robustness was no objective)."""

    baseline_test: float
    pruned_test: float
    baseline_holdout: float | None
    pruned_holdout_before_finetune: float | None
    section: dict  # the attack, the sets and the settings


@dataclass(frozen=True)
class PruneParts:
    """Everything a prune run reports, besides its export."""

    run: RunFacts
    baseline: Baseline
    pruned: Pruned
    pareto: tuple[dict, ...]
    search: SearchSummary
    rounds: tuple[RoundRecord, ...]
    finetune: dict
    per_layer: list[dict] | None
    robustness: Robustness | None = None
    sparsity: dict | None = None
    extra_files: Mapping[str, str] = field(default_factory=dict)  # role → file the task adds (detection's .pt)
    memory: dict | None = None  # peak memory of baseline and pick, where the run measured it


@dataclass(frozen=True)
class ExportRecord:
    """What the exporters made: report.json's ``export`` section, the FP32 file's parity with
    torch, and the files written by role (None: not written this time)."""

    section: dict
    parity: dict
    files: Mapping[str, str | None]

    @classmethod
    def of(cls, package) -> "ExportRecord":
        """``package``: an ``edgeprune.exporters.package.Package`` (read by attribute: the
        exporters stand above report/)."""
        return cls(package.section, package.fp32.parity, package.artifacts())


def prune_report(parts: PruneParts, export: ExportRecord) -> dict:
    """report.json of a prune run (its schema: edgeprune/report/report.schema.json), checked."""
    report = _run_section(parts.run) | {
        "baseline": _baseline(parts.baseline, parts.robustness),
        "pruned": _pruned(parts.pruned, parts.robustness),
        "pareto": list(parts.pareto),
        "search": _search(parts.search),
        "rounds": [_round(r) for r in parts.rounds],
        "finetune": parts.finetune,
        "parity": export.parity,
        "phases": parts.run.phases,
        "artifacts": {
            "onnx": "model.onnx", "plan": "plan.json", "state_dict": "state_dict.pt",
            "engine": None, "int8": None, "manifest": None, "pareto_plot": "pareto.png", **parts.extra_files,
        },
        "per_layer": parts.per_layer,
    }
    if parts.robustness is not None:
        report["robustness"] = parts.robustness.section
    if parts.sparsity is not None:
        report["sparsity"] = parts.sparsity
    if parts.memory is not None:
        report["memory"] = parts.memory
    return exported(report, export)


def exported(report: Mapping[str, Any], export: ExportRecord) -> dict:
    """``report`` with the export's section, parity and files, checked: a prune's, or the
    report.json of an earlier run exported again (an engine it had stays named when this export
    built none)."""
    artifacts = dict(report["artifacts"])
    files = dict(export.files)
    files["engine"] = files.get("engine") or artifacts.get("engine")
    new = {**report, "export": export.section, "parity": export.parity, "artifacts": artifacts | files}
    check_report(new)
    return new


def _run_section(run: RunFacts) -> dict:
    return {
        "edgeprune_version": edgeprune.__version__,
        "target": run.target,
        "fingerprint": run.fingerprint,
        "profile": run.profile,
        "budget_ms": run.budget_ms,
        "budget_met": run.budget_met,
        "budget_kind": run.budget_kind,
        "drift": run.drift,
        "anchor_check": run.anchor_check,
        "budget_policy": run.budget_policy,
        "model": run.model,
        "task": run.task,
        "input_shape": list(run.input_shape),
        "data": run.data,
        "preprocess": run.preprocess,
    }


def _baseline(baseline: Baseline, robust: Robustness | None) -> dict:
    section = {
        "accuracy": baseline.accuracy, "holdout_accuracy": baseline.holdout_accuracy,
        "latency_ms": baseline.latency.to_dict(), "macs": baseline.macs, "params": baseline.params,
    }
    if robust is not None:
        section["robust_accuracy"] = robust.baseline_test
        if robust.baseline_holdout is not None:
            section["holdout_robust_accuracy"] = robust.baseline_holdout
    return section


def _pruned(pruned: Pruned, robust: Robustness | None) -> dict:
    section = {
        "accuracy": pruned.accuracy, "holdout_accuracy_before_finetune": pruned.holdout_accuracy_before_finetune,
        "latency_ms": pruned.latency.to_dict(), "macs": pruned.macs, "params": pruned.params,
        "widths": pruned.widths, "group_widths": pruned.group_widths, "dropped_blocks": list(pruned.dropped_blocks),
    }
    if robust is not None:
        section["robust_accuracy"] = robust.pruned_test
        if robust.pruned_holdout_before_finetune is not None:
            section["holdout_robust_accuracy_before_finetune"] = robust.pruned_holdout_before_finetune
    return section


def _search(search: SearchSummary) -> dict:
    return {
        "strategy": search.strategy,
        "mode": search.mode,
        "encoding": search.encoding,
        "objectives": list(search.objectives),
        "population": search.population,
        "generations": search.generations,
        "rounds": search.rounds,
        "evaluations": search.evaluations,
        "restored": search.restored,
        "latency_measurements": search.latency_measurements,
        "surrogate_skips": search.surrogate_skips,
        "cache_hits": search.cache_hits,
        "workers": search.workers,
        **({"farm": search.farm} if search.farm is not None else {}),
        "wall_s": search.wall_s,
        "seed": search.seed,
        "history": list(search.history),
    }


def _round(record: RoundRecord) -> dict:
    """A round's summary as report.json lists it: the fine-tune's log is the run's ``finetune``."""
    section = {k: v for k, v in record.summary.items() if k != "finetune"}
    if record.files:
        section |= {"plan": f"rounds/round-{record.number}/plan.json", "state_dict": f"rounds/round-{record.number}/state_dict.pt"}
    return section
