"""What the prune job needs per task and per objective: two small registries.

A task name maps to a :class:`TaskKind`: how the job loads its data, task object and model, which
of the classification flags it still takes, and its own checks. Any name that is not registered
is ``package.module:factory``, a user's task (:data:`USER_TASK`). An objective name maps to what
it needs besides a score (:data:`OBJECTIVE_NEEDS`): robustness needs a PGD attack, so ART and a
classifier on classification data. A new task or objective is one entry here plus its module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from edgeprune.errors import UserError
from edgeprune.jobs.settings import PruneConfig
from edgeprune.problem.attack import Attack
from edgeprune.problem.robustness import RobustPruning
from edgeprune.profiling.targets import Profile
from edgeprune.tasks.data import DataBundle, load_data
from edgeprune.tasks.models import check_input, load_model, object_spec
from edgeprune.tasks.task import Classification, Recipe, Task
from edgeprune.tasks.user_task import load_task


@dataclass(frozen=True)
class ObjectiveNeeds:
    attack: bool = False  # scored on a shared PGD adversarial set (edgeprune.problem.robustness)


OBJECTIVE_NEEDS = {"robustness": ObjectiveNeeds(attack=True)}


def shared_attack(objectives: tuple[str, ...]) -> bool:
    """Whether an objective is scored on a shared adversarial set."""
    return any(OBJECTIVE_NEEDS.get(name, ObjectiveNeeds()).attack for name in objectives)


def attacks(cfg: PruneConfig) -> bool:
    """Whether the run measures robustness: an objective, or adversarial fine-tuning."""
    return cfg.robust.adv_finetune or shared_attack(cfg.search.objectives)


@dataclass(frozen=True)
class Loaded:
    """What a task kind loads: the data (None where the task brings its own), the task, the model."""

    data: DataBundle | None
    task: Task
    model: nn.Module
    spec: dict
    robust: RobustPruning | None = None  # the attack, where the run measures robustness


@dataclass(frozen=True)
class Supplied:
    """What a caller of the Python API hands over as objects instead of specs: the model (its
    spec then reads ``object:ClassName``) and, for a task of Python objects, the checked task."""

    model: nn.Module | None = None
    task: Task | None = None


@dataclass(frozen=True)
class TaskKind:
    load: Callable[[PruneConfig, Profile, Supplied], Loaded]
    brings: str | None = None  # what it brings instead of classification's data and recipe flags
    keeps: tuple[str, ...] = ()  # classification flags it takes all the same
    validate: Callable[[PruneConfig], None] = lambda cfg: None
    classifies: bool = False  # a classifier on classification data: what a PGD attack needs
    sparsity: bool = True  # keeps 2:4 masks through its fine-tune


def _robust(cfg: PruneConfig, data: DataBundle) -> RobustPruning | None:
    if not attacks(cfg):
        return None
    r = cfg.robust
    attack = Attack(r.attack_eps, r.attack_steps, r.attack_alpha)
    return RobustPruning(attack, data, r.adv_subnets, r.adv_samples, r.robust_test_samples, cfg.seed, cfg.output.progress)


def _model(cfg: PruneConfig, supplied: Supplied, num_classes: int | None) -> tuple[nn.Module, dict]:
    """The model object the caller supplied (a copy: the run never changes the caller's), else
    the one ``cfg.model`` names."""
    if supplied.model is not None:
        return copy.deepcopy(supplied.model).cpu().eval(), object_spec(supplied.model, num_classes)
    return load_model(cfg.model, num_classes=num_classes, weights=cfg.weights)


def _classification(cfg: PruneConfig, profile: Profile, supplied: Supplied) -> Loaded:
    t, r = cfg.task, cfg.recipe
    data = load_data(t.data, input_shape=t.input_shape, pad=t.pad, mean=t.mean, std=t.std, holdout=t.holdout, seed=cfg.seed)
    model, spec = _model(cfg, supplied, t.num_classes or data.num_classes)
    check_input(model, tuple(data.preprocess.input_shape), data.num_classes)
    robust = _robust(cfg, data)
    adversary = robust.adversary() if cfg.robust.adv_finetune else None
    recipe = Recipe(r.lr, r.batch_size, r.kd_alpha, r.kd_temperature, cfg.output.progress, adversary, cfg.robust.adv_ratio)
    return Loaded(data, Classification(data, recipe, seed=cfg.seed), model, spec, robust)


def _detection(cfg: PruneConfig, profile: Profile, supplied: Supplied) -> Loaded:
    from edgeprune.tasks.detection import Detection

    t = cfg.task
    task = Detection(t.data.removeprefix("yolo:"), t.input_shape[1] if t.input_shape else 640, t.holdout, cfg.seed, t.detection_metric)
    try:
        model, spec = _model(cfg, supplied, t.num_classes or task.num_classes)
        model.set_head(t.yolo_head)
    except BaseException:
        task.close()  # its work folder: nothing of a failed run is left behind
        raise
    model.model.names = dict(task.names)
    return Loaded(None, task, model, {**spec, "yolo_head": model.head})


def _user_task(cfg: PruneConfig, profile: Profile, supplied: Supplied) -> Loaded:
    task = supplied.task if supplied.task is not None else load_task(cfg.task.name)
    model, spec = _model(cfg, supplied, cfg.task.num_classes)
    task.check_model(model, profile.opset)
    return Loaded(None, task, model, spec)


def _no_detection_metric(cfg: PruneConfig) -> None:
    if cfg.task.detection_metric != "mAP50-95":
        raise UserError("--detection-metric applies to --task detection; drop it")
    if cfg.task.yolo_head != "auto":
        raise UserError("--yolo-head applies to --task detection; drop it")


def _check_detection(cfg: PruneConfig) -> None:
    if not cfg.task.data.startswith("yolo:"):
        raise UserError("--task detection reads a YOLO data set: pass --data yolo:PATH/data.yaml (make one with `edgeprune data make-detection OUT`)")
    if not cfg.model.startswith("yolo:"):
        raise UserError(f"--task detection prunes ultralytics detectors: pass yolo:yolov8n.yaml (or yolo:FILE.pt) instead of {cfg.model[:80]}")
    if cfg.task.input_shape:
        c, h, w = cfg.task.input_shape
        if c != 3 or h != w or h % 32:
            raise UserError(f"--input-shape {c}x{h}x{w}: a YOLO input is 3xSxS with S a multiple of 32, e.g. 3x640x640")
    if cfg.search.depth:
        raise UserError("--depth has no depth genes for YOLO (its blocks are not torchvision's); drop --depth")


TASK_KINDS = {
    "classification": TaskKind(_classification, validate=_no_detection_metric, classifies=True),
    "detection": TaskKind(
        _detection, brings="ultralytics' training recipe", keeps=("data", "input_shape", "holdout"),
        validate=_check_detection, sparsity=False,
    ),
}
# --task package.module:factory: a user's task, with its own data and training.
USER_TASK = TaskKind(_user_task, brings="its own data and training", validate=_no_detection_metric)


def task_kind(name: str) -> TaskKind:
    return TASK_KINDS.get(name, USER_TASK)
