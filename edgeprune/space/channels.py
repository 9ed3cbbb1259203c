"""The channel space: which channels of a network can be removed together, and physical shrink.

Torch-Pruning's DependencyGraph solves channel coupling (residual adds, depthwise convolutions,
concatenations): one *group* is a set of layer dimensions that must lose the same channels. We add
what it lacks: a search space on the target's step grid, an importance order fixed once on the
original weights, and a JSON-serialisable :class:`ChannelPlan` so a pruned model never needs a pickle.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import json
import warnings
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping

from edgeprune.errors import UserError
from edgeprune.tasks import outputs
from edgeprune.records import Choice, Group, GroupLayout

PLAN_FORMAT_VERSION = 1
# Plans that drop residual blocks: a reader of format 1 would rebuild them with the blocks in.
PLAN_FORMAT_DEPTH = 2
PLAN_FORMATS = (PLAN_FORMAT_VERSION, PLAN_FORMAT_DEPTH)
DEPTH_PREFIX = "depth:"

# What this module reaches inside Torch-Pruning beyond its documented API: the two index mappings
# _tolerant_reshape_mapping swaps out, and the graph methods _all_groups walks with. Written
# against 1.6 (pyproject.toml pins the minor version); probed at import, so that another version
# fails in one line here instead of deep inside a graph build.
_TP_INTERNALS = (
    (index_mapping, "update_reshape_index_mapping"),
    (index_mapping, "update_concat_index_mapping"),
    (tp.DependencyGraph, "get_pruner_of_module"),
    (tp.DependencyGraph, "get_pruning_group"),
)
TP_REQUIREMENT = "torch-pruning>=1.6.1,<1.7"


def check_torch_pruning() -> None:
    """A one-line error naming the installed Torch-Pruning when a name this module patches or
    walks with is missing."""
    missing = [f"{owner.__name__}.{name}" for owner, name in _TP_INTERNALS if not callable(getattr(owner, name, None))]
    if missing:
        try:
            version = importlib.metadata.version("torch-pruning")
        except importlib.metadata.PackageNotFoundError:
            version = getattr(tp, "__version__", "(version unknown)")
        raise UserError(
            f"Torch-Pruning {version} lacks {', '.join(missing)}, which edgeprune's channel space patches; "
            f"install the version it was written for: pip install '{TP_REQUIREMENT}'"
        )


check_torch_pruning()


@dataclass
class ChannelPlan:
    """Kept channel indices per group: everything needed to rebuild a pruned model from the original."""

    kept: dict[str, list[int]]
    model_spec: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()
    # Residual blocks replaced by the identity (module names), after the channels are removed.
    dropped: list[str] = field(default_factory=list)

    @property
    def widths(self) -> dict[str, int]:
        return {name: len(idxs) for name, idxs in self.kept.items()}

    def to_dict(self) -> dict:
        d = {
            "format_version": PLAN_FORMAT_DEPTH if self.dropped else PLAN_FORMAT_VERSION,
            "model": self.model_spec,
            "input_shape": list(self.input_shape),
            "widths": self.widths,
            "kept": self.kept,
        }
        if self.dropped:
            d["dropped"] = list(self.dropped)
        return d

    def digest(self) -> str:
        """Stable hash of the plan, written into artifacts so a deployment can be traced back."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _shown(shapes: tuple[tuple[int, ...], ...]) -> str:
    return str(shapes[0]) if len(shapes) == 1 else str(list(shapes))


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks of ``model`` that compute ``act(x + f(x))`` with ``f(x)`` shaped like
    ``x``, so that the identity can stand in for them (MDP-style depth pruning): torchvision's
    MobileNetV2/EfficientNet/MnasNet inverted residuals with a skip, ResNet basic and bottleneck
    blocks and RegNet bottlenecks without a projection. Their input comes out of an activation
    that is at least 0 where theirs is a ReLU, so dropping the final ReLU with ``f`` changes
    nothing else. Other architectures have no depth genes (rather none than a wrong one)."""
    from torchvision.models import efficientnet, mnasnet, mobilenetv2, regnet, resnet  # noqa: PLC0415

    def skips(m: nn.Module) -> bool:
        if isinstance(m, (mobilenetv2.InvertedResidual, efficientnet.MBConv)):
            return bool(m.use_res_connect)
        if isinstance(m, mnasnet._InvertedResidual):
            return bool(m.apply_residual)
        if isinstance(m, (resnet.BasicBlock, resnet.Bottleneck)):
            return m.downsample is None
        if isinstance(m, regnet.ResBottleneckBlock):
            return m.proj is None
        return False

    return [name for name, m in model.named_modules() if name and skips(m)]


def drop_blocks(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace the residual blocks ``names`` of ``model`` by the identity, in place. A name that
    is not one of :func:`residual_blocks` (a plan someone else wrote) is refused, not obeyed."""
    if not names:
        return model  # every channel-only shrink comes through here: no module walk for nothing
    allowed = set(residual_blocks(model))
    for name in names:
        if name not in allowed:
            raise ValueError(f"{name!r} is not a residual block of this model that can be dropped")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return model


