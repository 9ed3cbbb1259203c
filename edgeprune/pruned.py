"""Pruned models without pickles: ``plan.json`` + ``state_dict.pt`` → the same network.

A pruned network's class is the original's with different layer sizes, so ``torch.save(model)``
would be the only way to store it, and loading that runs code from the file. Instead the plan keeps
the original model spec and the kept channel indices; rebuilding is "make the original, shrink it
the same way, load the weights" (``weights_only=True``), and the result is bitwise identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from edgeprune.errors import UserError
from edgeprune.space import PLAN_FORMAT_VERSION, ChannelPlan, apply_plan


def read_plan(plan_path: str | Path) -> ChannelPlan:
    """Parse and check a ``plan.json`` written by edgeprune."""
    path = Path(plan_path)
    if not path.is_file():
        raise UserError(f"plan file {path} not found; pass the plan.json from an edgeprune output folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); pass the plan.json edgeprune wrote") from None
    if not isinstance(data, dict) or data.get("format_version") != PLAN_FORMAT_VERSION:
        found = data.get("format_version") if isinstance(data, dict) else None
        raise UserError(
            f"{path} has plan format {found!r}, this edgeprune reads format {PLAN_FORMAT_VERSION}; "
            "re-run the prune with this version"
        )
    missing = [k for k in ("model", "input_shape", "kept") if k not in data]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; pass the plan.json edgeprune wrote")
    kept = {str(name): [int(i) for i in idxs] for name, idxs in data["kept"].items()}
    return ChannelPlan(kept=kept, model_spec=dict(data["model"]), input_shape=tuple(int(d) for d in data["input_shape"]))


def build_pruned(plan: ChannelPlan) -> nn.Module:
    """The original model from ``plan.model_spec`` (random or its original weights), shrunk per plan."""
    from edgeprune.models import load_model

    spec = plan.model_spec
    if spec.get("kind") not in ("torchvision", "factory", "file"):
        raise UserError(f"plan has model kind {spec.get('kind')!r}; expected torchvision, factory or file")
    # The original weights do not matter (the state_dict replaces them) and may no longer exist.
    model, _ = load_model(spec["spec"], num_classes=spec.get("num_classes"))
    apply_plan(model, plan, torch.zeros(1, *plan.input_shape))
    return model.eval()


def load_pruned(plan_path: str | Path, state_dict_path: str | Path) -> nn.Module:
    """Rebuild a pruned model from ``plan.json`` and its ``state_dict.pt`` without unpickling.

    ``torchvision:`` and ``package.module:factory`` specs need nothing but the two files. A plan
    whose original was a ``torch.save(model)`` file loads that file again (a pickle of the user's
    own model, which runs code from it), so it must still be where the plan says.
    """
    plan = read_plan(plan_path)
    model = build_pruned(plan)
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
