"""The user's own task (``--task package.module:factory``): their data, their score, their training.

The factory is called with no arguments and returns any object with these members (a class, a
``types.SimpleNamespace``, a module: anything with the attributes):

* ``example_input()`` → one input tensor ``[1, ...]``: the shape the network is traced, timed and
  exported at;
* ``calibration_batches()`` → a few input batches (BatchNorm statistics are re-estimated on them
  after every cut, and the exported file's parity with torch is checked on them);
* ``score(model)`` → a number in [0, 1], higher is better (accuracy, mAP, mIoU, ...), on data the
  final report does not use;
* optional ``test_score(model)`` → the same on a test split, for the report (without it the report
  gives ``score`` and says so);
* optional ``fine_tune(model, teacher, epochs)`` → trains ``model`` in place, may return a dict of
  numbers (without it the pruned model ships as the search left it);
* optional ``metric`` (a name for the score, e.g. ``"mAP50"``) and ``name``.

:class:`UserTask` wraps that object in the :class:`~edgeprune.tasks.task.Task` protocol and turns
everything the user's code can do wrong (raise, return NaN or 3.7, return the wrong type) into one
line naming the task, the method and the fix: the search calls ``score`` hundreds of times, and a
traceback from the 200th call should not be the way a user learns that their score returns NaN.

Importing the factory runs the user's code, exactly like a ``package.module:factory`` model; a
checkpoint that names one needs ``--trust-model-code`` to resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from edgeprune.tasks import outputs
from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.tasks.models import import_factory
from edgeprune.tasks.task import Task

REQUIRED = ("example_input", "calibration_batches", "score")
MAX_CALIBRATION_BATCHES = 64


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class UserTask(Task):
    """A user's task object behind the :class:`~edgeprune.tasks.task.Task` protocol, checked on load."""

    def __init__(self, obj, spec: str):
        self.spec = spec
        missing = [m for m in REQUIRED if not callable(getattr(obj, m, None))]
        if missing:
            raise UserError(
                f"task {spec} has no {', '.join(m + '()' for m in missing)}; give the object the factory returns "
                f"{', '.join(m + '()' for m in REQUIRED)} (see examples/ and docs/usage.md)"
            )
        self._obj = obj
        self.name = str(getattr(obj, "name", spec))[:80]
        self.metric = str(getattr(obj, "metric", "score"))[:40]
        self.has_fine_tune = callable(getattr(obj, "fine_tune", None))
        self.has_test_score = callable(getattr(obj, "test_score", None))
        self._example = self._checked_example()
        self.input_shape = tuple(self._example.shape[1:])
        self._calib = self._checked_calibration()

    def _call(self, method: str, fix: str, *args):
        try:
            return getattr(self._obj, method)(*args)
        except UserError:
            raise
        except (Exception, SystemExit) as exc:  # the task is user code: any error (or sys.exit()), one line
            raise UserError(f"task {self.spec}: {method}() raised {_first_line(exc)}; {fix}") from exc

    def _checked_example(self) -> torch.Tensor:
        x = self._call("example_input", "make it return one input tensor [1, C, H, W]")
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
            got = f"a {x.dtype} tensor of shape {list(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
            raise UserError(f"task {self.spec}: example_input() returned {got}; return one float input tensor [1, C, H, W]")
        return x[:1].detach().float().cpu()

    def _checked_calibration(self) -> list[torch.Tensor]:
        batches = self._call("calibration_batches", "make it return a list of input batches")
        try:
            batches = list(batches)[:MAX_CALIBRATION_BATCHES]
        except TypeError:
            raise UserError(f"task {self.spec}: calibration_batches() returned a {type(batches).__name__}; return a list of input batches") from None
        if not batches:
            raise UserError(f"task {self.spec}: calibration_batches() returned no batch; return a few input batches (e.g. 4 of 64)")
        for i, b in enumerate(batches):
            if not isinstance(b, torch.Tensor) or tuple(b.shape[1:]) != self.input_shape:
                got = list(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
                raise UserError(
                    f"task {self.spec}: calibration batch {i} is {got}, not [N, {', '.join(map(str, self.input_shape))}] "
                    "like example_input(); return input tensors only (no labels)"
                )
        return [b.detach().float().cpu() for b in batches]

    def check_model(self, model: nn.Module, opset: int) -> None:
        """Run ``model`` on the example input and export it to ONNX: a model that cannot take the
        task's input, returns something other than tensors or uses an operator ONNX lacks fails
        here in one line instead of in the search."""
        try:
            with torch.no_grad():
                out = model.eval()(self._example)
        except Exception as exc:  # any layer may reject the input, each with its own error
            raise UserError(
                f"the model cannot take task {self.spec}'s example input {list(self._example.shape)} "
                f"({_first_line(exc)}); make example_input() return what the model takes"
            ) from exc
        try:
            outputs.flatten(out)
        except TypeError as exc:
            raise UserError(f"task {self.spec}: {exc}; wrap the model so that forward returns only tensors") from None
        try:
            export_onnx_bytes(model, tuple(self._example.shape), opset)
        except Exception as exc:  # the exporter raises many types, one per unsupported construct
            raise UserError(
                f"the model of task {self.spec} cannot be exported to ONNX ({_first_line(exc)[:200]}); replace that "
                "operation in the model's forward, or move it out of the model into the task's score"
            ) from exc

    # --- the Task protocol -----------------------------------------------------------------

    def example_input(self) -> torch.Tensor:
        return self._example

    def calibration_batches(self) -> list[torch.Tensor]:
        return self._calib

    def score(self, model: nn.Module) -> float:
        return self._fraction("score", model)

    def test_score(self, model: nn.Module) -> float:
        return self._fraction("test_score" if self.has_test_score else "score", model)

    def _fraction(self, method: str, model: nn.Module) -> float:
        value = self._call(method, f"fix the task's {method}", model)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UserError(f"task {self.spec}: {method}() returned a {type(value).__name__}; return a number in [0, 1]") from None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise UserError(
                f"task {self.spec}: {method}() returned {value}; return a finite number in [0, 1], higher is better "
                "(accuracy, mAP, mIoU; rescale other metrics)"
            )
        return value

    def fine_tune(self, model: nn.Module, teacher: nn.Module, epochs: float, seed: int, description: str) -> dict:
        if not self.has_fine_tune:
            return {"skipped": "the task has no fine_tune()"}
        torch.manual_seed(seed)
        numbers = self._call("fine_tune", "fix the task's fine_tune", model, teacher, epochs)
        model.eval()
        if numbers is None:
            return {}
        if not isinstance(numbers, dict):
            raise UserError(f"task {self.spec}: fine_tune() returned a {type(numbers).__name__}; return None or a dict of numbers")
        return {str(k): v for k, v in numbers.items() if isinstance(v, (int, float, str, bool)) or v is None}

    def describe(self) -> dict:
        """The task section of report.json."""
        return {
            "kind": "factory", "spec": self.spec, "name": self.name, "metric": self.metric,
            "test_split": self.has_test_score, "fine_tune": self.has_fine_tune,
        }


    def describe_data(self, seed: int) -> dict:
        return {"name": f"task {self.spec}", "source": self.spec, "seed": seed}


def load_task(spec: str) -> UserTask:
    """Import ``package.module:factory``, call it with no arguments and check what it returns."""
    factory: Callable = import_factory(spec, what="task")
    try:
        obj = factory()
    except (Exception, SystemExit) as exc:  # the factory is user code; sys.exit() must not end the run with exit 0
        raise UserError(f"task factory {spec}() failed ({_first_line(exc)}); fix the factory (a function returning the task object)") from exc
    return UserTask(obj, spec)
