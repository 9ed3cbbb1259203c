"""Device fingerprint: what a latency number is only valid for.

Cached latencies are keyed by a hash of this dict, so anything that changes the speed of the same
ONNX graph (the CPU, the runtime and its version, threads, precision, graph optimisation, on a
Jetson the power mode and whether the clocks are locked) must be in it; anything that does not
(hostname, time of day) must stay out, or the cache never hits.

Two halves: :func:`device_facts` reads the machine (files and commands, each read degrading to
``None`` when absent), :func:`compose_fingerprint` combines those facts with a profile. The device
agent serves its facts (``GET /fingerprint``) and the remote backend composes them with the same
function, so a model measured through the agent and one measured on the device itself land on
the same cache key. Nothing here imports torch (the agent must run without it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgeprune.profiling.trtexec import find_trtexec, trtexec_version
from edgeprune.profiling.targets import Profile

# Read locations, module-level so tests can point them at fake files.
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
CUDA_VERSION_FILES = (Path("/usr/local/cuda/version.json"), Path("/usr/local/cuda/version.txt"))
# Commands get a few seconds; a wedged tool must not hang a fingerprint.
_COMMAND_TIMEOUT_S = 10.0


def host_fingerprint(profile: Profile) -> dict[str, Any]:
    """Fingerprint of this host running ``profile``."""
    return compose_fingerprint(profile, device_facts(tensorrt=profile.backend == "tensorrt"))


def device_facts(tensorrt: bool = True) -> dict[str, Any]:
    """What this machine is, independent of any profile. ``tensorrt=False`` skips the GPU and
    TensorRT probes (they run commands) for CPU-only profiles."""
    facts: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.system(),
        "onnxruntime_version": _onnxruntime_version(),
        "openvino_version": openvino_version(),
        "litert_version": litert_version(),
        "executorch_version": package_version("executorch"),
    }
    jetson = jetson_facts()
    if jetson is not None:
        facts["jetson"] = jetson
    if tensorrt:
        facts["tensorrt_version"] = tensorrt_version()
        facts["cuda_version"] = cuda_version()
        facts["gpu"] = jetson["model"] if jetson and jetson.get("model") else _nvidia_smi_gpu()
    return facts


# Runtimes that time a model of their own format through XNNPACK -> (the device fact holding the
# runtime's version, the package that converts to that format on the host).
_XNNPACK_RUNTIMES = {"litert": ("litert_version", "litert-torch"), "executorch": ("executorch_version", "executorch")}


def compose_fingerprint(profile: Profile, device: dict[str, Any]) -> dict[str, Any]:
    """The cache key's source: device facts + the profile settings that change the speed.

    For an ONNX Runtime profile on a non-Jetson host this is exactly the dict edgeprune has
    always used, so existing cache files keep hitting.
    """
    fp: dict[str, Any] = {
        "profile": profile.name,
        "cpu": device.get("cpu"),
        "cpu_count": device.get("cpu_count"),
        "machine": device.get("machine"),
        "os": device.get("os"),
    }
    if device.get("jetson") is not None:
        fp["jetson"] = device["jetson"]  # power mode and clocks move CPU numbers too
    if profile.backend == "tensorrt":
        trt = profile.tensorrt
        fp.update(
            runtime="tensorrt",
            runtime_version=device.get("tensorrt_version"),
            cuda_version=device.get("cuda_version"),
            gpu=device.get("gpu"),
            provider=profile.provider,
            precision=profile.precision,
            workspace_mb=trt.workspace_mb if trt is not None else None,
        )
        if trt is not None and trt.sparsity:  # only when on: dense profiles keep their cache keys
            fp["sparsity"] = True
    elif profile.backend == "openvino":  # its version too: an upgrade is another device
        fp.update(
            runtime="openvino",
            runtime_version=device.get("openvino_version"),
            provider=profile.provider,
            inference_num_threads=profile.intra_op_threads,
            performance_hint="latency",
            precision=profile.precision,
        )
    elif profile.backend in _XNNPACK_RUNTIMES:
        fp.update(_xnnpack_runtime(profile, device))
    elif profile.backend == "simulated":
        # The model's settings are the "device": change one and cached numbers no longer apply.
        fp.update(
            runtime="simulated", provider=profile.provider, precision=profile.precision,
            simulated=dataclasses.asdict(profile.simulated), channel_step=profile.channel_step,
        )
    else:
        fp.update(
            runtime="onnxruntime",
            runtime_version=device.get("onnxruntime_version"),
            provider=profile.provider,
            intra_op_threads=profile.intra_op_threads,
            inter_op_threads=profile.inter_op_threads,
            execution_mode=profile.execution_mode,
            precision=profile.precision,
            graph_optimization=profile.graph_optimization,
        )
    # The exported graph (and so its speed) depends on the opset, not only on the widths.
    fp["opset"] = profile.opset
    return fp


def _xnnpack_runtime(profile: Profile, device: dict[str, Any]) -> dict[str, Any]:
    """LiteRT's or ExecuTorch's part of the fingerprint: the device's runtime version and the
    host's converter version, either of which changes the speed."""
    fact, converter = _XNNPACK_RUNTIMES[profile.backend]
    return {
        "runtime": profile.backend, "runtime_version": device.get(fact), "delegate": "xnnpack",
        "num_threads": profile.intra_op_threads, "precision": profile.precision, "converter_version": package_version(converter),
    }


