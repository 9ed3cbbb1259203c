"""Transfer learning (EvoPruneDeepTL): class subsets as source and target tasks, a new head on a
frozen backbone (`edgeprune train --freeze-backbone`), and the search restricted to the head's
neurons (`prune --mode head`) or to the features it reads (`--mode features`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeprune.tasks.data import load_data
from edgeprune.errors import UserError
from edgeprune.space.channels import ChannelSpace
from edgeprune.tasks.training import train
from edgeprune.tasks.transfer import freeze_backbone, head_layers, transfer_net, transfer_vgg

TESTS = Path(__file__).parent
PROFILE = str(TESTS / "fixtures" / "fast-cpu.yaml")
MODEL = "edgeprune.transfer:transfer_net"


def test_a_class_subset_is_its_own_task_with_labels_from_zero():
    full = load_data("digits", holdout=100)
    target = load_data("digits@5-9", holdout=100)
    assert target.num_classes == 5 and target.class_names == ["5", "6", "7", "8", "9"] and target.name == "digits@5-9"
    labels = torch.cat([y for _, y in target.test.batches(1000)])
    assert sorted(labels.unique().tolist()) == [0, 1, 2, 3, 4]
    assert len(target.test) < len(full.test) / 2 + 20
    assert load_data("digits@7,2", holdout=50).class_names == ["7", "2"]
    for bad in ("digits@4-4", "digits@0-10", "digits@a-b", "digits@3,3"):
        with pytest.raises(UserError, match="classes"):
            load_data(bad, holdout=50)


def test_a_frozen_backbone_keeps_its_weights_and_statistics_and_the_head_learns():
    torch.manual_seed(0)
    model = transfer_net(num_classes=5)
    data = load_data("digits@5-9", holdout=100)
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("13.", "15."))}
    head = freeze_backbone(model)
    assert head == head_layers(model) and [type(m).__name__ for m in head] == ["Linear", "Linear"]
    before = [p.clone() for layer in head for p in layer.parameters()]
    train(model, data.train, 0.5, lr=0.05, progress=False)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone.items())  # running_mean/var included
    assert any(not torch.equal(b, a) for b, a in zip(before, (p for layer in head for p in layer.parameters())))


def test_modes_restrict_the_search_to_the_head_or_to_the_features_it_reads():
    model = transfer_net(num_classes=5, hidden=64)
    spaces = {mode: ChannelSpace(model, (1, 8, 8), 16, mode=mode) for mode in ("channels", "head", "features")}
    assert len(spaces["channels"].groups) == 4
    (head,) = spaces["head"].groups
    assert head.full == 64 and isinstance(dict(model.named_modules())[head.name], torch.nn.Linear)
    (features,) = spaces["features"].groups
    assert features.full == 128 and any(isinstance(dict(model.named_modules())[n], torch.nn.Linear) for n in features.coupled)
    # removing features removes the last conv's channels with them: the backbone gets cheaper
    narrow = spaces["features"].shrink(spaces["features"].plan([64]))
    assert narrow[7].out_channels == 64 and narrow[13].in_features == 64


def test_a_vgg_style_head_is_searched_by_neurons_or_by_the_channels_it_flattens():
    model = transfer_vgg(num_classes=5)
    (head,) = ChannelSpace(model, (1, 28, 28), 16, mode="head").groups
    assert head.full == 1024 and head.name == "12"
    features = ChannelSpace(model, (1, 28, 28), 16, mode="features")
    (channels,) = features.groups
    narrow = features.shrink(features.plan([16]))
    assert channels.full == 64 and narrow[8].out_channels == 16 and narrow[12].in_features == 16 * 7 * 7
    assert narrow(torch.zeros(2, 1, 28, 28)).shape == (2, 5)


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "edgeprune", *args], cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def transferred(tmp_path_factory):
    """A backbone trained on digits 0-4, then a new head trained on digits 5-9 with it frozen."""
    folder = tmp_path_factory.mktemp("transfer")
    source = _cli("train", MODEL, "--data", "digits@0-4", "--holdout", "100", "--epochs", "2", "--out", str(folder / "source.pt"), "--no-progress", cwd=folder)
    assert source.returncode == 0, source.stderr[-2000:]
    target = _cli("train", MODEL, "--data", "digits@5-9", "--holdout", "100", "--epochs", "2", "--weights", str(folder / "source.pt"),
                  "--freeze-backbone", "--out", str(folder / "target.pt"), "--no-progress", cwd=folder)
    assert target.returncode == 0, target.stderr[-2000:]
    assert "backbone frozen" in " ".join(target.stderr.split())
    return folder


@pytest.mark.parametrize("mode, group", [("head", "13"), ("features", "7")])
def test_prune_a_transferred_model_by_mode_end_to_end(transferred, mode, group):
    out = transferred / f"out-{mode}"
    run = _cli(MODEL, "--weights", str(transferred / "target.pt"), "--data", "digits@5-9", "--holdout", "100", "--target", PROFILE,
               "--budget-ms", "5", "--mode", mode, "--population", "6", "--generations", "3", "--refine-top", "2", "--finetune-epochs", "0.5",
               "--no-progress", "--out", str(out), "--cache", str(transferred / "c.sqlite"), cwd=transferred)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["mode"] == mode and list(report["pruned"]["group_widths"]) == [group]
    assert report["data"]["name"] == "digits@5-9" and report["data"]["num_classes"] == 5


def test_freeze_backbone_needs_trained_weights(tmp_path):
    run = _cli("train", MODEL, "--data", "digits@5-9", "--freeze-backbone", "--out", str(tmp_path / "x.pt"), "--no-progress", cwd=tmp_path)
    assert run.returncode == 2 and "--weights" in run.stderr and "Traceback" not in run.stderr
