"""The OpenVINO backend (``backend: openvino``, target ``x86-openvino``): real OpenVINO on this
host's CPU, measured in the torch-free worker like ONNX Runtime, fingerprinted with its version,
per-node times charged to layers, and a one-line install hint where the extra is missing."""

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.nn as nn
from conftest import tiny_prune_command
from tiny_models import tiny_resnet

from edgeprune.cli import main
from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.jobs.export import data_from_report
from edgeprune.profiling.backend import Backend
from edgeprune.profiling.factory import make_backend
from edgeprune.profiling.fingerprint import compose_fingerprint, device_facts, fingerprint_hash, host_fingerprint, openvino_version
from edgeprune.profiling.isolated import IsolatedBackend, MeasurementFailed
from edgeprune.profiling.openvino_backend import INSTALL_HINT, OpenVinoBackend
from edgeprune.profiling.stats import ratio
from edgeprune.profiling.surrogate import assign_nodes
from edgeprune.profiling.targets import Profile, load_profile
from edgeprune.space.layers import layer_descriptors

pytest.importorskip("openvino")

SHAPE = (1, 1, 16, 16)


def _fast() -> Profile:
    """x86-openvino with fast-cpu's short protocol: the real runtime, rough numbers."""
    p = load_profile("x86-openvino")
    return dataclasses.replace(p, measure=dataclasses.replace(p.measure, warmup_runs=5, min_runs=20, max_seconds=0.05, sessions=2, repeats_if_noisy=0))


