"""The device agent: ``edgeprune agent`` runs ON the target and times models (ONNX, .tflite, .pte) for a search
that runs elsewhere (the ``remote`` backend, :mod:`edgeprune.profiling.remote`).

It must run on a Jetson with JetPack's TensorRT and no PyTorch, so this module and everything it
imports stay torch-free (tests run it with torch blocked from importing). For the same reason the
server is the standard library's ``ThreadingHTTPServer`` rather than uvicorn or aiohttp: the agent
installs next to JetPack's Python with nothing beyond onnx and onnxruntime. What the stdlib server
lacks for facing a network (a total receive deadline, a connection cap, strict framing, bounded
headers, no 5xx for malformed input) is added here, and the attacks and the seeded fuzzer in
``tests/security/test_agent_*.py`` are what that choice rests on.

Wire format (HTTP/1.1, JSON replies, every error a 4xx/5xx with ``{"error": "reason"}``):

* ``GET /fingerprint`` → ``{"device": {...}, "edgeprune": VERSION, "max_upload_bytes": N,
  "measure_timeout_s": S}``: the device facts (:func:`edgeprune.profiling.fingerprint.device_facts`,
  probed once at start); the client composes them with its profile exactly as a local
  measurement would, so both share one cache key. The two limits let a client refuse an oversized
  upload itself and size its own deadline for a reply.
* ``POST /reference?shape=1x3x32x32[&format=tflite]`` with the ONNX model (or, with ``format``,
  the model in a runtime's own format: ``tflite``, ``pte``) as the raw body (``Content-Type:
  application/octet-stream``) → ``{"reference": SHA256}``: stores a reference model (a few, least
  recently used dropped) for paired measurements.
* ``POST /measure?shape=1x3x32x32[&reference=SHA256]`` with the model in the format the
  profile's backend measures (``Profile.model_format``: ONNX, .tflite for LiteRT, .pte for
  ExecuTorch) as the raw body and
  the profile as ``X-Edgeprune-Profile: base64url(JSON of Profile.to_dict())`` → ``{"stats":
  {...}}``, plus ``"reference": {...}`` when paired with a stored reference (candidate and
  reference timed in alternating blocks). ``shape`` may be left out; it must match the model's
  fixed shape.

Statuses: 400 malformed request, profile or model (not ONNX, external data, fails the checker,
not one fixed-shape input), a ``Content-Length`` that is not plain digits, a repeated framing or
auth header, a bad request line or HTTP version; 401 missing or wrong token; 403 a browser's
request (without a token: a missing or non-loopback ``Host``; always: a foreign ``Origin``,
``Sec-Fetch-Site: cross-site``); 404/405 unknown endpoint or method; 408 the body was not received
within the deadline (a request line or headers past it: the connection is closed); 409 unknown
reference (the agent restarted: upload it again); 411 no ``Content-Length`` or a
``Transfer-Encoding``; 413 body above ``--max-upload-mb`` or model input above the element cap;
414/431 request line or headers too long; 415 wrong ``Content-Type``; 422 the model does not run
here (runtime error, over the time or memory limit, provider missing) — the body names only a
category, the runtime's text goes to the agent's log; 500 a bug in the agent or a broken
installation, with a fixed body. Connections beyond the cap (``--max-connections``, and a
quarter of it from any one client address) are closed unanswered.

Safety: loopback only unless a bearer token is configured (``Authorization: Bearer TOKEN``,
compared in constant time, required for every request once a token file is given); the body size
is checked against the cap before a byte is read; the ONNX must pass
:func:`~edgeprune.profiling.onnx_check.check_model_bytes` before a runtime sees it, a .tflite
:func:`~edgeprune.profiling.tflite_check.check_tflite_bytes` (builtin operators only, no
external buffers), a .pte :func:`~edgeprune.profiling.pte_check.check_program_bytes` (XNNPACK
delegates only, no external data), a format without such a check is refused; the profile is
validated like a YAML file; nothing is ever unpickled. Every backend (ONNX Runtime, OpenVINO,
LiteRT, ExecuTorch, TensorRT's trtexec, the simulated device and its shape inference) times in a child process
(:class:`~edgeprune.profiling.isolated.IsolatedBackend`) with a deadline and a memory cap, so a
hostile model costs one child, not the agent. One measurement at a time: validation and timing
hold one lock, so two clients never time each other; the deadline bounds how long it is held.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import ipaddress
import json
import math
import re
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgeprune import __version__
from edgeprune.errors import UserError

DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 256  # a ResNet-50 is ~100 MB in FP32; edge CNNs are far smaller
MAX_UPLOAD_MB_LIMIT = 2048  # protobuf cannot parse a model above 2 GiB anyway
DEFAULT_MAX_MEMORY_MB = 4096  # the measuring child's cap; 0 turns it off
DEFAULT_MEASURE_TIMEOUT_S = 600.0  # the most one measurement may take, whatever the profile says
DEFAULT_REQUEST_TIMEOUT_S = 30.0  # to receive a request's line, headers and (see below) body
DEFAULT_MAX_CONNECTIONS = 32


def per_client_default(max_connections: int) -> int:
    """Connections one client address may hold at once: a quarter of the cap (8 of the default
    32), at least 1. A farm client holds one per agent; the rest stays free for others."""
    return max(1, max_connections // 4)
PROFILE_HEADER = "X-Edgeprune-Profile"
INTERNAL_ERROR = "internal error; see the agent's log"
_MAX_REFERENCES = 4
_MAX_BACKENDS = 4  # each ONNX Runtime backend holds a child process
# The body's share of the receive deadline: a 256 MB model at this rate gets 256 s more.
_MIN_UPLOAD_BYTES_PER_S = 1 << 20
_MAX_HEADER_BYTES = 256 * 1024  # request line + headers (the stdlib caps each line at 64 KiB)
_WRITE_TIMEOUT_S = 30.0
_LINGER_S, _LINGER_BYTES = 0.5, 1 << 20  # see AgentServer.shutdown_request
_SINGLE_HEADERS = ("Host", "Content-Length", "Content-Type", "Authorization", "Origin", PROFILE_HEADER)


class RequestError(Exception):
    """A request the agent refuses: HTTP status + one-line reason for the JSON body."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_authority(value: str) -> bool:
    """``Host`` header or URL authority naming this machine: localhost, 127.x.x.x or [::1],
    with or without a port."""
    try:
        parts = urllib.parse.urlsplit("//" + value.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    if parts.username is not None or parts.path or parts.query or parts.fragment or not parts.hostname:
        return False
    return is_loopback(parts.hostname)


def is_loopback_origin(value: str) -> bool:
    scheme, sep, authority = value.strip().partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and is_loopback_authority(authority)


def read_token(path: str) -> str:
    file = Path(path).expanduser()
    try:
        token = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"cannot read token file {file} ({exc.strerror}); pass a readable --token-file") from None
    except UnicodeDecodeError:
        raise UserError(f"token file {file} is not UTF-8 text; write the token into it as plain text (e.g. secrets.token_urlsafe(32))") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UserError(
            f"token file {file} must hold one token of at least 16 characters without spaces; "
            "create one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE"
        )
    return token


