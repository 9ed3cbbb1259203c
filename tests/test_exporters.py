"""Export pipeline: checked/slimmed ONNX with metadata, parity, INT8 with its accuracy gate,
manifest.json + MODEL_CARD.md, and `edgeprune export` on a real (tiny) prune output folder."""

import dataclasses
import hashlib
import json
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiny_models import TinyCNN, TinyResNet

from edgeprune.cli import main
from edgeprune.exporters.onnx import export_onnx, onnx_accuracy, parity, with_metadata

TESTS = Path(__file__).parent
PROFILE = str(TESTS / "fixtures" / "fast-cpu.yaml")
SHAPE = (1, 1, 8, 8)


@pytest.fixture(scope="module")
def pruned_out(tiny_prune):
    """The session's real prune of tiny_resnet on digits (conftest.tiny_prune; never modified)."""
    return tiny_prune.out, tiny_prune.cache


@pytest.fixture
def out_copy(pruned_out, tmp_path):
    out, cache = pruned_out
    shutil.copytree(out, tmp_path / "out")
    shutil.copy(cache, tmp_path / "latency.sqlite")
    return tmp_path / "out", str(tmp_path / "latency.sqlite")


def _check_manifest(out: Path) -> dict:
    """Every artifact the manifest names exists and matches its sha256 and size."""
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    named = {a["file"] for a in manifest["artifacts"]}
    expected = {"report.json"} | {v for k, v in report["artifacts"].items() if isinstance(v, str) and k != "manifest"}
    assert named == expected
    for entry in manifest["artifacts"]:
        data = (out / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"], entry["file"]
    return manifest


def test_prune_output_has_manifest_card_and_measured_metadata(pruned_out):
    out, _ = pruned_out
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"]["manifest"] == "manifest.json" and report["artifacts"]["engine"] is None
    manifest = _check_manifest(out)
    assert {"model.onnx", "plan.json", "state_dict.pt", "pareto.png", "MODEL_CARD.md", "report.json"} <= {
        a["file"] for a in manifest["artifacts"]
    }
    assert manifest["models"]["engine"] is None and manifest["models"]["int8"] is None
    assert manifest["versions"]["torch"] == version("torch") and manifest["versions"]["onnx"] == onnx.__version__
    assert manifest["versions"]["onnxruntime"] == ort.__version__ and "tensorrt" in manifest["versions"]
    assert manifest["fingerprint"] == report["fingerprint"] and manifest["input"]["shape"] == [1, 1, 16, 16]
    fp32 = manifest["models"]["fp32"]
    assert fp32["latency_ms"] == report["pruned"]["latency_ms"]
    meta = onnx.load(out / "model.onnx").metadata_props
    meta = {p.key: p.value for p in meta}
    assert float(meta["latency_p90_ms"]) == pytest.approx(report["pruned"]["latency_ms"]["p90"], rel=1e-5)
    assert json.loads(meta["latency_ms"])["p99"] == report["pruned"]["latency_ms"]["p99"]
    assert json.loads(meta["fingerprint"]) == report["fingerprint"]
    assert json.loads(meta["class_names"]) == [str(d) for d in range(10)]
    assert meta["input_name"] == "input" and meta["input_shape"] == "1x1x16x16" and meta["precision"] == "fp32"
    assert meta["plan_sha256_16"] == manifest["plan_sha256_16"] == report["export"]["plan_sha256_16"]
    card = (out / "MODEL_CARD.md").read_text()
    for section in ("## Intended use", "## Data", "## Metrics", "## Latency per target", "## Caveats"):
        assert section in card
    assert f"{report['pruned']['latency_ms']['median']:.4f}" in card


def test_export_int8_puts_int8_next_to_fp32_in_the_manifest(out_copy, capsys):
    pytest.importorskip("nncf")  # in the dev and int8 extras
    out, cache = out_copy
    # --int8-min-speedup 0: this test is about the files; whether INT8 pays on this CPU is the next one's
    code = main(["export", str(out), "--trust-model-code", "--int8", "--int8-min-speedup", "0", "--calibration-samples", "32", "--no-progress", "--cache", cache])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert "Statistics collection" not in printed.out + printed.err  # NNCF's bar obeys --no-progress too
    manifest = _check_manifest(out)
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"]["int8"] == "model.int8.onnx" and report["artifacts"]["onnx"] == "model.onnx"
    fp32, int8 = manifest["models"]["fp32"], manifest["models"]["int8"]
    for m in (fp32, int8):
        assert m["latency_ms"]["median"] > 0 and m["latency_ms"]["n"] >= 20
    # ONNX Runtime's FP32 test accuracy is the torch model's (parity), and INT8 stays within a few points of it.
    assert fp32["accuracy"]["test"] == pytest.approx(report["pruned"]["accuracy"], abs=0.005)
    assert abs(int8["accuracy"]["test"] - fp32["accuracy"]["test"]) < 0.05
    assert int8["accepted"] is True and int8["calibration"]["split"] == "train" and int8["calibration"]["samples"] == 32
    # every format was made and timed, and the one shipped is the fastest of those that pass the gate
    gate = manifest["int8_gate"]
    assert {t["format"] for t in gate["tried"]} == {"nncf-qdq", "ort-qdq", "ort-qoperator"}
    assert gate["format"] == int8["calibration"]["format"] == min(gate["tried"], key=lambda t: t["latency_ms"])["format"]
    assert int8["vs_fp32"]["accuracy_drop_pp"] == pytest.approx(100 * (fp32["accuracy"]["test"] - int8["accuracy"]["test"]))
    # the FP32 file was the timing reference: its number is the one the prune run cached for this graph
    assert fp32["latency_from_cache"] is True and fp32["latency_ms"] == report["pruned"]["latency_ms"]
    # the torch model rebuilt from plan.json + state_dict on the rebuilt test split scores what the prune run reported
    assert report["export"]["accuracy_torch_test"] == report["pruned"]["accuracy"]

    q = onnx.load(out / "model.int8.onnx")
    assert "QuantizeLinear" in {n.op_type for n in q.graph.node}
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["precision"] == "int8" and float(meta["latency_median_ms"]) == pytest.approx(int8["latency_ms"]["median"], rel=1e-5)
    # accuracy is measured on the shipped file: recompute it independently
    from edgeprune.jobs.export import data_from_report

    data = data_from_report(report)
    assert onnx_accuracy((out / "model.int8.onnx").read_bytes(), data.test) == int8["accuracy"]["test"]
    assert int8["parity_vs_torch"]["samples"] == 64 and int8["parity_vs_torch"]["top1_agreement"] > 0.5
    card = (out / "MODEL_CARD.md").read_text()
    assert "pruned, INT8" in card and "model.int8.onnx" in card
    assert "model.int8.onnx" in (out / "report.html").read_text()  # the page was rebuilt with the export


def test_int8_over_the_accuracy_gate_is_refused_and_not_written(out_copy, monkeypatch, capsys):
    out, cache = out_copy
    (out / "model.int8.onnx").write_bytes(b"stale file from an earlier export")

    def broken_quantizer(onnx_bytes, calibration, input_name="input", progress=True, fmt="nncf-qdq"):
        """A real, runnable model whose classifier is zeroed: every image gets class 0."""
        proto = onnx.load_from_string(onnx_bytes)
        for init in proto.graph.initializer:
            if init.name.startswith("head."):
                init.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(init)), init.name))
        return proto.SerializeToString()

    monkeypatch.setattr("edgeprune.exporters.package.quantize_int8", broken_quantizer)
    code = main(["export", str(out), "--trust-model-code", "--int8", "--int8-format", "ort-qdq", "--max-int8-drop", "1", "--int8-min-speedup", "0", "--calibration-samples", "8", "--no-progress", "--cache", cache])
    err = capsys.readouterr().err
    assert code == 1 and "INT8 model REFUSED" in err and "--max-int8-drop 1" in err and "--int8-min-speedup" not in err
    assert not (out / "model.int8.onnx").exists()
    manifest = _check_manifest(out)
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"]["int8"] is None
    gate, int8 = manifest["int8_gate"], manifest["models"]["int8"]
    assert gate["accepted"] is False and gate["drop_pp"] > 1 and int8["file"] is None and int8["accepted"] is False
    assert "REFUSED" in (out / "MODEL_CARD.md").read_text()


