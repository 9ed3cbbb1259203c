"""Pruned models without pickles: ``plan.json`` + ``state_dict.pt`` → the same network.

A pruned network's class is the original's with different layer sizes, so ``torch.save(model)``
would be the only way to store it, and loading that runs code from the file. Instead the plan keeps
the original model spec and the kept channel indices; rebuilding is "make the original, shrink it
the same way, load the weights" (``weights_only=True``), and the result is bitwise identical.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from edgeprune.errors import UserError
from edgeprune.untrusted import is_int, read_json
from edgeprune.space.channels import PLAN_FORMATS, ChannelPlan, apply_plan
from edgeprune.tasks.models import MODEL_KINDS

# Far above any real network (mobilenet_v2: 52 groups, widest 1280): bounds what a file can ask for.
_MAX_GROUPS, _MAX_CHANNELS, _MAX_DIM, _MAX_INPUT_ELEMENTS = 4096, 1 << 16, 1 << 14, 1 << 26


def _plan_problem(data: dict) -> str | None:
    """What is wrong with the shape of a plan.json document, or None. A plan may come from
    someone else, so every type is checked before anything is built from it."""
    model, kept, shape = data["model"], data["kept"], data["input_shape"]
    if not isinstance(model, dict) or not isinstance(model.get("spec"), str) or len(model["spec"]) > 4096:
        return "'model' must be an object with a 'spec' string"
    if model.get("kind") not in MODEL_KINDS:
        return f"'model.kind' is {str(model.get('kind'))[:40]!r}, expected one of {', '.join(MODEL_KINDS)}"
    if model.get("num_classes") is not None and not (is_int(model["num_classes"]) and 1 <= model["num_classes"] <= 1 << 20):
        return "'model.num_classes' must be a positive integer or null"
    if not isinstance(shape, list) or not 1 <= len(shape) <= 4 or not all(is_int(d) and 1 <= d <= _MAX_DIM for d in shape):
        return f"'input_shape' must be a list of 1-4 positive integers up to {_MAX_DIM}"
    if math.prod(shape) > _MAX_INPUT_ELEMENTS:
        return f"'input_shape' {shape} has more than {_MAX_INPUT_ELEMENTS} elements"
    if not isinstance(kept, dict) or len(kept) > _MAX_GROUPS:
        return f"'kept' must be an object of at most {_MAX_GROUPS} groups"
    for name, idxs in kept.items():
        if not isinstance(idxs, list) or not idxs or len(idxs) > _MAX_CHANNELS:
            return f"'kept.{name[:60]}' must be a non-empty list of channel indices"
        if not all(is_int(i) and 0 <= i <= _MAX_CHANNELS for i in idxs) or len(set(idxs)) != len(idxs):
            return f"'kept.{name[:60]}' must hold distinct channel indices from 0 to {_MAX_CHANNELS}"
    dropped = data.get("dropped", [])
    if not isinstance(dropped, list) or len(dropped) > _MAX_GROUPS or not all(isinstance(n, str) and 0 < len(n) <= 200 for n in dropped):
        return f"'dropped' must be a list of at most {_MAX_GROUPS} module names"
    if (data["format_version"] == PLAN_FORMATS[1]) != bool(dropped):
        return "'dropped' must be non-empty in a format 2 plan and absent from a format 1 plan"
    return None


def read_plan(plan_path: str | Path) -> ChannelPlan:
    """Parse and check a ``plan.json`` written by edgeprune (every field typed and bounded)."""
    path = Path(plan_path)
    if not path.is_file():
        raise UserError(f"plan file {path} not found; pass the plan.json from an edgeprune output folder")
    data = read_json(path, "pass the plan.json edgeprune wrote")
    found = data.get("format_version") if isinstance(data, dict) else None
    if isinstance(found, bool) or found not in PLAN_FORMATS:
        raise UserError(
            f"{path} has plan format {str(found)[:20]}, this edgeprune reads formats {' and '.join(map(str, PLAN_FORMATS))}; "
            "re-run the prune with this version"
        )
    missing = [k for k in ("model", "input_shape", "kept") if k not in data]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; pass the plan.json edgeprune wrote")
    problem = _plan_problem(data)
    if problem:
        raise UserError(f"{path}: {problem}; pass the plan.json edgeprune wrote")
    kept = {str(name): list(idxs) for name, idxs in data["kept"].items()}
    return ChannelPlan(
        kept=kept, model_spec=dict(data["model"]), input_shape=tuple(data["input_shape"]), dropped=list(data.get("dropped", []))
    )


def original_model(spec: dict, trust_code: bool = False) -> nn.Module:
    """The unpruned model a plan names, chosen by its ``kind`` (never by the look of ``spec``).

    A ``torchvision`` or ``timm`` plan builds a library architecture by name (timm's in its
    re-parameterised deploy form, as it was pruned) and runs nothing from outside; so does a
    ``yolo`` plan naming a yaml that ships inside ultralytics (:func:`edgeprune.tasks.models.builds_without_code`).
    A ``factory`` plan imports a module and a ``file`` plan unpickles a model file: both run code
    that the plan's author chose, so they need ``trust_code`` (``--trust-model-code``).
    """
    from edgeprune.tasks import models

    kind, text, num_classes = spec["kind"], spec["spec"], spec.get("num_classes")
    if kind == "torchvision":
        if not text.startswith("torchvision:"):
            raise UserError(f"plan's torchvision model spec {text[:80]!r} does not start with 'torchvision:'; pass the plan.json edgeprune wrote")
        return models.torchvision_model(text.removeprefix("torchvision:"), num_classes)
    if kind == "timm":
        if not text.startswith("timm:"):
            raise UserError(f"plan's timm model spec {text[:80]!r} does not start with 'timm:'; pass the plan.json edgeprune wrote")
        return models.deploy_form(models.timm_model(text.removeprefix("timm:"), num_classes))
    if kind == "yolo" and text.startswith("yolo:") and models.builds_without_code(text):
        from edgeprune.tasks import yolo

        return yolo.build(text.removeprefix("yolo:"), num_classes, head=spec.get("yolo_head", "auto"))  # from the yaml inside ultralytics
    if kind == "object":
        raise UserError(f"the plan's model was the Python object {text[:80]!r}; pass it: load_pruned(plan, state_dict, original=model)")
    if not trust_code:
        raise UserError(
            f"the plan rebuilds its model from {kind} {text[:120]!r}: that {MODEL_KINDS.get(kind) or MODEL_KINDS['file']}; pass --trust-model-code "
            "(load_pruned(..., trust_code=True)) only if you trust whoever wrote this plan.json"
        )
    if kind == "factory":
        return models.factory_model(text, num_classes)
    if kind == "yolo":
        if not text.startswith("yolo:"):
            raise UserError(f"plan's yolo model spec {text[:80]!r} does not start with 'yolo:'; pass the plan.json edgeprune wrote")
        from edgeprune.tasks import yolo

        return yolo.build(text.removeprefix("yolo:"), num_classes, head=spec.get("yolo_head", "auto"))
    return models.file_model(text)


def build_pruned(plan: ChannelPlan, trust_code: bool = False, original: nn.Module | None = None) -> nn.Module:
    """The original model (``original``, copied, else built from ``plan.model_spec``: random or
    its original weights), shrunk per plan."""
    # The original weights do not matter (the state_dict replaces them) and may no longer exist.
    model = (copy.deepcopy(original) if original is not None else original_model(plan.model_spec, trust_code)).cpu().eval()
    try:
        apply_plan(model, plan, torch.zeros(1, *plan.input_shape))
    except UserError:
        raise
    except Exception as exc:  # names or indices that are not in this model
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"the plan does not fit model {plan.model_spec['spec'][:80]!r} ({first}); pass the plan.json written for it") from None
    return model.eval()


def load_pruned(plan_path: str | Path, state_dict_path: str | Path, trust_code: bool = False, original: nn.Module | None = None) -> nn.Module:
    """Rebuild a pruned model from ``plan.json`` and its ``state_dict.pt`` without unpickling.

    ``torchvision:`` plans need nothing but the two files. A plan whose original was a
    ``package.module:factory`` or a ``torch.save(model)`` file runs code to rebuild it (an import,
    an unpickle), so it is refused unless ``trust_code=True``. ``original``: the unpruned model
    object itself, which any plan may be applied to and which a plan of a model handed to
    ``edgeprune.prune()`` as an object needs (no file rebuilds that one).
    """
    plan = read_plan(plan_path)
    model = build_pruned(plan, trust_code, original)
    path = Path(state_dict_path)
    if not path.is_file():
        raise UserError(f"state_dict file {path} not found; pass the state_dict.pt next to plan.json")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise UserError(f"{path} is not a state_dict edgeprune can read ({type(exc).__name__}); pass state_dict.pt") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path} does not match the plan's architecture ({first}); pass the state_dict written with this plan") from None
    return model.eval()
