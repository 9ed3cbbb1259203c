"""The ExecuTorch backend (``backend: executorch``, target ``x86-executorch``): real conversion on
the host (torch.export + XNNPACK, .pte), real measurement by ExecuTorch's runtime in the worker
child, the runtime's thread pool sized by the profile, the fingerprint with executorch's version,
the .pte check that an agent upload passes before the runtime sees it (and the attacks it refuses),
and a loopback agent serving the backend."""

import base64
import dataclasses
import hashlib
import importlib.metadata
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import tiny_prune_command
from test_agent import AgentProcess, _request
from tiny_models import tiny_resnet
from torch import nn

from edgeprune.cli import main
from edgeprune.errors import UserError
from edgeprune.exporters.measured import measured_bytes
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.exporters.pte import export_pte_bytes
from edgeprune.exporters.runtime_file import runtime_file
from edgeprune.profiling.agent import PROFILE_HEADER
from edgeprune.profiling.backend import Backend
from edgeprune.profiling.executorch_backend import INSTALL_HINT, ExecuTorchBackend
from edgeprune.profiling.factory import make_backend
from edgeprune.profiling.fingerprint import compose_fingerprint, device_facts, fingerprint_hash, host_fingerprint
from edgeprune.profiling.isolated import IsolatedBackend, MeasurementFailed
from edgeprune.profiling.onnx_check import ModelRejected
from edgeprune.profiling.pte_check import check_program_bytes
from edgeprune.profiling.remote import RemoteBackend
from edgeprune.profiling.stats import ratio
from edgeprune.profiling.targets import Profile, load_profile

pytest.importorskip("executorch")

SHAPE = (1, 1, 16, 16)


def _fast(agent: str | None = None) -> Profile:
    """x86-executorch with a short protocol: the real runtime, rough numbers."""
    p = load_profile("x86-executorch")
    return dataclasses.replace(p, agent=agent, measure=dataclasses.replace(p.measure, warmup_runs=5, min_runs=20, max_seconds=0.05, sessions=2, repeats_if_noisy=0))


def _wide(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


@pytest.fixture(scope="module")
def pte() -> bytes:
    return export_pte_bytes(tiny_resnet(), SHAPE)


@pytest.fixture(scope="module")
def backend():
    b = make_backend(_fast(), timeout_s=300.0, max_memory_mb=4096)
    yield b
    b.close()


def _delegate_renamed(blob: bytes) -> bytes:
    """The program with its XNNPACK delegate's id overwritten in place (same length): a file that
    names another of the wheel's backends."""
    assert blob.count(b"XnnpackBackend") == 1
    return blob.replace(b"XnnpackBackend", b"OpenvinoBacken")


def test_mobilenet_v2_converts_to_an_xnnpack_program_that_matches_torch():
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    blob = measured_bytes(model, (1, 3, 32, 32), 17, "pte")  # the search's own door
    checked = check_program_bytes(blob)
    assert checked.dims == (1, 3, 32, 32) and checked.delegates >= 1
    assert model.training is False
    from executorch.runtime import Runtime

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = Runtime.get().load_program(blob).load_method("forward").execute([x])[0]
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-3), (got - want).abs().max()


def test_the_deliverable_pte_is_checked_against_torch_and_names_its_runtime():
    model = tiny_resnet()
    native = runtime_file(model, SHAPE, 17, "executorch", torch.randn(5, *SHAPE[1:]))
    summary = native.summary()
    version = importlib.metadata.version("executorch")
    assert (summary["file"], summary["format"], summary["runtime"], summary["runtime_version"]) == ("model.pte", "pte", "executorch", version)
    assert summary["sha256"] == hashlib.sha256(native.blob).hexdigest() and check_program_bytes(native.blob).dims == SHAPE
    assert summary["parity_vs_torch"]["samples"] == 5 and summary["parity_vs_torch"]["max_abs_error"] < 1e-4
    assert summary["parity_vs_torch"]["top1_agreement"] == 1.0


