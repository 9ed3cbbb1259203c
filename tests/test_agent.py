"""The device agent over real HTTP on loopback, and the remote backend that talks to it.

The agent runs in a subprocess with torch BLOCKED from importing (a sys.meta_path hook), which is
how it must run on a Jetson without PyTorch: if anything on its path imported torch, it would die
before printing its address and every test here would fail.
"""

import base64
import dataclasses
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest
from independent_timing import ratio_check
from torch_block import BLOCK_TORCH
import yaml
import torch
from torch import nn

from edgeprune.profiling.agent import make_server
from edgeprune.errors import UserError
from edgeprune.exporters.onnx_bytes import export_onnx_bytes
from edgeprune.profiling.fingerprint import fingerprint_hash, host_fingerprint
from edgeprune.profiling.isolated import IsolatedOrtBackend
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.remote import RemoteBackend
from edgeprune.profiling.stats import LatencyStats
from edgeprune.profiling.targets import MeasureSpec, load_profile

SHAPE = (1, 3, 32, 32)
TOKEN = "test-token-0123456789abcdef"

_BLOCKED_TORCH = BLOCK_TORCH + textwrap.dedent(
    """
    import sys

    from edgeprune.cli import main
    code = main(sys.argv[1:])
    assert "torch" not in sys.modules
    sys.exit(code)
    """
)


class AgentProcess:
    def __init__(self, *args: str):
        # The agent logs every request: a file, not a pipe nobody reads, which would fill and
        # block it.
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BLOCKED_TORCH, "agent", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = self.proc.stdout.readline()
        if "listening on http://127.0.0.1:" not in line:
            self.proc.kill()
            self.proc.wait()
            self.log.seek(0)
            raise RuntimeError(f"agent did not start: {line!r} {self.log.read()[-2000:]}")
        self.port = int(line.split("http://127.0.0.1:")[1].split()[0])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


@pytest.fixture(scope="module")
def agent():
    a = AgentProcess()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def token_agent(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    a = AgentProcess("--token-file", str(token_file), "--max-upload-mb", "0.5")
    yield a
    a.stop()


def _model(width: int = 32) -> bytes:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )
    return export_onnx_bytes(net, SHAPE, opset=17)


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return _model()