def _onnx_input(blob: bytes) -> tuple[int, ...]:
    """The checks of :func:`~edgeprune.profiling.onnx_check.check_model_bytes` (no external
    data, ``onnx.checker``, one input), and a fixed input shape."""
    from edgeprune.profiling.onnx_check import ModelRejected, check_model_bytes  # noqa: PLC0415

    fixed = check_model_bytes(blob, max_input_elements=sys.maxsize).dims  # the cap is a 413, later
    if not fixed or any(d is None for d in fixed):
        raise ModelRejected("the model's input shape is not fixed; export it with a fixed shape")
    return fixed


def _tflite_input(blob: bytes) -> tuple[int, ...]:
    """The checks of :func:`~edgeprune.profiling.tflite_check.check_tflite_bytes` (TFL3, builtin
    operators only, every weight inside the bytes, one fixed float32 input)."""
    from edgeprune.profiling.tflite_check import check_tflite_bytes  # noqa: PLC0415

    return check_tflite_bytes(blob, max_input_elements=sys.maxsize)


def _pte_input(blob: bytes) -> tuple[int, ...]:
    """The checks of :func:`~edgeprune.profiling.pte_check.check_program_bytes` (ET12, XNNPACK
    delegates only, nothing outside the bytes, one fixed float32 input)."""
    from edgeprune.profiling.pte_check import check_program_bytes  # noqa: PLC0415

    return check_program_bytes(blob, max_input_elements=sys.maxsize).dims


