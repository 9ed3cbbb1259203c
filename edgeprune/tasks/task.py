"""What a network is pruned for: the Task interface, and image classification as its first kind.

The pruning problem and the selection stage ask a task for three things and nothing else:
batches to re-estimate BatchNorm statistics on after a cut, a score of a network (higher is
better, on data the final test never sees), and a fine-tune recipe that recovers a cut network
(distilling from the unpruned one). The prune job also asks for an example input (the shape
the network is traced, timed and exported at), a score on data the search never saw for the
report (``test_score``), and what to call the score (``metric``). A user's own evaluator
(``--task package.module:factory``, :mod:`edgeprune.tasks.user_task`) is another implementation of
the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from edgeprune.tasks.data import DataBundle
from edgeprune.tasks.training import correct_count, evaluate, train

# The held-out split is scored once per candidate: its preprocessed batches are kept while they
# take at most this much memory (the demo's 1000 images at 3x32x32: 12 MB; preprocessing them
# took 0.17 s of each evaluation's 0.43 s of scoring), else preprocessed at every score.
HOLDOUT_CACHE_BYTES = 256 << 20


class Task(Protocol):
    name: str
    metric: str  # what score() measures, for reports: "top-1 accuracy", "mIoU", ...

    def example_input(self) -> torch.Tensor:
        """One input ``[1, ...]``: the shape the network is traced, timed and exported at."""

    def calibration_batches(self) -> list[torch.Tensor]:
        """Inputs to re-estimate BatchNorm statistics on (adaptive BN, see problem/pruning.py)."""

    def score(self, model: nn.Module) -> float:
        """How good ``model`` is for the task (higher is better), on held-out training data."""

    def fine_tune(self, model: nn.Module, teacher: nn.Module, epochs: float, seed: int, description: str) -> dict:
        """Train ``model`` in place for ``epochs``, learning from ``teacher``; returns its numbers."""

    def test_score(self, model: nn.Module) -> float:
        """The score the report gives (on data the search never saw, where the task has some)."""

    def describe(self) -> dict:
        """The task section of report.json."""

    # Optional members: a task that subclasses Task inherits these defaults.

    def describe_data(self, seed: int) -> dict:
        """The data section of report.json, for a task that brings its own data."""
        return {"name": f"task {self.name}", "source": self.name, "seed": seed}

    def extra_files(self, model: nn.Module) -> dict[str, tuple[str, bytes]]:
        """role → (file name, bytes) the task adds to the output folder (detection's checkpoint)."""
        return {}

    def score_file(self, blob: bytes, label: str) -> float | None:
        """The score of an exported ONNX file, where the task runs it itself; None: the exporter
        runs it by onnxruntime and asks :meth:`test_score`."""
        return None

    def close(self) -> None:
        """Release what the task holds (detection's work folder)."""


@dataclass(frozen=True)
class Recipe:
    """The job's one fine-tune recipe (LR, batch, distillation from the original), for the short
    tunes before the pick and the final fine-tune alike, so a short tune ranks candidates by how
    they recover under exactly the training they will get."""

    lr: float
    batch_size: int
    kd_alpha: float
    kd_temperature: float
    progress: bool = True
    # Adversarial fine-tuning (--adv-finetune): PGD inputs for adv_ratio of every batch.
    adversary: Callable | None = None
    adv_ratio: float = 0.5



def _input_bytes(data: DataBundle) -> int:
    """Bytes of one preprocessed float32 input."""
    c, h, w = data.preprocess.input_shape
    return 4 * c * h * w


@dataclass
class Classification(Task):
    """Top-1 accuracy on the data bundle's holdout (carved from train); fine-tuning by
    distillation on its train split. The test split is the report's, never the search's."""

    data: DataBundle
    recipe: Recipe
    calib_images: int = 512
    calib_batch: int = 128
    seed: int = 0
    holdout_cache_bytes: int = HOLDOUT_CACHE_BYTES
    name: str = "classification"
    metric: str = "top-1 accuracy"

    def __post_init__(self):
        calib = self.data.train.subset(min(self.calib_images, len(self.data.train)), seed=self.seed)
        self._calib = [x for x, _ in calib.batches(self.calib_batch)]
        self._holdout: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.data.preprocess.input_shape)

    def calibration_batches(self) -> list[torch.Tensor]:
        return self._calib

    def score(self, model: nn.Module) -> float:
        """Top-1 accuracy on the holdout, from its batches preprocessed once (when they fit
        ``holdout_cache_bytes``): the same numbers as :func:`evaluate`, without redoing the
        same resize and normalisation for every candidate."""
        holdout = self.data.holdout
        if self._holdout is None and len(holdout) * _input_bytes(self.data) <= self.holdout_cache_bytes:
            self._holdout = list(holdout.batches(512))
        if self._holdout is None:
            return evaluate(model, holdout)
        return correct_count(model, self._holdout) / len(holdout)

    def test_score(self, model: nn.Module) -> float:
        """Accuracy on the test split: for the report only."""
        return evaluate(model, self.data.test)

    def describe(self) -> dict:
        """The task section of report.json."""
        return {"kind": "classification", "metric": self.metric, "test_split": True, "fine_tune": True}

    def fine_tune(self, model: nn.Module, teacher: nn.Module, epochs: float, seed: int, description: str) -> dict:
        r = self.recipe
        adversarial = {"adversarial": {"ratio": r.adv_ratio}} if r.adversary is not None else {}
        return {"lr": r.lr, "kd_alpha": r.kd_alpha, "kd_temperature": r.kd_temperature} | adversarial | train(
            model, self.data.train, epochs, lr=r.lr, batch_size=r.batch_size, seed=seed, teacher=teacher,
            kd_alpha=r.kd_alpha, kd_temperature=r.kd_temperature, progress=r.progress, description=description,
            adversary=r.adversary, adv_ratio=r.adv_ratio,
        )
