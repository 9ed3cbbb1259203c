"""The target runtime's deliverable (exporters/runtime_file.py, runtime_score.py): OpenVINO's IR
(model.xml + model.bin) converted from the timed ONNX bytes in FP32, each runtime's file checked
against torch and scored on test data in its own runtime, the score equal to one computed here
with the runtime's own API, and a task that cannot run the format reported as not scored."""

import hashlib
import json
import shutil
from importlib.metadata import version
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.cli import main
from edgeprune.exporters.onnx import export_onnx
from edgeprune.exporters.package import PackageInputs
from edgeprune.exporters.runtime_file import DELIVERABLES, deliverable_files, runtime_file
from edgeprune.exporters.runtime_score import score_runtime_file, split_accuracy, task_scorer
from edgeprune.profiling.targets import MODEL_FORMATS
from edgeprune.report.schema import report_schema
from edgeprune.tasks.data import Preprocess, Split
from edgeprune.tasks.task import Task

SHAPE = (2, 1, 8, 8)  # batch 2: an odd number of test images exercises the padded last chunk
TEST_IMAGES = 301
FAST_CPU = Path(__file__).parent / "fixtures" / "fast-cpu.yaml"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    ).eval()


def _split(model: nn.Module) -> Split:
    """Seeded uint8 images; labels the model's own prediction (spread over the classes) for the
    first half, random after, so top-1 lands near the middle, where a mis-fed chunk or a dropped
    sample shows."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (TEST_IMAGES, 1, 8, 8), generator=g, dtype=torch.uint8)
    split = Split(images, torch.zeros(TEST_IMAGES, dtype=torch.int64), Preprocess((1, 8, 8), (1, 8, 8), mean=(0.5,), std=(0.25,)))
    with torch.no_grad():
        predicted = torch.cat([model(x).argmax(1) for x, _ in split.batches(64)])
    labels = torch.randint(0, 10, (TEST_IMAGES,), generator=g)
    labels[: TEST_IMAGES // 2] = predicted[: TEST_IMAGES // 2]
    return Split(images, labels, split.preprocess)


def _independent_logits(backend: str, files: dict[str, bytes], tmp_path, inputs: np.ndarray) -> np.ndarray:
    """The written files run with the runtime's own API, one fixed batch at a time, the last one
    zero-padded: no edgeprune code between the file and the logits."""
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    if backend == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(tmp_path / "model.tflite"), num_threads=1)
        interpreter.allocate_tensors()

        def run(x):
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    elif backend == "executorch":
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(tmp_path / "model.pte").load_method("forward")

        def run(x):
            return method.execute([torch.from_numpy(x)])[0].numpy()
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(str(tmp_path / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def run(x):
            return compiled(x)[0]
    b = SHAPE[0]
    padded = np.concatenate([inputs, np.zeros((-len(inputs) % b, *inputs.shape[1:]), np.float32)])
    return np.concatenate([run(padded[i:i + b].copy()) for i in range(0, len(padded), b)])[: len(inputs)]


@pytest.mark.parametrize("backend", ["openvino", "litert", "executorch"])
def test_the_runtime_files_test_accuracy_is_the_one_its_runtime_gives(backend, tmp_path):
    pytest.importorskip({"openvino": "openvino", "litert": "litert_torch", "executorch": "executorch"}[backend])
    model = _net()
    split = _split(model)
    native = runtime_file(model, SHAPE, 17, backend, torch.randn(6, *SHAPE[1:]), export_onnx(model, SHAPE, 17))
    inputs = torch.cat([x for x, _ in split.batches(512)]).numpy()
    expected = float((_independent_logits(backend, native.files(), tmp_path, inputs).argmax(1) == split.labels.numpy()).mean())
    assert 0.3 < expected < 0.9  # neither trivial nor constant: a lost or shifted sample moves it
    got = score_runtime_file(native, lambda f: split_accuracy(f, split, progress=False))
    assert got["test"] == pytest.approx(expected, abs=1e-12) and got["reason"] is None and got["seconds"] >= 0
    assert native.parity["max_abs_error"] < 1e-4 and native.parity["samples"] == 6


def test_openvino_ships_an_fp32_ir_converted_from_the_timed_onnx_and_checked_against_torch(tmp_path):
    pytest.importorskip("openvino")
    model = _net()
    onnx_bytes = export_onnx(model, SHAPE, 17)
    native = runtime_file(model, SHAPE, 17, "openvino", torch.randn(6, *SHAPE[1:]), onnx_bytes)
    files = native.files()
    assert list(files) == ["model.xml", "model.bin"] and native.file == "model.xml"
    assert native.timed is False  # x86-openvino times the ONNX bytes; the IR is made from them
    weights = sum(p.numel() for p in model.parameters())
    assert len(files["model.bin"]) >= 4 * (weights - 2 * 8)  # FP32 (BatchNorm folded away): not halved to FP16
    summary = native.summary()
    assert summary["files"] == {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in files.items()}
    assert (summary["sha256"], summary["runtime"]) == (hashlib.sha256(files["model.xml"]).hexdigest(), "openvino")
    assert summary["parity_vs_torch"]["max_abs_error"] < 1e-4 and summary["parity_vs_torch"]["top1_agreement"] == 1.0
    # loaded from the folder by OpenVINO itself: the torch model's outputs
    x = torch.randn(*SHAPE)
    got = _independent_logits("openvino", files, tmp_path, x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-4)
    native.accuracy = {"test": 0.5, "seconds": 1.0, "reason": None}
    schema = report_schema()["properties"]["export"]["properties"]["runtime_file"]
    jsonschema.validate(json.loads(json.dumps(native.summary())), schema)


def test_every_deliverable_role_is_named_once_and_an_onnx_target_has_none(monkeypatch):
    assert deliverable_files() == {"tflite": "model.tflite", "pte": "model.pte", "openvino_ir": "model.xml", "openvino_weights": "model.bin"}
    assert set(DELIVERABLES) == {"openvino", "litert", "executorch"}
    assert runtime_file(_net(), SHAPE, 17, "onnxruntime", torch.randn(2, *SHAPE[1:])) is None
    # a backend that times its own format and has no deliverable would ship a file it never timed
    monkeypatch.setitem(MODEL_FORMATS, "future", "fmt")
    with pytest.raises(ValueError, match="no deliverable file for the backend 'future'"):
        runtime_file(_net(), SHAPE, 17, "future", torch.randn(2, *SHAPE[1:]))


class _Scored(Task):
    """A user's task: top-1 of whatever module it is given on its own test batches."""

    name, metric, input_shape = "seeded", "top-1", SHAPE[1:]

    def __init__(self, split: Split):
        self.split = split

    def example_input(self):
        return torch.zeros(1, *SHAPE[1:])

    def calibration_batches(self):
        return [x for x, _ in self.split.batches(32, limit=64)]

    def test_score(self, model):
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in self.split.batches(37))  # 37: not the file's batch
        return hits / len(self.split)


