"""Attacks on the device agent, each over real HTTP on loopback.

Models are built with onnx.helper (no torch: the agent must run without it, and so can these
tests). An agent runs either in a subprocess with torch blocked (``AgentProcess``, started through
:func:`edgeprune.profiling.agent.serve` so that options the CLI does not expose can be set), or in this
process with :func:`edgeprune.profiling.agent.make_server` in a thread (``in_process``), where its threads
and calls can be counted.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from torch_block import BLOCK_TORCH
from onnx import TensorProto, helper, numpy_helper

from edgeprune.profiling.agent import INTERNAL_ERROR, make_server
from edgeprune.errors import UserError
from edgeprune.profiling.targets import MeasureSpec, load_profile

SHAPE = (1, 3, 32, 32)
TOKEN = "security-token-0123456789abcdef"
SECRET = b"TOPSECRET-7f3a9c-" * 8  # 136 bytes: what a model must never get the agent to reveal
OCTET = "application/octet-stream"
_REPO = str(Path(__file__).resolve().parents[2])  # an agent started in another folder still imports this checkout

_BOOT = BLOCK_TORCH + textwrap.dedent(
    """
    import json, sys

    from edgeprune.profiling.agent import serve
    token_file, max_upload_mb, options = sys.argv[1] or None, float(sys.argv[2]), json.loads(sys.argv[3])
    serve("127.0.0.1", 0, token_file, max_upload_mb, **options)
    """
)


class AgentProcess:
    """``serve()`` in a torch-blocked subprocess; its log goes to a file (``log_text()``)."""

    def __init__(self, token_file: str | None = None, max_upload_mb: float = 1.0, cwd: str | None = None, **options):
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, token_file or "", str(max_upload_mb), json.dumps(options)],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [_REPO, os.environ.get("PYTHONPATH")]))},
        )
        line = self.proc.stdout.readline()
        if "listening on http://127.0.0.1:" not in line:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"agent did not start: {line!r} {self.log_text()[-2000:]}")
        self.port = int(line.split("http://127.0.0.1:")[1].split()[0])

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


@contextlib.contextmanager
def in_process(token=None, max_upload_mb=1.0, **options):
    server = make_server("127.0.0.1", 0, token, max_upload_mb, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# --- models -------------------------------------------------------------------------------------


def _model(nodes, inputs, outputs, initializers=(), opsets=(("", 17),)) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=8)
    return model.SerializeToString()


def conv_model(width: int = 8, shape: tuple[int, ...] = SHAPE) -> bytes:
    weight = np.random.default_rng(0).standard_normal((width, shape[1], 3, 3)).astype(np.float32)
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], width, *shape[2:]])],
        [numpy_helper.from_array(weight, "w")],
    )


def external_tensor(name: str, location: str, dims: list[int], data_type=TensorProto.INT64) -> TensorProto:
    tensor = TensorProto(name=name, data_type=data_type, dims=dims, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(8 * int(np.prod(dims))))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def leaking_model(location: str, where: str = "initializer") -> bytes:
    """Gather at indices read from ``location``: ONNX Runtime reads the file (relative to the
    agent's working folder) and its error quotes the out-of-range index, i.e. the file's bytes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    tensor = external_tensor("s", location, [2])
    if where == "initializer":
        return _model([helper.make_node("Gather", ["x", "s"], ["y"])], [x], [y], [tensor])
    constant = helper.make_node("Constant", [], ["s"], value=tensor)
    if where == "constant":
        return _model([constant, helper.make_node("Gather", ["x", "s"], ["y"])], [x], [y])
    # In a subgraph: the then-branch of an If computes the indices.
    branch = helper.make_graph([constant], "then", [], [helper.make_tensor_value_info("s", TensorProto.INT64, [2])])
    cond = numpy_helper.from_array(np.array(True), "c")
    nodes = [helper.make_node("If", ["c"], ["s2"], then_branch=branch, else_branch=branch), helper.make_node("Gather", ["x", "s2"], ["y"])]
    return _model(nodes, [x], [y], [cond])


def reshape_failing_model() -> bytes:
    """Passes onnx.checker; ONNX Runtime fails at run time with a message quoting the tensor."""
    shape = numpy_helper.from_array(np.array([7, 3], np.int64), "s")
    return _model(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, 3])],
        [shape],
    )


