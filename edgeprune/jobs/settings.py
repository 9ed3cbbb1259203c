"""The prune job's settings: small typed groups, parsed once at the face (:mod:`edgeprune.commands`).

Every value here is already parsed (objective names, an input shape, a sparsity pattern, a Ray
address), so no step of the job turns a string into a value again. Each group reads and writes
its part of ``run.json`` (``to_dict``/``from_dict``): the checkpoint keeps typed JSON values,
which :meth:`RunCheckpoint.read_config <edgeprune.jobs.checkpoint.RunCheckpoint.read_config>`
checks field by field against the annotations below before ``from_dict`` runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from edgeprune.errors import UserError
from edgeprune.problem.attack import (
    DEFAULT_ALPHA, DEFAULT_EPS, DEFAULT_SAMPLES, DEFAULT_STEPS, DEFAULT_SUBNETS, DEFAULT_TEST_SAMPLES,
)
from edgeprune.problem.pruning import DEFAULT_OBJECTIVES
from edgeprune.space.sparsity import Pattern


class _Group:
    """``to_dict``/``from_dict`` of a flat frozen dataclass whose values are JSON scalars, tuples
    (JSON lists) or a sparsity :class:`Pattern` (``[keep, group]``)."""

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict):
        """The group from ``values`` (type-checked by the caller); missing keys keep their defaults."""
        return cls(**{f.name: _typed(f.name, values[f.name]) for f in dataclasses.fields(cls) if f.name in values})


def _plain(value):
    if isinstance(value, Pattern):
        return [value.keep, value.group]
    return list(value) if isinstance(value, tuple) else value


def _typed(name: str, value):
    if name == "sparsity" and value is not None:
        if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
            raise UserError(f"run.json: recipe.sparsity must be [keep, group], e.g. [2, 4], got {str(value)[:40]}")
        return Pattern(*value)
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class TaskSettings(_Group):
    """What the model is pruned for and the data it is scored on."""

    name: str = "classification"  # --task: classification, detection or package.module:factory
    data: str = "fashion-mnist"  # the data set's spec, resolved by tasks.data.load_data
    input_shape: tuple[int, int, int] | None = None
    pad: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    holdout: int = 5000
    detection_metric: str = "mAP50-95"
    yolo_head: str = "auto"  # auto | end2end | dense (edgeprune.tasks.yolo.HEADS)


@dataclass(frozen=True)
class SearchSettings(_Group):
    """The search: its algorithm, genome, objectives and size."""

    strategy: str = "nsga2"
    encoding: str = "width"
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    population: int = 16
    generations: int = 8
    patience: int = 0
    rounds: int = 1
    screen: bool = True
    depth: bool = False
    mode: str = "channels"


@dataclass(frozen=True)
class RecipeSettings(_Group):
    """Selection and fine-tuning: short tunes, widening, the final distillation and 2:4 sparsity."""

    finetune_epochs: float = 1.0
    refine_epochs: float = 0.2
    refine_top: int = 6
    widen_passes: int = 3
    lr: float = 0.01
    batch_size: int = 128
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    sparsity: Pattern | None = None
    sparsity_epochs: float = 0.5


@dataclass(frozen=True)
class RobustSettings(_Group):
    """The PGD attack of the robustness objective and of adversarial fine-tuning."""

    attack_eps: float = DEFAULT_EPS
    attack_steps: int = DEFAULT_STEPS
    attack_alpha: float = DEFAULT_ALPHA
    adv_finetune: bool = False
    adv_ratio: float = 0.5
    adv_samples: int = DEFAULT_SAMPLES
    adv_subnets: int = DEFAULT_SUBNETS
    robust_test_samples: int = DEFAULT_TEST_SAMPLES


@dataclass(frozen=True)
class ScaleOutSettings(_Group):
    """Where candidates are scored and timed besides this process."""

    ray_address: str | None = None  # None: scored here; "": a local Ray cluster; else ray:ADDRESS
    agents: str | None = None  # --agents: URLs or a farm file, read with the target's name


@dataclass(frozen=True)
class OutputSettings(_Group):
    """Where the run writes, and what it reads back: the latency cache, a checkpoint."""

    out: str = "edgeprune-out"
    cache: str | None = None
    no_cache: bool = False
    progress: bool = True
    resume: bool = False  # continued from OUT.checkpoint


# run.json's keys of the groups, in PruneConfig's field order.
GROUPS = {
    "task": TaskSettings, "search": SearchSettings, "recipe": RecipeSettings,
    "robust": RobustSettings, "scale_out": ScaleOutSettings, "output": OutputSettings,
}


@dataclass(frozen=True)
class PruneConfig:
    """One prune: the model, the target and its budget, and the groups of settings."""

    model: str
    target: str = "x86-cpu"
    weights: str | None = None
    budget_ms: float | None = None
    speedup: float | None = None
    max_memory_mb: float | None = None  # peak memory of one inference in the target's runtime
    seed: int = 0
    task: TaskSettings = field(default_factory=TaskSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    recipe: RecipeSettings = field(default_factory=RecipeSettings)
    robust: RobustSettings = field(default_factory=RobustSettings)
    scale_out: ScaleOutSettings = field(default_factory=ScaleOutSettings)
    output: OutputSettings = field(default_factory=OutputSettings)

    def to_dict(self) -> dict:
        """run.json's ``config``: the top-level values and one object per group."""
        top = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in GROUPS}
        return top | {name: getattr(self, name).to_dict() for name in GROUPS}

    @classmethod
    def from_dict(cls, top: dict, groups: dict[str, dict]) -> "PruneConfig":
        """From run.json's checked top-level values and the checked values of each group."""
        return cls(**top, **{name: GROUPS[name].from_dict(groups.get(name, {})) for name in GROUPS})
