"""What a network returns, as the pruning and export code sees it: a flat list of tensors.

A classifier returns one ``[batch, classes]`` tensor; a detector or a segmenter returns a tuple
or a dict of them (torchvision's segmentation models return ``{"out": ...}``). Everything that
compares, exports or protects outputs goes through :func:`flatten`, so one rule covers all of them:
tensors in order, tuples and lists in order, dicts by their keys' insertion order (which is also the
order the ONNX exporter writes them in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def flatten(out) -> list[torch.Tensor]:
    """The tensors of a model's output, in the order the ONNX file lists its outputs."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flatten(v)]
    if isinstance(out, Sequence) and not isinstance(out, (str, bytes)):
        return [t for v in out for t in flatten(v)]
    raise TypeError(f"model output holds a {type(out).__name__}; outputs must be tensors, or tuples, lists or dicts of tensors")


def unflatten(template, tensors: list[torch.Tensor]):
    """``tensors`` (in :func:`flatten`'s order) put back into ``template``'s structure: what an
    ONNX Runtime session's flat outputs become so a task's ``score`` sees what torch returns."""
    rest = list(tensors)

    def build(node):
        if isinstance(node, torch.Tensor):
            return rest.pop(0)
        if isinstance(node, Mapping):
            items = [(k, build(v)) for k, v in node.items()]
            return dict(items) if type(node) is dict else type(node)(items)
        parts = [build(v) for v in node]
        if isinstance(node, tuple):
            return type(node)(*parts) if hasattr(node, "_fields") else type(node)(parts)
        return parts

    result = build(template)
    if rest:
        raise ValueError(f"{len(rest)} output tensors more than the model returns")
    return result


def names(out) -> list[str]:
    """ONNX output names for ``out``: ``logits`` for a lone tensor, the keys of a flat dict, else
    ``output_0``, ``output_1``, ... in :func:`flatten`'s order."""
    if isinstance(out, torch.Tensor):
        return ["logits"]
    if isinstance(out, Mapping) and all(isinstance(v, torch.Tensor) for v in out.values()):
        return [str(k) for k in out]
    return [f"output_{i}" for i in range(len(flatten(out)))]


def shapes(out) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(t.shape) for t in flatten(out))


def equal(a, b) -> bool:
    """Whether two outputs hold the same tensors, bit for bit."""
    fa, fb = flatten(a), flatten(b)
    return len(fa) == len(fb) and all(torch.equal(x, y) for x, y in zip(fa, fb))


def traced(model: nn.Module, example: torch.Tensor):
    """What the channel-coupling trace follows back to every layer: ``model.coupling_outputs(x)``
    where the model has one (a YOLO26 head's end-to-end top-k reaches one branch of two, see
    :class:`edgeprune.tasks.yolo.YoloNet`), else its output."""
    coupling = getattr(model, "coupling_outputs", None)
    return coupling(example) if callable(coupling) else model(example)


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The Conv/Linear layers whose output channels *are* output channels: pruning one would
    delete classes, box coordinates or mask channels, so they are never part of the space.

    Found on the autograd graph of one forward pass: from every output tensor, walk back through
    element-wise, resize, reshape and concat operations and stop at the first convolution or linear
    layer on each path. A classifier's head, a segmenter's two classifier convs summed into its
    mask, every conv of a detector's head that feeds the concatenated predictions are all found,
    whatever the architecture. A frozen layer (weights that do not train, like YOLO's DFL integral
    behind its box convs) is walked through: it decodes outputs, the trainable layer before it
    makes them. With every weight frozen it falls back to the last Conv/Linear that runs.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    made_by: dict[object, nn.Module] = {}
    order: list[nn.Module] = []

    def record(module, _inputs, output):
        order.append(module)
        if isinstance(output, torch.Tensor) and output.grad_fn is not None and module.weight.requires_grad:
            made_by[output.grad_fn] = module

    hooks = [m.register_forward_hook(record) for m in layers]
    try:
        with torch.enable_grad():
            out = traced(model, example.clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError("the model has no Conv2d or Linear layer to prune")
    found: dict[nn.Module, None] = {}
    seen: set = set()
    stack = [t.grad_fn for t in flatten(out) if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made_by:
            found[made_by[fn]] = None
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return list(found) or [order[-1]]
