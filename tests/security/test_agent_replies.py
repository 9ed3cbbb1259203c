"""Audit finding 4: the client believes nothing an agent sends.

Each test puts a stand-in agent on loopback (a thread of this test, 127.0.0.1 only, serving a
bounded number of connections) that answers with one bad reply, and checks what the remote backend,
the farm and the CLI make of it: a one-line UserError (exit 2), an agent taken out of rotation, a
bounded read, a deadline, and never a NaN, a zero or a traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from edgeprune.errors import UserError
from edgeprune.profiling import remote
from edgeprune.profiling.farm import FarmBackend
from edgeprune.profiling.fingerprint import device_facts
from edgeprune.profiling.profiler import Profiler
from edgeprune.profiling.remote import AgentUnavailable, InvalidReply, ModelRefused, RemoteBackend
from edgeprune.profiling.targets import MeasureSpec, load_profile

from .test_agent_security import conv_model, in_process

SHAPE = (1, 3, 16, 16)
FACTS = device_facts(tensorrt=False)
GOOD_STATS = {"n": 20, "median": 0.5, "p90": 0.6, "p99": 0.7, "mean": 0.55, "std": 0.01, "cv": 0.02, "noisy": False}


# --- a stand-in agent -----------------------------------------------------------------------------


def send_reply(conn: socket.socket, status: int, body: bytes | str | dict, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
    head = {"Content-Type": "application/json", "Content-Length": str(len(data)), "Connection": "close", **(headers or {})}
    lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in head.items())]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)


def fingerprint_reply(conn: socket.socket, **extra) -> None:
    send_reply(conn, 200, {"device": FACTS, "edgeprune": "test", "max_upload_bytes": 1 << 20, **extra})


def _read_request(conn: socket.socket) -> tuple[str, bytes]:
    """(path, body) of one request; bounded by the socket's timeout and 1 MiB."""
    raw = b""
    while b"\r\n\r\n" not in raw and len(raw) < 1 << 16:
        chunk = conn.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")), 0)
    while len(body) < min(length, 1 << 20):
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return lines[0].split(" ")[1] if lines and " " in lines[0] else "", body


class StandIn:
    """An agent impersonated by ``routes`` (path without query -> ``handler(conn, path, body)``)
    on 127.0.0.1; at most ``connections`` are served, each in its own thread."""

    def __init__(self, routes: dict[str, Callable], connections: int = 20):
        self.routes = routes
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.paths: list[str] = []
        self._stop = threading.Event()
        self._connections = connections
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        served = 0
        while not self._stop.is_set() and served < self._connections:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            served += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                path, body = _read_request(conn)
                self.paths.append(path)
                self.routes[path.split("?")[0]](conn, path, body)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def stand_in():
    started: list[StandIn] = []

    def start(routes: dict[str, Callable], connections: int = 20) -> StandIn:
        started.append(StandIn(routes, connections))
        return started[-1]

    yield start
    for s in started:
        s.close()


def _profile(url: str, **measure):
    spec = dict(warmup_runs=1, min_runs=5, max_runs=50, max_seconds=0.1, cv_threshold=100.0, repeats_if_noisy=0)
    return dataclasses.replace(load_profile("x86-cpu"), agent=url, measure=MeasureSpec(**{**spec, **measure}))


def _measure_with(routes_measure: Callable, stand_in) -> RemoteBackend:
    agent = stand_in({"/fingerprint": lambda c, p, b: fingerprint_reply(c), "/measure": routes_measure,
                      "/reference": lambda c, p, b: send_reply(c, 200, {"reference": hashlib.sha256(b).hexdigest()})})
    return RemoteBackend(_profile(agent.url))


# --- replies that are not latencies -----------------------------------------------------------------


def _with(**changes):
    """GOOD_STATS with ``changes``; a key given as ``...`` is left out."""
    return {k: v for k, v in {**GOOD_STATS, **changes}.items() if v is not ...}