# Each format a backend measures (Profile.model_format) -> the check an upload in it must pass
# before any runtime sees it, returning the model's fixed input shape. A format without one is
# refused.
VALIDATORS = {"onnx": _onnx_input, "tflite": _tflite_input, "pte": _pte_input}


def validate_model(blob: bytes, shape: tuple[int, ...] | None, model_format: str = "onnx") -> tuple[int, ...]:
    """Check the upload as its format requires and return its fixed input shape, which the
    request's ``shape`` (if any) must match. Raises RequestError: 400, or 413 for an input above
    the element cap."""
    from edgeprune.profiling.onnx_check import ModelRejected, check_input_size  # noqa: PLC0415

    if model_format not in VALIDATORS:
        raise RequestError(400, f"this agent does not accept models in the format {model_format[:20]!r}; send one of: {', '.join(VALIDATORS)}")
    if not blob:
        raise RequestError(400, "empty body; send the model as the raw request body")
    try:
        fixed = VALIDATORS[model_format](blob)
    except ModelRejected as exc:
        raise RequestError(400, f"refused the model: {exc}") from None
    if shape is not None and shape != fixed:
        raise RequestError(400, f"shape {'x'.join(map(str, shape))} does not match the model's input {'x'.join(map(str, fixed))}")
    try:
        check_input_size(fixed)
    except ModelRejected as exc:
        raise RequestError(413, f"refused the model: {exc}") from None
    return fixed


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    if not all(re.fullmatch(r"[0-9]{1,6}", p) for p in parts):
        raise RequestError(400, f"shape {text[:40]!r} is not like 1x3x32x32")
    shape = tuple(int(d) for d in parts)
    if not 1 <= len(shape) <= 8 or any(d <= 0 or d > 1 << 16 for d in shape):
        raise RequestError(400, f"shape {text[:40]!r} must be 1-8 positive dimensions")
    return shape


def parse_profile_header(value: str | None):
    from edgeprune.profiling.targets import profile_from_untrusted  # noqa: PLC0415

    if not value:
        raise RequestError(400, f"missing {PROFILE_HEADER} header (base64url JSON of the target profile)")
    try:
        text = base64.urlsafe_b64decode(value.encode("ascii") + b"=" * (-len(value) % 4))
        data = json.loads(text)
    except (UnicodeError, binascii.Error, ValueError, RecursionError):
        raise RequestError(400, f"{PROFILE_HEADER} is not base64url-encoded JSON") from None
    try:
        return profile_from_untrusted(data, "the request's profile")
    except UserError as exc:
        raise RequestError(400, str(exc)) from None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError, OverflowError):
        raise RequestError(400, f"{PROFILE_HEADER} is not a valid profile; send Profile.to_dict()") from None


def parse_content_length(values: list[str] | None) -> int | None:
    """The one Content-Length, digits only: ``int()`` would also take ``+10``, ``1_0`` or `` 10 ``,
    which another parser on the path may read differently."""
    if not values:
        return None
    if len(values) > 1:
        raise RequestError(400, "more than one Content-Length header")
    if not re.fullmatch(r"[0-9]{1,15}", values[0]):
        raise RequestError(400, "Content-Length must be a decimal number of bytes")
    return int(values[0])


def log(message: str) -> None:
    sys.stderr.write(f"edgeprune agent: {_printable(message)}\n")
    sys.stderr.flush()


def _printable(text: str, limit: int = 4000) -> str:
    """No terminal escapes or forged log lines from a client's bytes."""
    return "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in text[:limit])


