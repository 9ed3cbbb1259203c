"""Spiking networks (CCSRP prunes the filters of spiking VGGs): a small spiking VGG built from
snntorch's leaky integrate-and-fire neurons, unrolled over ``steps`` time steps inside
``forward``, so that it is searched, shrunk, exported and timed like any other CNN.

* Neurons: ``snntorch.Leaky`` with a learnt decay ``beta`` per channel (shape ``(C, 1, 1)``),
  reset by subtraction at threshold 1, trained through snntorch's arctan surrogate gradient.
  ``beta`` is the neuron state's only parameter with a channel axis; Torch-Pruning couples it to
  the conv that feeds the neurons, so removing a filter removes its neurons' decay with it and
  the surviving neurons keep their own.
* Input: direct encoding. The image is the same at every step, so the first conv and its
  BatchNorm run once and their output drives the first neurons at each step.
* BatchNorm: one set of statistics per layer, shared by the steps (each step's batch updates the
  running statistics in training, as adaptive-BN recalibration does in the search), so a layer's
  export is one set of weights however many steps run.
* Output: the classifier reads each step's spikes (averaged over the feature map) and the logits
  are the mean over steps, a plain tensor that losses, attacks and ONNX all take as they are.
* Export: the Python loop over steps is traced into a straight-line ONNX graph (``steps`` copies
  of every layer after the first), which ONNX Runtime and TensorRT run as they run any CNN; the
  spike is ``Greater`` + ``Cast``.

snntorch is the optional extra ``edgeprune[snn]``; it is imported when a spiking model is built.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from edgeprune.errors import UserError

STEPS = 4


def _snntorch():
    try:
        import snntorch
    except ImportError:
        raise UserError("spiking networks need snntorch, which is not installed; pip install 'edgeprune[snn]'") from None
    return snntorch


class SpikingVGG(nn.Module):
    """Conv-BN-LIF blocks (2x2 max-pool between blocks), global average of the last spikes,
    a linear classifier; ``steps`` time steps per image."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128), steps: int = STEPS, beta: float = 0.9):
        super().__init__()
        snn = _snntorch()
        if steps < 1 or not widths:
            raise ValueError("a spiking VGG needs at least one time step and one block")
        self.steps = steps
        channels = (in_channels, *widths)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in itertools.pairwise(channels))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in widths)
        self.neurons = nn.ModuleList(snn.Leaky(beta=torch.full((c, 1, 1), beta), learn_beta=True) for c in widths)
        self.pool = nn.MaxPool2d(2)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        direct = self.norms[0](self.convs[0](x))
        membranes: list[torch.Tensor | None] = [None] * len(self.neurons)
        logits = 0
        for _ in range(self.steps):
            spikes = None
            for i, neurons in enumerate(self.neurons):
                current = direct if spikes is None else self.norms[i](self.convs[i](self.pool(spikes)))
                if membranes[i] is None:
                    membranes[i] = torch.zeros_like(current)
                spikes, membranes[i] = neurons(current, membranes[i])
            logits = logits + self.classifier(spikes.mean((2, 3)))
        # snntorch keeps the last membrane and reset signal on the module, each as large as the
        # batch's feature map and the membrane with its autograd graph: a copy of the model (the
        # search's candidates, a Ray task's bundle) must carry neither, and a generation of
        # candidates scored on big batches must not hold them all. Empty, as snntorch starts.
        for neurons in self.neurons:
            neurons.mem = direct.new_zeros(0)
            neurons.reset = direct.new_zeros(0)
        return logits / self.steps


def spiking_vgg(num_classes: int = 10, in_channels: int = 1) -> SpikingVGG:
    """The factory ``edgeprune.snn:spiking_vgg``: three blocks of 32, 64 and 128 channels, 4 steps
    (Fashion-MNIST: 28x28 → 14x14 → 7x7)."""
    return SpikingVGG(num_classes, in_channels)
