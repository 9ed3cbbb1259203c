"""Seeded fuzzing of a token agent over raw sockets: malformed, oversized, slow and unauthenticated
requests get a 4xx or a closed connection, never a 5xx, never the runtime's text or a file's bytes;
afterwards the agent still measures a real model as this machine does.

``random.Random(0)``: the same requests every run, so a failure names a case that can be replayed.
A case built from a valid model by cutting or flipping bytes may still be a valid model; only such
cases may be answered 200 (counted separately).
"""

from __future__ import annotations

import base64
import collections
import json
import math
import random
import threading
import time

from independent_timing import ratio_check

from edgeprune.profiling.isolated import IsolatedOrtBackend

from .test_agent_security import (
    OCTET,
    SECRET,
    SHAPE,
    TOKEN,
    AgentProcess,
    conv_model,
    leaking_model,
    profile,
    profile_header,
    raw_exchange,
    raw_request,
    read_reply,
)

REQUEST_TIMEOUT_S = 1.0  # the agent's receive deadline in this test
MAX_UPLOAD_MB = 0.25
FORBIDDEN = [SECRET[:12], b"Traceback", b"ONNXRuntimeError", b"onnxruntime_src", b"Status Message", b"File \""]


class Case:
    def __init__(self, kind: str, data: bytes, maybe_valid: bool = False):
        self.kind, self.data, self.maybe_valid = kind, data, maybe_valid


def _good(extra=(), token=True, prof=None, length=None, replace=True):
    """The headers of a valid request, then ``extra``: in place of those of the same name
    (``replace``) or as duplicates."""
    headers = [("Host", "127.0.0.1"), ("Content-Type", OCTET), ("X-Edgeprune-Profile", profile_header(prof or FAST))]
    if token:
        headers.append(("Authorization", f"Bearer {TOKEN}"))
    if length is not None:
        headers.append(("Content-Length", str(length)))
    if replace:
        names = {name.lower() for name, _ in extra}
        headers = [(k, v) for k, v in headers if k.lower() not in names]
    return headers + list(extra)


def _post(path, body, headers=None, **kw):
    headers = headers if headers is not None else _good(length=len(body), **kw)
    return raw_request("POST", path, headers, body)


FAST = profile(warmup_runs=2, min_runs=5, max_seconds=0.05)
MODEL = conv_model()


def bad_methods(rng):
    methods = ["CONNECT", "TRACE", "OPTIONS", "HEAD", "PROPFIND", "DELETE", "PUT", "PATCH", "get", "GET\x00", "A" * 5000, "BREW"]
    for _ in range(16):
        method = rng.choice(methods) if rng.random() < 0.6 else "".join(rng.choice("ABCXYZ_-!$") for _ in range(rng.randint(1, 12)))
        path = rng.choice(["/fingerprint", "/measure", "/reference"])
        yield Case("method", raw_request(method, path, _good(length=len(MODEL)), MODEL))


def bad_paths(rng):
    paths = ["/", "/admin", "/../etc/passwd", "/fingerprint/../measure", "/%2e%2e/secret.bin", "/measure%00", "*",
             "http://evil.example/fingerprint", "http://[::1/fingerprint", "/fingerprint;x", "/FINGERPRINT", "/secret.bin"]
    for _ in range(16):
        path = rng.choice(paths) if rng.random() < 0.6 else "/" + "".join(chr(rng.randint(33, 126)) for _ in range(rng.randint(1, 3000)))
        yield Case("path", raw_request(rng.choice(["GET", "POST"]), path, _good(token=False)))


def bad_queries(rng):
    templates = ["shape=", "shape=axb", "shape=1x3x16x16", "shape=-1x3x32x32", "shape=0x3x32x32", "shape=1x3x32x32x1x1x1x1x1",
                 "shape=1x3x32x32&bogus=1", "shape", "&&&", "%zz=1", "a=1&" * 20, "reference=zz", "reference=" + "A" * 64,
                 "reference=" + "0" * 64, "shape=1x3x32x32&shape=9", "shape=99999999x1", "shape=1%00x3"]
    for _ in range(20):
        query = rng.choice(templates)
        if rng.random() < 0.3:
            query += "&" + "".join(rng.choice("abc=&%xX0123") for _ in range(rng.randint(1, 40)))
        yield Case("query", _post("/measure?" + query, MODEL))


