"""Target profiles: one YAML file per device, loaded into frozen dataclasses.

A profile is the whole description of *how* a target is measured (runtime, threads, protocol), so
it is validated strictly: a typo in a key would otherwise silently fall back to a default and the
numbers in the report would belong to a different setup than the one the user asked for.
"""

import dataclasses
import importlib.resources
import math
import os
import types
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml

from edgeprune.errors import UserError
from edgeprune.profiling.credentials import CREDENTIAL_KEYS
from edgeprune.untrusted import show

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
# Numbers must be >= 0; below these minimums the measurement loop or the search is meaningless.
_MINIMUM = {"min_runs": 1, "sessions": 1, "opset": 1, "batch": 1, "channel_step": 1, "workspace_mb": 1}
# And at most these: a profile may arrive from anyone (a shared file, a request to the agent), and
# 100000 threads or a 1e9 s window would tie up the device instead of measuring on it.
_MAXIMUM = {
    "intra_op_threads": 1024, "inter_op_threads": 1024, "opset": 30, "batch": 1024, "channel_step": 1024,
    "warmup_runs": 100_000, "min_runs": 1_000_000, "max_runs": 1_000_000, "max_seconds": 300.0,
    "cv_threshold": 1000.0, "repeats_if_noisy": 20, "sessions": 20, "anchor_tolerance": 1000.0, "workspace_mb": 1 << 20, "warmup_ms": 600_000,
    "base_ms": 1e6, "ms_per_mmac": 1e6, "noise": 1.0, "device_seconds": 3600.0, "seed": 2**31,
}
_MAX_TEXT = {"description": 2000, "agent": 500}  # every other string: 200 characters
# What each backend runs: the host converts every candidate to this format once, and the backend
# (here or on the device's agent) receives those bytes. ONNX is also what every target delivers.
MODEL_FORMATS = {"onnxruntime": "onnx", "tensorrt": "onnx", "openvino": "onnx", "litert": "tflite", "executorch": "pte", "simulated": "onnx"}
_CHOICES = {
    "backend": ("onnxruntime", "tensorrt", "openvino", "litert", "executorch", "simulated"),
    "execution_mode": ("sequential", "parallel"),
    "graph_optimization": ("disable", "basic", "extended", "all"),
    "precision": ("fp32", "fp16", "int8"),
}
# TensorRT "providers": where the engine runs. Orin modules also carry DLA cores (trtexec
# --useDLACore); the GPU is the default and what the shipped profiles use.
_TENSORRT_DEVICES = ("GPU", "DLA0", "DLA1")


@dataclass(frozen=True)
class MeasureSpec:
    """How long to measure: enough runs for a stable median, bounded so a search stays fast."""

    warmup_runs: int
    min_runs: int
    max_runs: int
    max_seconds: float
    cv_threshold: float
    repeats_if_noisy: int
    # Fresh sessions whose runs an absolute measurement pools (a paired one uses one session per
    # model, interleaved): one session's median swings with the spell it lands in.
    sessions: int = 5
    # A cached baseline is re-timed before it sets a run's units and replaced when two fresh
    # measurements in a row differ from it by more than this fraction. Pooled measurements of
    # one model agreed within 13 % (max/min of 10, minutes apart) on the shared VM this was tuned
    # on; a spell that cached 2.07 ms for a model that timed 1.2 ms an hour later is what it
    # catches. Locked-clock devices can take less.
    anchor_tolerance: float = 0.15


@dataclass(frozen=True)
class TensorRTSpec:
    """Engine-build settings that change the engine (and so its speed), for ``backend: tensorrt``.

    How long to time is the shared :class:`MeasureSpec`: ``min_runs`` → trtexec ``--iterations``,
    ``max_seconds`` → ``--duration`` (trtexec, like the ORT loop, runs until both are reached).
    """

    workspace_mb: int
    warmup_ms: int
    # Build with --sparsity=enable: layers whose weights hold the 2:4 pattern may run on sparse
    # tensor cores (Ampere, Orin). `prune --sparsity 2:4` sets it for its run.
    sparsity: bool = False