class Agent:
    """State shared by the request threads: backends, references and the one measurement lock."""

    def __init__(
        self,
        token: str | None,
        max_upload_bytes: int,
        max_memory_mb: int = DEFAULT_MAX_MEMORY_MB,
        measure_timeout_s: float = DEFAULT_MEASURE_TIMEOUT_S,
    ):
        from edgeprune.profiling.fingerprint import device_facts  # noqa: PLC0415

        self.token = token
        self.max_upload_bytes = max_upload_bytes
        self.max_memory_mb = max_memory_mb
        self.measure_timeout_s = measure_timeout_s
        self.lock = threading.Lock()
        # Probed once: the probes run commands, which must neither stall /fingerprint behind a
        # measurement nor run next to one.
        self.facts = device_facts(tensorrt=True)
        self._references: OrderedDict[str, tuple[bytes, tuple[int, ...], str]] = OrderedDict()  # blob, shape, format
        self._backends: OrderedDict[str, Any] = OrderedDict()
        self._backend_reference: dict[str, str] = {}  # backend key -> digest it holds

    def backend(self, profile):
        """One backend per distinct profile (a TensorRT backend keeps its engine folder), the
        least recently used closed beyond a few."""
        key = json.dumps(profile.to_dict(), sort_keys=True)
        if key not in self._backends:
            self._backends[key] = self._new_backend(profile)
            while len(self._backends) > _MAX_BACKENDS:
                old_key, old = self._backends.popitem(last=False)
                self._backend_reference.pop(old_key, None)
                old.close()
        self._backends.move_to_end(key)
        return key, self._backends[key]

    def _new_backend(self, profile):
        """Timed on this device (``local``: the profile's agent URL names this agent), in a child
        bounded by the agent's deadline and memory cap whatever the backend (ONNX Runtime,
        TensorRT, simulated): a model from the network never runs, nor has its shapes inferred,
        in the agent's own process."""
        from edgeprune.profiling.factory import make_backend  # noqa: PLC0415
        from edgeprune.profiling.isolated import measurement_timeout  # noqa: PLC0415

        timeout = measurement_timeout(profile, self.measure_timeout_s)
        return make_backend(profile, local=True, timeout_s=timeout, max_memory_mb=self.max_memory_mb or None)

    def fingerprint(self) -> dict[str, Any]:
        # The cap travels with the facts so a client can refuse an oversized upload itself: the
        # 413 is sent without reading the body, and a client still sending sees a broken pipe.
        return {"device": self.facts, "edgeprune": __version__, "max_upload_bytes": self.max_upload_bytes, "measure_timeout_s": self.measure_timeout_s}

    def add_reference(self, blob: bytes, shape: tuple[int, ...] | None, model_format: str = "onnx") -> dict[str, Any]:
        with self.lock:
            fixed = validate_model(blob, shape, model_format)
            digest = hashlib.sha256(blob).hexdigest()
            self._references[digest] = (blob, fixed, model_format)
            self._references.move_to_end(digest)
            while len(self._references) > _MAX_REFERENCES:
                self._references.popitem(last=False)
        return {"reference": digest}

    def measure(self, blob: bytes, shape: tuple[int, ...] | None, profile, reference: str | None) -> dict[str, Any]:
        with self.lock:
            fixed = validate_model(blob, shape, profile.model_format)
            if reference is not None and reference not in self._references:
                raise RequestError(409, f"unknown reference {reference[:16]}; upload it to /reference again")
            if reference is not None and self._references[reference][2] != profile.model_format:
                raise RequestError(400, f"the reference is a {self._references[reference][2]} model, the profile measures {profile.model_format}; upload the reference with format={profile.model_format}")
            try:
                key, backend = self.backend(profile)
            except UserError as exc:  # e.g. the provider or trtexec is missing on this device
                raise RequestError(422, str(exc)) from None
            try:
                return self._timed(key, backend, blob, fixed, reference)
            except Exception as exc:
                refusal = _measurement_refusal(exc, profile)
                if refusal is None:
                    raise
                raise refusal from None

    def _timed(self, key: str, backend, blob: bytes, fixed: tuple[int, ...], reference: str | None) -> dict[str, Any]:
        if reference is None:
            return {"stats": backend.measure(blob, fixed).to_dict()}
        if self._backend_reference.get(key) != reference:
            backend.set_reference(*self._references[reference][:2])
            self._backend_reference[key] = reference
        cand, ref = backend.measure_pair(blob, fixed)
        return {"stats": cand.to_dict(), "reference": ref.to_dict()}

    def close(self) -> None:
        """Stop the measuring children. A measurement still running keeps its child until it
        ends; the child also exits once this process is gone (its input closes)."""
        if not self.lock.acquire(timeout=5):
            return
        try:
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()
            self._backend_reference.clear()
        finally:
            self.lock.release()


