"""edgeprune from Python (issue 34): ``edgeprune.prune/profile/gate`` keep the command line's
guarantees: the same one-line UserError for bad arguments (never SystemExit), the same run for the
same settings, and a delivered model that meets its budget by a timing of the test's own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_edgeprune, tiny_prune_command
from independent_timing import paired_ratio
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import edgeprune
from edgeprune.tasks.python_task import object_task

TESTS = Path(__file__).parent
PROFILE = str(TESTS / "fixtures" / "fast-cpu.yaml")
INDEPENDENT_TOLERANCE = 0.05  # as tests/test_cli.py: the gate's default tolerance


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)), batch_size=16)


@pytest.mark.parametrize("arguments, message", [
    ({"populaton": 4}, "has no option populaton"),
    ({"speedup": 2, "budget_ms": 1.0}, "exactly one of --budget-ms"),
    ({"objectives": "accuracy,speed"}, "--objectives 'accuracy,speed'"),
    ({"calibration": [torch.zeros(2, 1, 8, 8)]}, "needs score="),
    ({"fine_tune": lambda m, t, e: None}, "pass calibration= and score="),
    ({"task": object(), "score": lambda m: 0.5}, "drop score="),
    ({"calibration": [("not", "tensors")], "score": lambda m: 0.5}, "calibration= yielded a str"),
    ({"input_shape": "3x32"}, "is not CxHxW"),
    ({"calibration": map(lambda i: i / 0, [1]), "score": lambda m: 0.5}, "reading calibration= raised ZeroDivisionError"),
])
def test_bad_arguments_are_one_line_user_errors_before_any_work(arguments, message, tmp_path):
    arguments = {"speedup": 2} | arguments if "budget_ms" not in arguments else arguments
    with pytest.raises(edgeprune.UserError) as caught:
        edgeprune.prune(_net(), out=tmp_path / "out", **arguments)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_neither_a_module_nor_a_spec_is_named():
    with pytest.raises(edgeprune.UserError, match="model is a int; pass a torch.nn.Module"):
        edgeprune.prune(42, speedup=2)


def test_a_task_of_objects_takes_a_dataloaders_inputs_and_checks_the_score():
    seen = []
    task = object_task(calibration=_loader(), score=lambda m: seen.append(m) or 3.7)
    assert task.example_input().shape == (1, 1, 8, 8)  # one sample of the first batch, labels dropped
    assert [tuple(b.shape) for b in task.calibration_batches()] == [(16, 1, 8, 8)] * 4
    with pytest.raises(edgeprune.UserError, match=r"score\(\) returned 3.7; return a finite number in \[0, 1\]"):
        task.score(_net())
    assert len(seen) == 1


def test_a_task_object_without_example_input_takes_the_one_given():
    class Task:
        def calibration_batches(self):
            return [torch.zeros(4, 1, 8, 8)]

        def score(self, model):
            return 0.5

    task = object_task(Task(), example_input=torch.ones(1, 1, 8, 8))
    assert torch.equal(task.example_input(), torch.ones(1, 1, 8, 8)) and task.score(_net()) == 0.5


def test_profile_times_a_model_object_and_the_cache_answers_the_second_call(tmp_path):
    cache, net = tmp_path / "c.sqlite", _net()
    first = edgeprune.profile(net, PROFILE, example_input=torch.zeros(1, 1, 8, 8), cache=cache)
    again = edgeprune.profile(net, PROFILE, example_input=torch.zeros(1, 1, 8, 8), cache=cache)
    assert first.median_ms > 0 and not first.from_cache and first.input_shape == (1, 1, 8, 8)
    assert again.from_cache and again.median_ms == first.median_ms
    with pytest.raises(edgeprune.UserError, match="needs example_input="):
        edgeprune.profile(_net(), PROFILE)
    with pytest.raises(edgeprune.UserError, match="runs .tflite files, which `profile` does not time; time one with `edgeprune gate"):
        edgeprune.profile(_net(), "arm-litert", example_input=torch.zeros(1, 1, 8, 8))


def test_gate_returns_the_verdicts_and_refuses_what_the_command_refuses(tmp_path):
    from edgeprune.exporters.onnx_bytes import export_onnx_bytes

    model = tmp_path / "m.onnx"
    model.write_bytes(export_onnx_bytes(_net(), (1, 1, 8, 8), 17))
    over, within = edgeprune.gate(model, 1e-6, target=PROFILE, no_cache=True) + edgeprune.gate(model, 1e3, target=PROFILE, no_cache=True)
    assert (over.passed, within.passed) == (False, True) and over.measured_ms > 1e-6
    with pytest.raises(edgeprune.UserError, match="nothing to gate"):
        edgeprune.gate()


@pytest.mark.slow
def test_the_command_line_and_the_api_run_the_same_prune(tmp_path):
    """The same settings, seed and cache through ``edgeprune prune`` and ``edgeprune.prune()``:
    the same search (every generation's front and best), the same pick, the same scores."""
    cache = tmp_path / "c.sqlite"
    cli = run_edgeprune(tiny_prune_command(tmp_path / "cli", cache)[3:])
    assert cli.returncode == 0, cli.stderr[-2000:]
    shutil.copy(cache, tmp_path / "api.sqlite")
    result = edgeprune.prune(
        "tiny_models:tiny_resnet", data="digits", holdout=300, target=PROFILE, budget_ms=5, population=6, generations=4,
        refine_top=3, finetune_epochs=0.5, progress=False, seed=3, out=tmp_path / "api", cache=str(tmp_path / "api.sqlite"),
    )
    expected = json.loads((tmp_path / "cli" / "report.json").read_text())

    def timeless(r):
        return [{k: v for k, v in h.items() if k != "wall_s"} for h in r["search"]["history"]]

    assert timeless(result.report.data) == timeless(expected)
    assert result.report.data["pruned"]["group_widths"] == expected["pruned"]["group_widths"]
    assert (result.report.pruned_score, result.report.baseline_score) == (expected["pruned"]["accuracy"], expected["baseline"]["accuracy"])
    assert sorted(result.files) == sorted(p.name for p in (tmp_path / "cli").iterdir() if p.is_file())


@pytest.mark.slow
def test_the_python_api_example_meets_its_budget_by_an_independent_timing(tmp_path, monkeypatch):
    """examples/python_api.py end to end (train, prune with a DataLoader and a score function,
    reload), judged by the test's own alternating onnxruntime sessions against the unpruned net."""
    monkeypatch.syspath_prepend(str(TESTS.parent))
    from edgeprune.exporters.onnx_bytes import export_onnx_bytes
    from examples.python_api import make_model, run

    out = tmp_path / "out"
    result = run(out, target=PROFILE, speedup=1.5, population=6, generations=2, refine_top=2, widen_passes=0, finetune_epochs=0.3)
    assert result.budget_met is True and result.report.pruned_params < result.report.baseline_params
    unpruned = tmp_path / "unpruned.onnx"
    unpruned.write_bytes(export_onnx_bytes(make_model().eval(), (1, 1, 28, 28), 17))
    ratio = paired_ratio(out / "model.onnx", unpruned)
    assert ratio <= (1 + INDEPENDENT_TOLERANCE) / 1.5, f"delivered at {ratio:.3f}x the unpruned latency"
    # The plan names the object it came from; only that object rebuilds it, and no checkpoint is left to resume.
    with pytest.raises(edgeprune.UserError, match="original=model"):
        edgeprune.load_pruned(out / "plan.json", out / "state_dict.pt")
    assert not (tmp_path / "out.checkpoint").exists()


def test_report_json_accepts_every_model_kind_a_plan_can_name():
    """A kind added to the model table (``object`` for the Python API's modules) is one report.json
    accepts: otherwise the run fails at its very end, when the report is checked."""
    from edgeprune.report.schema import report_schema
    from edgeprune.tasks.models import MODEL_KINDS

    schema = report_schema()
    assert set(schema["properties"]["model"]["properties"]["kind"]["enum"]) == set(MODEL_KINDS)