def unknown_op_model() -> bytes:
    """Passes onnx.checker (an unknown domain is not checked); ONNX Runtime cannot load it."""
    return _model(
        [helper.make_node("Exfiltrate", ["x"], ["y"], domain="com.evil", path="/etc/passwd")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        opsets=(("", 17), ("com.evil", 1)),
    )


# --- HTTP ---------------------------------------------------------------------------------------


def profile(**measure):
    spec = dict(warmup_runs=3, min_runs=10, max_runs=5000, max_seconds=0.1, cv_threshold=100.0, repeats_if_noisy=0)
    return dataclasses.replace(load_profile("x86-cpu"), agent=None, measure=MeasureSpec(**{**spec, **measure}))


def profile_header(data) -> str:
    """base64url of JSON; NaN and Infinity written as Python's json writes them."""
    if dataclasses.is_dataclass(data):
        data = data.to_dict()
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def request(port, method, path, body=None, headers=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        return response.status, raw
    finally:
        conn.close()


def measure_headers(prof=None, token=None, **extra):
    headers = {"Content-Type": OCTET, "X-Edgeprune-Profile": profile_header(prof or profile())}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return {**headers, **extra}


def raw_exchange(port: int, data: bytes, timeout: float = 20.0) -> tuple[int | None, bytes]:
    """Send ``data``; (status, body) of the one reply, or (None, b"") if the agent closed first."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        return read_reply(sock, time.monotonic() + timeout)


def read_reply(sock: socket.socket, deadline: float) -> tuple[int | None, bytes]:
    """(status, body) of one reply; (None, b"") if the agent closed without a byte; (0, bytes)
    for a reply that is not well-formed HTTP."""
    raw = b""
    while True:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:] if line.lower().startswith(b"content-length:")), 0)
            if len(rest) >= length:
                ok = head.startswith(b"HTTP/1.1 ") and head[9:12].isdigit()
                return (int(head[9:12]) if ok else 0), rest[:length]
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            # Closed: with nothing sent, or with something that is not a whole HTTP reply (0).
            return (None if not raw else 0), raw
        raw += chunk


def raw_request(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}".rstrip(), *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- 1. external data ---------------------------------------------------------------------------


def test_the_external_data_attack_is_real_in_onnxruntime(tmp_path, monkeypatch):
    """Without the agent's check, ONNX Runtime reads a file named by the model and its error text
    carries the file's bytes (here as the numbers of a 'requested shape')."""
    import onnxruntime as ort

    (tmp_path / "secret.bin").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a profile's choice
    options.log_severity_level = 4
    session = ort.InferenceSession(leaking_model("secret.bin"), options, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception) as caught:
        session.run(None, {"x": np.zeros(16, np.float32)})
    leaked = str(np.frombuffer(SECRET[:8], np.int64)[0])
    assert leaked in str(caught.value)


def test_external_data_is_refused_before_the_runtime_and_never_echoed(tmp_path):
    home = tmp_path / "a" / "b"
    home.mkdir(parents=True)
    (home / "secret.bin").write_bytes(SECRET)
    (tmp_path / "secret.bin").write_bytes(SECRET)
    leaked_numbers = [str(v) for v in np.frombuffer(SECRET[:16], np.int64)]
    unoptimised = dataclasses.replace(profile(), graph_optimization="disable")
    agent = AgentProcess(cwd=str(home))
    try:
        cases = [(loc, where) for loc in ("secret.bin", "./secret.bin", "../../secret.bin", str(tmp_path / "secret.bin")) for where in ("initializer", "constant", "subgraph")]
        for location, where in cases:
            blob = leaking_model(location, where)
            for path, headers in (("/measure", measure_headers(unoptimised)), ("/reference", {"Content-Type": OCTET})):
                status, raw = request(agent.port, "POST", path, blob, headers)
                assert status == 400, (location, where, path, status, raw[:300])
                assert b"external data" in raw and b"TOPSECRET" not in raw
                assert not any(n.encode() in raw for n in leaked_numbers)
        log = agent.log_text()
        assert "TOPSECRET" not in log and not any(n in log for n in leaked_numbers)
        assert "Traceback" not in log
        assert request(agent.port, "POST", "/measure?shape=1x3x32x32", conv_model(), measure_headers())[0] == 200
    finally:
        agent.stop()


# --- 2. 5xx and 422 bodies ----------------------------------------------------------------------


def test_runtime_failures_are_422_naming_only_a_category(capfd):
    with in_process() as server:
        port = server.server_address[1]
        status, raw = request(port, "POST", "/measure", reshape_failing_model(), measure_headers())
        assert status == 422, raw
        reason = json.loads(raw)["error"]
        assert "(ONNX Runtime: FAIL)" in reason and "log" in reason
        for runtime_text in ("requested shape", "7,3", "reshape_helper", "ONNXRuntimeError", "onnxruntime_src", "Status Message"):
            assert runtime_text not in reason
        status, raw = request(port, "POST", "/measure", unknown_op_model(), measure_headers())
        assert status == 422 and "ONNX Runtime: " in json.loads(raw)["error"]
        assert b"Exfiltrate" not in raw and b"com.evil" not in raw and b"passwd" not in raw
        assert request(port, "POST", "/measure", conv_model(), measure_headers())[0] == 200
    log = capfd.readouterr().err
    assert "requested shape" in log and "Exfiltrate" in log  # the details are for the log


def test_an_unexpected_exception_is_a_500_with_a_fixed_body(capfd, monkeypatch):
    with in_process() as server:
        def broken():
            raise RuntimeError("detail /home/user/.ssh/id_rsa that must stay in the log")

        monkeypatch.setattr(server.agent, "fingerprint", broken)
        status, raw = request(server.server_address[1], "GET", "/fingerprint")
        assert status == 500 and json.loads(raw) == {"error": INTERNAL_ERROR}
        # A failure inside a measurement that is not the model's is a 500 too.
        class Exploding:
            def measure(self, blob, shape):
                raise OSError("disk path /var/secret leaked")

            def close(self):
                pass

        monkeypatch.setattr(server.agent, "_new_backend", lambda profile: Exploding())
        status, raw = request(server.server_address[1], "POST", "/measure", conv_model(), measure_headers())
        assert status == 500 and json.loads(raw) == {"error": INTERNAL_ERROR}
    log = capfd.readouterr().err
    assert "id_rsa that must stay in the log" in log and "Traceback" in log and "/var/secret" in log


# --- 3. bounded measurement settings -----------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [("max_seconds", float("nan")), ("max_seconds", float("inf")), ("max_seconds", 1e9), ("min_runs", 10**9),
     ("max_runs", 10**12), ("warmup_runs", 10**9), ("repeats_if_noisy", 10**6), ("cv_threshold", float("nan")),
     ("max_seconds", -1.0), ("min_runs", 0)],
)
def test_unbounded_measure_settings_are_refused(key, value):
    data = profile().to_dict()
    data["measure"][key] = value
    with in_process() as server:
        start = time.monotonic()
        status, raw = request(server.server_address[1], "POST", "/measure", conv_model(), measure_headers(data))
        assert status == 400, raw
        assert key in json.loads(raw)["error"] and time.monotonic() - start < 5


