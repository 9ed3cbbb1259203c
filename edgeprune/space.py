"""The channel space: which channels of a network can be removed together, and physical shrink.

Torch-Pruning's DependencyGraph solves channel coupling (residual adds, depthwise convolutions,
concatenations): one *group* is a set of layer dimensions that must lose the same channels. We add
what it lacks: a search space on the target's step grid, an importance order fixed once on the
original weights, and a JSON-serialisable :class:`ChannelPlan` so a pruned model never needs a pickle.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

PLAN_FORMAT_VERSION = 1

# Kept channel indices per group (ascending), in ChannelSpace.groups order: what a genome decodes
# to. Two choices with the same widths are the same architecture (same latency) but different
# networks (different accuracy).
Choice = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Group:
    """One prunable channel group, named after its root layer (the layer whose outputs it prunes)."""

    name: str
    full: int
    options: tuple[int, ...]
    order: tuple[int, ...]  # channel indices of the root layer, most important first
    coupled: tuple[str, ...]

    def nearest_option(self, width: float) -> int:
        """Index of the allowed width closest to ``width`` (ties go to the wider option)."""
        return min(range(len(self.options)), key=lambda i: (abs(self.options[i] - width), -i))

    def kept(self, width: int) -> list[int]:
        """The ``width`` most important channels, in their original order."""
        if width not in self.options:
            raise ValueError(f"width {width} of group {self.name} is not on its grid {self.options}")
        return sorted(self.order[:width])


@dataclass
class ChannelPlan:
    """Kept channel indices per group: everything needed to rebuild a pruned model from the original."""

    kept: dict[str, list[int]]
    model_spec: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()

    @property
    def widths(self) -> dict[str, int]:
        return {name: len(idxs) for name, idxs in self.kept.items()}

    def to_dict(self) -> dict:
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "model": self.model_spec,
            "input_shape": list(self.input_shape),
            "widths": self.widths,
            "kept": self.kept,
        }

    def digest(self) -> str:
        """Stable hash of the plan, written into artifacts so a deployment can be traced back."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def output_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last Conv/Linear layer that runs in a forward pass: the classifier's output layer.

    Found by execution order rather than by name, so it works for any architecture; pruning its
    outputs would delete classes, so it is never part of the space.
    """
    seen: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: seen.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ValueError("the model has no Conv2d or Linear layer to prune")
    return seen[-1]


def _width_options(full: int, step: int) -> tuple[int, ...]:
    """Widths on the step grid from one step up to full (full itself always allowed)."""
    grid = [w for w in range(step, full, step)]
    return tuple(grid + [full])


class ChannelSpace:
    """Prunable groups of a model, their widths on the target's step grid, and physical shrink."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], step: int, model_spec: dict | None = None):
        self.model = model.eval()
        self.input_shape = tuple(input_shape)
        self.step = step
        self.model_spec = model_spec or {}
        self.example = torch.zeros(1, *self.input_shape)
        self.output_layer = output_layer(model, self.example)
        names = {m: n for n, m in model.named_modules()}
        self.output_layer_name = names[self.output_layer]
        graph = self._graph(model)
        importance = tp.importance.GroupMagnitudeImportance(p=1)
        groups = []
        for group in graph.get_all_groups(ignored_layers=[self.output_layer], root_module_types=(nn.Conv2d, nn.Linear)):
            root = group[0].dep.target.module
            full = graph.get_out_channels(root)
            options = _width_options(full, step)
            if len(options) < 2:
                continue  # already at or below one step: nothing to choose
            with torch.no_grad():
                scores = importance(group)
            if scores is None or len(scores) != full:
                continue
            order = tuple(int(i) for i in torch.argsort(scores, descending=True, stable=True))
            coupled = tuple(
                dict.fromkeys(names[item.dep.target.module] for item in group if item.dep.target.module in names)
            )
            groups.append(Group(names[root], full, options, order, coupled))
        self.groups: list[Group] = groups
        self.base_signature = hashlib.sha256((repr(model) + str(self.input_shape)).encode()).hexdigest()[:16]

    def _graph(self, model: nn.Module) -> tp.DependencyGraph:
        return tp.DependencyGraph().build_dependency(model, example_inputs=self.example)

    # --- genome <-> widths <-> plan -------------------------------------------------------------

    def widths_from_indices(self, indices) -> tuple[int, ...]:
        return tuple(g.options[int(i)] for g, i in zip(self.groups, indices))

    def full_indices(self) -> list[int]:
        return [len(g.options) - 1 for g in self.groups]

    def min_indices(self) -> list[int]:
        return [0 for _ in self.groups]

    def uniform_indices(self, keep_ratio: float) -> list[int]:
        """Every group at ``keep_ratio`` of its width, snapped to the grid."""
        return [g.nearest_option(keep_ratio * g.full) for g in self.groups]

    def choice(self, widths) -> Choice:
        """The ``widths`` most important channels of every group (what the width encoding keeps)."""
        return tuple(tuple(g.kept(int(w))) for g, w in zip(self.groups, widths))

    def plan(self, widths) -> ChannelPlan:
        return self.plan_of(self.choice(widths))

    def plan_of(self, choice: Choice) -> ChannelPlan:
        kept = {g.name: [int(i) for i in idxs] for g, idxs in zip(self.groups, choice)}
        return ChannelPlan(kept=kept, model_spec=self.model_spec, input_shape=self.input_shape)

    def arch_key(self, widths) -> str:
        """Cache key of an architecture: the original's structure plus every group's width."""
        blob = self.base_signature + json.dumps([int(w) for w in widths])
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    # --- physical shrink ----------------------------------------------------------------------

    def shrink(self, plan: ChannelPlan) -> nn.Module:
        """A physically smaller copy of the model: removed channels are gone, not zeroed."""
        model = copy.deepcopy(self.model)
        apply_plan(model, plan, self.example)
        return model.eval()

    def describe(self) -> list[dict]:
        return [
            {"group": g.name, "full": g.full, "options": list(g.options), "coupled": list(g.coupled)}
            for g in self.groups
        ]


def apply_plan(model: nn.Module, plan: ChannelPlan, example: torch.Tensor) -> nn.Module:
    """Prune ``model`` in place so each group keeps exactly ``plan.kept[group]`` channels."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    modules = dict(model.named_modules())
    for name, kept in plan.kept.items():
        root = modules[name]
        full = graph.get_out_channels(root)
        removed = sorted(set(range(full)) - set(kept))
        if not removed:
            continue
        pruner = graph.get_pruner_of_module(root)
        group = graph.get_pruning_group(root, pruner.prune_out_channels, idxs=removed)
        group.prune()
    return model


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv/Linear layer: the architecture as a firmware team reads it."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def macs_and_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    return int(macs), int(params)
