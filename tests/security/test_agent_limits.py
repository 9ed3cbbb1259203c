"""Audit findings 5 and 7: every backend the agent runs is held to its deadline and memory cap,
and one client address cannot take every connection.

5. The simulated and TensorRT backends used to run in the agent's own process, outside
   ``--measure-timeout-s`` and ``--max-memory-mb`` and holding the measurement lock (a simulated
   request held it 40 s against a 15 s limit; its shape inference ran there too), and a trtexec
   timeout was a 500. Each is checked here with the simulated device and a stand-in trtexec.
7. 32 idle sockets from one peer locked every other client out.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from edgeprune.profiling.agent import make_server
from edgeprune.errors import UserError
from edgeprune.profiling import isolated
from edgeprune.profiling import tensorrt as trt
from edgeprune.profiling.worker import read_frame, serve, write_frame
from edgeprune.profiling.targets import MeasureSpec, Profile, load_profile

from .test_agent_security import SHAPE, conv_model, in_process, measure_headers, request

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _simulated(device_seconds: float) -> Profile:
    fast = load_profile(str(FIXTURES / "sim-fast.yaml"))
    return dataclasses.replace(fast, simulated=dataclasses.replace(fast.simulated, device_seconds=device_seconds))


def _orin() -> Profile:
    spec = dict(warmup_runs=1, min_runs=10, max_runs=100, max_seconds=1.0, cv_threshold=100.0, repeats_if_noisy=0)
    return dataclasses.replace(load_profile("jetson-orin"), measure=MeasureSpec(**spec))


def _data_limit(pid: int) -> int | None:
    """The soft 'Max data size' of a process, bytes (None: unlimited)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max data size"):
            soft = line.split()[3]
            return None if soft == "unlimited" else int(soft)
    raise AssertionError("no 'Max data size' line")


def _only_backend(server):
    (backend,) = server.agent._backends.values()
    return backend


# --- the simulated device -------------------------------------------------------------------------


def test_a_simulated_measurement_past_the_deadline_is_stopped_and_the_lock_freed():
    """The audit's case: a simulated device of 30 s a measurement against a 2 s limit."""
    with in_process(measure_timeout_s=2) as server:
        port = server.server_address[1]
        # The client gives up at 25 s, before the 30 s the device asks for could end.
        status, raw = request(port, "POST", "/measure", conv_model(), measure_headers(_simulated(30.0)), timeout=25)
        assert status == 422 and "took longer than the agent's limit of 2 s" in json.loads(raw)["error"], raw
        assert "device_seconds" in json.loads(raw)["error"]  # the reason names the rule it applied
        assert not server.agent.lock.locked()
        status, raw = request(port, "POST", "/measure", conv_model(), measure_headers(_simulated(0.0)), timeout=60)
        assert status == 200 and json.loads(raw)["stats"]["median"] > 0


def test_the_simulated_device_infers_shapes_in_the_bounded_child_never_in_the_agent(monkeypatch):
    """Shape inference can take exponential time on a crafted graph: it runs where the deadline
    and the memory cap apply, not in the agent's own process."""
    import onnx.shape_inference

    calls = []
    real = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda *a, **k: calls.append(1) or real(*a, **k))
    with in_process(max_memory_mb=1024) as server:
        status, raw = request(server.server_address[1], "POST", "/measure", conv_model(), measure_headers(_simulated(0.0)))
        assert status == 200, raw
        backend = _only_backend(server)
        assert isinstance(backend, isolated.IsolatedBackend) and backend._proc is not None
        assert _data_limit(backend._proc.pid) == 1024 << 20  # the agent's --max-memory-mb, in the child
    assert calls == []


def test_the_simulated_devices_limit_counts_its_device_time():
    """A simulated device that takes 200 s a measurement is given them (up to the agent's cap)."""
    assert isolated.measurement_timeout(_simulated(200.0), 1000.0) > 400 + isolated.MEASURE_MARGIN_S
    assert isolated.measurement_timeout(_simulated(200.0), 15.0) == 15.0
    assert isolated.measurement_timeout(_orin(), 900.0) == 900.0  # TensorRT: the engine build is the device's


_CHILD_THAT_CANNOT_START = """\
import json, sys
from edgeprune.profiling.worker import write_frame
write_frame(sys.stdout.buffer, json.dumps({"ok": False, "user_error": True, "error": "the device lacks X; install X"}).encode())
"""


