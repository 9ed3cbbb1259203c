"""The test score of the runtime's deliverable (``model.tflite``, ``model.pte``, ``model.xml``), run by
that runtime on this host: the file that ships is the file that is scored, as ``model.onnx`` is in
ONNX Runtime (a converter can change numbers: a layout transpose, a fused activation, another
kernel's rounding).

The files' batch is fixed (the profile's), so the test data is fed that many samples at a time
(:meth:`~edgeprune.exporters.runtime_file.RuntimeFile.outputs`). At batch 1 this is one call per
test image. The demo's pruned MobileNetV2 on the Fashion-MNIST test split (10 000 images,
3x32x32, one thread, this shared 2-core host under load) scored in 2.1 s in LiteRT, 7.0 s in
OpenVINO and 7.3 s in ExecuTorch, against 7.3 s for model.onnx in ONNX Runtime, all 82.38 %
(the .tflite and .pte conversions took 22-23 s before that). A user's task is
scored by its ``test_score`` on the file behind an ``nn.Module``, as its ONNX file is; a task that
runs ONNX files with its own runner (detection: ultralytics) cannot run another format, and its
score is then null with the reason, never a number of another file.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from edgeprune.exporters.runtime_file import RuntimeFile
from edgeprune.progress import progress_bar
from edgeprune.tasks import outputs
from edgeprune.tasks.data import Split


class NotScored(Exception):
    """The task cannot score a file in this format; the message says why (report.json shows it)."""


Scorer = Callable[[RuntimeFile], float]  # raises NotScored where the file cannot be scored


def score_runtime_file(native: RuntimeFile, scorer: Scorer) -> dict:
    """report.json's ``export.runtime_file.accuracy``: the test score, the seconds it took, and
    the reason where there is none."""
    start = time.perf_counter()
    try:
        score = scorer(native)
    except NotScored as exc:
        return {"test": None, "seconds": None, "reason": str(exc)}
    return {"test": score, "seconds": round(time.perf_counter() - start, 3), "reason": None}


def split_accuracy(native: RuntimeFile, split: Split, progress: bool = True) -> float:
    """Top-1 accuracy of the file on ``split``, in its runtime."""
    if len(split) == 0:
        raise ValueError("cannot evaluate on an empty split")
    run = native.runner()
    correct = 0
    with progress_bar(progress) as bar:
        task = bar.add_task(f"{native.file} test accuracy ({native.deliverable.distribution})", total=len(split), status="")
        for x, y in split.batches(1024):
            logits = native.outputs(x.numpy(), run)[0]
            correct += int((logits.argmax(1) == y.numpy()).sum())
            bar.advance(task, len(y))
    return correct / len(split)


class RuntimeModule(nn.Module):
    """The runtime's file behind ``nn.Module``'s call, returning what the torch model returns (same
    structure), as :class:`~edgeprune.exporters.onnx.OnnxModule` does for the ONNX file."""

    def __init__(self, native: RuntimeFile, template):
        super().__init__()
        self._native, self._run, self._template = native, native.runner(), template

    def forward(self, x: torch.Tensor):
        got = self._native.outputs(x.detach().cpu().numpy().astype(np.float32), self._run)
        return outputs.unflatten(self._template, [torch.from_numpy(g) for g in got])


def task_scorer(task, template, own_file_runner: bool) -> Scorer:
    """A user task's score of the file: its ``test_score`` of the file behind a module; refused
    (:class:`NotScored`) where the task scores ONNX files with a runner of its own."""

    def score(native: RuntimeFile) -> float:
        if own_file_runner:
            raise NotScored(f"the task runs exported files itself (ONNX only); it cannot run {native.file}")
        return task.test_score(RuntimeModule(native, template))

    return score