@dataclass(frozen=True)
class SimulatedSpec:
    """``backend: simulated``: a stand-in device for tests and for planning a farm. Its latency
    is a fixed function of the network (MACs of every Conv/Gemm/MatMul with channel counts
    rounded up to ``channel_step``, the staircase real kernels show), times a per-architecture
    deviation of ``noise`` (log-normal, seeded by the graph's weight shapes, so one network
    always times the same wherever it runs); each measurement then occupies the device for
    ``device_seconds`` (a sleep), like a real one does."""

    base_ms: float = 0.05
    ms_per_mmac: float = 0.05
    noise: float = 0.03
    device_seconds: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Profile:
    """Everything that decides what a latency number means on one target."""

    name: str
    description: str
    backend: str
    provider: str
    precision: str
    intra_op_threads: int
    inter_op_threads: int
    execution_mode: str
    graph_optimization: str
    opset: int
    batch: int
    channel_step: int
    measure: MeasureSpec
    source: str
    # Optional keys (absent from a YAML file = these defaults).
    # ``agent: http://host:port``: measure on that device's `edgeprune agent` (remote backend).
    # Its token never comes from a profile (see edgeprune.profiling.credentials).
    agent: str | None = None
    tensorrt: TensorRTSpec | None = None
    simulated: SimulatedSpec | None = None

    @property
    def model_format(self) -> str:
        """The format the backend measures (:data:`MODEL_FORMATS`): ``onnx``, or the runtime's own."""
        return MODEL_FORMATS[self.backend]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Profile":
        """Inverse of :meth:`to_dict`: how a profile (with any in-memory overrides) reaches a
        measurement process exactly as the parent holds it. Trusted input only (our own
        processes); a profile from the network goes through :func:`profile_from_untrusted`."""
        trt, sim = data.get("tensorrt"), data.get("simulated")
        return cls(
            **{
                **data,
                "measure": MeasureSpec(**data["measure"]),
                "tensorrt": TensorRTSpec(**trt) if trt is not None else None,
                "simulated": SimulatedSpec(**sim) if sim is not None else None,
            }
        )


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped target by name (``x86-cpu``) or a user's profile by path (``my.yaml``)."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(
                f"profile file {path} not found; pass the path of a target .yaml file "
                "or a shipped target name (run `edgeprune targets`)"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"profile file {path} is not UTF-8 text; pass a target .yaml file") from None
        return _parse(text, str(path))
    shipped = _shipped_files()
    if name_or_path not in shipped:
        raise UserError(
            f"unknown target '{name_or_path}'; choose one of: {', '.join(sorted(shipped))} "
            "(run `edgeprune targets`)"
        )
    resource = shipped[name_or_path]
    return _parse(resource.read_text(encoding="utf-8"), str(resource))


def list_profiles() -> list[Profile]:
    """All shipped targets, sorted by name (what `edgeprune targets` prints)."""
    return sorted((load_profile(name) for name in _shipped_files()), key=lambda p: p.name)


def _shipped_files() -> dict[str, Any]:
    root = importlib.resources.files("edgeprune.profiles")
    return {f.name[: -len(".yaml")]: f for f in root.iterdir() if f.name.endswith(".yaml")}