def _measurement_refusal(exc: Exception, profile) -> RequestError | None:
    """What the client hears about a failed measurement: a 422 naming a category, never the
    runtime's text (it can quote the model's tensors, or files a runtime was tricked into reading);
    the text goes to the log. None for anything else: a bug, answered 500 with a fixed body."""
    from edgeprune.profiling.isolated import MEASURE_MARGIN_S, MeasurementFailed, MeasurementTimeout, WorkerDied  # noqa: PLC0415

    runtime = {"tensorrt": "TensorRT", "openvino": "OpenVINO", "litert": "LiteRT", "executorch": "ExecuTorch", "simulated": "the simulated device"}.get(profile.backend, "ONNX Runtime")
    if isinstance(exc, UserError):  # the device cannot time this profile (e.g. trtexec missing): our own one line
        log(f"measurement refused: {exc}")
        return RequestError(422, str(exc)[:500])
    if isinstance(exc, WorkerDied) and exc.starting:
        return None  # no model had been sent: the device's installation is at fault
    if isinstance(exc, (MeasurementTimeout, WorkerDied, ValueError)):
        log(f"measurement failed ({type(exc).__name__}): {exc}")
    if isinstance(exc, MeasurementTimeout) and exc.trtexec:
        return RequestError(
            422,
            f"trtexec did not finish building or timing the model within {exc.seconds:g} s and was stopped; "
            "time a smaller model, or ask the device's owner to check trtexec",
        )
    if isinstance(exc, MeasurementTimeout):
        limit = (
            "the agent's --measure-timeout-s, for TensorRT (the engine build included)" if profile.backend == "tensorrt" else
            f"{MEASURE_MARGIN_S:g} s + 2 x max(2, measure.sessions) x measure.max_seconds x (1 + repeats_if_noisy)"
            f"{' + 2 x simulated.device_seconds' if profile.backend == 'simulated' else ''}, at most the agent's --measure-timeout-s"
        )
        return RequestError(
            422,
            f"timing the model took longer than the agent's limit of {exc.seconds:g} s for this profile "
            f"({limit}); the measurement was stopped: lower measure.max_seconds or min_runs, or time a smaller model",
        )
    if isinstance(exc, WorkerDied):
        return RequestError(
            422,
            f"the measurement process stopped while running the model (exit {exc.returncode}), e.g. at the "
            "agent's --max-memory-mb; the agent's log has the details",
        )
    if isinstance(exc, MeasurementFailed):
        return RequestError(422, f"the model does not run on this device ({runtime}: {exc.kind}); the agent's log has the details")
    if isinstance(exc, ValueError):  # TensorRT: trtexec could not build or run it
        return RequestError(422, f"the model does not run on this device ({runtime}: {type(exc).__name__}); the agent's log has the details")
    return None


class _DeadlineReader(io.RawIOBase):
    """The connection's input, ending in TimeoutError at the handler's receive deadline (a client
    sending a byte at a time never trips a per-read timeout) or once the request is longer than
    its budget of bytes."""

    def __init__(self, sock: socket.socket, handler: Handler):
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        handler = self._handler
        left = handler.receive_deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not received within the agent's deadline")
        if handler.received > handler.receive_budget:
            raise TimeoutError("the request's headers are longer than the agent accepts")
        self._sock.settimeout(left)
        n = self._sock.recv_into(buffer)
        handler.received += n
        return n