def _width_options(full: int, step: int) -> tuple[int, ...]:
    """Widths on the step grid from one step up to full (full itself always allowed)."""
    grid = [w for w in range(step, full, step)]
    return tuple(grid + [full])


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _kind(node) -> str:
    return type(node.grad_fn).__name__ if node.grad_fn is not None else ""


def _input_size(node) -> tuple[int, ...]:
    fn = node.grad_fn
    return tuple(getattr(fn, "_saved_self_sym_sizes", None) or getattr(fn, "_saved_self_sizes", None) or ())


_RESHAPES = ("View", "Reshape", "UnsafeView")
_SHUFFLES = ("Transpose", "Permute")


def _is_channel_shuffle(node) -> bool:
    """A reshape joined to another reshape through a transpose (and copies): a channel shuffle."""
    if not _kind(node).startswith(_RESHAPES):
        return False
    for direction in ("outputs", "inputs"):
        frontier, shuffled = list(getattr(node, direction)), False
        for _ in range(3):  # view → transpose → clone (contiguous) → view at most
            nxt = []
            for n in frontier:
                kind = _kind(n)
                if kind.startswith(_RESHAPES) and shuffled:
                    return True
                if kind.startswith(_SHUFFLES) or kind.startswith("Clone"):
                    shuffled |= kind.startswith(_SHUFFLES)
                    nxt.extend(getattr(n, direction))
            frontier = nxt
    return False


@contextlib.contextmanager
def _tolerant_reshape_mapping(broken: list):
    """Keep Torch-Pruning away from channel shuffles, remembering where they are.

    Torch-Pruning 1.6.1 maps a reshape's channels by a stride of ``in // out`` channels. On
    ShuffleNetV2's channel shuffle (view → transpose → view) that divides by zero and aborts the
    whole graph build, or, on the first view, produces a stride that blows one group up into
    millions of indices. A shuffle permutes channels, which no stride describes, so the right
    answer is not a better stride but "the groups through it are not prunable": we leave those
    nodes unmapped and drop every group that reaches one (see :func:`_unsafe_reason`). The
    patch is active only inside this context: Torch-Pruning re-runs the mapping on every
    ``get_pruning_group``, so graph building and group queries must both happen in here.
    """
    original = index_mapping.update_reshape_index_mapping

    def tolerant(graph, node):
        if node in broken:
            return
        if _is_channel_shuffle(node):
            broken.append(node)
            return
        deps = [d for n in [node, *node.inputs, *node.outputs] for d in n.dependencies]
        before = [list(d.index_mapping) for d in deps]
        try:
            original(graph, node)
        except ZeroDivisionError:
            broken.append(node)
            return
        added = [m for d, b in zip(deps, before) for m in d.index_mapping if m not in b]
        size = _input_size(node)
        if added and not (len(size) == 4 and all(getattr(m, "_stride", None) == size[2] * size[3] for m in added)):
            # A stride mapping on anything but an NCHW → (N, C·H·W) flatten: Swin/MaxViT window
            # partitions and attention head splits, whose channels are not on dim 1. The mapping
            # would be wrong, and chained it grows the index lists without bound (the "hang").
            for d, b in zip(deps, before):
                d.index_mapping[:] = b
            broken.append(node)

    original_concat = index_mapping.update_concat_index_mapping

    def tolerant_concat(graph, node):
        # Swin-S/B's PatchMerging concatenates on the channels-last dim; Torch-Pruning 1.6.1 then
        # infers some input widths as None and sums them (TypeError), aborting the graph build.
        if node in broken:
            return
        deps = [d for n in [node, *node.inputs] for d in n.dependencies]
        before = [list(d.index_mapping) for d in deps]
        try:
            original_concat(graph, node)
        except TypeError:
            for d, b in zip(deps, before):
                d.index_mapping[:] = b
            broken.append(node)

    index_mapping.update_reshape_index_mapping = tolerant
    index_mapping.update_concat_index_mapping = tolerant_concat
    try:
        yield broken
    finally:
        index_mapping.update_reshape_index_mapping = original
        index_mapping.update_concat_index_mapping = original_concat


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's DependencyGraph of ``model``; use it inside ``_tolerant_reshape_mapping``
    (Torch-Pruning re-runs the reshape mapping on every ``get_pruning_group``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "unwrapped parameters" notices: their coupling is traced anyway
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=outputs.traced, verbose=False)