def test_a_model_torch_export_cannot_take_is_one_line():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow: torch.export refuses it

    with pytest.raises(UserError) as e:
        export_pte_bytes(Branchy(), (1, 3, 8, 8))
    assert "cannot convert this model to .pte" in str(e.value) and "\n" not in str(e.value)


def test_conversion_restores_the_training_flags():
    model = tiny_resnet().train()
    export_pte_bytes(model, SHAPE)
    assert all(m.training for m in model.modules())


def test_executorch_measures_a_real_program_in_the_isolated_worker(backend, pte):
    assert isinstance(backend, IsolatedBackend) and not backend.supports_node_times
    alone = backend.measure(pte, SHAPE)
    assert alone.n >= 2 * 20 and 0 < alone.median_ms < 50 and 0 < alone.trimmed_ms < 50
    backend.set_reference(pte, SHAPE)
    cand, ref = backend.measure_pair(pte, SHAPE)
    assert 0.5 < ratio(cand, ref) < 2.0  # the same program, timed against itself


def test_a_wider_network_times_slower_paired(backend):
    """What the search relies on: the runtime's numbers follow the work (64 vs 8 channels: ~60x
    the MACs), judged as a paired ratio, never an absolute time."""
    backend.set_reference(export_pte_bytes(_wide(8), SHAPE), SHAPE)
    cand, ref = backend.measure_pair(export_pte_bytes(_wide(64), SHAPE), SHAPE)
    assert ratio(cand, ref) > 2.0


def test_a_program_the_runtime_refuses_fails_that_measurement_only(backend, pte):
    with pytest.raises(MeasurementFailed, match="not a program ExecuTorch will run here") as e:
        backend.measure(_delegate_renamed(pte), SHAPE)
    assert e.value.kind == "ValueError"
    with pytest.raises(MeasurementFailed, match="XNNPACK delegated none"):
        backend.measure(_undelegated(), SHAPE)
    assert backend.measure(pte, SHAPE).median_ms > 0  # the same child goes on


def _undelegated() -> bytes:
    from executorch.exir import to_edge

    net = tiny_resnet().eval()
    return bytes(to_edge(torch.export.export(net, (torch.zeros(SHAPE),))).to_executorch().buffer)


def test_the_profile_sizes_the_runtimes_thread_pool():
    from executorch.extension.pybindings import portable_lib

    threads = portable_lib._threadpool_get_thread_count() + 1  # not the pool's current size
    ExecuTorchBackend(dataclasses.replace(_fast(), intra_op_threads=threads))
    assert portable_lib._threadpool_get_thread_count() == threads


def test_a_device_other_than_xnnpack_is_refused_in_one_line():
    with pytest.raises(UserError, match="asks ExecuTorch for the device 'CPU'.*set provider: XNNPACK"):
        ExecuTorchBackend(dataclasses.replace(_fast(), provider="CPU"))


def test_executorch_backend_implements_the_whole_interface():
    assert Backend in ExecuTorchBackend.__mro__ and not ExecuTorchBackend.__abstractmethods__
    with pytest.raises(NotImplementedError):
        ExecuTorchBackend(_fast()).node_times(b"", SHAPE)


def test_fingerprint_names_executorch_and_its_version():
    fp = host_fingerprint(load_profile("x86-executorch"))
    version = importlib.metadata.version("executorch")
    assert (fp["runtime"], fp["runtime_version"], fp["converter_version"], fp["delegate"], fp["num_threads"]) == ("executorch", version, version, "xnnpack", 1)
    profile = load_profile("x86-executorch")
    facts = device_facts(tensorrt=False)
    upgraded = compose_fingerprint(profile, {**facts, "executorch_version": "9.9.9"})
    assert fingerprint_hash(upgraded) != fingerprint_hash(compose_fingerprint(profile, facts))  # another device


def test_x86_executorch_is_shipped_with_its_format():
    p = load_profile("x86-executorch")
    assert (p.backend, p.provider, p.precision, p.intra_op_threads, p.channel_step, p.model_format) == ("executorch", "XNNPACK", "fp32", 1, 16, "pte")


