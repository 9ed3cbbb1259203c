"""The LiteRT target (``backend: litert``, ``arm-litert``): candidates converted to .tflite on the
host by litert-torch, timed by LiteRT's interpreter with XNNPACK in the torch-free worker,
fingerprinted with the runtime's version, served by the device agent, whose uploads are checked
before the interpreter sees them (crafted files refused), and a one-line install hint where the
extra is missing."""

import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import tiny_prune_command
from test_agent import AgentProcess, _profile_header, _request
from tiny_models import tiny_resnet

from edgeprune.cli import main
from edgeprune.errors import UserError
from edgeprune.exporters.measured import measured_bytes
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.exporters.runtime_file import runtime_file
from edgeprune.exporters.tflite import INSTALL_HINT as CONVERTER_HINT
from edgeprune.exporters.tflite import export_tflite_bytes
from edgeprune.profiling.factory import make_backend
from edgeprune.profiling.fingerprint import compose_fingerprint, device_facts, fingerprint_hash, host_fingerprint, litert_version
from edgeprune.profiling.isolated import IsolatedBackend, MeasurementFailed
from edgeprune.profiling.litert_backend import INSTALL_HINT, LiteRtBackend
from edgeprune.profiling.onnx_check import ModelRejected
from edgeprune.profiling.remote import RemoteBackend
from edgeprune.profiling.stats import ratio
from edgeprune.profiling.targets import Profile, load_profile
from edgeprune.profiling.tflite_check import check_tflite_bytes

pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_torch")
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

SHAPE = (1, 3, 16, 16)


def _fast(agent: str | None = None) -> Profile:
    """arm-litert with a short protocol: the real runtime, rough numbers."""
    p = load_profile("arm-litert")
    return dataclasses.replace(p, agent=agent, measure=dataclasses.replace(p.measure, warmup_runs=5, min_runs=20, max_seconds=0.05, sessions=2, repeats_if_noisy=0, cv_threshold=100.0))


def _net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, groups=width), nn.ReLU(),
        nn.Conv2d(width, width, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )


@pytest.fixture(scope="module")
def wide() -> bytes:
    return export_tflite_bytes(_net(96), SHAPE)


@pytest.fixture(scope="module")
def narrow() -> bytes:
    return export_tflite_bytes(_net(8), SHAPE)


