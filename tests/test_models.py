import json

import pytest
import torch
from tiny_models import TinyCNN

from edgeprune.errors import UserError
from edgeprune.api.settings import parse_shape
from edgeprune.tasks.models import check_input, load_model


@pytest.fixture
def tiny_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    model = TinyCNN(num_classes=4)
    model.train()
    torch.save(model, path)
    return path, model


def test_whole_module_file(tiny_file):
    path, original = tiny_file
    model, spec = load_model(str(path))
    assert isinstance(model, TinyCNN) and not model.training
    assert spec == {"kind": "file", "spec": str(path), "num_classes": None, "weights": None}
    json.dumps(spec)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model(x), original.eval()(x))
    assert check_input(model, (1, 8, 8), 4) == 4


def test_state_dict_file_points_to_weights_option(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(TinyCNN().state_dict(), path)
    with pytest.raises(UserError, match="holds a state_dict, not a model; pass torchvision:NAME --weights"):
        load_model(str(path))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation
def test_unloadable_and_non_module_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load model file"):
        load_model(str(garbage))
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(UserError, match="holds a Tensor, not a model"):
        load_model(str(tensor))
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(TinyCNN()), scripted)
    with pytest.raises(UserError, match="TorchScript"):
        load_model(str(scripted))


def test_missing_file_and_unknown_form():
    with pytest.raises(UserError, match="model file missing/model.pt not found"):
        load_model("missing/model.pt")
    with pytest.raises(UserError, match="yolo:yolov8n.yaml, or package.module:factory"):
        load_model("just-a-word")


def test_torchvision_with_num_classes_and_weights_roundtrip(tmp_path):
    torch.manual_seed(0)
    model, spec = load_model("torchvision:resnet18", num_classes=10)
    assert model.fc.out_features == 10 and not model.training
    assert spec == {"kind": "torchvision", "spec": "torchvision:resnet18", "num_classes": 10, "weights": None}
    weights = tmp_path / "r18.pt"
    torch.save(model.state_dict(), weights)

    torch.manual_seed(1)
    again, spec = load_model("torchvision:resnet18", num_classes=10, weights=str(weights))
    assert spec["weights"] == str(weights)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert check_input(again, (3, 32, 32), 10) == 10

    with pytest.raises(UserError, match=r"shape mismatches \(e.g. fc.weight 10x512 vs 5x512\).*--num-classes"):
        load_model("torchvision:resnet18", num_classes=5, weights=str(weights))
    with pytest.raises(UserError, match="missing keys"):
        load_model("tiny_models:tiny_cnn", weights=str(weights))
    with pytest.raises(UserError, match="weights file nope.pt not found"):
        load_model("torchvision:resnet18", weights="nope.pt")


def test_torchvision_unknown_name_suggests_close_ones():
    with pytest.raises(UserError, match="such as .*resnet18"):
        load_model("torchvision:resnet181")


def test_factory_spec(tmp_path):
    torch.manual_seed(0)
    model, spec = load_model("tiny_models:tiny_cnn", num_classes=3)
    assert isinstance(model, TinyCNN) and model.head.out_features == 3
    assert spec == {"kind": "factory", "spec": "tiny_models:tiny_cnn", "num_classes": 3, "weights": None}
    default, _ = load_model("tiny_models:tiny_cnn")
    assert default.head.out_features == 10

    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    again, _ = load_model("tiny_models:tiny_cnn", num_classes=3, weights=str(weights))
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(again(x), model(x))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:build", "cannot import no_such_module_xyz"),
        ("tiny_models:missing", "has no missing"),
        ("tiny_models:not_a_model", "returned a str"),
        ("tiny_models:TinyCNN.forward", "failed"),
    ],
)
def test_factory_errors(spec, message):
    with pytest.raises(UserError, match=message):
        load_model(spec)


def test_factory_found_in_current_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_models_for_test.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))\n"
    )
    monkeypatch.chdir(tmp_path)
    model, spec = load_model("cwd_models_for_test:build")
    assert check_input(model, (1, 2, 2), 2) == 2


def test_check_input_errors():
    model = TinyCNN(in_channels=3, num_classes=10)
    model.train()
    with pytest.raises(UserError, match=r"model cannot take input shape 1x28x28 \(.*\); pass --input-shape"):
        check_input(model, (1, 28, 28), None)
    assert model.training  # flag restored even on failure
    with pytest.raises(UserError, match="outputs 10 classes but the data has 7"):
        check_input(model, (3, 8, 8), 7)
    with pytest.raises(UserError, match=r"returns \[1, 3, 8, 8\]"):
        check_input(torch.nn.Conv2d(3, 3, 1), (3, 8, 8), None)


def test_parse_shape():
    assert parse_shape("3x32x32") == (3, 32, 32)
    assert parse_shape(" 1 × 28 × 28 ") == (1, 28, 28)
    assert parse_shape("3,224,224") == (3, 224, 224)
    for bad in ("32x32", "3x0x32", "axbxc", "3x32x32x1", ""):
        with pytest.raises(UserError, match="is not CxHxW; write it like 3x224x224"):
            parse_shape(bad)
