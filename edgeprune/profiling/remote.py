"""Remote backend: measurements on a device running ``edgeprune agent`` (wire format in
:mod:`edgeprune.profiling.agent`).

A :class:`~edgeprune.profiling.backend.Backend` like the local ones, so the Profiler and its
SQLite cache do not know the difference; the fingerprint is the DEVICE's (its facts fetched
from the agent, composed with the profile by the same function a local measurement uses), so
cached numbers are keyed by the machine that produced them, never by the one that asked.

Nothing an agent sends is trusted: every reply is read up to a small bound (an error's body to
64 KiB), must be the JSON object its endpoint promises, and every latency in it a positive finite
number within bounds, or the agent is treated as unavailable (a farm takes it out of rotation).
Every request has a total deadline, not only a per-read timeout: a measurement's is sized from the
profile and the agent's own limit (:func:`reply_deadline`), so an agent that stops answering, or
answers a byte a minute, costs a run minutes, not hours. A model the agent refuses (400, 413,
415, 422: not ONNX, too large, does not run on the device, e.g. a TensorRT profile where trtexec
is missing) is :class:`ModelRefused`, a one-line UserError.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from typing import Any

from edgeprune.errors import UserError
from edgeprune.profiling.backend import Backend
from edgeprune.profiling.cache_export import details_problem
from edgeprune.profiling.credentials import TOKEN_ENV, URL_ENV, config_path, token_for
from edgeprune.profiling.fingerprint import compose_fingerprint
from edgeprune.profiling.isolated import START_TIMEOUT_S, measurement_timeout
from edgeprune.profiling.stats import LatencyStats, NodeTimes
from edgeprune.profiling.targets import Profile
from edgeprune.untrusted import is_int, is_number, show

# A reply is a few kB of JSON; anything larger is not an agent talking.
_MAX_REPLY_BYTES = 1 << 20
# An error's body is one line of JSON: read this much of it at most, whatever it declares.
_MAX_ERROR_BYTES = 64 << 10
_MAX_REASON_CHARS = 300
# /fingerprint and /reference answer without timing anything.
_FINGERPRINT_DEADLINE_S = 60.0
# Sending the request and reading the reply, on top of what the agent may spend on the model;
# uploads get 1 s per MiB on top, as the agent gives them.
_TRANSFER_S = 60.0
_BYTES_PER_S = 1 << 20
# What an agent that does not say its --measure-timeout-s (older versions) is assumed to allow,
# and the most any agent's claim is believed.
_DEFAULT_AGENT_LIMIT_S = 600.0
_MAX_AGENT_LIMIT_S = 86400.0
# Bounds on a latency an agent reports: the cache's bounds on an imported row.
_MAX_N = 10**9
_MAX_MS = 1e7
_MAX_CV = 1e3
_STAT_KEYS = ("n", "median", "p90", "p99", "mean", "std", "cv")


def reply_deadline(profile: Profile, agent_limit_s: float, upload_bytes: int) -> float:
    """Seconds a client waits for the reply to one measurement before it gives the agent up: the
    most the agent may spend on the model under ``profile`` (:func:`measurement_timeout` under
    the agent's ``--measure-timeout-s``, plus starting its measuring process), twice (one other
    client's measurement may hold the device first), plus the upload at 1 MiB/s and a transfer
    margin."""
    limit = measurement_timeout(profile, agent_limit_s) + START_TIMEOUT_S
    return 2 * limit + _TRANSFER_S + upload_bytes / _BYTES_PER_S


class RemoteBackend(Backend):
    """Times models on the device at ``profile.agent``. The agent serves no per-node times."""

    supports_node_times = False

    def __init__(self, profile: Profile):
        if not profile.agent:
            raise UserError(f"target '{profile.name}' has no 'agent' URL; add 'agent: http://HOST:PORT'")
        self.profile = profile
        self.url = profile.agent.rstrip("/")
        self._token = token_for(profile.agent)
        self._profile_header = base64.urlsafe_b64encode(json.dumps(profile.to_dict()).encode()).decode().rstrip("=")
        self._fingerprint: dict[str, Any] | None = None
        self._max_upload: int | None = None
        self._agent_limit_s = _DEFAULT_AGENT_LIMIT_S
        self._reference: tuple[bytes, tuple[int, ...]] | None = None
        self._reference_id: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The device's fingerprint under this profile (fetched once per backend)."""
        if self._fingerprint is None:
            reply = self._call("GET", "/fingerprint", deadline_s=_FINGERPRINT_DEADLINE_S)
            self._fingerprint = compose_fingerprint(self.profile, _device_facts(reply, self.url))
            cap = reply.get("max_upload_bytes")
            self._max_upload = cap if is_int(cap) and cap > 0 else None
            limit = reply.get("measure_timeout_s")
            if is_number(limit) and 0 < limit <= _MAX_AGENT_LIMIT_S:
                self._agent_limit_s = float(limit)
        return dict(self._fingerprint)

    def deadline(self, upload_bytes: int) -> float:
        """Seconds this backend waits for one measurement's reply (see :func:`reply_deadline`)."""
        return reply_deadline(self.profile, self._agent_limit_s, upload_bytes)

    def _check_size(self, blob: bytes) -> None:
        """Refuse an upload above the agent's cap here, with the fix, instead of a broken pipe."""
        self.fingerprint()
        if self._max_upload is not None and len(blob) > self._max_upload:
            raise ModelRefused(
                f"agent {self.url}: model is {len(blob)} bytes, above the agent's cap of {self._max_upload}; "
                "restart the agent with a larger --max-upload-mb"
            )

    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> LatencyStats:
        self._check_size(onnx_bytes)
        reply = self._call("POST", f"/measure?shape={_shape(input_shape)}", onnx_bytes, profile=True, deadline_s=self.deadline(len(onnx_bytes)))
        return _stats(reply, "stats", self.url)

    def set_reference(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> None:
        """Kept here and uploaded on the first paired measurement (and again if the agent
        restarted and forgot it)."""
        self._reference = (onnx_bytes, tuple(input_shape))
        self._reference_id = None

    def measure_pair(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> tuple[LatencyStats, LatencyStats]:
        if self._reference is None:
            raise ValueError("set_reference() must be called before measure_pair()")
        self._check_size(self._reference[0])
        self._check_size(onnx_bytes)
        for attempt in range(2):
            if self._reference_id is None:
                blob, shape = self._reference
                # Checked like a measurement (validated under the agent's lock), without the timing.
                fmt = "" if self.profile.model_format == "onnx" else f"&format={self.profile.model_format}"  # an older agent knows only ONNX
                answer = self._call("POST", f"/reference?shape={_shape(shape)}{fmt}", blob, deadline_s=self.deadline(len(blob)))
                if answer.get("reference") != hashlib.sha256(blob).hexdigest():
                    raise InvalidReply(f"agent {self.url} stored the reference under an unexpected id; check that the profile's agent URL is an edgeprune agent")
                self._reference_id = answer["reference"]
            path = f"/measure?shape={_shape(input_shape)}&reference={self._reference_id}"
            try:
                reply = self._call("POST", path, onnx_bytes, profile=True, deadline_s=self.deadline(len(onnx_bytes)))
            except _UnknownReference:
                self._reference_id = None  # the agent restarted or dropped it: upload again
                if attempt:
                    raise InvalidReply(f"agent {self.url} keeps forgetting the reference model; restart it") from None
                continue
            return _stats(reply, "stats", self.url), _stats(reply, "reference", self.url)
        raise AssertionError("unreachable")

    def node_times(self, onnx_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        raise NotImplementedError(f"agent {self.url} serves no per-node times")

    def close(self) -> None:
        """Nothing is held open between requests."""

    def _call(self, method: str, path: str, body: bytes | None = None, profile: bool = False, deadline_s: float = _FINGERPRINT_DEADLINE_S) -> dict[str, Any]:
        """One request, answered within ``deadline_s`` in all (connecting, sending, waiting and
        reading), or AgentUnavailable. No redirect is followed and no proxy from the environment
        is used: an agent is on loopback or the lab network, and either would send the bearer
        token elsewhere."""
        headers = {}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        if profile:
            headers["X-Edgeprune-Profile"] = self._profile_header
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            status, data = _exchange(self.url, method, path, body, headers, deadline_s)
        except _DeadlinePassed:
            raise AgentUnavailable(
                f"agent {self.url} did not answer within {deadline_s:.0f} s and was given up; check the device "
                "(`edgeprune agent` may be hung) or its network"
            ) from None
        except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, reset, cut short, a bad status line
            cause = getattr(exc, "strerror", None) or type(exc).__name__
            raise AgentUnavailable(
                f"cannot reach the device agent at {self.url} ({cause}); start `edgeprune agent` on "
                f"the device (or its SSH tunnel) or fix 'agent' in target '{self.profile.name}'"
            ) from None
        if status == 200:
            return _json_reply(data, self.url)
        reason = _reason(data, status)
        if status == 401:
            raise UserError(
                f"agent {self.url} refused the token ({reason}); pin the agent's token to {self.url} in "
                f"{config_path()} or with ${URL_ENV} + ${TOKEN_ENV}"
            )
        if status == 409:
            raise _UnknownReference(reason)
        if status in (400, 413, 415, 422):
            raise ModelRefused(f"agent {self.url} refused the model: {reason}")
        if 300 <= status < 400:
            raise UserError(f"agent {self.url} answered with a redirect (HTTP {status}), which edgeprune never follows; put the agent's own address in the profile")
        # Not the user's input, but no verdict can be given: exit 2, never 1 ("over budget").
        # 502-504: the agent (or the proxy in front of it) is not serving, another may; a 500
        # is the agent failing on this request, which every agent would.
        failed = AgentUnavailable if status in (502, 503, 504) else UserError
        raise failed(f"agent {self.url} failed (HTTP {status}: {reason}); see the agent's log on the device")


class AgentUnavailable(UserError):
    """The agent did not answer (refused, reset, cut short, timed out, 502-504) or answered
    nonsense: another device may still measure the same model (:mod:`edgeprune.profiling.farm`
    re-queues it there)."""


class InvalidReply(AgentUnavailable):
    """The agent's reply is not what its endpoint promises (not JSON, a latency that is NaN, 0,
    infinite or missing, a wrong reference id): this agent is not to be believed, another may."""


class ModelRefused(UserError, ValueError):
    """The agent refused the model (HTTP 400, 413, 415 or 422): every agent of the device would.
    A UserError (one line, exit 2) and, as before, a ValueError ("this model does not run")."""


class _UnknownReference(Exception):
    pass


class _DeadlinePassed(Exception):
    pass


def _exchange(url: str, method: str, path: str, body: bytes | None, headers: dict[str, str], deadline_s: float) -> tuple[int, bytes]:
    """``(status, body)`` of one HTTP exchange, the body read up to its bound (a 200's to
    ``_MAX_REPLY_BYTES + 1``, an error's to ``_MAX_ERROR_BYTES``), all of it within
    ``deadline_s``: past it a watchdog shuts the socket, which ends any blocked send or receive,
    and _DeadlinePassed is raised."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    end = time.monotonic() + deadline_s
    conn = connection(parts.hostname, parts.port, timeout=deadline_s)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    watchdog = None
    try:
        try:
            conn.connect()  # bounded by the timeout; the watchdog needs the socket
            watchdog = threading.Timer(max(0.0, end - time.monotonic()), expire)
            watchdog.daemon = True
            watchdog.start()
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read((_MAX_REPLY_BYTES + 1) if response.status == 200 else _MAX_ERROR_BYTES)
        except (OSError, http.client.HTTPException, ValueError):
            if expired.is_set() or time.monotonic() >= end:
                raise _DeadlinePassed from None
            raise
        if expired.is_set():  # the reply may have been cut short by the shutdown
            raise _DeadlinePassed
        return response.status, data
    finally:
        if watchdog is not None:
            watchdog.cancel()
        conn.close()


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(d)) for d in shape)


def _reason(data: bytes, status: int) -> str:
    """The agent's one-line reason from an error body, made safe to print: printable, one line,
    bounded; else the status."""
    try:
        reason = json.loads(data)["error"]
    except Exception:
        reason = None
    if not isinstance(reason, str) or not reason.strip():
        return f"HTTP {status}"
    reason = " ".join(reason.split())
    reason = "".join(c if c.isprintable() else "?" for c in reason)
    return reason if len(reason) <= _MAX_REASON_CHARS else reason[: _MAX_REASON_CHARS - 3] + "..."


def _json_reply(data: bytes, url: str) -> dict[str, Any]:
    if len(data) > _MAX_REPLY_BYTES:
        raise InvalidReply(f"agent {url} sent a reply above {_MAX_REPLY_BYTES} bytes; check that the profile's agent URL is an edgeprune agent")
    try:
        reply = json.loads(data)  # NaN and Infinity pass here and are named by the checks below
    except (ValueError, RecursionError):
        reply = None
    if not isinstance(reply, dict):
        raise InvalidReply(f"agent {url} did not answer with a JSON object; check that the profile's agent URL is an edgeprune agent")
    return reply


def _stats_problem(d: Any) -> str | None:
    """Why ``d`` is not the latency statistics of a real measurement, or None."""
    if not isinstance(d, dict):
        return "is not an object"
    missing = [k for k in _STAT_KEYS if k not in d]
    if missing:
        return f"lacks '{missing[0]}'"
    if not (is_int(d["n"]) and 1 <= d["n"] <= _MAX_N):
        return f"has 'n' {show(d['n'])}, not a whole number from 1 to {_MAX_N:.0e}"
    for key in ("median", "p90", "p99", "mean"):
        if not (is_number(d[key]) and 0 < d[key] <= _MAX_MS):
            return f"has '{key}' {show(d[key])}, not a positive finite number of at most {_MAX_MS:.0e} ms"
    for key, top in (("std", _MAX_MS), ("cv", _MAX_CV)):
        if not (is_number(d[key]) and 0 <= d[key] <= top):
            return f"has '{key}' {show(d[key])}, not a finite number from 0 to {top:g}"
    if not isinstance(d.get("noisy", False), bool):
        return f"has 'noisy' {show(d['noisy'])}, not true or false"
    trimmed = d.get("trimmed")
    if trimmed is not None and not (is_number(trimmed) and 0 < trimmed <= _MAX_MS):
        return f"has 'trimmed' {show(trimmed)}, not a positive finite number of at most {_MAX_MS:.0e} ms"
    return None


def _stats(reply: dict[str, Any], key: str, url: str) -> LatencyStats:
    """``reply[key]`` as LatencyStats, checked: a NaN, zero or infinite latency would otherwise
    reach the verdict, the cache and report.json."""
    problem = "is missing" if key not in reply else _stats_problem(reply[key])
    if problem is not None:
        raise InvalidReply(f"agent {url} sent latency statistics ('{key}') that {problem}; upgrade edgeprune on the device to this version, or check that the URL is an edgeprune agent")
    return LatencyStats.from_dict(reply[key])


def _device_facts(reply: dict[str, Any], url: str) -> dict[str, Any]:
    """The agent's device facts, checked: they become part of every cache key of this device."""
    facts = reply.get("device")
    problem = details_problem(facts)
    if problem is not None:
        raise InvalidReply(f"agent {url} sent malformed device facts (they {problem[:120]}); upgrade edgeprune on the device to this version")
    return facts