def test_missing_executorch_is_one_line_with_the_install_hint(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "executorch"] + ["executorch"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import executorch...` now raises ImportError
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    for build in (make_backend, ExecuTorchBackend):
        with pytest.raises(UserError) as e:
            build(load_profile("x86-executorch"))
        assert "\n" not in str(e.value) and INSTALL_HINT in str(e.value) and "x86-executorch" in str(e.value)
    with pytest.raises(UserError, match=r"executorch.*not installed.*edgeprune\[executorch\]"):
        export_pte_bytes(tiny_resnet(), SHAPE)


# --- the .pte check: every rule refuses an attack on it -------------------------------------------


def test_the_check_reads_a_real_program(pte):
    assert check_program_bytes(pte).dims == SHAPE


@pytest.mark.parametrize(
    "craft, reason",
    [
        (lambda b: b"\0" * 8 + b, "not an ExecuTorch program"),  # another format / no identifier
        (lambda b: b[:4] + b"TFL3" + b[8:], "not an ExecuTorch program"),
        (_delegate_renamed, "only XnnpackBackend"),  # a payload for another backend's loader
        (lambda b: b[: len(b) // 2], "outside the file|more bytes than the file"),  # truncated
    ],
)
def test_a_crafted_program_is_refused(pte, craft, reason):
    with pytest.raises(ModelRejected, match=reason):
        check_program_bytes(craft(pte))


def test_a_program_with_external_data_is_refused():
    """ExecuTorch's own way of keeping weights in a separate .ptd file: the runtime would look
    for that file; the upload is refused instead."""
    from executorch.exir import ExecutorchBackendConfig, to_edge

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    program = to_edge(torch.export.export(net, (torch.zeros(1, 1, 8, 8),))).to_executorch(ExecutorchBackendConfig(external_constants=True))
    with pytest.raises(ModelRejected, match="external file"):
        check_program_bytes(bytes(program.buffer))


def test_a_huge_declared_input_is_refused(pte):
    with pytest.raises(ModelRejected, match="more than 10 elements"):
        check_program_bytes(pte, max_input_elements=10)


def test_the_check_holds_a_bounded_number_of_entries(pte, monkeypatch):
    """A vector of a million empty tables costs a few MB of upload but a Python object each in the
    agent's own process: the check counts every element it lists and refuses past the cap."""
    from edgeprune.profiling import pte_check

    monkeypatch.setattr(pte_check, "MAX_ENTRIES", 5)
    with pytest.raises(ModelRejected, match="lists more than 5 entries"):
        check_program_bytes(pte)


def test_random_corruption_is_refused_or_read_never_crashes(pte):
    """Flipped bytes anywhere: the check either reads a program or refuses it in one line, never
    an IndexError or struct.error that would be a 500 on the agent."""
    rng = random.Random(0)
    head = len(pte) if len(pte) < 4096 else 4096  # the tables sit before the weights
    for _ in range(400):
        blob = bytearray(pte)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(head)] = rng.randrange(256)
        try:
            check_program_bytes(bytes(blob))
        except ModelRejected:
            pass


def test_gate_times_the_pte_file_an_executorch_target_runs(tmp_path, pte, capsys):
    def gate(path, budget_ms):
        return main(["gate", str(path), "--target", "x86-executorch", "--budget-ms", str(budget_ms), "--no-cache", "--no-progress"])

    model = tmp_path / "model.pte"
    model.write_bytes(pte)
    assert gate(model, 1000) == 0 and gate(model, 1e-6) == 1  # timed by ExecuTorch: within 1 s, not within 1 ns
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(export_onnx_bytes(tiny_resnet(), SHAPE, 17))
    capsys.readouterr()
    assert gate(onnx, 1.0) == 2 and "runs .pte files, not model.onnx; gate the model.pte beside it" in capsys.readouterr().err
    bad = tmp_path / "bad.pte"
    bad.write_bytes(_delegate_renamed(pte))
    assert gate(bad, 1.0) == 2 and "only XnnpackBackend" in capsys.readouterr().err


# --- a loopback agent serves it ---------------------------------------------------------------


@pytest.fixture(scope="module")
def agent():
    a = AgentProcess()
    yield a
    a.stop()


def test_a_loopback_agent_measures_an_uploaded_program(agent, pte):
    remote = RemoteBackend(_fast(agent.url))
    stats = remote.measure(pte, SHAPE)
    assert stats.n >= 20 and stats.median_ms > 0
    remote.set_reference(pte, SHAPE)  # uploaded to /reference with format=pte
    cand, ref = remote.measure_pair(pte, SHAPE)
    assert 0.5 < ratio(cand, ref) < 2.0
    assert remote.fingerprint()["runtime_version"] == importlib.metadata.version("executorch")


def _post(agent, path: str, body: bytes):
    header = base64.urlsafe_b64encode(json.dumps(_fast(agent.url).to_dict()).encode()).decode().rstrip("=")
    return _request(agent.port, "POST", path, body, {"Content-Type": "application/octet-stream", PROFILE_HEADER: header})


def test_the_agent_refuses_a_crafted_program_before_the_runtime_sees_it(agent, pte):
    for body, reason in [
        (_delegate_renamed(pte), "only XnnpackBackend"),
        (export_onnx_bytes(tiny_resnet(), SHAPE, 17), "not an ExecuTorch program"),  # ONNX sent as .pte
        (pte[: len(pte) // 2], "refused the model"),
    ]:
        status, reply = _post(agent, "/measure?shape=1x1x16x16", body)
        assert status == 400 and reason in reply["error"], reply
        status, reply = _post(agent, "/reference?shape=1x1x16x16&format=pte", body)
        assert status == 400 and reason in reply["error"], reply
    status, reply = _post(agent, "/measure?shape=1x1x32x32", pte)
    assert status == 400 and "does not match" in reply["error"]


@pytest.mark.slow
def test_prune_for_x86_executorch_end_to_end(tmp_path):
    out = tmp_path / "out"
    cmd = tiny_prune_command(out, tmp_path / "c.sqlite")
    cmd[cmd.index("--target") + 1] = "x86-executorch"
    proc = subprocess.run(cmd, cwd=Path(__file__).parent, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    fp = report["fingerprint"]
    version = importlib.metadata.version("executorch")
    assert (fp["profile"], fp["runtime"], fp["runtime_version"]) == ("x86-executorch", "executorch", version)
    # model.pte next to model.onnx, pinned by the manifest, with the runtime's version and parity
    blob = (out / "model.pte").read_bytes()
    assert (out / "model.onnx").is_file() and report["artifacts"]["pte"] == "model.pte"
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.pte")
    assert entry["sha256"] == hashlib.sha256(blob).hexdigest() == manifest["runtime_file"]["sha256"]
    assert manifest["runtime_file"]["runtime_version"] == version
    assert manifest["runtime_file"]["parity_vs_torch"]["max_abs_error"] < 1e-3
    # timed independently with ExecuTorch's own API, interleaved with the unpruned model's .pte
    shape = tuple(report["input_shape"])
    unpruned = export_pte_bytes(tiny_resnet(), shape if len(shape) == 4 else (1, *shape))
    pairs = [(_runtime_ms(blob), _runtime_ms(unpruned)) for _ in range(5)]
    assert float(np.median([a for a, _ in pairs])) < report["budget_ms"]
    assert float(np.median([a / b for a, b in pairs])) < 1.15


def _runtime_ms(blob: bytes, runs: int = 200) -> float:
    """Median ms of ``forward`` of a fresh program, by executorch.runtime (not edgeprune's code)."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(blob).load_method("forward")
    x = [torch.randn(*method.metadata.input_tensor_meta(0).sizes())]
    for _ in range(20):
        method.execute(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        method.execute(x)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))