def test_int8_slower_than_asked_is_refused_with_both_latencies(out_copy, capsys):
    pytest.importorskip("nncf")
    out, cache = out_copy
    code = main(["export", str(out), "--trust-model-code", "--int8", "--int8-min-speedup", "1000", "--calibration-samples", "8", "--no-progress", "--cache", cache])
    err = " ".join(capsys.readouterr().err.split())
    gate = json.loads((out / "manifest.json").read_text())["int8_gate"]
    assert code == 1 and not (out / "model.int8.onnx").exists()
    assert gate["accepted"] is False and gate["speed_ok"] is False and gate["accuracy_ok"] is True
    assert gate["speedup"] == pytest.approx(gate["fp32_latency_ms"] / gate["int8_latency_ms"])
    assert f"{gate['int8_latency_ms']:.4f} ms against FP32's {gate['fp32_latency_ms']:.4f} ms" in err and "--int8-min-speedup 1000" in err
    assert "REFUSED" in (out / "MODEL_CARD.md").read_text()


def test_export_dynamic_batch_and_opset(out_copy):
    out, cache = out_copy
    assert main(["export", str(out), "--trust-model-code", "--dynamic-batch", "--opset", "18", "--no-progress", "--cache", cache]) == 0
    proto = onnx.load(out / "model.onnx")
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((5, 1, 16, 16), np.float32)})[0].shape == (5, 10)
    manifest = _check_manifest(out)
    assert manifest["input"]["shape"] == [None, 1, 16, 16] and manifest["models"]["fp32"]["parity_vs_torch"]["top1_agreement"] == 1.0