def fingerprint_hash(fp: dict[str, Any]) -> str:
    """Short stable hash of a fingerprint: key order and whitespace do not matter."""
    canonical = json.dumps(fp, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# --- Jetson ---------------------------------------------------------------------------------------


def jetson_facts() -> dict[str, Any] | None:
    """L4T release, board, power mode and clock lock on a Jetson; ``None`` elsewhere.

    Every read degrades to ``None`` on its own: ``jetson_clocks --show`` needs root, nvpmodel
    may be missing from a container, and a fingerprint must still come out.
    """
    release = _read_text(TEGRA_RELEASE)
    if release is None:
        return None
    mode_name, mode_id = _power_mode()
    return {
        "l4t": _l4t_release(release),
        "model": _device_tree_model(),
        "power_mode": mode_name,
        "power_mode_id": mode_id,
        "clocks_locked": _clocks_locked(),
    }


def _l4t_release(text: str) -> str:
    """``# R36 (release), REVISION: 3.0, ...`` → ``36.3.0``; the first line as-is when unparsable."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
    return f"{m.group(1)}.{m.group(2)}" if m else first.lstrip("# ").strip()


def _device_tree_model() -> str | None:
    text = _read_text(DEVICE_TREE_MODEL)
    return text.replace("\x00", "").strip() or None if text is not None else None


def _power_mode() -> tuple[str | None, int | None]:
    """``nvpmodel -q`` prints ``NV Power Mode: MAXN`` and the mode number on the next line."""
    out = run_command(["nvpmodel", "-q"])
    if out is None:
        return None, None
    name = re.search(r"NV Power Mode:\s*(\S+)", out)
    lines = out.strip().splitlines()
    mode_id = int(lines[-1]) if lines and lines[-1].strip().isdigit() else None
    return (name.group(1) if name else None), mode_id


def _clocks_locked() -> bool | None:
    """True when ``jetson_clocks`` pinned every CPU and the GPU (MinFreq == MaxFreq), None when
    it cannot be told (tool missing, not root)."""
    out = run_command(["jetson_clocks", "--show"])
    if out is None:
        return None
    return parse_clocks_locked(out)


def parse_clocks_locked(text: str) -> bool | None:
    """Locked iff each ``cpuN:`` and ``GPU`` line has MinFreq equal to MaxFreq (what running
    ``jetson_clocks`` sets); None when the text has no such lines."""
    pins = []
    for line in text.splitlines():
        if not re.match(r"\s*(cpu\d+:|GPU\b)", line):
            continue
        lo, hi = re.search(r"MinFreq=(\d+)", line), re.search(r"MaxFreq=(\d+)", line)
        if lo and hi:
            pins.append(lo.group(1) == hi.group(1))
    return all(pins) if pins else None


# --- runtimes -------------------------------------------------------------------------------------


def tensorrt_version() -> str | None:
    """From the Python bindings when they import, else from trtexec's banner, else None."""
    try:
        import tensorrt  # noqa: PLC0415 - optional, heavy, only on TensorRT hosts

        return str(tensorrt.__version__)
    except Exception:  # ImportError, or a broken install that fails on import
        pass
    trtexec = find_trtexec()
    return trtexec_version(trtexec) if trtexec else None


def cuda_version() -> str | None:
    """CUDA toolkit version from /usr/local/cuda (JetPack installs it there), else ``nvcc``."""
    for path in CUDA_VERSION_FILES:
        text = _read_text(path)
        if text is None:
            continue
        if path.suffix == ".json":
            try:
                return str(json.loads(text)["cuda"]["version"])
            except (ValueError, KeyError, TypeError):
                continue
        m = re.search(r"CUDA Version\s+([\d.]+)", text)
        if m:
            return m.group(1)
    out = run_command(["nvcc", "--version"])
    m = re.search(r"release\s+[\d.]+,\s*V([\d.]+)", out or "")
    return m.group(1) if m else None


def _nvidia_smi_gpu() -> str | None:
    out = run_command(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    lines = [line.strip() for line in (out or "").splitlines() if line.strip()]
    return lines[0] if lines else None


def _onnxruntime_version() -> str | None:
    try:
        import onnxruntime  # noqa: PLC0415 - a TensorRT-only device may not have it

        return onnxruntime.__version__
    except ImportError:
        return None


def package_version(distribution: str) -> str | None:
    """An installed package's version, read without importing it (None: not installed): a
    runtime's import is heavy, and only the measuring child should pay it."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def openvino_version() -> str | None:
    """The installed openvino package's version (None: not installed)."""
    return package_version("openvino")


def litert_version() -> str | None:
    """The installed LiteRT runtime's version (the ai-edge-litert package; None: not installed)."""
    return package_version("ai-edge-litert")


# --- reads that may fail --------------------------------------------------------------------------


def run_command(argv: list[str]) -> str | None:
    """stdout of a command, or None when it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None and not os.path.isfile(argv[0]):
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpu_model() -> str:
    # /proc/cpuinfo names the exact part ("AMD EPYC 7B13"); platform.processor() is often just
    # "x86_64" on Linux, so it is only the fallback (macOS, Windows, ARM boards without the field).
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