def _crafted(blob: bytes, change) -> bytes:
    """``blob`` unpacked with LiteRT's own schema, changed by ``change(model)``, packed again."""
    model = schema.ModelT.InitFromPackedBuf(blob, 0)
    change(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# --- conversion -------------------------------------------------------------------------------


def test_mobilenet_v2_converts_to_tflite_with_nchw_input_and_matches_torch():
    model = torchvision.models.mobilenet_v2(num_classes=10)  # in training mode, as the search hands it over
    blob = measured_bytes(model, (1, 3, 32, 32), 17, "tflite")
    assert blob[4:8] == b"TFL3" and check_tflite_bytes(blob) == (1, 3, 32, 32)  # NCHW, as the pipeline feeds
    assert model.training and all(m.training for m in model.modules())  # left as it was
    interpreter = Interpreter(model_content=blob, num_threads=1)
    interpreter.allocate_tensors()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_the_deliverable_tflite_is_checked_against_torch_and_names_its_runtime():
    model = _net(8)
    native = runtime_file(model, SHAPE, 17, "litert", torch.randn(5, *SHAPE[1:]))
    summary = native.summary()
    assert (summary["file"], summary["runtime"], summary["runtime_version"]) == ("model.tflite", "ai-edge-litert", litert_version())
    assert summary["sha256"] == hashlib.sha256(native.blob).hexdigest() and check_tflite_bytes(native.blob) == SHAPE
    assert summary["parity_vs_torch"]["samples"] == 5 and summary["parity_vs_torch"]["max_abs_error"] < 1e-4
    assert summary["parity_vs_torch"]["top1_agreement"] == 1.0
    assert runtime_file(model, SHAPE, 17, "onnxruntime", torch.randn(2, *SHAPE[1:])) is None  # ONNX targets ship model.onnx alone


def test_int8_for_a_litert_target_is_refused_in_one_line():
    from edgeprune.exporters.package import _int8_formats

    with pytest.raises(UserError, match="--int8 makes ONNX INT8 files, which target 'arm-litert' \\(litert\\) does not run"):
        _int8_formats("auto", load_profile("arm-litert"))
    assert _int8_formats("ort-qdq", load_profile("x86-cpu")) == ("ort-qdq",)


def test_a_model_litert_torch_cannot_convert_is_one_line():
    class Unconvertible(nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).real  # complex numbers: no TFLite lowering

    with pytest.raises(UserError) as e:
        export_tflite_bytes(Unconvertible(), SHAPE)
    assert "litert-torch cannot convert" in str(e.value) and "\n" not in str(e.value)


# --- measuring ----------------------------------------------------------------------------------


def test_litert_measures_real_models_in_the_isolated_worker(wide, narrow):
    backend = make_backend(_fast(), timeout_s=120.0, max_memory_mb=4096)
    assert isinstance(backend, IsolatedBackend) and not backend.supports_node_times
    try:
        alone = backend.measure(wide, SHAPE)
        assert alone.n >= 2 * 20 and 0 < alone.median_ms < 50
        with pytest.raises(ValueError, match="set_reference"):
            backend.measure_pair(wide, SHAPE)
        backend.set_reference(wide, SHAPE)
        same, ref = backend.measure_pair(wide, SHAPE)
        assert 0.5 < ratio(same, ref) < 2.0  # the same model, timed against itself
        small, ref = backend.measure_pair(narrow, SHAPE)
        assert ratio(small, ref) < 0.7  # 8 channels against 96: clearly cheaper
    finally:
        backend.close()


def test_a_model_litert_cannot_load_fails_that_measurement_only(wide):
    backend = make_backend(_fast(), timeout_s=120.0)
    try:
        with pytest.raises(MeasurementFailed, match="not a model LiteRT can load") as e:
            backend.measure(b"not a tflite model", SHAPE)
        assert e.value.kind == "ValueError"
        with pytest.raises(MeasurementFailed, match="not the one 1x3x8x8 input"):
            backend.measure(wide, (1, 3, 8, 8))
        assert backend.measure(wide, SHAPE).median_ms > 0  # the same child goes on
    finally:
        backend.close()


def test_litert_has_no_per_operator_times(wide):
    with pytest.raises(NotImplementedError):
        LiteRtBackend(_fast()).node_times(wide, SHAPE)


def test_fingerprint_names_litert_its_version_and_the_converters():
    fp = host_fingerprint(load_profile("arm-litert"))
    assert (fp["runtime"], fp["runtime_version"], fp["delegate"], fp["num_threads"]) == ("litert", litert_version(), "xnnpack", 1)
    assert fp["runtime_version"] == "2.3.0" and fp["converter_version"] == "0.10.0"
    assert fp["runtime"] != host_fingerprint(load_profile("x86-cpu"))["runtime"]
    profile = load_profile("arm-litert")
    facts = device_facts(tensorrt=False)
    upgraded = compose_fingerprint(profile, {**facts, "litert_version": "2.4.0"})
    assert fingerprint_hash(upgraded) != fingerprint_hash(compose_fingerprint(profile, facts))


def test_arm_litert_is_shipped_measures_tflite_and_is_listed(capsys):
    p = load_profile("arm-litert")
    assert (p.backend, p.provider, p.precision, p.intra_op_threads, p.model_format) == ("litert", "CPU", "fp32", 1, "tflite")
    assert main(["targets"]) == 0
    assert "arm-litert" in capsys.readouterr().out


def test_missing_litert_is_one_line_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    for build in (make_backend, LiteRtBackend):
        with pytest.raises(UserError) as e:
            build(load_profile("arm-litert"))
        assert "\n" not in str(e.value) and INSTALL_HINT in str(e.value) and "arm-litert" in str(e.value)
    with pytest.raises(UserError, match="litert-torch, which is not installed") as e:
        export_tflite_bytes(_net(8), SHAPE)
    assert CONVERTER_HINT in str(e.value)


def test_a_device_litert_does_not_run_is_refused_in_one_line():
    with pytest.raises(UserError, match="XNNPACK on the CPU"):
        LiteRtBackend(dataclasses.replace(_fast(), provider="GPU"))


# --- uploads: what the agent lets through to the interpreter -------------------------------------


def test_a_converted_model_passes_the_upload_check(wide):
    assert check_tflite_bytes(wide) == SHAPE


def _custom_op(model):
    model.operatorCodes[0].builtinCode = model.operatorCodes[0].deprecatedBuiltinCode = 32
    model.operatorCodes[0].customCode = b"FlexReadFile"


def _external_buffer(model):
    model.subgraphs[0].tensors[0].externalBuffer = 1


def _offset_past_the_end(model):
    model.buffers[-1].offset, model.buffers[-1].size = 1 << 40, 16


def _unknown_opcode_index(model):
    model.subgraphs[0].operators[0].opcodeIndex = 999


def _tensor_out_of_range(model):
    op = model.subgraphs[0].operators[0]
    op.inputs = [10_000, *list(op.inputs)[1:]]


def _dynamic_input(model):
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].shapeSignature = [-1, 3, 16, 16]


