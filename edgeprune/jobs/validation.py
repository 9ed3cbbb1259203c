"""Everything that can be wrong with a prune's settings, checked before anything is loaded or timed.

The settings arrive parsed (:mod:`edgeprune.jobs.settings`); these are the rules between them: one
budget, numbers in range, flags that apply only with others, what the task kind and the objectives
need. Each broken rule is one line naming the flag to fix.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from edgeprune.errors import UserError
from edgeprune.files import foreign_entry
from edgeprune.jobs.kinds import attacks, shared_attack, task_kind
from edgeprune.jobs.settings import PruneConfig, RecipeSettings, RobustSettings
from edgeprune.problem.attack import Attack, require_art
from edgeprune.problem.pruning import DEFAULT_OBJECTIVES
from edgeprune.problem.robustness import MAX_SAMPLES, MAX_SUBNETS
from edgeprune.problem.workers import require_ray
from edgeprune.space.channels import MODES
from edgeprune.space.sparsity import PATTERNS

# Bounds of the search's size: each network of a population is scored (and most are timed), so a
# run beyond these would take months; --population 10**9 would fill memory before the first score.
MAX_POPULATION = 1000
MAX_GENERATIONS = 1000
MAX_ROUNDS = 100
STRATEGIES = ("nsga2", "steady-state", "coevolution")  # --strategy (commands/prune.py lists them too)
MAX_CLASSES = 100_000  # a classifier head of more outputs is no CNN pruned for an edge device


def _numeric_rules(cfg: PruneConfig) -> list[tuple[str, object, bool, str]]:
    """(flag, value, ok, what it must be) for every number of the run; NaN fails every test."""
    fin = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    s, r, a, n = cfg.search, cfg.recipe, cfg.robust, cfg.task.num_classes
    return [
        ("--sparsity-epochs", r.sparsity_epochs, fin(r.sparsity_epochs) and r.sparsity_epochs >= 0, "a number of epochs, 0 or more"),
        ("--budget-ms", cfg.budget_ms, cfg.budget_ms is None or (fin(cfg.budget_ms) and cfg.budget_ms > 0), "a positive number of ms"),
        ("--max-memory-mb", cfg.max_memory_mb, cfg.max_memory_mb is None or (fin(cfg.max_memory_mb) and cfg.max_memory_mb > 0), "a positive number of MiB (peak memory of one inference)"),
        ("--speedup", cfg.speedup, cfg.speedup is None or (fin(cfg.speedup) and cfg.speedup > 1), "above 1 (a latency target faster than the original)"),
        ("--population", s.population, 4 <= s.population <= MAX_POPULATION, f"between 4 and {MAX_POPULATION}"),
        ("--generations", s.generations, 1 <= s.generations <= MAX_GENERATIONS, f"between 1 and {MAX_GENERATIONS}"),
        ("--patience", s.patience, s.patience >= 0, "0 (off) or more generations"),
        ("--rounds", s.rounds, 1 <= s.rounds <= MAX_ROUNDS, f"between 1 and {MAX_ROUNDS}"),
        ("--num-classes", n, n is None or 1 <= n <= MAX_CLASSES, f"between 1 and {MAX_CLASSES} (or left out: the dataset's)"),
        ("--finetune-epochs", r.finetune_epochs, fin(r.finetune_epochs) and 0 <= r.finetune_epochs <= 1000, "between 0 and 1000"),
        ("--refine-epochs", r.refine_epochs, fin(r.refine_epochs) and 0 <= r.refine_epochs <= 1000, "between 0 and 1000"),
        ("--refine-top", r.refine_top, r.refine_top >= 1, "at least 1"),
        ("--widen-passes", r.widen_passes, r.widen_passes >= 0, "0 (widening off) or more"),
        ("--lr", r.lr, fin(r.lr) and 0 < r.lr <= 10, "a learning rate above 0 and at most 10 (e.g. 0.01)"),
        ("--kd-alpha", r.kd_alpha, fin(r.kd_alpha) and 0 <= r.kd_alpha <= 1, "a weight between 0 (plain labels) and 1"),
        ("--kd-temperature", r.kd_temperature, fin(r.kd_temperature) and 0 < r.kd_temperature <= 100, "above 0 and at most 100 (e.g. 4)"),
        ("--adv-ratio", a.adv_ratio, fin(a.adv_ratio) and 0 < a.adv_ratio <= 1, "the share of each batch attacked, above 0 and at most 1 (e.g. 0.5)"),
        ("--adv-samples", a.adv_samples, 1 <= a.adv_samples <= MAX_SAMPLES, f"between 1 and {MAX_SAMPLES} held-out images"),
        ("--adv-subnets", a.adv_subnets, 1 <= a.adv_subnets <= MAX_SUBNETS, f"between 1 and {MAX_SUBNETS}"),
        ("--robust-test-samples", a.robust_test_samples, 1 <= a.robust_test_samples <= MAX_SAMPLES, f"between 1 and {MAX_SAMPLES} test images"),
    ]


def _given(group, names: tuple[str, ...]) -> list[str]:
    """The flags among ``names`` (fields of ``group``) set to something other than their default."""
    default = type(group)()
    return [f"--{k.replace('_', '-')}" for k in names if getattr(group, k) != getattr(default, k)]


# The classification flags, by group, that a task bringing its own data and recipe does not take.
_CLASSIFICATION_ONLY = (
    (lambda cfg: cfg.task, ("data", "input_shape", "pad", "mean", "std", "holdout")),
    (lambda cfg: cfg.recipe, ("lr", "batch_size", "kd_alpha", "kd_temperature")),
    (lambda cfg: cfg.robust, tuple(f.name for f in dataclasses.fields(RobustSettings))),
)


def validate(cfg: PruneConfig) -> None:
    """One line for the first broken rule; the output folder is checked last."""
    _check_task(cfg)
    if (cfg.budget_ms is None) == (cfg.speedup is None):
        raise UserError("give exactly one of --budget-ms MS or --speedup X (e.g. --speedup 2)")
    for flag, value, ok, what in _numeric_rules(cfg):
        if not ok:
            raise UserError(f"{flag} must be {what}, got {value}")
    _check_search(cfg)
    _check_robustness(cfg)
    _check_mode(cfg)
    _check_sparsity(cfg)
    if cfg.scale_out.ray_address is not None:
        require_ray()  # before anything is loaded or timed
    s = cfg.search
    if s.depth and (s.strategy != "nsga2" or s.encoding != "width" or s.rounds != 1):
        raise UserError("--depth works with --strategy nsga2, --encoding width and one round; drop --depth or those options")
    _check_out(Path(cfg.output.out))


def _check_task(cfg: PruneConfig) -> None:
    kind = task_kind(cfg.task.name)
    if kind.brings is not None:
        given = [flag for group, names in _CLASSIFICATION_ONLY for flag in _given(group(cfg), tuple(n for n in names if n not in kind.keeps))]
        if given:
            raise UserError(f"--task {cfg.task.name} brings {kind.brings}; drop {', '.join(given)}")
    kind.validate(cfg)


def _check_search(cfg: PruneConfig) -> None:
    s = cfg.search
    if s.strategy not in STRATEGIES:
        raise UserError(f"unknown --strategy {s.strategy!r}; choose {', '.join(STRATEGIES)}")
    if shared_attack(s.objectives) and not task_kind(cfg.task.name).classifies:
        raise UserError(f"the robustness objective attacks a classifier on classification data; --task {cfg.task.name} has neither: drop robustness from --objectives")
    if s.strategy == "coevolution" and set(s.objectives) not in (set(DEFAULT_OBJECTIVES), {*DEFAULT_OBJECTIVES, "robustness"}):
        raise UserError(
            "--strategy coevolution ranks by accuracy (or, with robustness, by (accuracy + robust accuracy) / 2) "
            "with fewer MACs breaking ties: use --objectives accuracy,latency or accuracy,latency,robustness"
        )
    if s.strategy == "coevolution" and cfg.max_memory_mb is not None:
        raise UserError("--strategy coevolution combines groups by latency alone; --max-memory-mb needs --strategy nsga2")


def _check_robustness(cfg: PruneConfig) -> None:
    r = cfg.robust
    robust_flags = _given(r, tuple(f.name for f in dataclasses.fields(r) if f.name != "adv_finetune"))
    if robust_flags and not attacks(cfg):
        raise UserError(f"{', '.join(robust_flags)} apply with robustness in --objectives or with --adv-finetune; add one or drop them")
    shared_flags = [f for f in robust_flags if f in ("--adv-samples", "--adv-subnets")]
    if shared_flags and not shared_attack(cfg.search.objectives):
        raise UserError(f"{', '.join(shared_flags)} size the shared adversarial set of the robustness objective; add robustness to --objectives or drop them")
    if attacks(cfg):
        require_art()  # before anything is loaded or timed, not at the first attack
    if r.adv_ratio != RobustSettings().adv_ratio and not r.adv_finetune:
        raise UserError("--adv-ratio applies to --adv-finetune; add it or drop --adv-ratio")
    Attack(r.attack_eps, r.attack_steps, r.attack_alpha).check()


def _check_mode(cfg: PruneConfig) -> None:
    s = cfg.search
    if s.mode not in MODES:
        raise UserError(f"--mode {s.mode!r}: choose one of {', '.join(MODES)}")
    if s.mode != "channels" and s.depth:
        raise UserError(f"--mode {s.mode} searches a transfer head; drop --depth")


def _check_sparsity(cfg: PruneConfig) -> None:
    pattern = cfg.recipe.sparsity
    if pattern is not None:
        if pattern.name not in PATTERNS:
            raise UserError(f"--sparsity {pattern.name!r} is not a pattern edgeprune makes; use 2:4")
        if not task_kind(cfg.task.name).sparsity:
            raise UserError("--sparsity 2:4 works with classification and your own --task (ultralytics' trainer would not keep the masks); drop --sparsity")
    elif cfg.recipe.sparsity_epochs != RecipeSettings().sparsity_epochs:
        raise UserError("--sparsity-epochs applies with --sparsity 2:4; add it or drop --sparsity-epochs")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file; pass --out with a folder path")
    foreign = foreign_entry(out)
    if foreign:
        # The folder is replaced as a whole at the end: never do that to a folder we did not write.
        raise UserError(f"output folder {out} cannot be replaced: {foreign}; pass a new or empty --out")