def _depthwise_net() -> nn.Module:
    """Plain, depthwise and grouped convolutions and a linear head: every layer kind OpenVINO
    names differently from ONNX Runtime (GroupConvolution with 5-D weights, FullyConnected)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.Conv2d(16, 24, 1), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1, groups=4), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(24, 10),
    )


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return export_onnx_bytes(tiny_resnet(), SHAPE, opset=17)


def test_openvino_backend_implements_the_whole_interface():
    assert Backend in OpenVinoBackend.__mro__ and not OpenVinoBackend.__abstractmethods__
    assert OpenVinoBackend.supports_node_times is True


def test_openvino_measures_a_real_model_in_the_isolated_worker(onnx_bytes):
    backend = make_backend(_fast(), timeout_s=120.0, max_memory_mb=4096)
    assert isinstance(backend, IsolatedBackend) and backend.supports_node_times
    try:
        alone = backend.measure(onnx_bytes, SHAPE)
        assert alone.n >= 2 * 20 and 0 < alone.median_ms < 50 and 0 < alone.trimmed_ms < 50
        with pytest.raises(ValueError, match="set_reference"):
            backend.measure_pair(onnx_bytes, SHAPE)
        backend.set_reference(onnx_bytes, SHAPE)
        cand, ref = backend.measure_pair(onnx_bytes, SHAPE)
        assert cand.n > 0 and ref.n > 0 and 0 < cand.median_ms < 50 and 0 < ref.median_ms < 50
        assert 0.5 < ratio(cand, ref) < 2.0  # the same model, timed against itself
        # OpenVINO's own layer names: the child ran OpenVINO, not ONNX Runtime ("Conv", "FusedConv")
        kinds = {n.op_type for n in backend.node_times(onnx_bytes, SHAPE, runs=5).nodes}
        assert "Convolution" in kinds
    finally:
        backend.close()


def test_a_model_openvino_cannot_read_fails_that_measurement_only(onnx_bytes):
    backend = make_backend(_fast(), timeout_s=120.0)
    try:
        with pytest.raises(MeasurementFailed, match="not a model OpenVINO can load") as e:
            backend.measure(b"not an onnx model", SHAPE)
        assert e.value.kind == "ValueError"  # a category that quotes nothing of OpenVINO's text
        assert backend.measure(onnx_bytes, SHAPE).median_ms > 0  # the same child goes on
    finally:
        backend.close()


@pytest.mark.parametrize("net", [tiny_resnet, _depthwise_net])
def test_openvino_node_times_are_charged_to_every_layer(net):
    model = net()
    times = OpenVinoBackend(_fast()).node_times(export_onnx_bytes(model, SHAPE, 17), SHAPE, runs=5)
    layers = layer_descriptors(model, SHAPE)
    assigned = assign_nodes(layers, times)
    assert set(assigned) == {i for i, l in enumerate(layers) if l.kind in ("conv", "linear")}
    assert sum(assigned.values()) == pytest.approx(sum(n.mean_ms for n in times.nodes))
    assert times.run_ms > 0 and times.runs == 5


def test_fingerprint_names_openvino_and_its_version_and_is_another_device_than_ort():
    ov = host_fingerprint(load_profile("x86-openvino"))
    ort = host_fingerprint(load_profile("x86-cpu"))
    assert (ov["runtime"], ov["runtime_version"]) == ("openvino", openvino_version())
    assert ov["runtime_version"] and ov["provider"] == "CPU" and ov["inference_num_threads"] == 1
    assert ov["runtime"] != ort["runtime"]
    # an OpenVINO upgrade is another device: its cached numbers no longer apply
    profile = load_profile("x86-openvino")
    facts = device_facts(tensorrt=False)
    upgraded = compose_fingerprint(profile, {**facts, "openvino_version": "2099.1.0"})
    assert fingerprint_hash(upgraded) != fingerprint_hash(compose_fingerprint(profile, facts))
    assert OpenVinoBackend(_fast()).fingerprint()["runtime"] == "openvino"


def test_x86_openvino_is_shipped_and_listed(capsys):
    p = load_profile("x86-openvino")
    assert (p.backend, p.provider, p.precision, p.intra_op_threads, p.channel_step) == ("openvino", "CPU", "fp32", 1, 16)
    assert main(["targets"]) == 0
    assert "x86-openvino" in capsys.readouterr().out


def test_missing_openvino_is_one_line_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    for build in (make_backend, OpenVinoBackend):
        with pytest.raises(UserError) as e:
            build(load_profile("x86-openvino"))
        assert "\n" not in str(e.value) and INSTALL_HINT in str(e.value) and "x86-openvino" in str(e.value)


def test_a_device_openvino_lacks_is_refused_in_one_line(onnx_bytes):
    backend = make_backend(dataclasses.replace(_fast(), provider="NoSuchDevice"), timeout_s=120.0)
    try:
        with pytest.raises(UserError, match="OpenVINO device NoSuchDevice.*lacks"):
            backend.measure(onnx_bytes, SHAPE)
    finally:
        backend.close()


@pytest.mark.slow
def test_prune_for_x86_openvino_end_to_end(tmp_path):
    out = tmp_path / "out"
    cmd = tiny_prune_command(out, tmp_path / "c.sqlite")
    cmd[cmd.index("--target") + 1] = "x86-openvino"
    proc = subprocess.run(cmd, cwd=Path(__file__).parent, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    fp = report["fingerprint"]
    assert (fp["profile"], fp["runtime"], fp["runtime_version"]) == ("x86-openvino", "openvino", openvino_version())
    # OpenVINO's performance counters, charged to the layers, reach the report
    assert {row["layer"] for row in report["per_layer"] if row["ms_before"] > 0} == {"stem.0", "block.0", "block.3", "down.0", "head"}
    # model.xml + model.bin next to model.onnx, pinned by the manifest; loaded from the folder by
    # OpenVINO itself, the IR's top-1 on the test split is the one report.json gives it
    manifest = json.loads((out / "manifest.json").read_text())
    pinned = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
    for name in ("model.xml", "model.bin", "model.onnx"):
        assert pinned[name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    native = report["export"]["runtime_file"]
    assert (native["file"], native["runtime_version"], native["timed"]) == ("model.xml", openvino_version(), False)
    import openvino as ov

    compiled = ov.Core().compile_model(str(out / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    test = data_from_report(report).test
    hits = sum(int(compiled(x[i:i + 1].numpy())[0].argmax() == int(y[i])) for x, y in test.batches(64) for i in range(len(y)))
    assert native["accuracy"]["test"] == pytest.approx(hits / len(test), abs=1e-12)


# --- the device agent -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent():
    from test_agent import AgentProcess

    a = AgentProcess()
    yield a
    a.stop()


def _plain_net(width: int) -> nn.Module:
    import torch

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 256, 10))


def test_a_loopback_agent_measures_onnx_uploads_with_openvino(agent):
    """The agent (a process that cannot import torch) times ONNX uploads in OpenVINO when the
    request's profile is x86-openvino: its fingerprint names OpenVINO, and a paired measurement
    tells a narrow network from a wide one."""
    from edgeprune.profiling.remote import RemoteBackend

    backend = RemoteBackend(dataclasses.replace(_fast(), agent=agent.url))
    fp = backend.fingerprint()
    assert (fp["profile"], fp["runtime"], fp["runtime_version"]) == ("x86-openvino", "openvino", openvino_version())
    wide, narrow = (export_onnx_bytes(_plain_net(w), SHAPE, opset=17) for w in (96, 16))
    backend.set_reference(wide, SHAPE)
    small, ref = backend.measure_pair(narrow, SHAPE)
    assert ratio(small, ref) < 0.7


def test_the_agent_refuses_a_crafted_onnx_upload_before_openvino_reads_it(agent, onnx_bytes):
    """An ONNX file whose weights point at a file on the device is refused by the agent's check:
    OpenVINO's own reader would follow the path."""
    import onnx

    from test_agent import _profile_header, _request

    proto = onnx.load_from_string(onnx_bytes)
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../../../etc/passwd")
    headers = {"Content-Type": "application/octet-stream", "X-Edgeprune-Profile": _profile_header(_fast())}
    status, body = _request(agent.port, "POST", "/measure?shape=1x1x16x16", proto.SerializeToString(), headers)
    assert status == 400 and "external data" in body["error"] and "root:" not in json.dumps(body)  # refused, nothing of the file read
    status, body = _request(agent.port, "POST", "/measure?shape=1x1x16x16", onnx_bytes, headers)
    assert status == 200 and body["stats"]["median"] > 0  # and it still measures