def bad_headers(rng):
    junk = ["\x00", "é", "\x7f", "\u00ff" * 10, "a" * 1000, "", " ", "\\r", "()<>@,;:"]
    for _ in range(20):
        headers = _good(token=False, length=len(MODEL))
        for _ in range(rng.randint(1, 6)):
            name = rng.choice(["X-" + "".join(rng.choice("abc-") for _ in range(5)), "Host", "Authorization", "Content-Type", "Origin", "Transfer-Encoding", "Expect"])
            headers.insert(rng.randint(0, len(headers)), (name, rng.choice(junk) + str(rng.random())))
        yield Case("header", raw_request("POST", "/measure", headers, MODEL))
    # Malformed header lines: no colon, continuation first, space before the colon.
    for line in ["NoColonHere", " continued: x", "Bad Name: x", "X-A : y", ":empty-name"]:
        head = raw_request("POST", "/measure", _good(token=False, length=len(MODEL)), b"")
        yield Case("header", head.replace(b"\r\n\r\n", f"\r\n{line}\r\n\r\n".encode("latin-1"), 1) + MODEL)


def huge_headers(rng):
    yield Case("huge", raw_request("GET", "/fingerprint", _good([("X-Big", "a" * 70000)])))
    yield Case("huge", raw_request("GET", "/fingerprint", _good([(f"X-{i}", "v") for i in range(150)])))
    yield Case("huge", raw_request("GET", "/fingerprint", _good([(f"X-{i}", "a" * 60000) for i in range(6)])))
    yield Case("huge", raw_request("GET", "/" + "a" * 70000, _good()))
    yield Case("huge", raw_request("GET", "/fingerprint", _good([("Authorization", "Bearer " + "A" * 60000)])))
    yield Case("huge", raw_request("POST", "/measure", _good([("X-Edgeprune-Profile", "A" * 60000)], length=len(MODEL)), MODEL))
    for _ in range(4):
        size = rng.randint(300_000, 50_000_000)
        yield Case("huge", raw_request("POST", "/measure", _good(length=size), b"\x08" * 4096))  # 413 from the headers


def content_length_lies(rng):
    for value in ["1_0", "+10", "0x10", "10 ", "1 0", "-1", "1e3", "", "9" * 40, "١٠"]:
        head = raw_request("POST", "/reference", _good(), b"")
        yield Case("length", head.replace(b"\r\n\r\n", b"\r\nContent-Length: " + value.encode() + b"\r\n\r\n", 1) + MODEL)
    for _ in range(8):  # shorter than sent: the rest would be the next request; the cut model may be valid
        cut = rng.randint(1, len(MODEL) - 1)
        yield Case("truncated", raw_request("POST", "/measure", _good(length=cut), MODEL + b"GET /fingerprint HTTP/1.1\r\n\r\n"), maybe_valid=True)
    yield Case("length", raw_request("POST", "/measure", _good([("Content-Length", "10")], length=len(MODEL), replace=False), MODEL))
    yield Case("length", raw_request("POST", "/measure", _good([("Transfer-Encoding", "chunked")]), b"5\r\nhello\r\n0\r\n\r\n"))
    yield Case("length", raw_request("POST", "/measure", _good(), MODEL))  # no Content-Length at all


def garbage_bodies(rng):
    starts = [b"", b"\x08", b"\x80\x04\x95", b"PK\x03\x04", b"{\"graph\": 1}", b"\x0a\xff\xff\xff\xff\x0f", b"ONNX"]
    for _ in range(20):
        body = rng.choice(starts) + rng.randbytes(rng.randint(0, 5000))
        yield Case("garbage", _post(rng.choice(["/measure", "/reference"]), body))