def test_a_backend_that_cannot_start_on_this_device_is_a_422_with_its_reason(monkeypatch):
    real_popen = isolated.subprocess.Popen
    monkeypatch.setattr(isolated.subprocess, "Popen", lambda argv, **kw: real_popen([sys.executable, "-c", _CHILD_THAT_CANNOT_START], **kw))
    with in_process() as server:
        status, raw = request(server.server_address[1], "POST", "/measure", conv_model(), measure_headers(_simulated(0.0)))
    assert status == 422 and json.loads(raw)["error"] == "the device lacks X; install X", raw


# --- TensorRT through a stand-in trtexec ----------------------------------------------------------

_HANGING_TRTEXEC = """\
#!{python}
# Stand-in for a trtexec that never finishes an engine build: answers --help, then records its pid
# and sleeps (at most 120 s, so nothing outlives a broken test for long).
import os, sys, time
print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec " + " ".join(sys.argv[1:]))
if sys.argv[1:] == ["--help"]:
    sys.exit(0)
open({pids!r}, "a").write(f"{{os.getpid()}}\\n")
sys.stdout.flush()
for _ in range(1200):
    time.sleep(0.1)
"""


def _stand_in(tmp_path: Path, monkeypatch, text: str) -> Path:
    script = tmp_path / "trtexec"
    script.write_text(text)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv(trt.TRTEXEC_ENV, str(script))  # the agent's children inherit it
    return script


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"  # a zombie is gone, only not reaped
    except FileNotFoundError:
        return False


