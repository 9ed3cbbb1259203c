"""A network in eval mode for the length of a conversion, and afterwards exactly as it was.

Every converter (ONNX, .tflite, .pte) traces the model in eval mode, and the search and the
fine-tune hand it models whose modules carry their own training flags (a BatchNorm frozen on
purpose in the middle of fine-tuning): restoring only the root's flag would lose those. The
runtimes' own converters also need the model on the CPU; a model on another device is converted
from a CPU copy, so the caller's stays where it is.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def evaluated(model: torch.nn.Module, cpu: bool = False) -> Iterator[torch.nn.Module]:
    """``model`` (with ``cpu``: a CPU copy where it lives elsewhere) in eval mode; every module's
    training flag restored on the way out."""
    first = next(model.parameters(), None)
    if cpu and first is not None and first.device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