class Handler(BaseHTTPRequestHandler):
    server_version = f"edgeprune-agent/{__version__}"
    protocol_version = "HTTP/1.1"
    server: AgentServer
    receive_deadline = 0.0
    receive_budget = _MAX_HEADER_BYTES
    received = 0
    _body_read = False

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        self.receive_deadline = time.monotonic() + self.server.request_timeout_s
        self.receive_budget, self.received, self._body_read = _MAX_HEADER_BYTES, 0, False
        super().handle_one_request()

    def __getattr__(self, name: str):
        # Every method reaches the router (which answers 404/405), so none becomes the stdlib's 501.
        if name.startswith("do_"):
            return lambda: self._handle(name[3:])
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log(f"{self.address_string()} {format % args}")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib parser's refusals (bad request line, HTTP/2.0, header too long) as JSON 4xx:
        a malformed request is the client's fault, never a 5xx."""
        if code >= 500:
            code = HTTPStatus.BAD_REQUEST
        if getattr(self, "request_version", "") == "HTTP/0.9":  # the parser's default before the version is read
            self.request_version = "HTTP/1.0"  # so that the refusal has a status line and headers
        self.close_connection = True
        self._reply(code, {"error": (message or HTTPStatus(code).phrase)[:200]})

    def _handle(self, method: str) -> None:
        try:
            status, body = 200, self._route(method)
        except RequestError as exc:
            status, body = exc.status, {"error": exc.reason}
        except Exception:  # a bug or a device failure: log it, say nothing of it, keep serving
            log(f"internal error on {method} {self.path[:200]}:\n{traceback.format_exc()}")
            status, body = 500, {"error": INTERNAL_ERROR}
        self._reply(status, body)

    def _route(self, method: str) -> dict[str, Any]:
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # so that the refusal has a status line
            raise RequestError(400, "HTTP/0.9 requests are not served; send HTTP/1.1")
        for name in _SINGLE_HEADERS:
            if len(self.headers.get_all(name, [])) > 1:
                raise RequestError(400, f"more than one {name} header")
        self._refuse_browsers()
        try:
            url = urllib.parse.urlsplit(self.path)
        except ValueError:  # e.g. an absolute URL with a broken [IPv6] host
            raise RequestError(400, "malformed request target; send a path such as /fingerprint") from None
        routes = {"/fingerprint": "GET", "/measure": "POST", "/reference": "POST"}
        if url.path not in routes:
            raise RequestError(404, f"no endpoint {url.path[:60]!r}; use GET /fingerprint, POST /measure or POST /reference")
        self._authenticate()
        if method != routes[url.path]:
            raise RequestError(405, f"{url.path} takes {routes[url.path]}, not {method[:20]}")
        if url.path == "/fingerprint":
            return self.server.agent.fingerprint()
        return self._post(url)

    def _post(self, url: urllib.parse.SplitResult) -> dict[str, Any]:
        try:
            # Blank values kept: ``?shape=`` is a malformed shape, not a missing one.
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True, strict_parsing=bool(url.query), max_num_fields=8)
        except ValueError:
            raise RequestError(400, "malformed query string; send ?shape=1x3x32x32") from None
        unknown = set(query) - {"shape", "reference", "format"}
        if unknown:
            raise RequestError(400, f"unknown query parameter {sorted(unknown)[0][:40]!r}; use shape, reference and format")
        shape = parse_shape(query["shape"][-1]) if "shape" in query else None
        if url.path == "/reference":  # the format of a measurement is its profile's
            return self.server.agent.add_reference(self._body(), shape, query["format"][-1] if "format" in query else "onnx")
        profile = parse_profile_header(self.headers.get(PROFILE_HEADER))
        reference = query["reference"][-1] if "reference" in query else None
        if reference is not None and not re.fullmatch(r"[0-9a-f]{64}", reference):
            raise RequestError(400, "reference must be the 64-hex SHA256 that /reference returned")
        return self.server.agent.measure(self._body(), shape, profile, reference)

    def _refuse_browsers(self) -> None:
        """A web page the user visits can make the browser send requests here. Without a token,
        a rebound DNS name (evil.example -> 127.0.0.1) arrives with its own name as ``Host``; any
        page's own request carries its ``Origin`` or ``Sec-Fetch-Site: cross-site``."""
        host = self.headers.get("Host")
        if self.server.agent.token is None and (host is None or not is_loopback_authority(host)):
            raise RequestError(403, "without a token the agent answers only requests for localhost, 127.0.0.1 or [::1] (Host header)")
        origin = self.headers.get("Origin")
        if origin is not None and not is_loopback_origin(origin):
            raise RequestError(403, "requests from web pages are refused (Origin header)")
        if self.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
            raise RequestError(403, "requests from web pages are refused (Sec-Fetch-Site: cross-site)")

    def _authenticate(self) -> None:
        token = self.server.agent.token
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise RequestError(401, "missing or wrong bearer token; send 'Authorization: Bearer TOKEN' with the agent's token")

    def _body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            raise RequestError(411, "chunked uploads are not accepted; send Content-Length")
        length = parse_content_length(self.headers.get_all("Content-Length"))
        if length is None:
            raise RequestError(411, "Content-Length is required")
        cap = self.server.agent.max_upload_bytes
        if length > cap:
            raise RequestError(413, f"model is {length} bytes, above the agent's cap of {cap}; start the agent with a larger --max-upload-mb")
        content_type = self.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()
        if content_type != "application/octet-stream":
            raise RequestError(415, f"Content-Type {content_type[:60]!r}; send the ONNX as application/octet-stream")
        self.receive_deadline += length / _MIN_UPLOAD_BYTES_PER_S
        self.receive_budget += length
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise RequestError(408, f"the body was not received within the agent's deadline ({self.server.request_timeout_s:g} s + 1 s per MiB)") from None
        except OSError:  # reset by the client: nobody is left to read the answer
            raise RequestError(400, "the connection failed while the body was being received") from None
        if len(body) != length:
            raise RequestError(400, f"body ended after {len(body)} of {length} bytes")
        self._body_read = True
        return body

    def _declares_body(self) -> bool:
        headers = getattr(self, "headers", None)
        return headers is not None and ("Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0")

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        # A body left unread (a refusal, a GET with a body) must not be parsed as the next request.
        if not self._body_read and (status >= 400 or self._declares_body()):
            self.close_connection = True
        try:
            self.connection.settimeout(_WRITE_TIMEOUT_S)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="edgeprune-agent"')
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client went away or stopped reading
            self.close_connection = True


