"""The face's parsers: every setting given as text becomes a typed value here, once.

The prune job takes :class:`~edgeprune.jobs.settings.PruneConfig`, whose groups hold parsed values
only; the text forms (the command line, a ``run.json`` of release 0.1.0, the keyword form tools
and tests use) are :class:`PruneOptions`, turned into a config by :meth:`PruneOptions.parse`. The
``parse_*`` helpers are called only in :mod:`edgeprune.commands` and :mod:`edgeprune.cli`
(tests/test_settings_face.py checks it). Modules of the job are imported inside the functions,
so building the parser does not import torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeprune.errors import UserError
from edgeprune.problem.attack import (
    DEFAULT_ALPHA, DEFAULT_EPS, DEFAULT_SAMPLES, DEFAULT_STEPS, DEFAULT_SUBNETS, DEFAULT_TEST_SAMPLES,
)

DEFAULT_OBJECTIVES = "accuracy,latency"


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"3x32x32"`` -> ``(3, 32, 32)``; ``×`` and ``,`` are accepted as separators too."""
    parts = re.split(r"\s*[xX×,]\s*", text.strip())
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"input shape {text!r} is not CxHxW; write it like 3x224x224")
    return tuple(int(p) for p in parts)


def parse_objectives(text: str) -> tuple[str, ...]:
    """``accuracy,latency,robustness`` → the names, checked: known, no repeats, accuracy or
    robustness included (the pick is made by them within the budget; latency is always a
    constraint, whether or not it is also an objective)."""
    from edgeprune.problem.pruning import OBJECTIVES, QUALITY

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not set(QUALITY) & set(names) or len(set(names)) != len(names):
        raise UserError(
            f"--objectives {text!r} must name accuracy or robustness (or both) and optionally latency, macs and memory, "
            f"each once (known: {', '.join(OBJECTIVES)}), e.g. accuracy,latency,robustness"
        )
    return names


def parse_sparsity(text: str):
    """``2:4`` → its :class:`~edgeprune.space.sparsity.Pattern` (the only pattern made)."""
    from edgeprune.space.sparsity import PATTERNS, Pattern

    if text not in PATTERNS:
        raise UserError(f"--sparsity {text!r} is not a pattern edgeprune makes; use 2:4 (the pattern Ampere/Orin sparse tensor cores run)")
    return Pattern(*PATTERNS[text])


def parse_workers(text: str) -> str | None:
    """``--workers``: ``local`` (None) or ``ray`` / ``ray:ADDRESS`` (the address, "" for a local
    cluster started for the run)."""
    if text == "local":
        return None
    if text == "ray":
        return ""
    if text.startswith("ray:") and text[4:].strip():
        return text[4:].strip()
    raise UserError(f"--workers {text!r} must be local, ray (a local Ray cluster) or ray:ADDRESS (e.g. ray:auto or ray:10.0.0.2:6379)")


@dataclass
class PruneOptions:
    """The prune settings as text and flags: the command line's options by name, the ``config``
    of a release-0.1.0 ``run.json`` (checked against these annotations), and the keyword form
    tools use. :meth:`parse` is the one way from here to a config."""

    model: str
    task: str = "classification"
    target: str = "x86-cpu"
    data: str = "fashion-mnist"
    input_shape: str | None = None
    pad: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None
    weights: str | None = None
    budget_ms: float | None = None
    speedup: float | None = None
    max_memory_mb: float | None = None
    population: int = 16
    generations: int = 8
    patience: int = 0
    finetune_epochs: float = 1.0
    refine_epochs: float = 0.2
    refine_top: int = 6
    widen_passes: int = 3
    lr: float = 0.01
    batch_size: int = 128
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    holdout: int = 5000
    out: str = "edgeprune-out"
    seed: int = 0
    cache: str | None = None
    no_cache: bool = False
    progress: bool = True
    rounds: int = 1
    strategy: str = "nsga2"
    encoding: str = "width"
    objectives: str = DEFAULT_OBJECTIVES
    screen: bool = True
    depth: bool = False
    detection_metric: str = "mAP50-95"
    yolo_head: str = "auto"
    attack_eps: float = DEFAULT_EPS
    attack_steps: int = DEFAULT_STEPS
    attack_alpha: float = DEFAULT_ALPHA
    adv_finetune: bool = False
    adv_ratio: float = 0.5
    adv_samples: int = DEFAULT_SAMPLES
    adv_subnets: int = DEFAULT_SUBNETS
    robust_test_samples: int = DEFAULT_TEST_SAMPLES
    workers: str = "local"
    agents: str | None = None
    sparsity: str | None = None
    sparsity_epochs: float = 0.5
    mode: str = "channels"
    resume: bool = False

    def parse(self):
        """The typed :class:`~edgeprune.jobs.settings.PruneConfig` of these options."""
        from edgeprune.jobs import settings as s

        given = vars(self)
        pick = lambda group: {f: given[f] for f in group.__dataclass_fields__ if f in given}  # noqa: E731
        return s.PruneConfig(
            model=self.model, target=self.target, weights=self.weights, budget_ms=self.budget_ms, speedup=self.speedup,
            max_memory_mb=self.max_memory_mb, seed=self.seed,
            task=s.TaskSettings(**pick(s.TaskSettings) | {"name": self.task, "input_shape": parse_shape(self.input_shape) if self.input_shape else None}),
            search=s.SearchSettings(**pick(s.SearchSettings) | {"objectives": parse_objectives(self.objectives)}),
            recipe=s.RecipeSettings(**pick(s.RecipeSettings) | {"sparsity": parse_sparsity(self.sparsity) if self.sparsity is not None else None}),
            robust=s.RobustSettings(**pick(s.RobustSettings)),
            scale_out=s.ScaleOutSettings(ray_address=parse_workers(self.workers), agents=self.agents),
            output=s.OutputSettings(**pick(s.OutputSettings)),
        )


def prune_config(model: str, **options):
    """The config of ``PruneOptions(model, **options)``: the keyword form of tools and tests."""
    return PruneOptions(model, **options).parse()