@pytest.mark.parametrize("key, value", [("intra_op_threads", 100000), ("inter_op_threads", 10**6), ("batch", 10**9), ("opset", 10**4)])
def test_unbounded_runtime_settings_are_refused(key, value):
    data = dict(profile().to_dict(), **{key: value})
    with in_process() as server:
        status, raw = request(server.server_address[1], "POST", "/measure", conv_model(), measure_headers(data))
        assert status == 400 and key in json.loads(raw)["error"], raw


# --- 4. input size, memory ----------------------------------------------------------------------


def test_a_huge_declared_input_is_413_without_allocating_it():
    huge = conv_model(width=4, shape=(1, 3, 100000, 100000))  # 120 GB of float32 if allocated
    with in_process() as server:
        port = server.server_address[1]
        start = time.monotonic()
        for path in ("/measure", "/reference"):
            status, raw = request(port, "POST", path, huge, measure_headers())
            assert status == 413 and "elements" in json.loads(raw)["error"], raw
        assert time.monotonic() - start < 5
        assert request(port, "POST", "/measure", conv_model(), measure_headers())[0] == 200


def test_a_model_above_the_memory_cap_is_422_and_the_next_one_runs():
    # 1x1x2048x2048 in, 64 channels out: a 1 GiB output, above a 768 MiB cap on the child.
    greedy = conv_model(width=64, shape=(1, 1, 2048, 2048))
    with in_process(max_upload_mb=1, max_memory_mb=768) as server:
        port = server.server_address[1]
        status, raw = request(port, "POST", "/measure", greedy, measure_headers())
        assert status == 422, raw
        assert request(port, "POST", "/measure", conv_model(), measure_headers())[0] == 200