def broken_models(rng):
    for _ in range(12):
        cut = rng.randint(1, len(MODEL) - 1)
        yield Case("truncated", _post("/measure", MODEL[:cut]), maybe_valid=True)
    for _ in range(12):
        flipped = bytearray(MODEL)
        for _ in range(rng.randint(1, 8)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        yield Case("flipped", _post("/measure", bytes(flipped)), maybe_valid=True)


def external_data(rng, secret_path):
    locations = ["secret.bin", "./secret.bin", "../secret.bin", "../../secret.bin", str(secret_path), "/etc/passwd",
                 "secret.bin\x00.png", "%2e%2e/secret.bin", "C:\\secret.bin", "/proc/self/environ"]
    for _ in range(16):
        blob = leaking_model(rng.choice(locations), rng.choice(["initializer", "constant", "subgraph"]))
        yield Case("external", _post(rng.choice(["/measure", "/reference"]), blob, prof=_unoptimised()))


def _unoptimised():
    import dataclasses

    return dataclasses.replace(FAST, graph_optimization="disable")


def bogus_profiles(rng):
    base = FAST.to_dict()
    raw_values = ["", "!!!", "A", "====", base64.urlsafe_b64encode(b"[1, 2]").decode(), base64.urlsafe_b64encode(b"{not json").decode(),
                  base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode()[:60000], base64.urlsafe_b64encode(b"null").decode(),
                  base64.urlsafe_b64encode("{\"name\": \"\u2603\"}".encode()).decode(), "é" * 10]
    for value in raw_values:
        yield Case("profile", _post("/measure", MODEL, _good([("X-Edgeprune-Profile", value)], length=len(MODEL))))
    numeric = [float("nan"), float("inf"), float("-inf"), -1, 10**12, "7", [], True, 10**400]
    for _ in range(24):
        data = json.loads(json.dumps(base))
        section = data["measure"] if rng.random() < 0.5 else data
        key = rng.choice([k for k in section if k != "source"])
        if rng.random() < 0.15:
            del section[key]
            if key in ("agent", "tensorrt", "sessions", "anchor_tolerance"):  # optional: deleting it changes nothing
                section["unknown_key"] = 1
        elif isinstance(section[key], (int, float)) and not isinstance(section[key], bool):
            section[key] = rng.choice(numeric)
        else:
            section[key] = rng.choice([7, [], {"a": 1}, "x" * 3000])
        yield Case("profile", _post("/measure", MODEL, _good([("X-Edgeprune-Profile", profile_header(data))], length=len(MODEL))))


def bad_tokens(rng):
    values = [None, "Bearer", "Bearer ", "Bearer wrong", f"bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}",
              f"Bearer\t{TOKEN}", f"Token {TOKEN}", "Bearer " + "é" * 20, f"Bearer {TOKEN.upper()}"]
    for _ in range(16):
        value = rng.choice(values)
        headers = _good(token=False, length=len(MODEL)) + ([("Authorization", value)] if value is not None else [])
        path, method = rng.choice([("/measure", "POST"), ("/reference", "POST"), ("/fingerprint", "GET")])
        yield Case("token", raw_request(method, path, headers, MODEL if method == "POST" else b""))


def bad_versions(rng):
    for version in ["HTTP/2.0", "HTTP/1.1x", "HTTP/9.9", "FTP/1.0", "HTTP/1", "HTTP/1.1 extra", "", "HTTP/01.01.1", "http/1.1"]:
        yield Case("version", raw_request("GET", "/fingerprint", _good(), version=version))
    yield Case("version", b"GET /fingerprint\r\n\r\n")
    yield Case("version", b"\r\n\r\n")
    yield Case("version", rng.randbytes(300))


def slow_cases(rng):
    """Cases that stop sending: the agent must give up at its receive deadline."""
    full = _post("/measure", MODEL)
    for _ in range(12):
        yield Case("slow", full[: rng.randint(1, full.index(b"\r\n\r\n") + 2)])  # inside the line or headers
    for _ in range(12):
        yield Case("slow", full[: rng.randint(full.index(b"\r\n\r\n") + 4, len(full) - 1)])  # inside the body


def _check(case: Case, status: int | None, body: bytes, outcomes: collections.Counter) -> None:
    ok = status is None or 400 <= status < 500 or (case.maybe_valid and status == 200)
    assert ok, (case.kind, status, body[:300], case.data[:200])
    assert not any(bad in body for bad in FORBIDDEN), (case.kind, body[:300])
    if status is not None and status != 200:
        assert json.loads(body)["error"], (case.kind, status)
    outcomes[(case.kind, "closed" if status is None else status)] += 1


def _slow_exchange(port: int, case: Case, results: list) -> None:
    import socket

    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(case.data)  # and then nothing more
        status, body = read_reply(sock, start + 30)
    results.append((case, status, body, time.monotonic() - start))


def test_fuzzed_requests_never_get_a_5xx_and_the_agent_still_measures(tmp_path):
    home = tmp_path / "a" / "b"
    home.mkdir(parents=True)
    for folder in (home, tmp_path, tmp_path / "a"):
        (folder / "secret.bin").write_bytes(SECRET)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    rng = random.Random(0)
    generators = [bad_methods, bad_paths, bad_queries, bad_headers, huge_headers, content_length_lies, garbage_bodies,
                  broken_models, bad_tokens, bad_versions, bogus_profiles]
    cases = [case for make in generators for case in make(rng)] + list(external_data(rng, tmp_path / "secret.bin"))
    slow = list(slow_cases(rng))
    assert len(cases) + len(slow) >= 200
    agent = AgentProcess(str(token_file), MAX_UPLOAD_MB, cwd=str(home), request_timeout_s=REQUEST_TIMEOUT_S, measure_timeout_s=20)
    outcomes: collections.Counter = collections.Counter()
    started = time.monotonic()
    try:
        for case in cases:
            status, body = raw_exchange(agent.port, case.data, timeout=30)
            _check(case, status, body, outcomes)
        results: list = []
        threads = [threading.Thread(target=_slow_exchange, args=(agent.port, case, results)) for case in slow]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(40)
        assert len(results) == len(slow)
        for case, status, body, took in results:
            _check(case, status, body, outcomes)
            assert took < REQUEST_TIMEOUT_S + 10, (case.data[:100], took)  # cut off, not left hanging
        fuzz_s = time.monotonic() - started
        _measures_like_this_machine(agent.port)
        assert agent.proc.poll() is None
        log = agent.log_text()
        assert "internal error" not in log and "Traceback" not in log, log[-3000:]
        assert "TOPSECRET" not in log
    finally:
        agent.stop()
    print(f"\n{len(cases) + len(slow)} fuzz requests in {fuzz_s:.1f} s; outcomes:")
    for (kind, outcome), count in sorted(outcomes.items(), key=str):
        print(f"  {kind:10s} {outcome!s:7s} {count}")
    assert not any(outcome == 200 and kind not in ("truncated", "flipped") for kind, outcome in outcomes)


def _measures_like_this_machine(port: int) -> None:
    """After the fuzzing, the agent times a model as this process's own measuring child does:
    9 remote/local session pairs taken back to back (who goes first alternates), their median
    ratio within 5 % of 1 give or take three standard errors (see ``independent_timing.ratio_check``;
    a fixed band was 0.4-2.5x, blind to anything but a broken agent)."""
    import http.client

    prof = profile(warmup_runs=5, min_runs=20, max_seconds=0.2)
    model = conv_model(width=32)

    def remote() -> float:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/measure?shape=1x3x32x32", model, {"Authorization": f"Bearer {TOKEN}", "Content-Type": OCTET, "X-Edgeprune-Profile": profile_header(prof)})
        response = conn.getresponse()
        reply = json.loads(response.read())
        conn.close()
        assert response.status == 200, reply
        return reply["stats"]["median"]

    local_backend = IsolatedOrtBackend(prof)
    ratios = []
    try:
        local = lambda: local_backend.measure(model, SHAPE).median_ms  # noqa: E731
        local()  # start the worker before timing
        for i in range(9):
            first, second = (local, remote) if i % 2 == 0 else (remote, local)
            a, b = first(), second()
            ratios.append(a / b if first is remote else b / a)
    finally:
        local_backend.close()
    centre, bound = ratio_check(ratios, allowed=0.05)
    print(f"agent vs local: median ratio {centre:.3f}, bound {bound:.3f}x, of {[round(r, 3) for r in ratios]}")
    assert abs(math.log(centre)) <= math.log(bound)
