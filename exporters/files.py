"""Atomic file writes (torch-free: the CI gate uses them for its reports too)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_all(folder: Path, files: dict[str, bytes]) -> None:
    """Write every file to a temporary name in ``folder`` first, then rename each into place.

    A reader never sees a half-written file, and a failure while writing (disk full) leaves the
    folder as it was: the renames only start once every byte is on disk.
    """
    temps = {}
    try:
        for name, data in files.items():
            # A fresh, exclusively created name: a link planted under a guessable one in a shared
            # folder must not redirect the write.
            fd, tmp_name = tempfile.mkstemp(dir=folder / Path(name).parent, prefix=f".{Path(name).name}.", suffix=".tmp")
            tmp = Path(tmp_name)
            temps[name] = tmp
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; the delivered file is for others too
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    for name, tmp in temps.items():
        os.replace(tmp, folder / name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """One file, written under a temporary name beside it and renamed into place."""
    atomic_write_all(path.parent, {path.name: data})
