"""The device agent: ``edgeprune agent`` runs ON the target and times ONNX models for a search
that runs elsewhere (the ``remote`` backend, :mod:`edgeprune.profiling.remote`).

It must run on a Jetson with JetPack's TensorRT and no PyTorch, so this module and everything it
imports stay torch-free (tests run it with torch blocked from importing).

Wire format (HTTP/1.1, JSON replies, every error a 4xx/5xx with ``{"error": "reason"}``):

* ``GET /fingerprint`` → ``{"device": {...}, "edgeprune": VERSION}``: the device facts
  (:func:`edgeprune.profiling.fingerprint.device_facts`); the client composes them with its
  profile exactly as a local measurement would, so both share one cache key.
* ``POST /reference?shape=1x3x32x32`` with the ONNX model as the raw body
  (``Content-Type: application/octet-stream``) → ``{"reference": SHA256}``: stores a reference
  model (a few, least recently used dropped) for paired measurements.
* ``POST /measure?shape=1x3x32x32[&reference=SHA256]`` with the ONNX model as the raw body and
  the profile as ``X-Edgeprune-Profile: base64url(JSON of Profile.to_dict())`` → ``{"stats":
  {...}}``, plus ``"reference": {...}`` when paired with a stored reference (candidate and
  reference timed in alternating blocks). ``409`` means the reference is unknown (the agent
  restarted): upload it again. ``shape`` may be left out; it must match the model's fixed shape.

Safety: loopback only unless a bearer token is configured (``Authorization: Bearer TOKEN``,
compared in constant time, required for every request once a token file is given); the body size
is checked against the cap before a byte is read; the ONNX must parse and pass ``onnx.checker``;
the profile is validated like a YAML file; nothing is ever unpickled. One measurement at a time:
validation and timing hold one lock, so two clients never time each other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import socket
import sys
import threading
import urllib.parse
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgeprune import __version__
from edgeprune.errors import UserError

DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 256  # a ResNet-50 is ~100 MB in FP32; edge CNNs are far smaller
PROFILE_HEADER = "X-Edgeprune-Profile"
_MAX_REFERENCES = 4
# A client that stops sending mid-body must not hold a thread forever.
_SOCKET_TIMEOUT_S = 120


class RequestError(Exception):
    """A request the agent refuses: HTTP status + one-line reason for the JSON body."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    file = Path(path).expanduser()
    try:
        token = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"cannot read token file {file} ({exc.strerror}); pass a readable --token-file") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UserError(
            f"token file {file} must hold one token of at least 16 characters without spaces; "
            "create one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE"
        )
    return token


