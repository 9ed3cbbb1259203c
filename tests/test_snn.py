"""Spiking networks (CCSRP): a snntorch spiking VGG is searched, shrunk, exported and timed like
any CNN; its neurons' per-channel state goes with the filters that feed them."""

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from edgeprune.exporters.onnx_bytes import export_onnx_bytes

from edgeprune.tasks.data import load_data
from edgeprune.errors import UserError
from edgeprune.tasks.models import load_model
from edgeprune.tasks.snn import SpikingVGG
from edgeprune.space.channels import ChannelSpace
from edgeprune.tasks.training import evaluate, train

TESTS = Path(__file__).parent
PROFILE = str(TESTS / "fixtures" / "fast-cpu.yaml")
MODEL = "edgeprune.snn:spiking_vgg"
needs_snntorch = pytest.mark.skipif(importlib.util.find_spec("snntorch") is None, reason="edgeprune[snn] not installed")


def _tiny(steps: int = 3) -> SpikingVGG:
    torch.manual_seed(0)
    model = SpikingVGG(num_classes=4, widths=(8, 16, 16), steps=steps)
    with torch.no_grad():
        for neurons in model.neurons:  # distinct decays, so a neuron given another's would show
            neurons.beta.copy_(torch.rand_like(neurons.beta) * 0.7 + 0.25)
        for norm in model.norms:
            norm.weight.mul_(3.0)  # enough input current that neurons spike
    return model.eval()


@needs_snntorch
def test_removing_filters_removes_their_neurons_and_the_kept_neurons_keep_their_state():
    model = _tiny()
    space = ChannelSpace(model, (1, 8, 8), 4)
    assert sorted(g.name for g in space.groups) == ["convs.0", "convs.1", "convs.2"]
    plan = space.plan([g.options[len(g.options) // 2 - 1] for g in space.groups])
    small = space.shrink(plan)
    silenced = _tiny()
    for i, (conv, norm, neurons) in enumerate(zip(small.convs, small.norms, small.neurons)):
        kept = list(plan.kept[f"convs.{i}"])
        assert conv.out_channels == norm.num_features == neurons.beta.shape[0] == len(kept) < model.convs[i].out_channels
        assert torch.equal(neurons.beta, model.neurons[i].beta[kept])
        removed = sorted(set(range(model.convs[i].out_channels)) - set(kept))
        with torch.no_grad():  # zero current into the removed neurons: they never spike
            silenced.norms[i].weight[removed] = 0
            silenced.norms[i].bias[removed] = 0
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), silenced(x), atol=1e-5)
        assert not torch.allclose(small(x), model(x), atol=1e-3)  # the removal did remove something


@needs_snntorch
def test_the_export_is_the_network_unrolled_over_its_time_steps():
    model = _tiny(steps=3)
    graph = onnx.load_from_string(export_onnx_bytes(model, (1, 1, 8, 8), 17)).graph
    kinds = [n.op_type for n in graph.node]
    assert kinds.count("Conv") == 1 + 2 * 3 and kinds.count("Gemm") == 3  # the first conv once: the image is the same at every step
    assert not {"Loop", "If", "Scan"} & set(kinds)
    x = torch.rand(5, 1, 8, 8)
    session = ort.InferenceSession(export_onnx_bytes(model, (5, 1, 8, 8), 17), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], model(x).numpy(), atol=1e-4)


@needs_snntorch
def test_surrogate_gradients_train_it_and_a_model_copy_carries_no_state():
    torch.manual_seed(0)
    data = load_data("digits", holdout=100)
    model = SpikingVGG(num_classes=10, widths=(16, 32, 32), steps=2)
    before = evaluate(model, data.test)
    x, y = next(iter(data.train.batches(32)))
    torch.nn.functional.cross_entropy(model.train()(x), y).backward()
    assert model.convs[0].weight.grad.abs().sum() > 0  # a spike's step has no gradient; the surrogate's does
    assert all(n.mem.numel() == n.reset.numel() == 0 for n in model.neurons)  # no feature map, no graph
    twin = copy.deepcopy(model)  # what the search does to every candidate
    assert torch.equal(twin.eval()(x), model.eval()(x))
    train(model, data.train, 8, lr=0.1, progress=False)
    assert evaluate(model, data.test) > max(0.8, before + 0.5)


def test_without_snntorch_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "snntorch", None)
    with pytest.raises(UserError, match=r"snntorch, which is not installed; pip install 'edgeprune\[snn\]'$"):
        load_model(MODEL, num_classes=10)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "edgeprune", *args], cwd=cwd, env=dict(os.environ), check=False, capture_output=True, text=True, timeout=600)


@needs_snntorch
@pytest.mark.slow
def test_train_and_prune_a_spiking_vgg_for_latency_and_robustness_end_to_end(tmp_path):
    trained = _cli("train", MODEL, "--data", "digits", "--holdout", "100", "--epochs", "8", "--lr", "0.1", "--out", str(tmp_path / "snn.pt"), "--no-progress", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = tmp_path / "out"
    run = _cli(MODEL, "--weights", str(tmp_path / "snn.pt"), "--data", "digits", "--holdout", "100", "--target", PROFILE, "--speedup", "1.3",
               "--population", "6", "--generations", "2", "--refine-top", "1", "--finetune-epochs", "0.5",
               "--objectives", "accuracy,latency,robustness", "--adv-samples", "40", "--adv-subnets", "2", "--robust-test-samples", "40",
               "--attack-steps", "2", "--attack-eps", "0.1", "--attack-alpha", "0.05",
               "--no-progress", "--out", str(out), "--cache", str(tmp_path / "c.sqlite"), cwd=tmp_path)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["pruned"]["group_widths"]) == ["convs.0", "convs.1", "convs.2"]
    assert 0 <= report["pruned"]["robust_accuracy"] <= 1
    assert sum(report["pruned"]["group_widths"].values()) < 32 + 64 + 128
    assert report["pruned"]["latency_ms"]["median"] < report["baseline"]["latency_ms"]["median"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node].count("Conv") > 3  # unrolled
    assert session.get_outputs()[0].shape[-1] == 10
