"""A run folder written by release 0.1.0 (tests/fixtures/release-0.1.0) still loads, exports, gates
and resumes: users keep plan.json, report.json, state_dict.pt and checkpoints across upgrades, and
a move of modules or a new settings format must not orphan them."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_edgeprune

TESTS = Path(__file__).parent
RELEASE = TESTS / "fixtures" / "release-0.1.0"
FAST_CPU = TESTS / "fixtures" / "fast-cpu.yaml"


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(RELEASE / "out", out)
    return out


def test_the_release_folder_loads_into_the_network_its_onnx_file_holds(tmp_path):
    import onnxruntime as ort

    sys.path.insert(0, str(TESTS))  # the run's model is the tests' tiny_models:tiny_resnet
    try:
        from edgeprune import load_pruned

        out = _copy(tmp_path)
        net = load_pruned(out / "plan.json", out / "state_dict.pt", trust_code=True).eval()
    finally:
        sys.path.remove(str(TESTS))
    plan = json.loads((RELEASE / "out" / "plan.json").read_text())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = net(x).numpy()
    session = ort.InferenceSession(str(RELEASE / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    theirs = np.concatenate([session.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(2)])
    assert plan["model"]["spec"] == "tiny_models:tiny_resnet"
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_release_folder_exports_again(tmp_path):
    out = _copy(tmp_path)
    before = (out / "model.onnx").read_bytes()
    run = run_edgeprune(["export", str(out), "--opset", "13", "--trust-model-code", "--target", str(FAST_CPU), "--no-progress",
                         "--cache", str(tmp_path / "c.sqlite")])
    assert run.returncode == 0, run.stderr[-2000:]
    import onnx

    model = onnx.load(str(out / "model.onnx"))
    assert (out / "model.onnx").read_bytes() != before
    assert model.opset_import[0].version == 13


def test_the_release_model_is_gated(tmp_path):
    out = _copy(tmp_path)
    common = ["gate", str(out / "model.onnx"), "--target", str(FAST_CPU), "--percentile", "50", "--no-progress",
              "--cache", str(tmp_path / "c.sqlite")]
    generous = run_edgeprune([*common, "--budget-ms", "50"])
    assert generous.returncode == 0, generous.stderr[-2000:]
    impossible = run_edgeprune([*common, "--budget-ms", "0.0001"])
    assert impossible.returncode == 1, impossible.stderr[-2000:]


def _resume_release_checkpoint(tmp_path: Path, budget_ms: float | None = None):
    """Resume a copy of the killed run's checkpoint (8 evaluations journaled). Its run.json names
    the writer's absolute paths, as every checkpoint does; they are pointed at this copy, as a
    user who moved the folder would. ``budget_ms`` replaces the recorded budget."""
    checkpoint = tmp_path / "out.checkpoint"
    shutil.copytree(RELEASE / "out.checkpoint", checkpoint)
    run_json = checkpoint / "run.json"
    state = json.loads(run_json.read_text())
    state["config"].update(out=str(tmp_path / "out"), cache=str(tmp_path / "c.sqlite"), target=str(FAST_CPU))
    if budget_ms is not None:
        state["budget_ms"] = state["config"]["budget_ms"] = budget_ms
    run_json.write_text(json.dumps(state))
    return run_edgeprune(["--resume", str(tmp_path / "out"), "--trust-model-code", "--no-progress"]), checkpoint


@pytest.mark.slow
def test_a_checkpoint_of_the_release_resumes(tmp_path):
    run, checkpoint = _resume_release_checkpoint(tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["budget_met"] is True
    assert not checkpoint.exists()


@pytest.mark.slow
def test_a_resumed_run_that_misses_its_budget_exits_1(tmp_path):
    """The verdict of a resumed run is the exit code too: a budget far below what the network can
    reach (0.1 µs) is missed, and the run says so with exit 1, not 0."""
    run, _ = _resume_release_checkpoint(tmp_path, budget_ms=0.0001)
    assert run.returncode == 1, run.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["budget_met"] is False
    assert "out of reach" in run.stderr
