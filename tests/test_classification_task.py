"""The classification task scores every candidate on the same held-out images: it preprocesses
them once (when they fit in memory) and gives exactly the accuracy evaluate() gives (issue 32)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from edgeprune.tasks.data import load_data
from edgeprune.tasks.task import Classification, Recipe
from edgeprune.tasks.training import evaluate


def _task(**options) -> Classification:
    data = load_data("digits", holdout=300, seed=0)
    return Classification(data, Recipe(0.01, 64, 0.5, 4.0, progress=False), **options)


def _counting(task: Classification) -> list[int]:
    """Counts the holdout's preprocessing calls (images preprocessed, per call)."""
    calls: list[int] = []
    preprocess = task.data.holdout.preprocess

    class Counting:
        def __call__(self, images):
            calls.append(len(images))
            return preprocess(images)

        def __getattr__(self, name):
            return getattr(preprocess, name)

    task.data.holdout = dataclasses.replace(task.data.holdout, preprocess=Counting())
    return calls


def _models(task: Classification) -> list[nn.Module]:
    torch.manual_seed(0)
    c, h, w = task.data.preprocess.input_shape
    return [nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, task.data.num_classes)).eval() for _ in range(3)]


def test_the_holdout_is_preprocessed_once_and_scores_what_evaluate_scores():
    task = _task()
    models = _models(task)
    expected = [evaluate(m, task.data.holdout) for m in models]
    calls = _counting(task)
    assert [task.score(m) for m in models] == expected
    assert sum(calls) == len(task.data.holdout)  # once for three candidates


def test_a_holdout_too_large_to_keep_is_preprocessed_at_every_score():
    task = _task(holdout_cache_bytes=0)
    models = _models(task)
    expected = [evaluate(m, task.data.holdout) for m in models]
    calls = _counting(task)
    assert [task.score(m) for m in models] == expected
    assert sum(calls) == 3 * len(task.data.holdout)