def peer_key(host: str) -> str:
    """Whose connection this is, for the per-client cap: the IPv4 address, or the /64 of an IPv6
    one (one host is given a whole /64; an IPv4 peer mapped into IPv6 counts as its IPv4)."""
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class AgentServer(ThreadingHTTPServer):
    """At most ``max_connections`` connections, each with its own thread, and at most
    ``max_per_client`` of them from one client address (see :func:`peer_key`); one more is
    closed as soon as it is accepted, so idle sockets cannot make the agent start a thread apiece,
    nor one peer (a token is only checked once a request arrives) take every slot."""

    daemon_threads = True
    block_on_close = False  # closing the server must not wait for clients that never finish
    request_queue_size = 64

    def __init__(self, address, agent: Agent, request_timeout_s: float, max_connections: int, max_per_client: int | None = None):
        self.agent = agent
        self.request_timeout_s = request_timeout_s
        self.slots = threading.BoundedSemaphore(max_connections)
        self.max_per_client = max_per_client if max_per_client is not None else per_client_default(max_connections)
        self._per_client: dict[str, int] = {}
        self._per_client_lock = threading.Lock()
        super().__init__(address, Handler)

    def _take_client_slot(self, key: str) -> bool:
        with self._per_client_lock:
            held = self._per_client.get(key, 0)
            if held >= self.max_per_client:
                return False
            self._per_client[key] = held + 1
            return True

    def _release_client_slot(self, key: str) -> None:
        with self._per_client_lock:
            held = self._per_client.get(key, 0) - 1
            if held > 0:
                self._per_client[key] = held
            else:
                self._per_client.pop(key, None)

    def process_request(self, request, client_address) -> None:
        key = peer_key(str(client_address[0]))
        if not self._take_client_slot(key):
            super().shutdown_request(request)  # at once: this is the accepting thread
            return
        if not self.slots.acquire(blocking=False):
            self._release_client_slot(key)
            super().shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start
            self.slots.release()
            self._release_client_slot(key)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()
            self._release_client_slot(peer_key(str(client_address[0])))

    def shutdown_request(self, request) -> None:
        """End a handled connection: half-close, then read and drop what the client still sends,
        briefly. Closing a socket with unread input resets the connection, and the client would
        lose the refusal it was just sent (e.g. a 400 for a bad request line, headers unread)."""
        try:
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_S
            drained = 0
            while drained < _LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                chunk = request.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # reset, broken pipe: the client's doing
            log(f"{client_address[0]} connection ended: {type(exc).__name__}")
        else:
            log(f"{client_address[0]} internal error:\n{traceback.format_exc()}")

    def server_close(self) -> None:
        super().server_close()
        self.agent.close()