def _unknown_operator(model):
    model.operatorCodes[0].builtinCode = 4000


def _delegate_node(model):
    model.operatorCodes[0].builtinCode = model.operatorCodes[0].deprecatedBuiltinCode = 51


CRAFTED = {
    "custom operator": (_custom_op, "custom operator"),
    "external buffer": (_external_buffer, "cannot validate"),
    "weights past the end": (_offset_past_the_end, "outside its own bytes"),
    "opcode index": (_unknown_opcode_index, "operator code it does not have"),
    "tensor index": (_tensor_out_of_range, "tensor it does not have"),
    "dynamic input": (_dynamic_input, "not fixed"),
    "unknown operator": (_unknown_operator, "not a builtin operator"),
    "delegate node": (_delegate_node, "not a builtin operator"),
}


@pytest.mark.parametrize("name", CRAFTED)
def test_a_crafted_tflite_is_refused(wide, name):
    change, reason = CRAFTED[name]
    with pytest.raises(ModelRejected, match=reason):
        check_tflite_bytes(_crafted(wide, change))


@pytest.mark.parametrize("blob, reason", [
    (b"", "no TFL3"), (b"\x00" * 4 + b"ONNX" + b"\x00" * 64, "no TFL3"),
    (b"\x10\x00\x00\x00TFL3" + b"\x00" * 8, "malformed|outside"),  # the root table's vtable is empty
    (b"\xff\xff\xff\x7fTFL3" + b"\x00" * 64, "outside its own bytes"),  # the root past the end
])
def test_bytes_that_are_no_tflite_are_refused(blob, reason):
    with pytest.raises(ModelRejected, match=reason):
        check_tflite_bytes(blob)