class _OwnRunner(_Scored):
    def score_file(self, blob, label):  # runs ONNX files itself, as detection does with ultralytics
        return 0.0


def test_a_user_task_scores_the_runtime_file_with_its_test_score_or_says_why_it_cannot():
    pytest.importorskip("openvino")
    model = _net()
    split = _split(model)
    native = runtime_file(model, SHAPE, 17, "openvino", torch.randn(2, *SHAPE[1:]), export_onnx(model, SHAPE, 17))
    inputs = PackageInputs.for_task(_Scored(split), model)
    with torch.no_grad():
        in_torch = _Scored(split).test_score(model)
    assert score_runtime_file(native, inputs.score_runtime)["test"] == pytest.approx(in_torch, abs=1e-12)
    refused = score_runtime_file(native, PackageInputs.for_task(_OwnRunner(split), model).score_runtime)
    assert refused == {"test": None, "seconds": None, "reason": "the task runs exported files itself (ONNX only); it cannot run model.xml"}
    assert score_runtime_file(native, task_scorer(_Scored(split), None, own_file_runner=True))["test"] is None


def _manifest_checked(out) -> dict:
    """Every file the manifest names is there with its sha256, and every named role's file is named."""
    manifest, report = json.loads((out / "manifest.json").read_text()), json.loads((out / "report.json").read_text())
    assert {a["file"] for a in manifest["artifacts"]} == {"report.json"} | {v for k, v in report["artifacts"].items() if isinstance(v, str) and k != "manifest"}
    for entry in manifest["artifacts"]:
        assert hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], entry["file"]
    return manifest


def _fast_openvino(tmp_path) -> Path:
    """x86-openvino with a short protocol (this test is about the files, not the numbers)."""
    text = (Path(__file__).parents[1] / "profiles" / "x86-openvino.yaml").read_text()
    for slow, fast in (("warmup_runs: 30", "warmup_runs: 5"), ("min_runs: 100", "min_runs: 20"), ("max_seconds: 0.6", "max_seconds: 0.05")):
        assert slow in text
        text = text.replace(slow, fast)
    (tmp_path / "fast-openvino.yaml").write_text(text + "  sessions: 2\n")
    return tmp_path / "fast-openvino.yaml"


def test_export_for_openvino_writes_the_ir_and_an_export_for_another_target_removes_it(tiny_prune, tmp_path, capsys):
    pytest.importorskip("openvino")
    shutil.copytree(tiny_prune.out, tmp_path / "out")
    shutil.copy(tiny_prune.cache, tmp_path / "c.sqlite")
    out, common = tmp_path / "out", ["--trust-model-code", "--no-progress", "--cache", str(tmp_path / "c.sqlite")]
    assert main(["export", str(out), "--target", str(_fast_openvino(tmp_path)), *common]) == 0, capsys.readouterr().err[-2000:]
    report, manifest = json.loads((out / "report.json").read_text()), _manifest_checked(out)
    assert (report["artifacts"]["openvino_ir"], report["artifacts"]["openvino_weights"]) == ("model.xml", "model.bin")
    native = manifest["runtime_file"]
    assert set(native["files"]) == {"model.xml", "model.bin"} and native["runtime_version"] == version("openvino")
    assert native["files"]["model.bin"]["sha256"] == hashlib.sha256((out / "model.bin").read_bytes()).hexdigest()
    # scored in OpenVINO on the whole test split: the ONNX file's score, up to float rounding
    assert native["accuracy"]["test"] == pytest.approx(manifest["models"]["fp32"]["accuracy"]["test"], abs=0.005)
    card = (out / "MODEL_CARD.md").read_text()
    assert "`model.xml` + `model.bin`" in card and f"| `model.xml` (openvino-ir) | openvino {version('openvino')} |" in card
    # another target's export: the IR it did not make is neither named nor left in the folder
    assert main(["export", str(out), "--target", str(FAST_CPU), *common]) == 0, capsys.readouterr().err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"]["openvino_ir"] is None and report["export"]["runtime_file"] is None
    assert not (out / "model.xml").exists() and not (out / "model.bin").exists()
    _manifest_checked(out)