def _profile(agent_url=None, **measure):
    spec = dict(warmup_runs=5, min_runs=20, max_runs=5000, max_seconds=0.15, cv_threshold=100.0, repeats_if_noisy=0)
    return dataclasses.replace(load_profile("x86-cpu"), agent=agent_url, measure=MeasureSpec(**{**spec, **measure}))


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _request_raw(port, method, path, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _headers_only(port, method, path, length, headers):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _pin_token(monkeypatch, url):
    """The client sends the token only to the agent it is pinned to."""
    monkeypatch.setenv("EDGEPRUNE_AGENT_TOKEN", TOKEN)
    monkeypatch.setenv("EDGEPRUNE_AGENT_URL", url)


def _profile_header(profile) -> str:
    return base64.urlsafe_b64encode(json.dumps(profile.to_dict()).encode()).decode().rstrip("=")


def test_remote_measures_and_fingerprint_is_the_devices(agent, onnx_bytes):
    profile = _profile(agent.url)
    backend = RemoteBackend(profile)
    stats = backend.measure(onnx_bytes, SHAPE)
    assert stats.n >= 20 and stats.median_ms > 0 and stats.p90_ms >= stats.median_ms
    # Same machine here: the device's fingerprint equals the local one, so both share cache keys.
    assert backend.fingerprint() == host_fingerprint(profile)


def test_remote_measure_pair_uploads_reference_once_and_again_after_restart(onnx_bytes):
    a = AgentProcess()
    try:
        backend = RemoteBackend(_profile(a.url))
        small = _model(8)
        backend.set_reference(onnx_bytes, SHAPE)
        cand, ref = backend.measure_pair(small, SHAPE)
        first_id = backend._reference_id
        assert first_id is not None and cand.n > 0 and ref.n > 0
        assert cand.median_ms < ref.median_ms  # 8 channels vs 32: clearly cheaper
    finally:
        a.stop()
    b = AgentProcess()  # a fresh agent knows no reference: the client must upload it again
    try:
        backend.url = b.url
        cand, ref = backend.measure_pair(small, SHAPE)
        assert backend._reference_id == first_id and cand.median_ms < ref.median_ms
    finally:
        b.stop()


def test_profiler_picks_remote_backend_and_caches(agent, onnx_bytes, tmp_path):
    profiler = Profiler(_profile(agent.url), cache_path=tmp_path / "c.sqlite")
    try:
        assert isinstance(profiler.backend, RemoteBackend)
        stats, hit = profiler.latency("arch-a", SHAPE, lambda: onnx_bytes)
        again, hit2 = profiler.latency("arch-a", SHAPE, lambda: pytest.fail("must not export on a hit"))
        assert (hit, hit2) == (False, True) and again == stats
    finally:
        profiler.close()
    # A local profiler on the same machine hits the same cache entry (device fingerprint).
    local = Profiler(_profile(None), cache_path=tmp_path / "c.sqlite")
    try:
        assert local.fingerprint_hash == fingerprint_hash(host_fingerprint(_profile(None)))
        assert local.latency("arch-a", SHAPE, lambda: pytest.fail("cached"))[1] is True
    finally:
        local.close()


def _bad_requests(port, onnx_bytes):
    """50 malformed, oversized or unauthenticated requests: (method, path, body, headers)."""
    good = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream", "X-Edgeprune-Profile": _profile_header(_profile())}
    no_auth = {k: v for k, v in good.items() if k != "Authorization"}
    big = b"\0" * (600 * 1024)
    bad_profile = dict(_profile().to_dict(), intra_op_thread=2)
    wrong_type = dict(_profile().to_dict(), intra_op_threads="two")
    trt_no_agent = dict(load_profile("jetson-orin").to_dict(), agent=None)
    cases = [
        ("GET", "/fingerprint", None, {}),
        ("GET", "/fingerprint", None, {"Authorization": "Bearer wrong"}),
        ("GET", "/fingerprint", None, {"Authorization": TOKEN}),
        ("GET", "/fingerprint", None, {"Authorization": f"Basic {TOKEN}"}),
        ("GET", "/fingerprint", None, {"Authorization": f"Bearer {TOKEN}x"}),
        ("GET", "/fingerprint", None, {"Authorization": "Bearer "}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, no_auth),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "Authorization": "Bearer nope"}),
        ("POST", "/reference?shape=1x3x32x32", onnx_bytes, no_auth),
        ("POST", "/measure?shape=1x3x32x32", big, no_auth),
        ("GET", "/", None, good),
        ("GET", "/admin", None, good),
        ("GET", "/../etc/passwd", None, good),
        ("DELETE", "/measure", None, good),
        ("PUT", "/measure", onnx_bytes, good),
        ("GET", "/measure", None, good),
        ("POST", "/fingerprint", b"x", good),
        ("POST", "/measure?shape=1x3x32x32", big, good),
        ("POST", "/reference?shape=1x3x32x32", big, good),
        ("POST", "/measure?shape=1x3x32x32", b"", good),
        ("POST", "/measure?shape=1x3x32x32", b"not an onnx model", good),
        ("POST", "/measure?shape=1x3x32x32", b"\x08\x07" + os.urandom(2000), good),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes[: len(onnx_bytes) // 2], good),
        ("POST", "/measure?shape=1x3x32x32", b"\x80\x04\x95" + b"pickle" * 10, good),
        ("POST", "/measure?shape=1x3x16x16", onnx_bytes, good),
        ("POST", "/measure?shape=axb", onnx_bytes, good),
        ("POST", "/measure?shape=-1x3x32x32", onnx_bytes, good),
        ("POST", "/measure?shape=0x3x32x32", onnx_bytes, good),
        ("POST", "/measure?shape=" + "1x" * 20 + "1", onnx_bytes, good),
        ("POST", "/measure?shape=1x3x32x32&bogus=1", onnx_bytes, good),
        ("POST", "/measure?shape", onnx_bytes, good),
        ("POST", "/measure?shape=1x3x32x32&reference=zz", onnx_bytes, good),
        ("POST", "/measure?shape=1x3x32x32&reference=" + "a" * 64, onnx_bytes, good),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "X-Edgeprune-Profile": ""}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {k: v for k, v in good.items() if k != "X-Edgeprune-Profile"}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "X-Edgeprune-Profile": "!!!not-base64!!!"}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "X-Edgeprune-Profile": base64.urlsafe_b64encode(b"[1, 2]").decode()}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "X-Edgeprune-Profile": base64.urlsafe_b64encode(b"{not json").decode()}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "X-Edgeprune-Profile": base64.urlsafe_b64encode(json.dumps(bad_profile).encode()).decode()}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "X-Edgeprune-Profile": base64.urlsafe_b64encode(json.dumps(wrong_type).encode()).decode()}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "X-Edgeprune-Profile": base64.urlsafe_b64encode(json.dumps(trt_no_agent).encode()).decode()}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "Content-Type": "application/json"}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "Content-Type": "multipart/form-data"}),
        ("POST", "/measure?shape=1x3x32x32", None, good),
        ("POST", "/reference?shape=1x3x32x32", b"garbage", good),
        ("POST", "/reference?shape=9x9", onnx_bytes, good),
        ("POST", "/reference", b"", good),
        ("GET", "/fingerprint?x=" + "a" * 5000, None, {}),
        ("POST", "/measure?shape=1x3x32x32", onnx_bytes, {**good, "Authorization": "Bearer " + "A" * 4000}),
        ("PATCH", "/measure", None, good),
    ]
    return cases