BAD_STATS = {
    "NaN median": json.dumps({"stats": GOOD_STATS}).replace('"median": 0.5', '"median": NaN'),
    "Infinity p99": json.dumps({"stats": GOOD_STATS}).replace('"p99": 0.7', '"p99": Infinity'),
    "zero median": {"stats": _with(median=0)},
    "negative mean": {"stats": _with(mean=-1.0)},
    "missing p90": {"stats": _with(p90=...)},
    "no stats": {"latency": GOOD_STATS},
    "stats a list": {"stats": [0.5]},
    "n zero": {"stats": _with(n=0)},
    "n a boolean": {"stats": _with(n=True)},
    "n a float": {"stats": _with(n=2.5)},
    "median a string": {"stats": _with(median="0.5")},
    "negative cv": {"stats": _with(cv=-0.1)},
    "huge median": {"stats": _with(median=1e300, p90=1e300, p99=1e300)},
    "noisy a string": {"stats": _with(noisy="no")},
    "trimmed NaN": json.dumps({"stats": {**GOOD_STATS, "trimmed": 1}}).replace('"trimmed": 1', '"trimmed": NaN'),
    "not JSON": "<html>proxy error</html>",
    "a JSON list": "[1, 2]",
}


@pytest.mark.parametrize("name", sorted(BAD_STATS))
def test_a_latency_that_no_measurement_gives_is_refused_and_never_cached(name, stand_in, tmp_path):
    backend = _measure_with(lambda c, p, b: send_reply(c, 200, BAD_STATS[name]), stand_in)
    with pytest.raises(InvalidReply) as caught:
        backend.measure(conv_model(shape=SHAPE), SHAPE)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, AgentUnavailable)  # exit 2; a farm retires the agent
    assert "\n" not in message and backend.url in message
    # Through the Profiler as prune uses it: nothing reaches the cache.
    profiler = Profiler(_profile(backend.url), cache_path=tmp_path / "c.sqlite")
    try:
        with pytest.raises(InvalidReply):
            profiler.latency("arch", SHAPE, lambda: conv_model(shape=SHAPE))
        assert profiler._cache.count() == 0
    finally:
        profiler.close()


def test_a_good_reply_still_measures(stand_in):
    backend = _measure_with(lambda c, p, b: send_reply(c, 200, {"stats": GOOD_STATS}), stand_in)
    assert backend.measure(conv_model(shape=SHAPE), SHAPE).median_ms == 0.5


@pytest.mark.parametrize("reference", [None, "NaN", 0])
def test_a_paired_reply_without_a_valid_reference_is_refused(reference, stand_in):
    def reply(conn, path, body):
        payload = {"stats": GOOD_STATS}
        if reference is not None:
            payload["reference"] = {**GOOD_STATS, "median": reference}
        text = json.dumps(payload).replace('"NaN"', "NaN")
        send_reply(conn, 200, text)

    backend = _measure_with(reply, stand_in)
    backend.set_reference(conv_model(shape=SHAPE), SHAPE)
    with pytest.raises(InvalidReply, match="'reference'"):
        backend.measure_pair(conv_model(shape=SHAPE), SHAPE)


@pytest.mark.parametrize("reply", [{"reference": None}, {}, {"reference": "0" * 64}])
def test_a_reference_upload_answered_wrongly_is_refused(reply, stand_in):
    agent = stand_in({"/fingerprint": lambda c, p, b: fingerprint_reply(c), "/reference": lambda c, p, b: send_reply(c, 200, reply)})
    backend = RemoteBackend(_profile(agent.url))
    backend.set_reference(conv_model(shape=SHAPE), SHAPE)
    with pytest.raises(InvalidReply, match="unexpected id"):
        backend.measure_pair(conv_model(shape=SHAPE), SHAPE)


@pytest.mark.parametrize("cap", [True, -5, "1000", 1.5])
def test_a_nonsense_upload_cap_is_ignored_not_believed(cap, stand_in):
    """``True`` is an int to Python: believed, it would refuse every model above 1 byte."""
    agent = stand_in({"/fingerprint": lambda c, p, b: fingerprint_reply(c, max_upload_bytes=cap),
                      "/measure": lambda c, p, b: send_reply(c, 200, {"stats": GOOD_STATS})})
    assert RemoteBackend(_profile(agent.url)).measure(conv_model(shape=SHAPE), SHAPE).median_ms == 0.5


# --- honest refusals: one line, exit 2 ------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 413, 415, 422])
def test_a_refused_model_is_a_one_line_user_error(status, stand_in):
    reason = "the model does not run on this device\x1b[31m\nFORGED LOG LINE"
    backend = _measure_with(lambda c, p, b: send_reply(c, status, {"error": reason}), stand_in)
    with pytest.raises(ModelRefused) as caught:
        backend.measure(conv_model(shape=SHAPE), SHAPE)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)
    assert "does not run on this device" in message and "\n" not in message and "\x1b" not in message


