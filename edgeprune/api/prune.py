"""``edgeprune.prune(model, ...)``: the prune job from Python, the one path the command line takes too.

The keywords are the command line's options by their Python names (``--finetune-epochs`` is
``finetune_epochs=``), parsed by the same :class:`~edgeprune.api.settings.PruneOptions`
into the same typed config, so a bad value is the same one-line ``UserError``. What Python adds:
the model may be an ``nn.Module`` and the task plain objects (a DataLoader, a score function),
and the pruned network comes back as an object with the report.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.api.settings import PruneOptions
from edgeprune.errors import UserError

# Set from the arguments of prune() itself, not from **options.
_OWN = {"model", "task", "target", "data", "budget_ms", "speedup", "progress", "out", "resume"}
_OPTIONS = sorted(f.name for f in dataclasses.fields(PruneOptions) if f.name not in _OWN)


@dataclass(frozen=True)
class PruneReport:
    """The numbers most callers read, typed; ``data`` is the whole report.json."""

    target: str
    budget_ms: float
    budget_met: bool
    metric: str
    baseline_ms: float
    pruned_ms: float
    baseline_score: float
    pruned_score: float
    baseline_params: int
    pruned_params: int
    data: dict

    @property
    def speedup(self) -> float:
        """How many times faster the delivered file runs than the unpruned model, both timed on the target."""
        return self.baseline_ms / self.pruned_ms

    @classmethod
    def from_dict(cls, report: dict) -> "PruneReport":
        base, pruned = report["baseline"], report["pruned"]
        return cls(
            target=report["target"], budget_ms=report["budget_ms"], budget_met=report["budget_met"], metric=report["task"]["metric"],
            baseline_ms=base["latency_ms"]["median"], pruned_ms=pruned["latency_ms"]["median"],
            baseline_score=base["accuracy"], pruned_score=pruned["accuracy"],
            baseline_params=base["params"], pruned_params=pruned["params"], data=report,
        )


@dataclass(frozen=True)
class PruneResult:
    """The pruned network, its report, and where its files are (``out`` is None, and ``files``
    empty, when :func:`prune` was not given ``out=``)."""

    model: Any  # torch.nn.Module: typed loosely so that importing edgeprune.api does not import torch
    report: PruneReport
    out: Path | None
    files: dict[str, Path]

    @property
    def budget_met(self) -> bool:
        return self.report.budget_met


def prune(
    model: Any,
    example_input: Any = None,
    *,
    target: str = "x86-cpu",
    speedup: float | None = None,
    budget_ms: float | None = None,
    task: Any = None,
    data: str | None = None,
    calibration: Iterable | None = None,
    score: Callable | None = None,
    fine_tune: Callable | None = None,
    test_score: Callable | None = None,
    metric: str = "score",
    out: str | Path | None = None,
    progress: bool | None = None,
    **options: Any,
) -> PruneResult:
    """Prune ``model`` for ``target`` to ``speedup`` (or ``budget_ms``) and return the result.

    ``model``: an ``nn.Module`` (a copy is pruned) or a spec as on the command line
    (``torchvision:mobilenet_v2``, a file, ``package.module:factory``). The task: ``task=``
    ``"classification"`` (the default: ``data=`` names the data set, ``example_input`` its input
    shape), ``"detection"``, a ``"package.module:factory"``, an object with the user-task methods,
    or the objects one by one: ``calibration=`` (input batches or a DataLoader), ``score=``
    (``score(model) -> [0, 1]``), optional ``fine_tune=`` (``fine_tune(model, teacher, epochs)``)
    and ``test_score=``. ``out=``: write the output folder there, as the command line does;
    without it the files go to a temporary folder that is removed. ``progress``: rich progress
    bars on a terminal or in Jupyter, elsewhere lines on the ``edgeprune`` logger (route them
    with the logging module); False for neither. Every other keyword is a command-line option by
    its Python name, e.g. ``population=8, finetune_epochs=2``.
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise UserError(f"edgeprune.prune() has no option {', '.join(unknown)}; the options are {', '.join(_OPTIONS)} (the command line's, with _ for -)")
    supplied, task_name = _supplied(model, example_input, task, calibration, score, fine_tune, test_score, metric)
    given = {"data": data} if data is not None else {}
    if example_input is not None and supplied.task is None and "input_shape" not in options:
        given["input_shape"] = "x".join(str(n) for n in tuple(example_input.shape)[1:])
    spec = model if isinstance(model, str) else f"object:{type(model).__name__}"
    with tempfile.TemporaryDirectory(prefix="edgeprune-") as scratch:
        folder = Path(out) if out is not None else Path(scratch) / "out"
        cfg = PruneOptions(
            spec, task=task_name, target=target, speedup=speedup, budget_ms=budget_ms, out=str(folder),
            progress=True if progress is None else bool(progress), **given, **options,
        ).parse()
        return run_config(cfg, supplied, keep_files=out is not None)


def _supplied(model, example_input, task, calibration, score, fine_tune, test_score, metric):
    """The objects the job takes as they are (:class:`~edgeprune.jobs.kinds.Supplied`) and the
    config's task name."""
    from torch import nn

    from edgeprune.jobs.kinds import Supplied
    from edgeprune.tasks.python_task import OBJECT_TASK, object_task

    if not isinstance(model, (str, nn.Module)):
        raise UserError(f"model is a {type(model).__name__}; pass a torch.nn.Module or a spec such as torchvision:mobilenet_v2")
    module = model if isinstance(model, nn.Module) else None
    objects = task is not None and not isinstance(task, str)
    if objects or score is not None or calibration is not None:
        made = object_task(
            task if objects else None, calibration=calibration, score=score, fine_tune=fine_tune,
            test_score=test_score, example_input=example_input, metric=metric,
        )
        return Supplied(module, made), OBJECT_TASK
    if fine_tune is not None or test_score is not None:
        raise UserError("fine_tune= and test_score= belong to a task of Python objects; pass calibration= and score= with them")
    return Supplied(module), task or "classification"


def run_config(cfg, supplied=None, keep_files: bool = True) -> PruneResult:
    """The prune of a parsed config: what :func:`prune` and ``edgeprune prune`` both run."""
    from edgeprune.jobs.kinds import Supplied
    from edgeprune.jobs.prune import prune_job

    outcome = prune_job(cfg, supplied or Supplied())
    out = Path(cfg.output.out)
    files = {p.name: p for p in sorted(out.iterdir()) if p.is_file()} if keep_files else {}
    return PruneResult(outcome.model, PruneReport.from_dict(outcome.report), out if keep_files else None, files)
