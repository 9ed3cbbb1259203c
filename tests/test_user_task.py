"""A user's own task (--task package.module:factory) and models that return tuples or dicts."""

import json
import math
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from torch import nn

from edgeprune.tasks import outputs
from edgeprune.cli import main
from edgeprune.errors import UserError
from edgeprune.exporters.onnx import OnnxModule, export_onnx, parity
from edgeprune.space.channels import ChannelSpace
from edgeprune.tasks.user_task import UserTask

ROOT = Path(__file__).resolve().parent.parent
PROFILE = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")


class DictNet(nn.Module):
    """Two outputs from two convs: ``{"mask": conv_a(x), "score": mean of conv_b(x)}``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 48, 3, padding=1), nn.ReLU())
        self.mask = nn.Conv2d(48, 4, 1)
        self.score = nn.Conv2d(48, 2, 1)

    def forward(self, x):
        f = self.stem(x)
        return OrderedDict(mask=torch.sigmoid(self.mask(f)), score=(self.score(f).mean((2, 3)), f.amax((2, 3))))


def _task(**overrides):
    base = {
        "example_input": lambda: torch.zeros(1, 3, 8, 8),
        "calibration_batches": lambda: [torch.randn(4, 3, 8, 8)],
        "score": lambda model: 0.5,
    }
    return SimpleNamespace(**(base | overrides))


def test_output_layers_are_every_conv_whose_channels_are_an_output():
    """The two heads feed outputs directly; the stem's last conv too (its pooled channels are the
    third output); the stem's first conv is prunable."""
    space = ChannelSpace(DictNet().eval(), (3, 8, 8), step=8)
    assert set(space.output_layer_names) == {"mask", "score", "stem.3"}
    assert [g.name for g in space.groups] == ["stem.0"]


def test_a_segmenter_keeps_both_classifier_convs_and_its_mask_shape():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5).eval()
    space = ChannelSpace(model, (3, 64, 64), step=8)
    assert sorted(space.output_layer_names) == ["classifier.high_classifier", "classifier.low_classifier"]
    pruned = space.shrink(space.plan(space.widths_from_indices(space.min_indices())))
    assert pruned(torch.zeros(2, 3, 64, 64))["out"].shape == (2, 5, 64, 64)


def test_a_dict_output_model_exports_one_named_onnx_output_per_tensor_and_scores_like_torch():
    torch.manual_seed(0)
    model = DictNet().eval()
    blob = export_onnx(model, (1, 3, 8, 8), 17)
    assert [o.name for o in onnx.load_from_string(blob).graph.output] == ["output_0", "output_1", "output_2"]
    x = torch.randn(5, 3, 8, 8)
    p = parity(model, blob, x)
    assert p["samples"] == 5 and p["max_abs_error"] < 1e-4 and p["top1_agreement"] is None
    got, want = OnnxModule(blob, model(x[:1]))(x), model(x)
    assert list(got) == ["mask", "score"] and isinstance(got["score"], tuple)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(outputs.flatten(got), outputs.flatten(want)))


def test_a_flat_dict_names_the_onnx_outputs_by_its_keys():
    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return {"out": self.conv(x)}

    blob = export_onnx(Seg().eval(), (1, 3, 8, 8), 17)
    assert [o.name for o in onnx.load_from_string(blob).graph.output] == ["out"]


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"score": None}, ["has no score()", "example_input()"]),
        ({"example_input": lambda: [1, 2]}, ["example_input() returned a list", "[1, C, H, W]"]),
        ({"calibration_batches": lambda: []}, ["returned no batch"]),
        ({"calibration_batches": lambda: [torch.zeros(4, 3, 9, 9)]}, ["calibration batch 0 is [4, 3, 9, 9]", "like example_input()"]),
        ({"example_input": lambda: 1 / 0}, ["example_input() raised ZeroDivisionError"]),
    ],
)
def test_a_malformed_task_is_refused_on_load_in_one_line_naming_it(overrides, words):
    with pytest.raises(UserError) as err:
        UserTask(_task(**overrides), "mine:make")
    text = str(err.value)
    assert "mine:make" in text and "\n" not in text
    assert all(w in text for w in words), text