def test_fifty_bad_requests_are_refused_with_reasons_then_measuring_still_works(token_agent, onnx_bytes, monkeypatch):
    cases = _bad_requests(token_agent.port, onnx_bytes)
    assert len(cases) == 50
    for method, path, body, headers in cases:
        if body is not None and len(body) > 65536:
            # Oversized: send only the headers, as an attacker would; the agent must answer
            # from the headers alone, without waiting for (or reading) the body.
            status, raw = _headers_only(token_agent.port, method, path, len(body), headers)
        else:
            status, raw = _request_raw(token_agent.port, method, path, body, headers)
        assert 400 <= status < 500, (method, path[:60], status, raw[:200])
        assert json.loads(raw)["error"], (method, path[:60])
    # Still alive and still measuring correctly, with the right token.
    _pin_token(monkeypatch, token_agent.url)
    stats = RemoteBackend(_profile(token_agent.url)).measure(onnx_bytes, SHAPE)
    assert stats.n >= 20 and stats.median_ms > 0


def test_specific_refusals_carry_the_right_status(token_agent, onnx_bytes):
    good = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream", "X-Edgeprune-Profile": _profile_header(_profile())}
    status, body = _request(token_agent.port, "GET", "/fingerprint")
    assert status == 401 and "bearer token" in body["error"]
    status, body = _request(token_agent.port, "POST", "/measure?shape=1x3x32x32", b"junk", good)
    assert status == 400 and "not an ONNX model" in body["error"]
    # Headers only: the agent answers 413 without reading the body, so a client still sending it
    # may see a broken pipe instead of the answer (a race, not what this test is about).
    status, body = _headers_only(token_agent.port, "POST", "/measure?shape=1x3x32x32", 1 << 20, good)
    assert status == 413 and "--max-upload-mb" in json.loads(body)["error"]
    status, body = _request(token_agent.port, "GET", "/fingerprint", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body["device"]["cpu"]


def test_remote_refuses_an_upload_above_the_agents_cap_with_the_fix(token_agent, monkeypatch):
    """The cap comes with the fingerprint: the client names it instead of a broken pipe."""
    _pin_token(monkeypatch, token_agent.url)
    backend = RemoteBackend(_profile(token_agent.url))
    assert backend.fingerprint()
    big = export_onnx_bytes(nn.Sequential(nn.Conv2d(3, 400, 3), nn.Conv2d(400, 400, 1)).eval(), SHAPE, 17)
    assert len(big) > 0.5 * 2**20
    with pytest.raises(ValueError, match=r"above the agent.s cap of 524288; restart the agent with a larger --max-upload-mb"):
        backend.measure(big, SHAPE)


def test_wrong_token_is_a_user_error(token_agent):
    with pytest.raises(UserError, match="refused the token"):
        RemoteBackend(_profile(token_agent.url)).fingerprint()


def test_unreachable_agent_is_a_user_error():
    with pytest.raises(UserError, match="cannot reach the device agent"):
        RemoteBackend(_profile("http://127.0.0.1:9")).fingerprint()


def test_refuses_non_loopback_without_token():
    with pytest.raises(UserError, match="--token-file"):
        make_server("0.0.0.0", 0, None, 1)
    server = make_server("127.0.0.1", 0, None, 1)  # loopback without a token is fine
    server.server_close()


def test_agent_cli_refuses_short_token(tmp_path):
    bad = tmp_path / "t"
    bad.write_text("short")
    done = subprocess.run([sys.executable, "-m", "edgeprune", "agent", "--port", "0", "--token-file", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "at least 16 characters" in done.stderr


def test_agent_module_imports_no_torch():
    code = "import sys, edgeprune.cli, edgeprune.profiling.agent, edgeprune.profiling.ort, edgeprune.profiling.tensorrt; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


class _ScriptedDevice:
    """A measuring backend that answers chosen numbers: what the agent gets back from its child."""

    STATS = LatencyStats(137, 0.123456789, 0.2, 0.3, 0.15, 0.01, 0.0667, trimmed_ms=0.121)
    REFERENCE = LatencyStats(211, 0.3456789, 0.4, 0.5, 0.36, 0.02, 0.0556, trimmed_ms=0.342)

    def measure(self, onnx_bytes, input_shape):
        return self.STATS

    def set_reference(self, onnx_bytes, input_shape):
        self.reference = onnx_bytes

    def measure_pair(self, onnx_bytes, input_shape):
        return self.STATS, self.REFERENCE

    def close(self):
        pass


def test_the_agent_times_with_the_clients_protocol_and_its_numbers_come_back_untouched(monkeypatch, onnx_bytes):
    """Remote and local time alike because the agent's child gets the client's profile, every
    field of it, and the client gets the child's numbers, unchanged. Checked exactly with an
    in-process agent and a scripted child; a timing comparison cannot see most such mistakes (one
    intra-op thread against two: a median ratio of 1.007 on a busy 2-core machine)."""
    import threading

    from edgeprune.profiling import factory

    children = []

    def scripted(profile, **options):
        children.append((profile, options))
        return _ScriptedDevice()

    monkeypatch.setattr(factory, "make_backend", scripted)
    server = make_server("127.0.0.1", 0, None, 1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        profile = dataclasses.replace(_profile(url, max_seconds=0.2), intra_op_threads=3, graph_optimization="extended")
        client = RemoteBackend(profile)
        assert client.measure(onnx_bytes, SHAPE) == _ScriptedDevice.STATS
        client.set_reference(onnx_bytes, SHAPE)
        assert client.measure_pair(_model(8), SHAPE) == (_ScriptedDevice.STATS, _ScriptedDevice.REFERENCE)
    finally:
        server.shutdown()
        server.server_close()
        server.agent.close()
    (timed, options), = children  # one child for the one profile
    sent = {k: v for k, v in profile.to_dict().items() if k != "source"}
    assert {k: v for k, v in timed.to_dict().items() if k != "source"} == sent and options["local"] is True


def test_remote_and_local_time_alike_within_5_percent_and_the_sampling_error(agent, onnx_bytes):
    """The agent's measuring child and the local one time the same model alike on this machine:
    the median of 15 interleaved remote/local ratios is within 5 % of 1, give or take three
    standard errors of that median, estimated from the ratios' own scatter. That is a test of
    "at most 5 % apart" that fails a sound agent only when the median lands three standard errors
    past a 5 % difference, on any machine, where a fixed band is either too tight for a busy
    machine or blind on a quiet one (it was 5 %, then 15 %). Ratios of session medians scatter
    with a CV of 5-10 % on the 2-core CI VM (docs/benchmarks.md), a standard error of 1.6-3.2 %
    for the median of 15 (1.25 sigma / sqrt(15)): the bound is 10-15 % there and about 6 % on a
    quiet machine. Timing the upload or building the session in the timed loop, or another
    graph optimisation level (1.5x here), lands far outside it.

    Each ratio is taken from a remote and a local session back to back, so a busy minute on a
    shared machine moves both; a systematic difference shifts every ratio. That the protocol
    itself is the client's is checked exactly above."""
    local = IsolatedOrtBackend(_profile(None, max_seconds=0.2))
    remote = RemoteBackend(_profile(agent.url, max_seconds=0.2))
    ratios = []
    try:
        local.measure(onnx_bytes, SHAPE)  # start the worker before timing
        for i in range(15):
            first, second = (local, remote) if i % 2 == 0 else (remote, local)  # who goes first alternates
            a, b = first.measure(onnx_bytes, SHAPE).median_ms, second.measure(onnx_bytes, SHAPE).median_ms
            ratios.append(a / b if first is remote else b / a)
    finally:
        local.close()
    centre, bound = ratio_check(ratios, allowed=0.05)
    print(f"remote/local: median ratio {centre:.3f}, bound {bound:.3f}x, of {[round(r, 3) for r in ratios]}")
    assert abs(math.log(centre)) <= math.log(bound)


def test_profile_command_with_an_agent_profile_measures_on_the_agent(agent, onnx_bytes, tmp_path, monkeypatch, capsys):
    # The host's own measuring process must not be used at all: make it fail if anything starts it.
    def no_host_timing(*_a, **_k):
        raise AssertionError("edgeprune profile timed on the host instead of the agent")

    monkeypatch.setattr(IsolatedOrtBackend, "measure", no_host_timing)
    monkeypatch.setattr(IsolatedOrtBackend, "measure_pair", no_host_timing)
    from edgeprune.cli import main

    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_bytes)
    profile = _profile(agent.url).to_dict()
    del profile["source"]
    (tmp_path / "remote.yaml").write_text(yaml.safe_dump(profile))
    agent.log.seek(0, os.SEEK_END)
    before = agent.log.tell()
    assert main(["profile", str(model), "--target", str(tmp_path / "remote.yaml"), "--no-cache", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["median_ms"] > 0 and result["runs"][0]["n"] >= 20
    agent.log.seek(before)
    assert '"POST /measure?shape=1x3x32x32' in agent.log.read()  # the agent did the timing