# --- 5. timing in a child with a deadline -------------------------------------------------------


def test_a_measurement_past_the_deadline_is_stopped_and_the_agent_measures_again():
    slow = profile(max_seconds=60.0, max_runs=10**6)  # would time for a minute
    with in_process(measure_timeout_s=3) as server:
        port = server.server_address[1]
        request(port, "POST", "/measure", conv_model(), measure_headers())  # start a child first
        start = time.monotonic()
        status, raw = request(port, "POST", "/measure", conv_model(), measure_headers(slow))
        elapsed = time.monotonic() - start
        assert status == 422 and "took longer than the agent's limit of 3 s" in json.loads(raw)["error"], raw
        assert elapsed < 20  # 3 s, plus starting this profile's child on a busy machine
        _, killed = server.agent.backend(slow)
        assert killed._proc is None  # the child was killed, not left timing
        status, raw = request(port, "POST", "/measure", conv_model(), measure_headers())
        assert status == 200 and json.loads(raw)["stats"]["median"] > 0


def test_the_isolated_backend_never_waits_forever_on_a_silent_child(monkeypatch):
    from edgeprune.profiling import isolated

    backend = isolated.IsolatedOrtBackend(profile(max_seconds=60.0, max_runs=10**6), timeout_s=1.5)
    try:
        start = time.monotonic()
        with pytest.raises(isolated.MeasurementTimeout):
            backend.measure(conv_model(), SHAPE)
        assert time.monotonic() - start < 15 and backend._proc is None
        # A child that never even says it is ready: the start has its own deadline.
        real_popen = subprocess.Popen
        monkeypatch.setattr(isolated, "START_TIMEOUT_S", 1.0)
        monkeypatch.setattr(isolated.subprocess, "Popen", lambda argv, **kw: real_popen([sys.executable, "-c", "import time; time.sleep(60)"], **kw))
        start = time.monotonic()
        with pytest.raises(isolated.WorkerDied, match="did not start"):
            backend.measure(conv_model(), SHAPE)
        assert time.monotonic() - start < 10 and backend._proc is None
        monkeypatch.undo()
        backend.profile, backend.timeout_s = profile(), 60.0
        assert backend.measure(conv_model(), SHAPE).median_ms > 0
    finally:
        backend.close()


# --- 6. slow clients, connection cap ------------------------------------------------------------