def validate_onnx(blob: bytes, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """Parse and check the model; return its (fixed) input shape. Raises RequestError(400)."""
    import onnx  # noqa: PLC0415 - keeps `edgeprune --help` fast

    if not blob:
        raise RequestError(400, "empty body; send the ONNX model as the raw request body")
    try:
        proto = onnx.load_from_string(blob)
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RequestError(400, f"body is not a valid ONNX model ({first})") from None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise RequestError(400, f"the model has {len(inputs)} inputs; the agent times single-input models")
    dims = inputs[0].type.tensor_type.shape.dim
    fixed = tuple(d.dim_value for d in dims)
    if not fixed or any(d <= 0 for d in fixed):
        raise RequestError(400, "the model's input shape is not fixed; export it with a fixed shape")
    if shape is not None and shape != fixed:
        raise RequestError(400, f"shape {'x'.join(map(str, shape))} does not match the model's input {'x'.join(map(str, fixed))}")
    return fixed


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise RequestError(400, f"shape {text[:40]!r} is not like 1x3x32x32") from None
    if not 1 <= len(shape) <= 8 or any(d <= 0 or d > 1 << 16 for d in shape):
        raise RequestError(400, f"shape {text[:40]!r} must be 1-8 positive dimensions")
    return shape


def parse_profile_header(value: str | None):
    from edgeprune.targets import profile_from_untrusted  # noqa: PLC0415

    if not value:
        raise RequestError(400, f"missing {PROFILE_HEADER} header (base64url JSON of the target profile)")
    try:
        data = json.loads(base64.urlsafe_b64decode(value.encode("ascii") + b"=" * (-len(value) % 4)))
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise RequestError(400, f"{PROFILE_HEADER} is not base64url-encoded JSON") from None
    try:
        return profile_from_untrusted(data, "the request's profile")
    except UserError as exc:
        raise RequestError(400, str(exc)) from None


class Agent:
    """State shared by the request threads: backends, references and the one measurement lock."""

    def __init__(self, token: str | None, max_upload_bytes: int):
        self.token = token
        self.max_upload_bytes = max_upload_bytes
        self.lock = threading.Lock()
        self._references: OrderedDict[str, tuple[bytes, tuple[int, ...]]] = OrderedDict()
        self._backends: dict[str, Any] = {}

    def backend(self, profile):
        """One backend per distinct profile (a TensorRT backend keeps its engine folder)."""
        key = json.dumps(profile.to_dict(), sort_keys=True)
        if key not in self._backends:
            if profile.backend == "tensorrt":
                from edgeprune.profiling.tensorrt import TensorRTBackend  # noqa: PLC0415

                self._backends[key] = TensorRTBackend(profile)
            else:
                from edgeprune.profiling.ort import OrtBackend  # noqa: PLC0415

                self._backends[key] = OrtBackend(profile)
        return self._backends[key]

    def fingerprint(self) -> dict[str, Any]:
        from edgeprune.profiling.fingerprint import device_facts  # noqa: PLC0415

        with self.lock:  # the probes run commands; keep them off a running measurement
            # The cap travels with the facts so a client can refuse an oversized upload itself: the
            # 413 is sent without reading the body, and a client still sending sees a broken pipe.
            return {"device": device_facts(tensorrt=True), "edgeprune": __version__, "max_upload_bytes": self.max_upload_bytes}

    def add_reference(self, blob: bytes, shape: tuple[int, ...] | None) -> dict[str, Any]:
        with self.lock:
            fixed = validate_onnx(blob, shape)
            digest = hashlib.sha256(blob).hexdigest()
            self._references[digest] = (blob, fixed)
            self._references.move_to_end(digest)
            while len(self._references) > _MAX_REFERENCES:
                self._references.popitem(last=False)
        return {"reference": digest}

    def measure(self, blob: bytes, shape: tuple[int, ...] | None, profile, reference: str | None) -> dict[str, Any]:
        with self.lock:
            fixed = validate_onnx(blob, shape)
            if reference is not None and reference not in self._references:
                raise RequestError(409, f"unknown reference {reference[:16]}; upload it to /reference again")
            try:
                backend = self.backend(profile)
            except UserError as exc:  # e.g. the provider or trtexec is missing on this device
                raise RequestError(422, str(exc)) from None
            try:
                if reference is None:
                    return {"stats": backend.measure(blob, fixed).to_dict()}
                ref_blob, ref_shape = self._references[reference]
                cand, ref = backend.measure_pair(blob, fixed, ref_blob, ref_shape)
                return {"stats": cand.to_dict(), "reference": ref.to_dict()}
            except ValueError as exc:  # the runtime cannot load or run this model
                raise RequestError(422, f"the model does not run on this device: {str(exc)[:300]}") from None


class Handler(BaseHTTPRequestHandler):
    server_version = f"edgeprune-agent/{__version__}"
    protocol_version = "HTTP/1.1"
    timeout = _SOCKET_TIMEOUT_S
    agent: Agent  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        sys.stderr.write(f"edgeprune agent: {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._handle("OPTIONS")

    def _handle(self, method: str) -> None:
        try:
            status, body = 200, self._route(method)
        except RequestError as exc:
            status, body = exc.status, {"error": exc.reason}
        except Exception as exc:  # a bug or a device failure: say so, keep serving
            status, body = 500, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        self._reply(status, body)

    def _route(self, method: str) -> dict[str, Any]:
        url = urllib.parse.urlsplit(self.path)
        routes = {"/fingerprint": "GET", "/measure": "POST", "/reference": "POST"}
        if url.path not in routes:
            raise RequestError(404, f"no endpoint {url.path[:60]!r}; use GET /fingerprint, POST /measure or POST /reference")
        self._authenticate()
        if method != routes[url.path]:
            raise RequestError(405, f"{url.path} takes {routes[url.path]}, not {method}")
        if url.path == "/fingerprint":
            return self.agent.fingerprint()
        try:
            query = urllib.parse.parse_qs(url.query, strict_parsing=bool(url.query), max_num_fields=8)
        except ValueError:
            raise RequestError(400, "malformed query string; send ?shape=1x3x32x32") from None
        unknown = set(query) - {"shape", "reference"}
        if unknown:
            raise RequestError(400, f"unknown query parameter {sorted(unknown)[0][:40]!r}; use shape and reference")
        shape = parse_shape(query["shape"][-1]) if "shape" in query else None
        if url.path == "/reference":
            return self.agent.add_reference(self._body(), shape)
        profile = parse_profile_header(self.headers.get(PROFILE_HEADER))
        reference = query["reference"][-1] if "reference" in query else None
        if reference is not None and (len(reference) != 64 or any(c not in "0123456789abcdef" for c in reference)):
            raise RequestError(400, "reference must be the 64-hex SHA256 that /reference returned")
        return self.agent.measure(self._body(), shape, profile, reference)

    def _authenticate(self) -> None:
        if self.agent.token is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.agent.token.encode()):
            raise RequestError(401, "missing or wrong bearer token; send 'Authorization: Bearer TOKEN' with the agent's token")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(411, "chunked uploads are not accepted; send Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise RequestError(411, "Content-Length is required")
        try:
            length = int(length_text)
        except ValueError:
            raise RequestError(400, "Content-Length is not a number") from None
        if length < 0:
            raise RequestError(400, "Content-Length is negative")
        if length > self.agent.max_upload_bytes:
            raise RequestError(
                413, f"model is {length} bytes, above the agent's cap of {self.agent.max_upload_bytes}; start the agent with a larger --max-upload-mb"
            )
        content_type = self.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()
        if content_type != "application/octet-stream":
            raise RequestError(415, f"Content-Type {content_type[:60]!r}; send the ONNX as application/octet-stream")
        body = self.rfile.read(length)
        if len(body) != length:
            raise RequestError(400, f"body ended after {len(body)} of {length} bytes")
        self._body_read = True
        return body

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        # A refused request's body may still be on the wire: close rather than read it.
        if status >= 400 and not getattr(self, "_body_read", False):
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="edgeprune-agent"')
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self._body_read = False


def make_server(host: str, port: int, token: str | None, max_upload_mb: float) -> ThreadingHTTPServer:
    """The HTTP server (not yet serving). Refuses a non-loopback address without a token."""
    if not is_loopback(host) and token is None:
        raise UserError(
            f"refusing to listen on {host} without a token: anyone on the network could run models "
            "on this device; pass --token-file FILE (or bind 127.0.0.1 and use an SSH tunnel)"
        )
    if max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    agent = Agent(token, int(max_upload_mb * 1024 * 1024))
    handler = type("AgentHandler", (Handler,), {"agent": agent})
    server_class = ThreadingHTTPServer
    if ":" in host:  # an IPv6 literal
        server_class = type("AgentServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    try:
        server = server_class((host, port), handler)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None
    server.daemon_threads = True
    return server


def serve(host: str, port: int, token_file: str | None, max_upload_mb: float) -> None:
    token = read_token(token_file) if token_file else None
    server = make_server(host, port, token, max_upload_mb)
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