def _aliased(copies: int, dims: int) -> bytes:
    """A valid model whose subgraphs vector names one subgraph ``copies`` times; that subgraph
    holds, besides its 1x3x16x16 input, a tensor of ``dims`` dimensions: a walk that follows every
    reference reads ``copies * dims`` numbers from a file of ``4 * (copies + dims)`` bytes."""
    b = flatbuffers.Builder(1024)

    def tensor(shape):
        schema.TensorStartShapeVector(b, len(shape))
        for d in reversed(shape):
            b.PrependInt32(d)
        vec = b.EndVector()
        schema.TensorStart(b)
        schema.TensorAddShape(b, vec)
        return schema.TensorEnd(b)

    def vector(start, items, prepend):
        start(b, len(items))
        for item in reversed(items):
            prepend(item)
        return b.EndVector()

    tensors = vector(schema.SubGraphStartTensorsVector, [tensor([1, 3, 16, 16]), tensor([1] * dims)], b.PrependUOffsetTRelative)
    inputs = vector(schema.SubGraphStartInputsVector, [0], b.PrependInt32)
    schema.SubGraphStart(b)
    schema.SubGraphAddTensors(b, tensors)
    schema.SubGraphAddInputs(b, inputs)
    graph = schema.SubGraphEnd(b)
    schema.BufferStart(b)
    buffer = schema.BufferEnd(b)
    buffers = vector(schema.ModelStartBuffersVector, [buffer], b.PrependUOffsetTRelative)
    graphs = vector(schema.ModelStartSubgraphsVector, [graph] * copies, b.PrependUOffsetTRelative)
    schema.ModelStart(b)
    schema.ModelAddVersion(b, 3)
    schema.ModelAddSubgraphs(b, graphs)
    schema.ModelAddBuffers(b, buffers)
    b.Finish(schema.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_truncated_and_aliased_models_are_refused_quickly(wide):
    for cut in (16, 64, len(wide) // 2):
        with pytest.raises(ModelRejected):
            check_tflite_bytes(wide[:cut])
    assert check_tflite_bytes(_aliased(3, 1000)) == SHAPE  # a few references: walked, valid
    # 400 references to one table of 1000 numbers (a 6 KB file): refused on the read budget
    # instead of reading 400 000 numbers in the agent's own process (and 100 000 references,
    # 10^8 numbers, on the cap of what is listed: test_the_check_holds_a_bounded_number_of_tables)
    with pytest.raises(ModelRejected, match="more often than its size allows"):
        check_tflite_bytes(_aliased(400, 1000))



def test_the_check_holds_a_bounded_number_of_tables(monkeypatch):
    """A vector naming one empty table over and over costs no reads but a Python object each in
    the agent's own process: the tables and indices listed are counted and capped."""
    from edgeprune.profiling import tflite_check

    monkeypatch.setattr(tflite_check, "MAX_ENTRIES", 1000)
    assert check_tflite_bytes(_aliased(3, 1)) == SHAPE
    with pytest.raises(ModelRejected, match="lists more than 1000 tables and indices"):
        check_tflite_bytes(_aliased(2000, 1))


# --- the device agent -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent():
    a = AgentProcess()
    yield a
    a.stop()


def test_a_loopback_agent_measures_tflite_uploads_with_litert(agent, wide, narrow):
    backend = RemoteBackend(_fast(agent.url))
    fp = backend.fingerprint()
    assert (fp["runtime"], fp["runtime_version"]) == ("litert", litert_version())  # the device's LiteRT
    assert backend.measure(wide, SHAPE).median_ms > 0
    backend.set_reference(wide, SHAPE)  # uploaded to /reference with format=tflite
    small, ref = backend.measure_pair(narrow, SHAPE)
    assert ratio(small, ref) < 0.7


def test_the_agent_refuses_crafted_and_mistyped_tflite_uploads(agent, wide):
    profile = {"Content-Type": "application/octet-stream", "X-Edgeprune-Profile": _profile_header(_fast())}
    crafted = _crafted(wide, _custom_op)
    status, body = _request(agent.port, "POST", "/measure?shape=1x3x16x16", crafted, profile)
    assert status == 400 and "custom operator" in body["error"]
    status, body = _request(agent.port, "POST", "/reference?shape=1x3x16x16&format=tflite", crafted, {"Content-Type": "application/octet-stream"})
    assert status == 400 and "custom operator" in body["error"]
    onnx = export_onnx_bytes(tiny_resnet(), (1, 1, 16, 16), 17)  # ONNX sent where the profile measures .tflite
    status, body = _request(agent.port, "POST", "/measure", onnx, profile)
    assert status == 400 and "TFL3" in body["error"]
    status, body = _request(agent.port, "POST", "/reference?format=safetensors", wide, {"Content-Type": "application/octet-stream"})
    assert status == 400 and "does not accept models in the format" in body["error"]
    # a .tflite reference does not pair with an ONNX profile, and the other way round
    status, body = _request(agent.port, "POST", "/reference?format=tflite", wide, {"Content-Type": "application/octet-stream"})
    assert status == 200
    onnx_profile = {**profile, "X-Edgeprune-Profile": _profile_header(load_profile("x86-cpu"))}
    status, body = _request(agent.port, "POST", f"/measure?reference={body['reference']}", onnx, onnx_profile)
    assert status == 400 and "reference is a tflite model" in body["error"]
    status, body = _request(agent.port, "POST", "/measure", wide, profile)  # and it still measures
    assert status == 200 and body["stats"]["median"] > 0


# --- end to end ---------------------------------------------------------------------------------


def _interpreter_ms(blob: bytes, runs: int = 300) -> float:
    """Median of one fresh interpreter's runs, timed here with LiteRT's own API (no edgeprune code)."""
    interpreter = Interpreter(model_content=blob, num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.random.default_rng(0).standard_normal(detail["shape"], dtype=np.float32))
    for _ in range(30):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


@pytest.mark.slow
def test_prune_for_arm_litert_end_to_end_delivers_model_tflite(tmp_path):
    out = tmp_path / "out"
    cmd = tiny_prune_command(out, tmp_path / "c.sqlite")
    cmd[cmd.index("--target") + 1] = "arm-litert"
    proc = subprocess.run(cmd, cwd=Path(__file__).parent, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    fp = report["fingerprint"]
    assert (fp["profile"], fp["runtime"], fp["runtime_version"]) == ("arm-litert", "litert", litert_version())
    # model.tflite next to model.onnx, pinned by the manifest, with the runtime's version and parity
    blob = (out / "model.tflite").read_bytes()
    assert (out / "model.onnx").is_file() and report["artifacts"]["tflite"] == "model.tflite"
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.tflite")
    assert entry["sha256"] == hashlib.sha256(blob).hexdigest() == manifest["runtime_file"]["sha256"]
    assert manifest["runtime_file"]["runtime_version"] == litert_version()
    assert manifest["runtime_file"]["parity_vs_torch"]["max_abs_error"] < 1e-3
    # timed independently, interleaved with the unpruned model's .tflite: under the budget, no slower
    unpruned = export_tflite_bytes(tiny_resnet(), tuple(report["input_shape"]) if len(report["input_shape"]) == 4 else (1, *report["input_shape"]))
    pairs = [(_interpreter_ms(blob), _interpreter_ms(unpruned)) for _ in range(5)]
    assert float(np.median([a for a, _ in pairs])) < report["budget_ms"]
    assert float(np.median([a / b for a, b in pairs])) < 1.15


# --- the CI gate ----------------------------------------------------------------------------------


def test_gate_times_the_tflite_file_a_litert_target_runs(tmp_path, wide, capsys):
    model = tmp_path / "model.tflite"
    model.write_bytes(wide)
    target = str(_profile_file(tmp_path, _fast()))

    def gate(path, budget_ms):
        return main(["gate", str(path), "--target", target, "--budget-ms", str(budget_ms), "--no-cache", "--no-progress"])

    assert gate(model, 1000) == 0 and gate(model, 1e-6) == 1  # timed by LiteRT: within 1 s, not within 1 ns
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(export_onnx_bytes(_net(8), SHAPE, 17))
    capsys.readouterr()
    assert gate(onnx, 1.0) == 2
    assert "runs .tflite files, not model.onnx; gate the model.tflite beside it" in capsys.readouterr().err
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(_crafted(wide, _custom_op))
    assert gate(bad, 1.0) == 2 and "custom operator" in capsys.readouterr().err


def _profile_file(folder: Path, profile: Profile) -> Path:
    """``profile`` as a user's YAML file."""
    import yaml

    path = folder / "arm-litert-fast.yaml"
    data = profile.to_dict()
    for key in ("source", "agent", "tensorrt", "simulated"):
        data.pop(key, None)
    path.write_text(yaml.safe_dump(data))
    return path
