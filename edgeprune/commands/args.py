"""Argument groups several verbs share, and the one mapping from parsed arguments to a config.

A flag that means the same thing in two verbs is declared once here, so its name, default and
help cannot drift apart between them.
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import fields, is_dataclass
from typing import Any, Callable

CACHE_HELP = "latency cache SQLite file (default: in the user cache folder)"
NO_CACHE_HELP = "neither read nor write the latency cache file"
NO_PROGRESS_HELP = "no progress bars"


def floats(text: str) -> tuple[float, ...]:
    """``0.485,0.456,0.406`` → a tuple of floats (an argparse ``type``)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,0.5,0.5, got {text!r}") from None


def add_cache_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", help=CACHE_HELP)


def add_cache_args(p: argparse.ArgumentParser, no_cache_help: str = NO_CACHE_HELP) -> None:
    """``--cache FILE`` and ``--no-cache`` for the verbs that measure through the latency cache."""
    add_cache_file(p)
    p.add_argument("--no-cache", action="store_true", help=no_cache_help)


def add_progress_args(p: argparse.ArgumentParser, help: str = NO_PROGRESS_HELP) -> None:
    p.add_argument("--no-progress", action="store_true", help=help)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The dataset and its preprocessing, for the verbs that train or score a model."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist", help="fashion-mnist | imagefolder:PATH (train/ and val/ inside) | digits | yolo:PATH/data.yaml (--task detection) (default: fashion-mnist)")
    g.add_argument("--input-shape", help="CxHxW the model takes, e.g. 3x32x32 (default: the dataset's own shape; 3x640x640 for detection); grey is replicated to 3 channels")
    g.add_argument("--pad", action="store_true", help="zero-pad to --input-shape instead of resizing")
    g.add_argument("--mean", type=floats, help="per-channel mean subtracted after scaling to [0,1], e.g. 0.5 or 0.485,0.456,0.406")
    g.add_argument("--std", type=floats, help="per-channel std divided after --mean")
    g.add_argument("--holdout", type=int, default=5000, help="images held out of TRAIN to score candidates (default 5000; detection: at most a fifth of train)")


def add_model_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    """The model to load: positional ``model`` plus what a torchvision or factory model needs."""
    p.add_argument("model", nargs="?" if optional else None, help="FILE saved with torch.save(model) (loading runs code from it), torchvision:NAME, or package.module:factory")
    p.add_argument("--num-classes", type=int, help="classes for torchvision:NAME / factory models, 1 to 100000 (default: the dataset's)")
    p.add_argument("--weights", help="state_dict FILE for torchvision:NAME / factory models (loaded with weights_only=True)")


def check_num_classes(value: int | None) -> None:
    """``--num-classes`` of the verbs that build a model (prune checks its own, a resumed run's too)."""
    from edgeprune.errors import UserError
    from edgeprune.jobs.validation import MAX_CLASSES

    if value is not None and not 1 <= value <= MAX_CLASSES:
        raise UserError(f"--num-classes must be between 1 and {MAX_CLASSES} (or left out: the dataset's), got {value}")


def from_args(target: Callable[..., Any], args: argparse.Namespace, **derived: Any) -> Any:
    """Call ``target`` (a dataclass or a function) with each of its fields or parameters that the
    parsed ``args`` hold under the same name, plus ``derived``: the values of flags whose name is
    not the field's (``progress=not args.no_progress``), which win over a same-named argument."""
    names = [f.name for f in fields(target)] if is_dataclass(target) else list(inspect.signature(target).parameters)
    return target(**{name: getattr(args, name) for name in names if hasattr(args, name)} | derived)
