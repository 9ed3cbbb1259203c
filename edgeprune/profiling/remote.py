"""Remote backend: measurements on a device running ``edgeprune agent`` (wire format in
:mod:`edgeprune.agent`).

A :class:`~edgeprune.profiling.backend.Backend` like the local ones, so the Profiler and its
SQLite cache do not know the difference; the fingerprint is the DEVICE's (its facts fetched
from the agent, composed with the profile by the same function a local measurement uses), so
cached numbers are keyed by the machine that produced them, never by the one that asked.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from edgeprune.errors import UserError
from edgeprune.profiling.backend import Backend
from edgeprune.profiling.cache import details_problem
from edgeprune.profiling.credentials import TOKEN_ENV, URL_ENV, config_path, token_for
from edgeprune.profiling.fingerprint import compose_fingerprint
from edgeprune.profiling.stats import LatencyStats, NodeTimes
from edgeprune.targets import Profile

# A reply is a few kB of JSON; anything larger is not an agent talking.
_MAX_REPLY_BYTES = 1 << 20
_FINGERPRINT_TIMEOUT_S = 60.0
# First measurement of a graph on a Jetson includes the TensorRT engine build (minutes).
_MEASURE_TIMEOUT_S = 3600.0


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
        self._reference: tuple[bytes, tuple[int, ...]] | None = None
        self._reference_id: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The device's fingerprint under this profile (fetched once per backend)."""
        if self._fingerprint is None:
            reply = self._call("GET", "/fingerprint", timeout=_FINGERPRINT_TIMEOUT_S)
            self._fingerprint = compose_fingerprint(self.profile, _device_facts(reply, self.url))
            cap = reply.get("max_upload_bytes")
            self._max_upload = int(cap) if isinstance(cap, int) and cap > 0 else None
        return dict(self._fingerprint)

    def _check_size(self, blob: bytes) -> None:
        """Refuse an upload above the agent's cap here, with the fix, instead of a broken pipe."""
        self.fingerprint()
        if self._max_upload is not None and len(blob) > self._max_upload:
            raise ValueError(
                f"agent {self.url}: model is {len(blob)} bytes, above the agent's cap of {self._max_upload}; "
                "restart the agent with a larger --max-upload-mb"
            )

    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> LatencyStats:
        self._check_size(onnx_bytes)
        reply = self._call("POST", f"/measure?shape={_shape(input_shape)}", onnx_bytes, profile=True)
        return LatencyStats.from_dict(reply["stats"])

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
                self._reference_id = self._call("POST", f"/reference?shape={_shape(shape)}", blob)["reference"]
                if self._reference_id != hashlib.sha256(blob).hexdigest():
                    raise RuntimeError(f"agent {self.url} stored the reference under an unexpected id")
            path = f"/measure?shape={_shape(input_shape)}&reference={self._reference_id}"
            try:
                reply = self._call("POST", path, onnx_bytes, profile=True)
            except _UnknownReference:
                self._reference_id = None  # the agent restarted or dropped it: upload again
                if attempt:
                    raise RuntimeError(f"agent {self.url} keeps forgetting the reference model") from None
                continue
            return LatencyStats.from_dict(reply["stats"]), LatencyStats.from_dict(reply["reference"])
        raise AssertionError("unreachable")

    def node_times(self, onnx_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        raise NotImplementedError(f"agent {self.url} serves no per-node times")

    def close(self) -> None:
        """Nothing is held open between requests."""

    def _call(self, method: str, path: str, body: bytes | None = None, profile: bool = False, timeout: float = _MEASURE_TIMEOUT_S) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        if profile:
            request.add_header("X-Edgeprune-Profile", self._profile_header)
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return _json_reply(response.read(_MAX_REPLY_BYTES + 1), self.url)
        except urllib.error.HTTPError as exc:
            reason = _reason(exc)
            if exc.code == 401:
                raise UserError(
                    f"agent {self.url} refused the token ({reason}); pin the agent's token to {self.url} in "
                    f"{config_path()} or with ${URL_ENV} + ${TOKEN_ENV}"
                ) from None
            if exc.code == 409:
                raise _UnknownReference(reason) from None
            if exc.code in (400, 413, 415, 422):
                raise ValueError(f"agent {self.url}: {reason}") from None
            if 300 <= exc.code < 400:
                raise UserError(f"agent {self.url} answered with a redirect (HTTP {exc.code}), which edgeprune never follows; put the agent's own address in the profile") from None
            # Not the user's input, but no verdict can be given: exit 2, never 1 ("over budget").
            # 502-504: the agent (or the proxy in front of it) is not serving, another may; a 500
            # is the agent failing on this request, which every agent would.
            failed = AgentUnavailable if exc.code in (502, 503, 504) else UserError
            raise failed(f"agent {self.url} failed (HTTP {exc.code}: {reason}); see the agent's log on the device") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, reset, cut short
            cause = getattr(exc, "reason", exc)
            raise AgentUnavailable(
                f"cannot reach the device agent at {self.url} ({cause}); start `edgeprune agent` on "
                f"the device (or its SSH tunnel) or fix 'agent' in target '{self.profile.name}'"
            ) from None


class AgentUnavailable(UserError):
    """The agent did not answer (refused, reset, cut short, timed out, 502-504): another device
    may still measure the same model (:mod:`edgeprune.profiling.farm` re-queues it there)."""


class _UnknownReference(Exception):
    pass


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(d)) for d in shape)


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"])
    except Exception:
        return exc.reason if isinstance(exc.reason, str) else f"HTTP {exc.code}"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect and send the Authorization header along to wherever it
    points; an agent never redirects, so a redirect is an answer, not a new address."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


# No proxy either: an agent is on loopback or the lab network, and a proxy from the environment
# (set for package downloads) would see the bearer token.
_OPENER = urllib.request.build_opener(_NoRedirects, urllib.request.ProxyHandler({}))


def _json_reply(data: bytes, url: str) -> dict[str, Any]:
    if len(data) > _MAX_REPLY_BYTES:
        raise UserError(f"agent {url} sent a reply above {_MAX_REPLY_BYTES} bytes; check that the profile's agent URL is an edgeprune agent")
    try:
        reply = json.loads(data)
    except (ValueError, RecursionError):
        reply = None
    if not isinstance(reply, dict):
        raise UserError(f"agent {url} did not answer with a JSON object; check that the profile's agent URL is an edgeprune agent")
    return reply


def _device_facts(reply: dict[str, Any], url: str) -> dict[str, Any]:
    """The agent's device facts, checked: they become part of every cache key of this device."""
    facts = reply.get("device")
    problem = details_problem(facts)
    if problem is not None:
        raise UserError(f"agent {url} sent malformed device facts (they {problem[:120]}); upgrade edgeprune on the device to this version")
    return facts
