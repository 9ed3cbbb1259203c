"""2:4 semi-structured sparsity (prune --sparsity 2:4): the pattern by magnitude, kept through a
fine-tune, present in the exported ONNX (checked here on the file's raw initializers), and the
TensorRT build flag. TensorRT cannot run here: what a sparse engine gains is not measured."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_prune_command
from onnx import numpy_helper
from torch import nn

from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.profiling.tensorrt import build_flags
from edgeprune.api.settings import parse_sparsity
from edgeprune.space.sparsity import apply, eligible, magnitude_mask, make_permanent, model_share, onnx_share
from edgeprune.profiling.targets import load_profile

TESTS = Path(__file__).parent
PATTERN = parse_sparsity("2:4")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),           # 3 input channels: TensorRT keeps it dense
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),  # depthwise: dense
        nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),  # sparse along its 16 input channels
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),  # sparse along its 32 inputs
    ).eval()


def _groups_along_inputs(w: np.ndarray) -> np.ndarray:
    """Independent of edgeprune: TensorRT's 2:4 groups, 4 consecutive input channels."""
    return (np.transpose(w, (0, 2, 3, 1)) if w.ndim == 4 else w).reshape(-1, 4)


def test_magnitude_keeps_the_two_largest_of_every_four_inputs():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -0.2, 1.0]])
    assert magnitude_mask(w, PATTERN).tolist() == [[0, 1, 1, 0, 1, 0, 0, 1]]
    conv = torch.randn(8, 4, 3, 3)
    mask = magnitude_mask(conv, PATTERN)
    assert (mask.permute(0, 2, 3, 1).reshape(-1, 4).sum(1) == 2).all()  # along input channels


def test_only_layers_tensorrt_can_run_sparse_are_masked():
    net = _net()
    assert [eligible(m, PATTERN) for m in (net[0], net[2], net[4], net[9])] == [False, False, True, True]
    assert apply(net, PATTERN) == ["4", "9"]


def test_the_pattern_survives_training_and_reaches_the_onnx_file():
    net = _net()
    apply(net, PATTERN)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()
    for _ in range(5):  # gradients of removed weights are not zero: the mask must keep them removed
        opt.zero_grad()
        net(torch.randn(8, 3, 8, 8)).square().mean().backward()
        opt.step()
    make_permanent(net.eval())
    assert not any(name.endswith("_orig") for name, _ in net.named_parameters())  # plain weights again
    assert model_share(net, PATTERN)["share"] == 1.0
    blob = export_onnx_bytes(net, (1, 3, 8, 8), 17)
    weights = [numpy_helper.to_array(t) for t in onnx.load_from_string(blob).graph.initializer]
    sparse = [w for w in weights if w.ndim in (2, 4) and (w.shape[1] % 4 == 0 and w.shape[1] >= 4)]
    assert sparse and all((np.count_nonzero(_groups_along_inputs(w), axis=1) <= 2).all() for w in sparse)
    found = onnx_share(blob, PATTERN)
    assert found["share"] == 1.0 and found["sparse_layers"] == 2 and found["dense_layers"] == 2


def test_a_dense_file_is_not_reported_as_sparse():
    found = onnx_share(export_onnx_bytes(_net(), (1, 3, 8, 8), 17), PATTERN)
    assert found["share"] < 0.1


def test_unknown_patterns_are_refused():
    with pytest.raises(UserError, match="2:4"):
        parse_sparsity("1:4")


def test_the_tensorrt_build_carries_the_sparsity_flag_only_when_asked(tmp_path):
    orin = load_profile("jetson-orin")
    assert "--sparsity=enable" not in build_flags(orin, (10, 3))
    import dataclasses
    sparse = dataclasses.replace(orin, tensorrt=dataclasses.replace(orin.tensorrt, sparsity=True))
    assert "--sparsity=enable" in build_flags(sparse, (10, 3))
    text = Path(orin.source).read_text().replace("warmup_ms:", "sparsity: 1\n  warmup_ms:")
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(UserError, match="must be true or false"):
        load_profile(str(tmp_path / "p.yaml"))


def test_prune_with_2_4_sparsity_end_to_end(tmp_path):
    out = tmp_path / "out"
    cmd = tiny_prune_command(out, tmp_path / "c.sqlite", "--sparsity", "2:4", "--sparsity-epochs", "0.3")
    run = subprocess.run(cmd, cwd=TESTS, env={**os.environ, "PYTHONPATH": str(TESTS)}, capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    section = report["sparsity"]
    assert section["pattern"] == "2:4" and section["onnx"]["share"] == 1.0 and section["onnx"]["sparse_layers"] > 0
    assert 0 <= section["test_accuracy_before"] <= 1 and section["test_accuracy_after"] == report["pruned"]["accuracy"]
    blob = (out / "model.onnx").read_bytes()
    weights = [numpy_helper.to_array(t) for t in onnx.load_from_string(blob).graph.initializer]
    convs = [w for w in weights if w.ndim == 4 and w.shape[1] % 4 == 0 and w.shape[1] >= 4]
    assert convs and all((np.count_nonzero(_groups_along_inputs(w), axis=1) <= 2).all() for w in convs)
    state = torch.load(out / "state_dict.pt", weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in state)  # loads into the plain architecture


def test_sparsity_is_refused_where_the_fine_tune_would_not_keep_the_masks(tmp_path):
    from edgeprune.api.settings import prune_config
    from edgeprune.jobs.prune import run_prune

    with pytest.raises(UserError, match="--sparsity 2:4 works with classification"):
        run_prune(prune_config(model="yolo:yolov8n.yaml", task="detection", data="yolo:d.yaml", budget_ms=1.0, sparsity="2:4", out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="--sparsity-epochs applies with --sparsity"):
        run_prune(prune_config(model="torchvision:resnet18", budget_ms=1.0, sparsity_epochs=2.0, out=str(tmp_path / "o")))
