"""Numbers from the command line or a budgets file that would silently change a verdict or a
run: NaN compares false with everything, inf passes every model. Each is one line, exit 2."""

import onnx
import pytest
from onnx import TensorProto, helper

from edgeprune.cli import main


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", "0", "-1"])
def test_gate_refuses_non_finite_or_non_positive_budgets(tmp_path, capsys, value):
    (tmp_path / "budgets.yaml").write_text(f"- model: m.onnx\n  budget_ms: {value}\n")
    assert main(["gate", "--budgets", str(tmp_path / "budgets.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "budget_ms must be a positive number" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "flag, value, words",
    [("--budget-ms", "nan", "--budget-ms: budget_ms must be"), ("--budget-ms", "inf", "--budget-ms: budget_ms must be"), ("--tolerance", "nan", "--tolerance: tolerance is a fraction")],
)
def test_gate_refuses_non_finite_flags(tmp_path, capsys, flag, value, words):
    model = tmp_path / "m.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])), model)
    args = ["gate", str(model), "--budget-ms", "1", flag, value, "--no-progress", "--no-cache"]
    assert main(args) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--lr", "nan", "--lr must be"),
        ("--lr", "0", "--lr must be"),
        ("--lr", "1e9", "--lr must be"),
        ("--kd-alpha", "1.5", "--kd-alpha must be"),
        ("--kd-alpha", "nan", "--kd-alpha must be"),
        ("--kd-temperature", "0", "--kd-temperature must be"),
        ("--kd-temperature", "inf", "--kd-temperature must be"),
        ("--finetune-epochs", "nan", "--finetune-epochs must be"),
        ("--refine-epochs", "inf", "--refine-epochs must be"),
    ],
)
def test_prune_refuses_bad_training_numbers_before_loading_anything(tmp_path, capsys, flag, value, words):
    args = ["torchvision:resnet18", "--budget-ms", "1", flag, value, "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value", [("--budget-ms", "nan"), ("--budget-ms", "inf"), ("--speedup", "nan"), ("--speedup", "inf")])
def test_prune_refuses_non_finite_budgets(tmp_path, capsys, flag, value):
    assert main(["torchvision:resnet18", flag, value, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert f"{flag} must be" in capsys.readouterr().err