def test_a_hung_trtexec_is_stopped_at_the_agents_deadline_with_a_422(tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    _stand_in(tmp_path, monkeypatch, _HANGING_TRTEXEC.format(python=sys.executable, pids=str(pids)))
    with in_process(measure_timeout_s=3) as server:
        port = server.server_address[1]
        status, raw = request(port, "POST", "/measure", conv_model(), measure_headers(_orin()), timeout=40)
        reason = json.loads(raw)["error"]
        assert status == 422 and "took longer than the agent's limit of 3 s" in reason and "\n" not in reason, raw
        assert "--measure-timeout-s" in reason
        assert not server.agent.lock.locked()
    started = [int(p) for p in pids.read_text().split()]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started and not any(_alive(p) for p in started)  # trtexec went with its measuring process


def test_a_trtexec_device_runs_in_the_bounded_child(tmp_path, monkeypatch):
    from test_tensorrt import _FAKE_TRTEXEC

    _stand_in(tmp_path, monkeypatch, _FAKE_TRTEXEC.format(python=sys.executable, log=str(tmp_path / "argv.log")))
    with in_process(max_memory_mb=2048) as server:
        status, raw = request(server.server_address[1], "POST", "/measure", conv_model(), measure_headers(_orin()))
        assert status == 200 and json.loads(raw)["stats"]["median"] == pytest.approx(1.02), raw
        backend = _only_backend(server)
        assert isinstance(backend, isolated.IsolatedBackend) and _data_limit(backend._proc.pid) == 2048 << 20


def test_a_device_without_trtexec_is_an_honest_422(tmp_path, monkeypatch):
    monkeypatch.setenv(trt.TRTEXEC_ENV, str(tmp_path / "missing"))
    with in_process() as server:
        status, raw = request(server.server_address[1], "POST", "/measure", conv_model(), measure_headers(_orin()))
        assert status == 422 and "trtexec was not found" in json.loads(raw)["error"], raw


_SLOW_TRTEXEC = """\
#!{python}
import sys, time
print("&&&& RUNNING TensorRT.trtexec [TensorRT v100300]")
if sys.argv[1:] != ["--help"]:
    time.sleep(5)
"""


def test_trtexecs_own_time_limit_is_a_one_line_user_error(tmp_path, monkeypatch):
    _stand_in(tmp_path, monkeypatch, _SLOW_TRTEXEC.format(python=sys.executable))
    monkeypatch.setattr(trt, "_TRTEXEC_TIMEOUT_S", 0.5)
    backend = trt.TensorRTBackend(_orin(), cache_dir=tmp_path / "engines")
    with pytest.raises(trt.TrtexecTimeout) as caught:
        backend.measure(conv_model(), SHAPE)
    assert isinstance(caught.value, UserError) and "within 0.5 s" in str(caught.value) and "\n" not in str(caught.value)


def test_the_worker_reports_trtexecs_time_limit_as_such(tmp_path, monkeypatch):
    """The measuring child answers a trtexec timeout with its category and limit (not a crash),
    which the agent turns into a 422 (next test)."""
    import io

    _stand_in(tmp_path, monkeypatch, _SLOW_TRTEXEC.format(python=sys.executable))
    monkeypatch.setattr(trt, "_TRTEXEC_TIMEOUT_S", 0.5)
    stdin, stdout = io.BytesIO(), io.BytesIO()
    write_frame(stdin, json.dumps({"shape": list(SHAPE)}).encode())
    write_frame(stdin, conv_model())
    stdin.seek(0)
    serve(json.dumps(_orin().to_dict()), stdin, stdout)
    stdout.seek(0)
    assert json.loads(read_frame(stdout))["ready"]
    reply = json.loads(read_frame(stdout))
    assert reply["ok"] is False and reply["kind"] == "TrtexecTimeout" and reply["seconds"] == 0.5


_CHILD_SAYING_TRTEXEC_TIMED_OUT = """\
import json, sys
from edgeprune.profiling.worker import read_frame, write_frame
out = sys.stdout.buffer
write_frame(out, json.dumps({"ok": True, "ready": True}).encode())
while read_frame(sys.stdin.buffer) is not None:
    read_frame(sys.stdin.buffer)
    write_frame(out, json.dumps({"ok": False, "kind": "TrtexecTimeout", "seconds": 7.0, "error": "TrtexecTimeout: ..."}).encode())
"""


def test_a_trtexec_timeout_is_a_422_naming_it_not_a_500(tmp_path, monkeypatch):
    _stand_in(tmp_path, monkeypatch, _SLOW_TRTEXEC.format(python=sys.executable))
    real_popen = isolated.subprocess.Popen
    monkeypatch.setattr(isolated.subprocess, "Popen", lambda argv, **kw: real_popen([sys.executable, "-c", _CHILD_SAYING_TRTEXEC_TIMED_OUT], **kw))
    with in_process() as server:
        status, raw = request(server.server_address[1], "POST", "/measure", conv_model(), measure_headers(_orin()))
    reason = json.loads(raw)["error"]
    assert status == 422 and "trtexec did not finish" in reason and "7 s" in reason, raw


# --- 7. connections per client address -----------------------------------------------------------


def test_idle_sockets_from_one_address_do_not_lock_other_clients_out():
    """A peer without the token (none is needed to open a socket) holds idle connections from
    127.0.0.2; a client at 127.0.0.1 is still served, and the peer got only its share."""
    with in_process(request_timeout_s=30) as server:  # the default caps: 32 in all, 8 per address
        port = server.server_address[1]
        idle = []
        try:
            for _ in range(40):
                sock = socket.socket()
                sock.bind(("127.0.0.2", 0))
                sock.settimeout(5)
                sock.connect(("127.0.0.1", port))
                idle.append(sock)
            status, raw = request(port, "GET", "/fingerprint", timeout=10)
            assert status == 200 and "device" in json.loads(raw)
            deadline = time.monotonic() + 5
            while (held := _held(idle)) > 8 and time.monotonic() < deadline:
                time.sleep(0.05)  # the agent closes the ones beyond the share as it accepts them
            assert held == server.max_per_client == 8
        finally:
            for sock in idle:
                sock.close()


def _held(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the agent still holds open (nothing to read, not closed)."""
    held = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            held += sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            held += 1
        except OSError:
            pass
    return held


def test_the_per_address_share_is_checked_and_ipv6_counts_by_its_64():
    from edgeprune.profiling.agent import peer_key

    assert peer_key("2001:db8::1") == peer_key("2001:db8::ffff:1") != peer_key("2001:db8:0:1::1")
    assert peer_key("::ffff:10.0.0.1") == peer_key("10.0.0.1") != peer_key("10.0.0.2")
    with pytest.raises(UserError, match="max_connections_per_client"):
        make_server("127.0.0.1", 0, None, 1, max_connections=4, max_connections_per_client=5)
