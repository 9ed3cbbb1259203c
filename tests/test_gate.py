"""`edgeprune gate`: exit 0 within budget, 1 over, 2 bad input; JUnit and JSON reports; re-measure near the budget."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from tiny_models import TinyCNN, TinyResNet

from edgeprune.cli import main
from edgeprune.exporters.onnx import export_onnx

PROFILE = str(Path(__file__).parent / "fixtures" / "fast-cpu.yaml")
SHAPE = (1, 1, 8, 8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two small real models as ONNX files, and one shared latency cache for the module."""
    folder = tmp_path_factory.mktemp("gate")
    paths = {}
    for name, net in (("cnn.onnx", TinyCNN()), ("resnet.onnx", TinyResNet())):
        (folder / name).write_bytes(export_onnx(net.eval(), SHAPE, 17))
        paths[name] = folder / name
    return folder, paths, str(folder / "latency.sqlite")


def _gate(args, cache, tmp_path) -> tuple[int, dict]:
    out = tmp_path / "gate.json"
    code = main(["gate", *args, "--cache", cache, "--json", str(out), "--no-progress"])
    return code, json.loads(out.read_text()) if out.exists() else {}


def _measured(models, tmp_path, name) -> float:
    """The model's p90 as the gate sees it (measured once, then answered by the shared cache)."""
    _, paths, cache = models
    code, result = _gate([str(paths[name]), "--target", PROFILE, "--budget-ms", "10000"], cache, tmp_path)
    assert code == 0
    return result["results"][0]["measured_ms"]


def test_single_model_fails_20_percent_over_and_passes_20_percent_under(models, tmp_path):
    _, paths, cache = models
    measured = _measured(models, tmp_path, "cnn.onnx")
    assert 0 < measured < 100
    model = [str(paths["cnn.onnx"]), "--target", PROFILE, "--percentile", "90"]
    code, result = _gate([*model, "--budget-ms", str(0.8 * measured)], cache, tmp_path)
    assert code == 1
    (r,) = result["results"]
    assert r["passed"] is False and r["measured_ms"] == measured and r["source"] == "cache"
    code, result = _gate([*model, "--budget-ms", str(1.2 * measured)], cache, tmp_path)
    assert code == 0 and result["passed"] is True and result["results"][0]["measured_ms"] == measured


def test_budgets_file_writes_junit_naming_each_model(models, tmp_path, capsys):
    folder, _, cache = models
    over, under = _measured(models, tmp_path, "cnn.onnx"), _measured(models, tmp_path, "resnet.onnx")
    # Relative paths resolve from the budgets file's folder, and must stay inside it.
    (folder / "fast-cpu.yaml").write_bytes(Path(PROFILE).read_bytes())
    budgets = folder / "budgets.yaml"
    budgets.write_text(
        f"- model: cnn.onnx\n  target: fast-cpu.yaml\n  percentile: 90\n  budget_ms: {0.8 * over}\n  tolerance: 0.05\n"
        f"- model: resnet.onnx\n  target: fast-cpu.yaml\n  percentile: 90\n  budget_ms: {1.2 * under}\n  tolerance: 0.05\n"
    )
    junit = tmp_path / "reports" / "gate.xml"
    code, result = _gate(["--budgets", str(budgets), "--junit", str(junit)], cache, tmp_path)
    assert code == 1
    assert [r["passed"] for r in result["results"]] == [False, True]
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["cnn.onnx", "resnet.onnx"]
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert cases[0].find("failure") is not None and cases[1].find("failure") is None
    assert "over budget" in cases[0].find("failure").get("message")
    table = capsys.readouterr().out
    assert "FAIL" in table and "PASS" in table and "cnn.onnx" in table


def test_result_inside_the_tolerance_band_is_measured_again(models, tmp_path):
    _, paths, cache = models
    measured = _measured(models, tmp_path, "resnet.onnx")
    code, result = _gate(
        [str(paths["resnet.onnx"]), "--target", PROFILE, "--budget-ms", str(measured), "--tolerance", "0.5"], cache, tmp_path
    )
    (r,) = result["results"]
    assert r["remeasured"] is True and len(r["measurements_ms"]) == 3 and r["measurements_ms"][0] == measured
    assert code == (0 if r["passed"] else 1) and r["passed"] == (r["measured_ms"] <= measured)


def test_no_cache_measures_again(models, tmp_path):
    _, paths, cache = models
    _measured(models, tmp_path, "cnn.onnx")
    code, result = _gate([str(paths["cnn.onnx"]), "--target", PROFILE, "--budget-ms", "10000", "--no-cache"], cache, tmp_path)
    assert code == 0 and result["results"][0]["source"] == "measured"


def test_dynamic_batch_model_is_timed_at_the_targets_batch(tmp_path):
    path = tmp_path / "dyn.onnx"
    path.write_bytes(export_onnx(TinyCNN().eval(), SHAPE, 17, dynamic_batch=True))
    code, result = _gate([str(path), "--target", PROFILE, "--budget-ms", "10000"], str(tmp_path / "c.sqlite"), tmp_path)
    assert code == 0 and result["results"][0]["input_shape"] == list(SHAPE)


BAD_BUDGETS = [
    ("- model: cnn.onnx\n  budget_ms: [1\n", 3, "not valid YAML"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n- model: cnn.onnx\n  budget: 2.0\n", 4, "unknown key 'budget'"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n  percentile: 95\n", 3, "percentile"),
    ("- model: cnn.onnx\n  budget_ms: -1\n", 2, "budget_ms"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n  tolerance: 5\n", 3, "tolerance"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n\n- model: missing.onnx\n  budget_ms: 1.0\n", 4, "not found"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n- target: x86-cpu\n  model: cnn.onnx\n", 3, "lacks 'budget_ms'"),
    ("- model: cnn.onnx\n  budget_ms: 1.0\n  target: no-such-target\n", 3, "unknown target"),
    ("model: cnn.onnx\nbudget_ms: 1.0\n", 1, "list"),
    ("- budget_ms: 1.0\n  model: !!python/name:os.system ''\n", 2, "cannot be read"),
]


@pytest.mark.parametrize("text, line, words", BAD_BUDGETS, ids=[
    "yaml-syntax", "unknown-key", "bad-percentile", "negative-budget", "bad-tolerance", "missing-model",
    "missing-budget", "unknown-target", "not-a-list", "unsafe-tag"])
def test_bad_budgets_file_is_exit_2_naming_the_line(models, tmp_path, capsys, text, line, words):
    folder, _, cache = models
    budgets = folder / f"bad-{line}.yaml"
    budgets.write_text(text)
    junit = tmp_path / "gate.xml"
    code = main(["gate", "--budgets", str(budgets), "--junit", str(junit), "--cache", cache, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not junit.exists()
    assert err.count("\n") == 0 and err.startswith("edgeprune: error:") and "Traceback" not in err
    assert f"{budgets} line {line}:" in err and words in err


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "nothing to gate"),
        (["m.onnx", "--budget-ms", "1", "--budgets", "b.yaml"], "not both"),
        (["missing.onnx", "--budget-ms", "1"], "not found"),
        (["missing.onnx", "--budget-ms", "1", "--percentile", "75"], "percentile"),
    ],
)
def test_bad_command_line_is_exit_2(args, words, capsys):
    assert main(["gate", *args, "--no-progress"]) == 2
    assert words in capsys.readouterr().err
