"""``manifest.json``: what was handed over, byte for byte, and what was measured on it.

Firmware teams receive files, not runs: the manifest pins every file by sha256 and size, names the
library versions that produced and measured them, and carries the latency and accuracy numbers
next to the device fingerprint they are valid for, so a number can never travel without its
context. It is derived from report.json (one source of truth) plus the files themselves.
"""

from __future__ import annotations

import hashlib
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import edgeprune

MANIFEST_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_CARD = "MODEL_CARD.md"
REPORT = "report.json"


def _dist_version(*names: str) -> str | None:
    """Installed version of the first distribution found among ``names`` (None when absent).

    Read from package metadata, so optional heavy libraries (nncf, tensorrt) are never imported
    just to be named.
    """
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "edgeprune": edgeprune.__version__,
        "torch": _dist_version("torch"),
        "onnx": _dist_version("onnx"),
        "onnxruntime": _dist_version("onnxruntime", "onnxruntime-gpu"),
        "onnxslim": _dist_version("onnxslim"),
        "nncf": _dist_version("nncf"),
        "tensorrt": _dist_version("tensorrt", "tensorrt-cu12", "tensorrt-cu11"),
    }


def file_entry(name: str, role: str, data: bytes) -> dict:
    return {"file": name, "role": role, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def artifact_files(report: dict) -> dict[str, str]:
    """file name -> role for every file the output folder hands over (the manifest itself aside)."""
    files = {REPORT: "report"}
    for role, name in report["artifacts"].items():
        if isinstance(name, str) and name != MANIFEST:
            files[name] = role
    return files


def build_manifest(report: dict, folder: Path, pending: dict[str, bytes]) -> dict:
    """The manifest for ``folder`` once ``pending`` (file name -> bytes about to be written) is in it.

    Hashes are taken from the pending bytes where a file is being replaced, from disk otherwise,
    so the manifest describes the folder as it will be, not as it was.
    """
    export = report["export"]
    artifacts = []
    for name, role in artifact_files(report).items():
        data = pending[name] if name in pending else (folder / name).read_bytes()
        artifacts.append(file_entry(name, role, data))
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": library_versions(),
        "target": export["target"],
        "fingerprint": export["fingerprint"],
        "fingerprint_hash": export["fingerprint_hash"],
        "model": report.get("model"),
        "plan_sha256_16": export["plan_sha256_16"],
        "input": export["input"],
        "output": export["output"],
        "accuracy_torch_test": export["accuracy_torch_test"],
        "models": export["models"],
        "int8_gate": export["int8_gate"],
        # the target runtime's own files (model.tflite, model.pte, model.xml + model.bin): each file's sha256, the
        # runtime's version, parity with torch and the test score in that runtime, where the target has them
        "runtime_file": export.get("runtime_file"),
        "artifacts": artifacts,
    }
