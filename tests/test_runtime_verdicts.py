"""The verdict on each runtime that is not ONNX Runtime: a prune for x86-openvino, arm-litert or
x86-executorch whose budget binds delivers the runtime's own file, and that file, timed in its
runtime by the test's own code (tests/independent_runtimes.py) alternately with the unpruned
model's file, runs within the budget."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from independent_runtimes import paired_runtime_ratios
from independent_timing import ratio_check
from tiny_models import wide_cnn

from edgeprune.exporters.measured import measured_bytes
from edgeprune.tasks.data import load_data
from edgeprune.tasks.training import train

TESTS = Path(__file__).parent
SHAPE = (1, 1, 8, 8)
SPEEDUP = 1.5
INDEPENDENT_TOLERANCE = 0.05  # as tests/test_cli.py: the gate's default tolerance
# target -> (the runtime timing it, the unpruned model's file in the format that runtime reads)
TARGETS = {"x86-openvino": ("openvino", "onnx"), "arm-litert": ("litert", "tflite"), "x86-executorch": ("executorch", "pte")}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """wide_cnn (19 M MACs, so the runtimes' fixed costs do not hide a cut) trained on digits."""
    torch.manual_seed(0)
    model = wide_cnn()
    train(model, load_data("digits", holdout=300, seed=0).train, 1, lr=0.05, seed=0, progress=False)
    path = tmp_path_factory.mktemp("wide") / "wide_cnn.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("target", list(TARGETS))
def test_a_met_budget_holds_in_the_runtime_by_an_independent_timing(target, weights, tmp_path):
    runtime, reference_format = TARGETS[target]
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "edgeprune", "tiny_models:wide_cnn", "--weights", str(weights), "--data", "digits", "--holdout", "300",
        "--target", target, "--speedup", str(SPEEDUP), "--population", "4", "--generations", "1", "--refine-top", "2", "--widen-passes", "1",
        "--refine-epochs", "0", "--finetune-epochs", "0", "--no-progress", "--seed", "0", "--out", str(out), "--cache", str(tmp_path / "c.sqlite"),
    ]
    run = subprocess.run(command, capture_output=True, text=True, cwd=TESTS, env={**os.environ, "PYTHONPATH": str(TESTS)}, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["budget_met"] is True
    delivered = out / report["export"]["runtime_file"]["file"]
    assert delivered.is_file() and delivered.suffix in (".xml", ".tflite", ".pte")

    model = wide_cnn().eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    unpruned = tmp_path / f"unpruned.{reference_format}"
    unpruned.write_bytes(measured_bytes(model, SHAPE, 17, reference_format))
    ratios = paired_runtime_ratios(runtime, delivered, unpruned, SHAPE)
    # The gate's tolerance, widened by three standard errors of the median that these pairs' own
    # scatter gives (about 2 % on a quiet VM): the budget binds, the test's timing is not exact.
    ratio, bound = ratio_check(ratios, allowed=INDEPENDENT_TOLERANCE)
    assert ratio <= bound / SPEEDUP, f"{delivered.name} runs at {ratio:.3f}x the unpruned latency in {runtime} (allowed {bound / SPEEDUP:.3f}x): {ratios}"