class _AgentServer6(AgentServer):
    address_family = socket.AF_INET6


def _check_number(flag: str, value: Any, low: float, high: float, whole: bool = False, zero_ok: bool = False) -> None:
    """A finite ``low < value <= high``, or for whole numbers ``low <= value <= high``; 0 as well
    where ``zero_ok``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and math.isfinite(value) and (not whole or float(value).is_integer())
    ok = ok and ((low <= value if whole else low < value) and value <= high or (zero_ok and value == 0))
    if not ok:
        span = f"a whole number from {int(low)} to {int(high)}" if whole else f"a number above {low:g} and at most {high:g}"
        off = " (0 turns it off)" if zero_ok else ""
        raise UserError(f"{flag} must be {span}{off}, got {value!r}; pass a value in that range")


def _check_options(host: str, port: Any, token: str | None, max_upload_mb: Any, options: dict[str, Any]) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"--port must be a whole number from 0 to 65535 (0 picks a free one), got {port!r}; pass a valid port")
    if not is_loopback(host) and token is None:
        raise UserError(
            f"refusing to listen on {host} without a token: anyone on the network could run models "
            "on this device; pass --token-file FILE (or bind 127.0.0.1 and use an SSH tunnel)"
        )
    _check_number("--max-upload-mb", max_upload_mb, 0, MAX_UPLOAD_MB_LIMIT)
    # Below ~512 MiB of address space onnxruntime cannot even start.
    _check_number("--max-memory-mb", options["max_memory_mb"], 512, 1 << 22, whole=True, zero_ok=True)
    _check_number("--measure-timeout-s", options["measure_timeout_s"], 0, 86400)
    _check_number("--request-timeout-s", options["request_timeout_s"], 0, 3600)
    _check_number("--max-connections", options["max_connections"], 1, 4096, whole=True)


def make_server(
    host: str,
    port: int,
    token: str | None,
    max_upload_mb: float,
    *,
    max_memory_mb: int = DEFAULT_MAX_MEMORY_MB,
    measure_timeout_s: float = DEFAULT_MEASURE_TIMEOUT_S,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_connections_per_client: int | None = None,
) -> AgentServer:
    """The HTTP server (not yet serving). Raises UserError for a bad option, and for a
    non-loopback address without a token. ``max_connections_per_client``: None for
    :func:`per_client_default`."""
    options = dict(max_memory_mb=max_memory_mb, measure_timeout_s=measure_timeout_s, request_timeout_s=request_timeout_s, max_connections=max_connections)
    _check_options(host, port, token, max_upload_mb, options)
    per_client = per_client_default(max_connections) if max_connections_per_client is None else max_connections_per_client
    _check_number("max_connections_per_client", per_client, 1, max_connections, whole=True)
    agent = Agent(token, int(max_upload_mb * 1024 * 1024), int(max_memory_mb), float(measure_timeout_s))
    server_class = _AgentServer6 if ":" in host else AgentServer  # an IPv6 literal
    try:
        return server_class((host, port), agent, float(request_timeout_s), int(max_connections), int(per_client))
    except OSError as exc:
        agent.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None


def serve(host: str, port: int, token_file: str | None, max_upload_mb: float, **options: Any) -> None:
    """``options``: the keyword options of :func:`make_server`."""
    token = read_token(token_file) if token_file else None
    server = make_server(host, port, token, max_upload_mb, **options)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    # Tests (and scripts using --port 0) read the real port from this line.
    print(f"edgeprune agent listening on http://{shown}:{bound_port} (token {'required' if token else 'off: loopback only'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