@pytest.mark.parametrize(
    "score, words",
    [(lambda m: math.nan, ["returned nan", "[0, 1]"]), (lambda m: 3.7, ["returned 3.7"]), (lambda m: "good", ["returned a str"]),
     (lambda m: m.missing_attribute, ["score() raised AttributeError", "fix the task's score"])],
)
def test_a_score_that_is_not_a_fraction_or_raises_is_one_line_naming_the_task(score, words):
    task = UserTask(_task(score=score), "mine:make")
    with pytest.raises(UserError) as err:
        task.score(nn.Conv2d(3, 3, 1))
    assert "mine:make" in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_without_fine_tune_the_model_is_left_as_is_and_the_report_says_so():
    task = UserTask(_task(), "mine:make")
    model = nn.Conv2d(3, 3, 1)
    before = model.weight.clone()
    assert task.fine_tune(model, model, 1.0, 0, "x") == {"skipped": "the task has no fine_tune()"}
    assert torch.equal(model.weight, before)
    assert task.describe() | {"fine_tune": False, "test_split": False} == task.describe()


def test_a_model_returning_a_non_tensor_is_refused_naming_the_fix():
    class Odd(nn.Module):
        def forward(self, x):
            return {"boxes": x, "count": 3}

    with pytest.raises(UserError, match="wrap the model so that forward returns only tensors"):
        UserTask(_task(), "mine:make").check_model(Odd(), 17)


def test_a_model_onnx_cannot_express_is_refused_before_the_search_naming_the_operator():
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return {"values": torch.linalg.svdvals(self.conv(x))}

    with pytest.raises(UserError) as err:
        UserTask(_task(), "mine:make").check_model(Spectral(), 17)
    text = str(err.value)
    assert "task mine:make cannot be exported to ONNX" in text and "linalg_svdvals" in text and "\n" not in text


@pytest.fixture(scope="module")
def fashion_weights(tmp_path_factory):
    """The example's model, trained for a third of an epoch (seconds) so its score means something."""
    sys.path.insert(0, str(ROOT))
    from examples.fashion_task import fit, make_model, make_task

    torch.manual_seed(0)
    model, task = make_model(), make_task()
    fit(model, *task.train, 0.3, lr=0.05)
    path = tmp_path_factory.mktemp("fashion") / "w.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_prune_with_the_examples_user_task_through_the_cli(fashion_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # factories are imported from the current folder, like a user's own
    out = tmp_path / "out"
    code = main([
        "prune", "examples.fashion_task:make_model", "--weights", str(fashion_weights), "--task", "examples.fashion_task:make_task",
        "--target", PROFILE, "--speedup", "1.3", "--population", "4", "--generations", "1", "--refine-top", "1",
        "--refine-epochs", "0", "--widen-passes", "0", "--finetune-epochs", "0.05", "--no-progress",
        "--out", str(out), "--cache", str(tmp_path / "c.sqlite"),
    ])
    assert code in (0, 1)
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == {"kind": "factory", "spec": "examples.fashion_task:make_task", "name": "fashion-mnist, balanced accuracy",
                              "metric": "balanced accuracy", "test_split": True, "fine_tune": True}
    assert report["finetune"]["steps"] >= 1
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits", "embedding"]
    export = report["export"]
    assert export["output"] == {"names": ["logits", "embedding"], "kind": "task outputs"} and export["metric"] == "balanced accuracy"
    # The file is scored by the task itself, run in onnxruntime: it agrees with torch's score.
    assert abs(export["models"]["fp32"]["accuracy"]["test"] - report["pruned"]["accuracy"]) < 0.005
    assert report["pruned"]["widths"]["features.4.0"] == 64  # the embedding's conv keeps its width
    card = (out / "MODEL_CARD.md").read_text()
    assert "balanced accuracy" in card and "examples.fashion_task:make_task" in card
    assert "test balanced accuracy" in capsys.readouterr().err  # the summary table


def test_prune_refuses_data_flags_with_a_user_task(tmp_path, capsys):
    code = main(["prune", "x:y", "--task", "examples.fashion_task:make_task", "--data", "digits", "--lr", "0.1",
                 "--speedup", "2", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("brings its own data and training; drop --data, --lr") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_a_task_factory_that_fails_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "badtasks.py").write_text("def make():\n    raise RuntimeError('no data here')\n")
    monkeypatch.chdir(tmp_path)
    code = main(["prune", "torchvision:resnet18", "--task", "badtasks:make", "--speedup", "2", "--out", str(tmp_path / "o"), "--no-cache"])
    assert code == 2
    assert "task factory badtasks:make() failed (RuntimeError: no data here); fix the factory" in capsys.readouterr().err