def profile_from_untrusted(data: Any, source: str) -> Profile:
    """A profile dict (``Profile.to_dict()`` shape) from outside this process, e.g. the body of a
    request to the device agent, validated exactly like a YAML file. ``source`` keys are dropped:
    the sender's file path means nothing here."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "source"}
    return _validated(data, source)


def _parse(text: str, source: str) -> Profile:
    try:
        data = yaml.safe_load(text)
    except (ValueError, RecursionError):  # a number too long for int(), nesting too deep
        raise UserError(f"profile {source} holds a value YAML cannot read (a number with thousands of digits or nesting too deep); fix the file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"profile {source} is not valid YAML{where} ({getattr(e, 'problem', None) or e}); "
            "fix the file (compare with the shipped profiles/x86-cpu.yaml)"
        ) from None
    return _validated(data, source)


def _validated(data: Any, source: str) -> Profile:
    profile = _build(Profile, data, "", source, {"source": source})
    _check_backend(profile, source)
    if profile.measure.max_runs < profile.measure.min_runs:
        raise UserError(
            f"profile {source}: measure.max_runs ({profile.measure.max_runs}) is below "
            f"measure.min_runs ({profile.measure.min_runs}); raise max_runs or lower min_runs"
        )
    return profile


def _check_backend(profile: Profile, source: str) -> None:
    """Rules that tie keys together: what a runtime needs, and what it cannot use."""
    if profile.agent is not None:
        check_agent_url(profile.agent, source)
    if (profile.simulated is not None) != (profile.backend == "simulated"):
        raise UserError(
            f"profile {source}: a 'simulated' section goes with backend simulated and only with it "
            f"(this profile uses {profile.backend}); add or remove the section (see profiles/simulated.yaml)"
        )
    if profile.backend == "tensorrt":
        if profile.agent is None:
            raise UserError(
                f"profile {source}: backend tensorrt needs 'agent: http://HOST:PORT' (TensorRT "
                "runs on the device, behind `edgeprune agent`); add the agent's URL"
            )
        if profile.tensorrt is None:
            raise UserError(
                f"profile {source}: backend tensorrt needs a 'tensorrt' section with workspace_mb "
                "and warmup_ms; add it (compare with the shipped profiles/jetson-orin.yaml)"
            )
        if profile.provider not in _TENSORRT_DEVICES:
            raise UserError(
                f"profile {source}: 'provider' is {profile.provider!r}, but a tensorrt profile "
                f"runs on one of: {', '.join(_TENSORRT_DEVICES)}; fix the value"
            )
    else:
        if profile.tensorrt is not None:
            raise UserError(
                f"profile {source}: the 'tensorrt' section only applies to backend tensorrt, this "
                f"profile uses {profile.backend}; remove the section or change the backend"
            )
        if profile.precision != "fp32":
            raise UserError(
                f"profile {source}: backend {profile.backend} runs the exported FP32 graph, but "
                f"'precision' is {profile.precision!r}; set precision: fp32"
            )


def check_agent_url(url: str, source: str) -> None:
    try:  # "http://[::1" and "http://[zz]:8765" (a bracketed host that is no IPv6 address) raise
        parsed = urllib.parse.urlsplit(url)
        port, host = parsed.port, parsed.hostname
    except ValueError:
        parsed, port, host = None, None, None
    extra = parsed is None or parsed.query or parsed.fragment or "@" in parsed.netloc  # user:password@ or #... would hide the real host
    if extra or parsed.scheme not in ("http", "https") or not host or port is None or parsed.path not in ("", "/"):
        raise UserError(
            f"profile {source}: 'agent' is {url!r}; write it as http://HOST:PORT "
            "(e.g. http://127.0.0.1:8765), the address `edgeprune agent` listens on"
        )


def _build(cls: type, data: Any, prefix: str, source: str, given: dict[str, Any]) -> Any:
    """Build ``cls`` from a YAML mapping, naming the exact key that is unknown, missing or wrong."""
    where = f"'{prefix[:-1]}'" if prefix else "the top level"
    if not isinstance(data, dict):
        raise UserError(
            f"profile {source}: {where} must be a mapping of keys to values; "
            "fix the file (compare with the shipped profiles/x86-cpu.yaml)"
        )
    expected = [f for f in dataclasses.fields(cls) if f.name not in given]
    names = [f.name for f in expected]
    for key in data:
        if key in CREDENTIAL_KEYS:  # a profile naming one would send the token where its ``agent`` points
            raise UserError(
                f"profile {source}: '{key}' is not read from a profile, which anyone may have written and "
                "which would choose where your token goes; remove it and pin the token to the agent's URL "
                "in your agents.yaml or with $EDGEPRUNE_AGENT_URL + $EDGEPRUNE_AGENT_TOKEN (README, Security model)"
            )
        if key not in names:
            raise UserError(
                f"unknown key '{prefix}{key}' in profile {source}; remove it or fix the spelling "
                f"(valid keys in {where}: {', '.join(names)})"
            )
    values = dict(given)
    for f in expected:
        if f.name not in data:
            if f.default is not dataclasses.MISSING:
                continue  # an optional key: the dataclass default applies
            raise UserError(
                f"profile {source} lacks the key '{prefix}{f.name}'; add it "
                "(compare with the shipped profiles/x86-cpu.yaml)"
            )
        values[f.name] = _value(f.name, f.type, data[f.name], prefix, source)
    return cls(**values)


def _check_range(key: str, name: str, value: int | float, source: str) -> None:
    low, high = _MINIMUM.get(name, 0), _MAXIMUM.get(name)
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"profile {source}: '{key}' is {show(value)}, not a finite number; fix the value")
    if value < low:
        raise UserError(f"profile {source}: '{key}' is {show(value)}, below its minimum {low}; fix the value")
    if high is not None and value > high:
        raise UserError(f"profile {source}: '{key}' is {show(value)}, above its maximum {high}; fix the value")


def _value(name: str, kind: Any, value: Any, prefix: str, source: str) -> Any:
    key = prefix + name
    if get_origin(kind) in (Union, types.UnionType):  # ``X | None``: null means "not set"
        if value is None:
            return None
        (kind,) = [k for k in get_args(kind) if k is not type(None)]
    if kind in (MeasureSpec, TensorRTSpec, SimulatedSpec):
        return _build(kind, value, f"{key}.", source, {})
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"profile {source}: '{key}' must be {_TYPE_NAMES[bool]}, got {show(value)}; fix the value")
        return value
    # bool is an int subclass in Python; `threads: yes` is a typo, not the number 1.
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if not ok or isinstance(value, bool):
        raise UserError(
            f"profile {source}: '{key}' must be {_TYPE_NAMES[kind]}, got {show(value)}; fix the value"
        )
    if kind is str and len(value) > _MAX_TEXT.get(name, 200):
        raise UserError(f"profile {source}: '{key}' is longer than {_MAX_TEXT.get(name, 200)} characters; shorten it")
    if kind in (int, float):
        _check_range(key, name, value, source)
    if name in _CHOICES and value not in _CHOICES[name]:
        raise UserError(
            f"profile {source}: '{key}' is {value!r}; choose one of: {', '.join(_CHOICES[name])}"
        )
    return float(value) if kind is float else value
