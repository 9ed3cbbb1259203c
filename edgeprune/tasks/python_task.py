"""A task given as plain Python objects (``edgeprune.prune(..., calibration=, score=)``): the user
task protocol of :mod:`edgeprune.tasks.user_task` without a ``package.module:factory`` string, so
a notebook's DataLoader and evaluation function work as they are.

The objects are adapted here and then checked by :class:`~edgeprune.tasks.user_task.UserTask`
exactly as a factory's object is, so every mistake (a score of 3.7, a batch of the wrong shape,
an exception in ``fine_tune``) is the same one line from Python as from the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from types import SimpleNamespace

import torch

from edgeprune.errors import UserError
from edgeprune.tasks.user_task import MAX_CALIBRATION_BATCHES, UserTask

# How a task made of objects is named in messages, report.json and run.json.
OBJECT_TASK = "python-task"


def _inputs_of(batch):
    """A DataLoader yields ``(inputs, labels)``; the calibration wants the inputs."""
    return batch[0] if isinstance(batch, (tuple, list)) and batch else batch


def _first_batches(calibration: Iterable) -> list:
    """At most :data:`MAX_CALIBRATION_BATCHES` input batches, read once: a DataLoader over a
    large set is not walked to its end, and a generator is not exhausted twice."""
    try:
        batches = iter(calibration)
    except TypeError:
        raise UserError(f"calibration= is a {type(calibration).__name__}; pass an iterable of input batches (a DataLoader or a list of tensors)") from None
    try:
        return [_inputs_of(b) for b in islice(batches, MAX_CALIBRATION_BATCHES)]
    except Exception as exc:  # the user's DataLoader: its dataset or collate may raise anything
        raise UserError(f"reading calibration= raised {type(exc).__name__}: {str(exc).strip()[:200]}; fix the DataLoader (it must yield input tensors)") from exc


class _WithExample:
    """A task object that lacks ``example_input()``, given one by the caller."""

    def __init__(self, task: object, example: torch.Tensor):
        self._task, self._example = task, example

    def example_input(self) -> torch.Tensor:
        return self._example

    def __getattr__(self, name: str):
        return getattr(self._task, name)


def object_task(
    task: object | None = None,
    *,
    calibration: Iterable | None = None,
    score: Callable | None = None,
    fine_tune: Callable | None = None,
    test_score: Callable | None = None,
    example_input: torch.Tensor | None = None,
    metric: str = "score",
) -> UserTask:
    """The :class:`UserTask` of ``task`` (an object with the protocol's methods) or of the
    callables given one by one; ``example_input`` defaults to one sample of the first batch."""
    if task is not None:
        given = [n for n, v in (("calibration", calibration), ("score", score), ("fine_tune", fine_tune), ("test_score", test_score)) if v is not None]
        if given:
            raise UserError(f"task= is an object with its own methods; drop {', '.join(n + '=' for n in given)} (or pass them without task=)")
        if example_input is not None and not callable(getattr(task, "example_input", None)):
            task = _WithExample(task, example_input)
        return UserTask(task, str(getattr(task, "name", OBJECT_TASK))[:80])
    if calibration is None or score is None:
        missing = " and ".join(n + "=" for n, v in (("calibration", calibration), ("score", score)) if v is None)
        raise UserError(f"a task of Python objects needs {missing}: input batches to recalibrate BatchNorm on and score(model) -> [0, 1] (or pass task=)")
    batches = _first_batches(calibration)
    if not batches or not isinstance(batches[0], torch.Tensor):
        got = f"a {type(batches[0]).__name__}" if batches else "nothing"
        raise UserError(f"calibration= yielded {got}; yield input tensors [N, C, H, W] or (inputs, labels) pairs, as a DataLoader does")
    example = example_input if example_input is not None else batches[0][:1]
    members = {"example_input": lambda: example, "calibration_batches": lambda: batches, "score": score, "metric": metric, "name": OBJECT_TASK}
    members |= {n: f for n, f in (("fine_tune", fine_tune), ("test_score", test_score)) if f is not None}
    return UserTask(SimpleNamespace(**members), OBJECT_TASK)