def _slow_send(port: int, head: bytes, drip: bytes, interval: float, limit: float) -> tuple[int | None, float]:
    """Send ``head``, then ``drip`` a byte every ``interval`` s until the agent answers or closes;
    (reply status or None, seconds that took)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(head)
        for i in range(len(drip)):
            try:
                sock.sendall(drip[i : i + 1])
                sock.settimeout(interval)
                sock.recv(1, socket.MSG_PEEK)  # returns once a reply or the close arrives
                break
            except TimeoutError:
                continue  # nothing yet: the next byte
            except OSError:
                break
        status, _ = read_reply(sock, start + limit)
    return status, time.monotonic() - start


def test_a_slowloris_is_cut_off_at_the_receive_deadline():
    with in_process(request_timeout_s=1.5) as server:
        port = server.server_address[1]
        # Headers a byte at a time: each byte well inside any per-read timeout.
        status, took = _slow_send(port, b"GET /fingerprint HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Pad: " + b"a" * 200, 0.1, 15)
        assert status is None and 1.4 < took < 5, (status, took)
        # A body a byte at a time: 1.5 s + 1 s per MiB of declared body.
        head = raw_request("POST", "/reference", [("Host", "127.0.0.1"), ("Content-Type", OCTET), ("Content-Length", "2000")])
        status, took = _slow_send(port, head, b"\x08" * 2000, 0.1, 15)
        assert status in (408, None) and 1.4 < took < 5, (status, took)
        assert request(port, "GET", "/fingerprint")[0] == 200


def _closed_by_peer(sockets: list[socket.socket], expect: int, within: float) -> set[int]:
    """Indexes of the sockets the agent closed (readable with nothing to read), waiting up to
    ``within`` s for ``expect`` of them."""
    import selectors

    closed: set[int] = set()
    deadline = time.monotonic() + within
    with selectors.DefaultSelector() as selector:
        for i, sock in enumerate(sockets):
            selector.register(sock, selectors.EVENT_READ, i)
        while len(closed) < expect and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                if key.data not in closed and key.fileobj.recv(1, socket.MSG_PEEK) == b"":
                    closed.add(key.data)
                    selector.unregister(key.fileobj)
    return closed


def test_idle_sockets_beyond_the_cap_are_closed_without_threads():
    # The default cap, 32 connections; all from one address here, so its per-address share is raised
    # to the whole (tests/security/test_agent_replies.py holds one address to its share).
    with in_process(request_timeout_s=30, max_connections_per_client=32) as server:
        port = server.server_address[1]
        before = threading.active_count()
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(150)]
        try:
            closed = _closed_by_peer(sockets, expect=150 - 32, within=5)
            assert threading.active_count() - before <= 32
            time.sleep(0.3)
            assert len(closed | _closed_by_peer(sockets, expect=150, within=0.2)) == 150 - 32  # and no more
        finally:
            for sock in sockets:
                sock.close()
        deadline = time.monotonic() + 10
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.05)  # the 32 handlers see their clients go and end
        assert request(port, "GET", "/fingerprint")[0] == 200


# --- 7. DNS rebinding, CSRF ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Host": "evil.example"}, {"Host": "evil.example:8765"}, {"Host": "127.0.0.1.nip.io"}, {"Host": "localhost.evil.example"},
     {"Host": "0.0.0.0"}, {"Host": "127.0.0.1@evil.example"}, {"Host": "127.0.0.1:99999"}, {"Host": "[::1"},
     {"Host": "192.168.1.2"}, {"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": "http://127.0.0.1.evil.example"},
     {"Sec-Fetch-Site": "cross-site"}],
)
def test_browser_requests_are_refused_without_a_token(headers):
    with in_process() as server:
        port = server.server_address[1]
        for method, path, body in (("GET", "/fingerprint", None), ("POST", "/measure", conv_model())):
            status, raw = request(port, method, path, body, {**measure_headers(), **headers})
            assert status == 403, (headers, raw)


@pytest.mark.parametrize(
    "headers",
    [{"Host": "localhost"}, {"Host": "LOCALHOST:8765"}, {"Host": "127.0.0.1"}, {"Host": "127.1.2.3:80"}, {"Host": "[::1]"},
     {"Host": "[::1]:8765"}, {"Origin": "http://localhost:3000"}, {"Origin": "http://[::1]:8765"}, {"Sec-Fetch-Site": "same-origin"}],
)
def test_loopback_names_are_served_without_a_token(headers):
    with in_process() as server:
        assert request(server.server_address[1], "GET", "/fingerprint", headers=headers)[0] == 200


def test_a_request_without_host_is_refused_without_a_token():
    with in_process() as server:
        status, _ = raw_exchange(server.server_address[1], raw_request("GET", "/fingerprint", [], version="HTTP/1.0"))
        assert status == 403


def test_with_a_token_any_host_is_served_but_web_pages_are_still_refused():
    with in_process(token=TOKEN) as server:
        port = server.server_address[1]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert request(port, "GET", "/fingerprint", headers={**auth, "Host": "jetson.lan:8765"})[0] == 200
        assert request(port, "GET", "/fingerprint", headers={"Host": "jetson.lan:8765"})[0] == 401
        assert request(port, "GET", "/fingerprint", headers={**auth, "Origin": "http://evil.example"})[0] == 403
        assert request(port, "GET", "/fingerprint", headers={**auth, "Sec-Fetch-Site": "cross-site"})[0] == 403


# --- 8. device facts ----------------------------------------------------------------------------


def test_device_facts_are_probed_once_and_fingerprint_never_waits_for_a_measurement(monkeypatch):
    from edgeprune.profiling import fingerprint

    calls = []
    real = fingerprint.device_facts
    monkeypatch.setattr(fingerprint, "device_facts", lambda **kw: calls.append(kw) or real(**kw))
    started, release = threading.Event(), threading.Event()

    class Slow:
        def measure(self, blob, shape):
            started.set()
            release.wait(20)
            raise ValueError("stopped")

        def close(self):
            pass

    with in_process() as server:
        port = server.server_address[1]
        monkeypatch.setattr(server.agent, "_new_backend", lambda profile: Slow())
        measuring = threading.Thread(target=request, args=(port, "POST", "/measure", conv_model(), measure_headers()))
        measuring.start()
        try:
            assert started.wait(10)
            start = time.monotonic()
            for _ in range(20):
                status, raw = request(port, "GET", "/fingerprint")
                assert status == 200 and json.loads(raw)["device"]["cpu_count"] == os.cpu_count()
            assert time.monotonic() - start < 5  # while the lock is held by the measurement
        finally:
            release.set()
            measuring.join(20)
    assert len(calls) == 1


# --- 9. strict framing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths",
    [["1_0"], ["+10"], ["0x10"], ["10 "], ["1 0"], ["-1"], ["1e3"], [""], ["١٠"], ["10", "10"], ["10", "11"], ["10, 10"]],
)
def test_content_length_is_digits_and_only_one(lengths):
    with in_process() as server:
        head = b"POST /reference HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        data = head + b"".join(b"Content-Length: " + v.encode() + b"\r\n" for v in lengths) + b"\r\n0123456789"
        status, raw = raw_exchange(server.server_address[1], data)
        assert status == 400 and "Content-Length" in json.loads(raw)["error"], (lengths, status, raw)


def test_chunked_and_folded_framing_is_refused():
    with in_process() as server:
        port = server.server_address[1]
        base = [("Host", "127.0.0.1"), ("Content-Type", OCTET)]
        chunked = raw_request("POST", "/reference", [*base, ("Transfer-Encoding", "chunked")], b"a\r\n0123456789\r\n0\r\n\r\n")
        assert raw_exchange(port, chunked)[0] == 411
        both = raw_request("POST", "/reference", [*base, ("Transfer-Encoding", "chunked"), ("Content-Length", "10")], b"0123456789")
        assert raw_exchange(port, both)[0] == 411
        empty_te = raw_request("POST", "/reference", [*base, ("Transfer-Encoding", ""), ("Content-Length", "10")], b"0123456789")
        assert raw_exchange(port, empty_te)[0] == 411
        folded = raw_request("POST", "/reference", [*base], b"").replace(b"\r\n\r\n", b"\r\nContent-Length: 1\r\n 0\r\n\r\n") + b"0123456789"
        assert raw_exchange(port, folded)[0] == 400


def test_an_unread_body_is_never_parsed_as_the_next_request():
    """A GET with a body is answered, then the connection closes: the body, here a second
    request, is not run."""
    with in_process() as server:
        inner = raw_request("GET", "/admin", [("Host", "127.0.0.1")])
        data = raw_request("GET", "/fingerprint", [("Host", "127.0.0.1"), ("Content-Length", str(len(inner)))], inner)
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
            sock.sendall(data)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and reply.count(b"HTTP/1.") == 1


# --- 10. bad options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs",
    [((70000, 1), {}), ((-1, 1), {}), ((True, 1), {}), (("80", 1), {}), ((0, float("nan")), {}), ((0, float("inf")), {}),
     ((0, 0), {}), ((0, -5), {}), ((0, 1e9), {}), ((0, 1), {"max_memory_mb": 10}), ((0, 1), {"max_memory_mb": float("nan")}),
     ((0, 1), {"measure_timeout_s": 0}), ((0, 1), {"measure_timeout_s": float("inf")}), ((0, 1), {"request_timeout_s": float("nan")}),
     ((0, 1), {"max_connections": 0}), ((0, 1), {"max_connections": 1.5})],
)
def test_bad_options_are_one_line_user_errors(args, kwargs):
    port, max_upload_mb = args
    with pytest.raises(UserError) as caught:
        make_server("127.0.0.1", port, None, max_upload_mb, **kwargs)
    assert "\n" not in str(caught.value) and ("must be" in str(caught.value))


@pytest.mark.parametrize("flags, named", [(["--port", "70000"], "--port"), (["--max-upload-mb", "nan"], "--max-upload-mb"), (["--max-upload-mb", "inf"], "--max-upload-mb")])
def test_agent_cli_refuses_bad_options_with_exit_2(flags, named):
    done = subprocess.run([sys.executable, "-m", "edgeprune", "agent", "--port", "0", *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr and named in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