def _all_groups(graph: tp.DependencyGraph, ignored: list[nn.Module]):
    """``(root, group, error)`` for every Conv/Linear output group, as ``get_all_groups`` finds them.

    Same walk as Torch-Pruning's ``get_all_groups``, but one group whose index mapping fails
    (``IndexError`` inside a concat mapping on ShuffleNetV2) yields its error instead of
    ending the iteration for the whole model.
    """
    visited: set[nn.Module] = set()
    ignored = list(ignored) + list(graph.IGNORED_LAYERS_IN_TRACING)
    for module in list(graph.module2node):
        if module in ignored or module in visited or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(pruner.get_out_channels(module))))
        except Exception as exc:  # Torch-Pruning's mapping code raises assorted errors on odd graphs
            visited.add(module)
            yield module, None, _one_line(exc)
            continue
        touches_ignored = False
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
                touches_ignored |= dep.target.module in ignored
        if not touches_ignored:
            yield module, group, None


def _unsafe_reason(group, broken: list) -> str | None:
    """Why ``group`` is known to be unprunable before any probe, or None.

    The probe runs at one width; these rules catch what fails only at other widths.
    """
    for item in group:
        if item.dep.target in broken or item.dep.source in broken:
            return (
                "its channels pass a channel shuffle, a channels-last reshape (window partition, "
                "attention heads) or a channels-last concat (patch merging), which Torch-Pruning cannot map"
            )
        module = item.dep.target.module
        if isinstance(module, nn.Conv2d) and 1 < module.groups < module.in_channels:
            # Torch-Pruning slices channels but keeps ``groups``: a width not divisible by it
            # crashes, and even a divisible one mixes channels across conv groups.
            return f"it feeds a grouped convolution (groups={module.groups}), whose groups Torch-Pruning cannot shrink evenly"
        if isinstance(module, nn.MultiheadAttention):
            return (
                "it is the embedding width of nn.MultiheadAttention (heads, the class token and the "
                "model's stored hidden_dim would all have to shrink with it)"
            )
    return None


# What a search may remove: every prunable channel group; or, for a transfer-learned model
# (edgeprune.tasks.transfer), only the neurons of its fully-connected head (EvoPruneDeepTL's neuron
# selection), or only the backbone features the head reads (its feature selection: the last conv
# channels go with them).
MODES = ("channels", "head", "features")


def _in_mode(group: Group, mode: str, modules: dict[str, nn.Module]) -> bool:
    root = modules.get(group.name)
    if mode == "head":
        return isinstance(root, nn.Linear)
    return isinstance(root, nn.Conv2d) and any(isinstance(modules.get(n), nn.Linear) for n in group.coupled)


