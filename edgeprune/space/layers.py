"""Layer descriptors of a torch model, for the latency surrogate.

The surrogate (:mod:`edgeprune.profiling.surrogate`) predicts from plain
:class:`~edgeprune.profiling.surrogate.Layer` records so that the profiling package stays
torch-free; this is the torch side that takes them from a model, by running it once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgeprune.profiling.surrogate import Layer

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def layer_descriptors(model: nn.Module, input_shape: Sequence[int]) -> list[Layer]:
    """Conv/Linear/BatchNorm/pool layers of ``model`` in execution order, with the shapes they see.

    Found with forward hooks on one zero input of ``input_shape`` (C, H, W or N, C, H, W), so
    it works on any pruned copy without exporting it; the model's training flags are restored.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    names = {m: n for n, m in model.named_modules()}
    found: list[Layer] = []

    def hook(module, inputs, output):
        x = inputs[0]
        found.append(_describe(names[module], module, tuple(x.shape), tuple(output.shape)))

    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, *_POOLS)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        first = next(model.parameters(), None)
        with torch.no_grad():
            model(torch.zeros(shape, device=first.device if first is not None else "cpu"))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return found


def _describe(name: str, module: nn.Module, x: tuple[int, ...], y: tuple[int, ...]) -> Layer:
    hw = lambda s: (int(s[2]), int(s[3])) if len(s) == 4 else (1, 1)  # noqa: E731
    pair = lambda v: (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))  # noqa: E731
    if isinstance(module, nn.Conv2d):
        return Layer(name, "conv", module.in_channels, module.out_channels, pair(module.kernel_size),
                     pair(module.stride), module.groups, hw(x), hw(y))
    if isinstance(module, nn.Linear):
        return Layer(name, "linear", module.in_features, module.out_features, (1, 1), (1, 1), 1, (1, 1), (1, 1))
    channels = int(x[1])
    if isinstance(module, nn.BatchNorm2d):
        return Layer(name, "bn", channels, channels, (1, 1), (1, 1), 1, hw(x), hw(y))
    kernel = getattr(module, "kernel_size", None) or getattr(module, "output_size", 1)
    stride = getattr(module, "stride", None) or 1
    return Layer(name, "pool", channels, channels, pair(kernel), pair(stride), 1, hw(x), hw(y))