def test_jetson_orin_on_a_device_without_trtexec_is_exit_2_with_one_line(tmp_path, monkeypatch):
    """The audit's case, through `edgeprune prune` as a user types it: the agent answers an honest
    422 (no trtexec on this device), the CLI says so in one line and exits 2, no traceback."""
    from conftest import run_edgeprune, tiny_prune_command

    monkeypatch.setenv("EDGEPRUNE_TRTEXEC", str(tmp_path / "no-trtexec"))  # what the agent (in this process) looks for
    with in_process() as server:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        data = yaml.safe_load((Path(load_profile("jetson-orin").source)).read_text())
        data["agent"] = url
        profile = tmp_path / "orin.yaml"
        profile.write_text(yaml.safe_dump(data))
        cmd = tiny_prune_command(tmp_path / "out", tmp_path / "c.sqlite")
        cmd[cmd.index("--target") + 1] = str(profile)
        done = run_edgeprune(cmd[3:], timeout=300)
    err = done.stderr.strip()
    assert done.returncode == 2, err[-3000:]
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("edgeprune: error: agent ") and "trtexec was not found" in last
    assert not (tmp_path / "out").exists()


# --- bounded reads ----------------------------------------------------------------------------------


def test_a_huge_error_body_is_read_only_up_to_a_small_bound(stand_in):
    declared = 96 << 20
    sent = []

    def flood(conn, path, body):
        conn.sendall(f"HTTP/1.1 422 X\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode())
        chunk, total = b'{"error": "' + b"A" * (1 << 20), 0
        try:
            while total < declared:
                conn.sendall(chunk)
                total += len(chunk)
        except OSError:  # the client stopped reading and closed
            pass
        sent.append(total)

    backend = _measure_with(flood, stand_in)
    with pytest.raises(ModelRefused, match="HTTP 422"):
        backend.measure(conv_model(shape=SHAPE), SHAPE)
    deadline = time.monotonic() + 10
    while not sent and time.monotonic() < deadline:
        time.sleep(0.05)
    # What the kernel buffers on loopback (a few MiB) got out; the rest was never asked for.
    assert sent and sent[0] < declared // 2, sent


def test_a_huge_success_body_is_refused_without_reading_it_whole(stand_in):
    backend = _measure_with(lambda c, p, b: send_reply(c, 200, b"{" + b" " * (4 << 20) + b"}"), stand_in)
    with pytest.raises(InvalidReply, match="above"):
        backend.measure(conv_model(shape=SHAPE), SHAPE)


# --- deadlines ------------------------------------------------------------------------------------


def _trickle(state: dict, interval: float = 0.2, beats: int = 100):
    """A reply whose headers come a line every ``interval`` s (each read well inside any per-read
    timeout), ``beats`` lines in all, then a valid answer; ``state['finished']`` says whether the
    client was still listening at the end."""

    def handler(conn, path, body):
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for i in range(beats):
                time.sleep(interval)
                conn.sendall(f"X-Wait-{i}: 1\r\n".encode())
            payload = json.dumps({"stats": GOOD_STATS}).encode()
            conn.sendall(f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            state["finished"] = True
        except OSError:
            state["finished"] = False

    return handler


def test_a_hung_agent_is_given_up_at_the_measurement_deadline(stand_in, monkeypatch):
    """The deadline is the agent's own limit for the profile (from /fingerprint), not a per-read
    timeout: a reply that trickles in forever is cut off. The margins are zeroed so that the
    deadline is the agent's 0.5 s limit, twice."""
    monkeypatch.setattr(remote, "START_TIMEOUT_S", 0.0)
    monkeypatch.setattr(remote, "_TRANSFER_S", 0.0)
    state: dict = {}
    agent = stand_in({"/fingerprint": lambda c, p, b: fingerprint_reply(c, measure_timeout_s=0.5), "/measure": _trickle(state)})
    backend = RemoteBackend(_profile(agent.url))
    backend.fingerprint()
    assert backend.deadline(0) == pytest.approx(1.0)
    with pytest.raises(AgentUnavailable, match="did not answer within 1 s"):
        backend.measure(conv_model(shape=SHAPE), SHAPE)
    deadline = time.monotonic() + 30
    while "finished" not in state and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.get("finished") is False  # cut off long before the trickle ended


def test_a_hung_fingerprint_is_given_up_too(stand_in, monkeypatch):
    monkeypatch.setattr(remote, "_FINGERPRINT_DEADLINE_S", 1.0)
    state: dict = {}
    agent = stand_in({"/fingerprint": _trickle(state)})
    with pytest.raises(AgentUnavailable, match="did not answer within 1 s"):
        RemoteBackend(_profile(agent.url)).fingerprint()


def test_the_measurement_deadline_follows_the_profile_and_the_agents_limit():
    """Sized from what the agent may spend, not 3600 s per read."""
    fast = _profile("http://127.0.0.1:9")
    shipped = remote.reply_deadline(fast, 600.0, 0)
    assert shipped < 3600  # the old per-read timeout was 3600 s for each read
    assert remote.reply_deadline(fast, 15.0, 0) < shipped  # an agent with a short limit: a short wait
    assert remote.reply_deadline(fast, 600.0, 100 << 20) == pytest.approx(shipped + 100)  # 1 s per MiB uploaded
    slow = _profile("http://127.0.0.1:9", max_seconds=60.0)
    assert remote.reply_deadline(slow, 6000.0, 0) > shipped  # a longer window waits longer


def test_a_farm_gives_a_hung_agent_up_at_the_deadline(stand_in, monkeypatch):
    """Alone on a farm, a hung agent fails the measurement at the deadline (not after 3600 s a
    read); next to a working one, its measurement is done there and it leaves the rotation."""
    monkeypatch.setattr(remote, "START_TIMEOUT_S", 0.0)
    monkeypatch.setattr(remote, "_TRANSFER_S", 0.0)
    fingerprint = lambda c, p, b: fingerprint_reply(c, measure_timeout_s=0.5)  # noqa: E731
    state: dict = {}
    hung = stand_in({"/fingerprint": fingerprint, "/measure": _trickle(state)})
    farm = FarmBackend(_profile(None), [hung.url])
    try:
        with pytest.raises(UserError, match="no agent of the farm is left.*did not answer within 1 s"):
            farm.submit(conv_model(shape=SHAPE), SHAPE, False, "m1").result(timeout=30)
    finally:
        farm.close()

    def slow_good(conn, path, body):
        time.sleep(0.5)  # busy with the first job while the hung agent takes the second
        send_reply(conn, 200, {"stats": GOOD_STATS})

    hung = stand_in({"/fingerprint": fingerprint, "/measure": _trickle({})})
    good = stand_in({"/fingerprint": fingerprint, "/measure": slow_good})
    warnings: list[str] = []
    farm = FarmBackend(_profile(None), [good.url, hung.url], warnings.append)
    try:
        jobs = [farm.submit(conv_model(shape=SHAPE), SHAPE, False, f"m{i}") for i in range(2)]
        assert [j.result(timeout=30).median_ms for j in jobs] == [0.5, 0.5]
        summary = farm.summary()
    finally:
        farm.close()
    assert [r["agent"] for r in summary["removed"]] == [hung.url] and "did not answer within 1 s" in summary["removed"][0]["reason"]
    assert any("out of rotation" in w for w in warnings)


def test_a_farm_retires_an_agent_that_answers_nan(stand_in):
    def slow_good(conn, path, body):
        time.sleep(0.5)
        send_reply(conn, 200, {"stats": GOOD_STATS})

    bad = stand_in({"/fingerprint": lambda c, p, b: fingerprint_reply(c), "/measure": lambda c, p, b: send_reply(c, 200, BAD_STATS["NaN median"])})
    good = stand_in({"/fingerprint": lambda c, p, b: fingerprint_reply(c), "/measure": slow_good})
    farm = FarmBackend(_profile(None), [good.url, bad.url])
    try:
        jobs = [farm.submit(conv_model(shape=SHAPE), SHAPE, False, f"m{i}") for i in range(2)]
        assert [j.result(timeout=30).median_ms for j in jobs] == [0.5, 0.5]  # no NaN reached the run
        summary = farm.summary()
    finally:
        farm.close()
    assert [r["agent"] for r in summary["removed"]] == [bad.url] and "'stats'" in summary["removed"][0]["reason"]