class ChannelSpace(GroupLayout):
    """Prunable groups of a model, their widths on the target's step grid, and physical shrink."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        step: int,
        model_spec: dict | None = None,
        probe: bool = True,
        depth: bool = False,
        mode: str = "channels",
    ):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        self.mode = mode
        self.model = model.eval()
        self.input_shape = tuple(input_shape)
        self.step = step
        self.model_spec = model_spec or {}
        self.example = torch.zeros(1, *self.input_shape)
        # Layers whose output channels are the model's outputs (classes, boxes, masks): never pruned.
        self.output_layers = outputs.output_layers(model, self.example)
        names = {m: n for n, m in model.named_modules()}
        self.output_layer_names = [names[m] for m in self.output_layers]
        # Groups Torch-Pruning cannot prune correctly, with the reason: reported, never fatal.
        self.skipped: list[dict] = []
        with _tolerant_reshape_mapping([]) as broken:
            groups = self._candidates(build_graph(model, self.example), broken, names)
        if mode != "channels":
            modules = dict(model.named_modules())
            groups = [g for g in groups if _in_mode(g, mode, modules)]
        groups = self._working(groups) if probe and groups else groups
        super().__init__(groups + (self._depth_groups() if depth else []))
        self.base_signature = hashlib.sha256((repr(model) + str(self.input_shape)).encode()).hexdigest()[:16]

    def _candidates(self, graph: tp.DependencyGraph, broken: list, names: dict) -> list[Group]:
        """Every group Torch-Pruning traces, minus those known to be unprunable (into ``skipped``)."""
        importance = tp.importance.GroupMagnitudeImportance(p=1)
        groups = []
        for root, group, error in _all_groups(graph, self.output_layers):
            name = names.get(root, repr(root))
            if error is not None:
                self.skipped.append({"group": name, "reason": f"Torch-Pruning cannot trace its coupling: {error}"})
                continue
            reason = _unsafe_reason(group, broken)
            if reason is not None:
                self.skipped.append({"group": name, "reason": reason})
                continue
            full = graph.get_out_channels(root)
            options = _width_options(full, self.step)
            if len(options) < 2:
                continue  # already at or below one step: nothing to choose
            try:
                with torch.no_grad():
                    scores = importance(group)
            except (IndexError, RuntimeError) as exc:  # index mappings Torch-Pruning got wrong (FastViT's stems)
                self.skipped.append({"group": name, "reason": f"Torch-Pruning cannot score its channels: {_one_line(exc)}"})
                continue
            if scores is None or len(scores) != full:
                self.skipped.append({"group": name, "reason": "no per-channel importance (coupled layers disagree on width)"})
                continue
            order = tuple(int(i) for i in torch.argsort(scores, descending=True, stable=True))
            coupled = tuple(
                dict.fromkeys(names[item.dep.target.module] for item in group if item.dep.target.module in names)
            )
            groups.append(Group(name, full, options, order, coupled))
        return groups

    def _depth_groups(self) -> list[Group]:
        """One keep/drop gene per residual block whose removal leaves a model that runs with the
        same output shape (checked on the original, one forward per block)."""
        groups = []
        for name in residual_blocks(self.model):
            try:
                model = drop_blocks(copy.deepcopy(self.model), [name])
                with torch.no_grad():
                    out = model.eval()(self.example)
            except Exception as exc:  # noqa: BLE001 - any failure means "not droppable": the text says why
                self.skipped.append({"group": DEPTH_PREFIX + name, "reason": f"dropping it breaks the forward pass: {_one_line(exc)}"})
                continue
            if outputs.shapes(out) != self._output_shape():
                self.skipped.append({"group": DEPTH_PREFIX + name, "reason": "dropping it changes the output shape"})
                continue
            groups.append(Group(DEPTH_PREFIX + name, 1, (0, 1), (0,), (name,), depth=True))
        return groups

    # --- probing: a group is in the space only if pruning it gives a model that runs -------------

    def _probe_error(self, groups: list[Group]) -> str | None:
        """Why pruning ``groups`` to about half width breaks the model, or None when it runs.

        Torch-Pruning can mis-handle layers it has no rule for (attention heads, window
        partitions, channel shuffles) without complaining at prune time; a forward pass at the
        real input shape, with the output shape compared, is the check that cannot be fooled.
        """
        kept = {g.name: g.kept(g.options[g.nearest_option(0.5 * g.full)]) for g in groups}
        try:
            model = copy.deepcopy(self.model)
            apply_plan(model, ChannelPlan(kept=kept), self.example)
            with torch.no_grad():
                out = model.eval()(self.example)
        except Exception as exc:  # any failure means "not prunable this way"; the text is the reason
            return _one_line(exc)
        expected = self._output_shape()
        if outputs.shapes(out) != expected:
            return f"output shape changes from {_shown(expected)} to {_shown(outputs.shapes(out))}"
        return None

    def _output_shape(self) -> tuple[tuple[int, ...], ...]:
        """The shape of every output tensor (see :mod:`edgeprune.tasks.outputs`)."""
        if not hasattr(self, "_out_shape"):
            with torch.no_grad():
                self._out_shape = outputs.shapes(self.model(self.example))
        return self._out_shape

    def _working(self, groups: list[Group]) -> list[Group]:
        """The groups that can be pruned together; the others go to ``skipped`` with the error.

        One probe of all groups at once is the common case (one forward); only on failure does
        it bisect, so the cost grows with log(groups) per broken group, not with the group count.
        """
        error = self._probe_error(groups)
        if error is None:
            return groups
        good = self._bisect(groups, error)
        if good and self._probe_error(good) is not None:
            # Each half works alone but not together: add groups one by one (rare, slow, exact).
            together: list[Group] = []
            for g in good:
                error = self._probe_error(together + [g])
                if error is None:
                    together.append(g)
                else:
                    self.skipped.append({"group": g.name, "reason": f"pruning it with the others breaks the forward pass: {error}"})
            good = together
        return good

    def _bisect(self, groups: list[Group], error: str) -> list[Group]:
        """The working subset of ``groups``, which fail together with ``error``."""
        if len(groups) == 1:
            self.skipped.append({"group": groups[0].name, "reason": f"pruning it breaks the forward pass: {error}"})
            return []
        half = len(groups) // 2
        parts = []
        for part in (groups[:half], groups[half:]):
            part_error = self._probe_error(part)
            parts.extend(part if part_error is None else self._bisect(part, part_error))
        return parts

    # --- widths <-> plan (genome <-> widths: GroupLayout) ----------------------------------

    def plan(self, widths) -> ChannelPlan:
        return self.plan_of(self.choice(widths))

    def plan_of(self, choice: Choice) -> ChannelPlan:
        kept = {g.name: [int(i) for i in idxs] for g, idxs in zip(self.groups, choice) if not g.depth}
        dropped = [g.name.removeprefix(DEPTH_PREFIX) for g, idxs in zip(self.groups, choice) if g.depth and not idxs]
        return ChannelPlan(kept=kept, model_spec=self.model_spec, input_shape=self.input_shape, dropped=dropped)

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


def apply_plan(model: nn.Module, plan: ChannelPlan, example: torch.Tensor) -> nn.Module:
    """Prune ``model`` in place so each group keeps exactly ``plan.kept[group]`` channels, then
    replace the blocks ``plan.dropped`` by the identity (their channels went with the residual
    stream's group, so what flows around them still fits)."""
    modules = dict(model.named_modules())
    with _tolerant_reshape_mapping([]):
        graph = build_graph(model, example)
        for name, kept in plan.kept.items():
            root = modules[name]
            full = graph.get_out_channels(root)
            removed = sorted(set(range(full)) - set(kept))
            if not removed:
                continue
            pruner = graph.get_pruner_of_module(root)
            group = graph.get_pruning_group(root, pruner.prune_out_channels, idxs=removed)
            group.prune()
    return drop_blocks(model, plan.dropped)


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