@pytest.mark.parametrize(
    "args, words",
    [
        (["export", "/no/such/folder"], "not found"),
        (["export", "{empty}"], "no report.json"),
        (["export", "{out}", "--max-int8-drop", "1"], "--int8"),
        (["export", "{out}", "--int8", "--max-int8-drop", "-1"], "negative"),
        (["export", "{out}", "--int8-min-speedup", "2"], "only applies with --int8"),
        (["export", "{out}", "--int8-format", "ort-qoperator"], "only applies with --int8"),
        (["export", "{out}", "--int8", "--int8-min-speedup", "nan"], "0 accepts any"),
        (["export", "{out}", "--opset", "99"], "--opset 99"),
        (["export", "{out}", "--target", "no-such-target"], "unknown target"),
    ],
)
def test_export_bad_input_is_exit_2(args, words, pruned_out, tmp_path, capsys):
    out, _ = pruned_out
    (tmp_path / "empty").mkdir()
    argv = [a.format(out=out, empty=tmp_path / "empty") for a in args]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and err.startswith("edgeprune: error:") and "Traceback" not in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_int8_without_nncf_is_a_one_line_error(pruned_out, monkeypatch, capsys):
    out, _ = pruned_out
    monkeypatch.setitem(sys.modules, "nncf", None)  # what `import nncf` sees when it is not installed
    assert main(["export", str(out), "--trust-model-code", "--int8", "--int8-format", "nncf-qdq", "--no-progress"]) == 2
    assert "pip install 'edgeprune[int8]'" in capsys.readouterr().err


def test_export_onnx_is_slimmed_checked_and_dynamic_batch_matches_torch():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    fixed = onnx.load_from_string(export_onnx(model, SHAPE, 17))
    assert "Identity" not in {n.op_type for n in fixed.graph.node}  # slimmed
    assert [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim] == [1, 10]
    blob = export_onnx(model, SHAPE, 17, dynamic_batch=True)
    x = torch.rand(6, *SHAPE[1:])
    got = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_parity_catches_a_model_that_computes_something_else():
    torch.manual_seed(0)
    model, other = TinyCNN().eval(), TinyCNN().eval()
    x = torch.rand(16, *SHAPE[1:])
    same = parity(model, export_onnx(model, SHAPE, 17), x)
    assert same["samples"] == 16 and same["max_abs_error"] < 1e-4 and same["top1_agreement"] == 1.0
    differs = parity(model, export_onnx(other, SHAPE, 17), x)
    assert differs["max_abs_error"] > 1e-3


def test_with_metadata_replaces_keys_and_keeps_the_graph():
    blob = export_onnx(TinyCNN().eval(), SHAPE, 17, {"a": "1", "b": "2"})
    tagged = onnx.load_from_string(with_metadata(blob, {"b": "3", "c": "4"}))
    assert {p.key: p.value for p in tagged.metadata_props} == {"a": "1", "b": "3", "c": "4"}
    assert tagged.graph == onnx.load_from_string(blob).graph


def test_the_written_report_matches_its_schema_and_a_broken_one_does_not(pruned_out):
    from edgeprune.report.schema import check_report, report_problems

    out, _ = pruned_out
    report = json.loads((out / "report.json").read_text())
    assert report_problems(report) == []
    broken = json.loads(json.dumps(report))
    del broken["budget_met"]
    broken["pruned"]["accuracy"] = 1.5
    broken["artifacts"]["onnx"] = 5
    problems = report_problems(broken)
    assert any(p.startswith("(top): 'budget_met'") for p in problems)
    assert any(p.startswith("pruned/accuracy:") for p in problems) and any(p.startswith("artifacts/onnx:") for p in problems)
    with pytest.raises(RuntimeError, match="report.schema.json"):
        check_report(broken)


def test_int8_auto_makes_the_formats_the_target_runs(monkeypatch):
    from edgeprune.exporters.package import _int8_formats
    from edgeprune.profiling.targets import load_profile

    cpu = load_profile("x86-cpu")
    assert _int8_formats("auto", cpu) == ("nncf-qdq", "ort-qdq", "ort-qoperator")
    assert _int8_formats("ort-qoperator", cpu) == ("ort-qoperator",)
    trt = dataclasses.replace(cpu, backend="tensorrt")
    assert "ort-qoperator" not in _int8_formats("auto", trt)  # TensorRT imports QDQ only
    monkeypatch.setitem(sys.modules, "nncf", None)  # not installed: auto goes on without it
    assert _int8_formats("auto", cpu) == ("ort-qdq", "ort-qoperator")
