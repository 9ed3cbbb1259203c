"""``prune --resume OUT``: the settings of an interrupted run, read from ``OUT.checkpoint/run.json``.

The checkpoint is a file like any other: a model it names that is not ``torchvision:`` would be
imported or unpickled, which runs code, and a profile, weights, image folder or cache path it
names would be read or written, and a target or agents that measure through an agent would
receive the model; all of those need ``--trust-model-code``. The output goes where ``--resume``
says, never where the checkpoint says.

Two forms are read: the typed groups this version writes (format 2,
:meth:`PruneConfig.to_dict <edgeprune.jobs.settings.PruneConfig.to_dict>`), and the flat text form
of release 0.1.0 (format 1), parsed here like a command line.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from edgeprune.api.settings import PruneOptions, parse_objectives, parse_shape
from edgeprune.errors import UserError

RELEASE_FORMAT = 1  # run.json of release 0.1.0: PruneOptions' flat text form


def resume_config(out: str, progress: bool = True, trust_model_code: bool = False):
    """The :class:`~edgeprune.jobs.settings.PruneConfig` of the interrupted run whose ``--out`` was ``out``."""
    from edgeprune.jobs.checkpoint import RunCheckpoint
    from edgeprune.tasks.python_task import OBJECT_TASK

    checkpoint = RunCheckpoint(Path(out))
    if checkpoint.read_run()["format_version"] == RELEASE_FORMAT:
        cfg = PruneOptions(**checkpoint.read_config(PruneOptions)).parse()
    else:
        cfg = _typed(checkpoint)
    if cfg.model.startswith("object:") or cfg.task.name == OBJECT_TASK:
        raise UserError(
            f"the checkpoint in {out}.checkpoint is of a run whose model or task were Python objects given to edgeprune.prune(), "
            "which no file rebuilds; call edgeprune.prune() again with the same seed and cache (the cache answers every latency it measured)"
        )
    untrusted = untrusted_settings(cfg)
    if untrusted and not trust_model_code:
        raise UserError(
            f"the checkpoint names {', '.join(untrusted)}: resuming imports or unpickles a model, reads "
            "those files or uploads the model to an agent; add --trust-model-code if this is your own interrupted run"
        )
    return dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, out=out, resume=True, progress=progress))


def _typed(checkpoint):
    """run.json's typed groups, each value checked against its field's type first."""
    from edgeprune.jobs.settings import GROUPS, PruneConfig

    top = checkpoint.read_config(PruneConfig, skip=tuple(GROUPS))
    groups = {name: checkpoint.read_config(group, skip=("resume", "progress"), section=name) for name, group in GROUPS.items()}
    cfg = PruneConfig.from_dict(top, groups)
    # Typed is not checked: the values a command line's text would have been refused for (an
    # unknown objective, a zero-sized input) are refused here too, before anything loads.
    try:
        parse_objectives(",".join(cfg.search.objectives))
        if cfg.task.input_shape is not None:
            parse_shape("x".join(str(n) for n in cfg.task.input_shape))
    except UserError as exc:
        raise UserError(f"checkpoint file {checkpoint.folder / 'run.json'}: {exc}") from None
    return cfg


def untrusted_settings(cfg) -> list[str]:
    """The settings of a checkpoint that would run code or reach files outside the checkpoint."""
    from edgeprune.jobs.kinds import TASK_KINDS
    from edgeprune.tasks.models import builds_without_code

    target, address, agents = cfg.target, cfg.scale_out.ray_address, cfg.scale_out.agents
    # A Ray cluster's answers are unpickled here (a local one is started by the run itself).
    workers = f"ray:{address}" if address else None
    named = {
        "model": (cfg.model, not builds_without_code(cfg.model)),
        # A profile file is read; a shipped target that measures through an agent uploads the model
        # there: a checkpoint, like a report.json, never chooses where a model goes (export.check_recorded_agent).
        "target": (target, target.endswith((".yaml", ".yml")) or "/" in target or os.sep in target or _measures_on_agent(target)),
        "weights": (cfg.weights, cfg.weights is not None),
        "data": (cfg.task.data, cfg.task.data.startswith(("imagefolder:", "yolo:"))),
        "cache": (cfg.output.cache, cfg.output.cache is not None),
        "task": (cfg.task.name, cfg.task.name not in TASK_KINDS),
        "workers": (workers, workers is not None),
        # A farm file is read; agents, even on this machine, would receive the model (tokens never
        # go where the user did not pin them).
        "agents": (agents, bool((agents or "").strip())),
    }
    return [f"{key} {str(value)[:120]!r}" for key, (value, flagged) in named.items() if flagged]


def _measures_on_agent(target: str) -> bool:
    """Whether the shipped target ``target`` measures through an agent (``agent:``)."""
    from edgeprune.profiling.targets import load_profile

    try:
        return load_profile(target).agent is not None
    except UserError:
        return False  # an unknown name: the resumed run refuses it with its own message
