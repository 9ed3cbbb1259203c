"""Finding TensorRT's ``trtexec`` and reading its version.

Both the TensorRT backend (to run it) and the device fingerprint (to key cached numbers by the
TensorRT version) need these; they sit apart from the backend so the fingerprint does not depend
on it. Standard library only: the device agent imports this without torch or TensorRT's bindings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

TRTEXEC_ENV = "EDGEPRUNE_TRTEXEC"
# Where JetPack (and NVIDIA's containers) put trtexec; it is not on PATH by default.
TRTEXEC_DEFAULT = "/usr/src/tensorrt/bin/trtexec"


def find_trtexec() -> str | None:
    """``$EDGEPRUNE_TRTEXEC``, then PATH, then JetPack's /usr/src/tensorrt/bin/trtexec."""
    explicit = os.environ.get(TRTEXEC_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("trtexec")
    if found:
        return found
    return TRTEXEC_DEFAULT if os.access(TRTEXEC_DEFAULT, os.X_OK) else None


def parse_version(text: str) -> tuple[int, ...] | None:
    """TensorRT version from trtexec output: ``[TensorRT v8400]`` → (8, 4, 0), ``v100300`` →
    (10, 3, 0), or a ``TensorRT version: 8.6.3`` line."""
    m = re.search(r"TensorRT version:\s*(\d+)\.(\d+)\.(\d+)", text)
    if m:
        return tuple(int(g) for g in m.groups())
    m = re.search(r"\[TensorRT v(\d+)\]", text)
    if not m:
        return None
    code = int(m.group(1))
    if code >= 10000:  # 10.x and later: MMmmpp
        return code // 10000, (code // 100) % 100, code % 100
    return code // 1000, (code // 100) % 10, code % 100  # 7.x-9.x: Mmpp


def trtexec_version(trtexec: str) -> str | None:
    """trtexec prints its ``[TensorRT vNNNN]`` banner even for ``--help``."""
    try:
        done = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    version = parse_version(done.stdout + done.stderr)
    return ".".join(str(v) for v in version) if version else None
