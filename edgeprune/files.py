"""How edgeprune puts a file or a folder into place: a reader never sees half of one, and a
failure leaves what was there. A file that is only ever read after a marker written after it
(a prune's files inside its staged output folder, a finished round's state_dict.pt before its
done.json) needs no rename of its own. Also the marker that tells an output folder edgeprune
wrote from any other folder, which decides whether a folder may be replaced whole.

Every rename in the package happens here (tests/test_architecture.py checks it). Torch-free: the
device side (profiling) and the CI gate use it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgeprune.errors import UserError

# In every output folder edgeprune writes: the files it wrote there (paths relative to the folder).
# A folder is replaced (prune --out) only when this lists everything in it.
OUTPUT_MARKER = ".edgeprune-output"
_MAX_MARKER_BYTES = 1 << 20
# What file managers leave in any folder they show; never anyone's work.
_OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


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
    if (folder / OUTPUT_MARKER).is_file():  # an edgeprune output folder: what export adds is its own too
        record_written(folder, list(files))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """One file, written under a temporary name beside it and renamed into place."""
    atomic_write_all(path.parent, {path.name: data})


def move_into_place(src: Path, dst: Path) -> None:
    """A complete file another program wrote (trtexec's engine) renamed over ``dst`` in one step."""
    os.replace(src, dst)


@contextlib.contextmanager
def staged_folder(out: Path, output: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``out`` that replaces ``out`` whole only when the block succeeds
    (a failure deletes it and leaves ``out`` as it was).

    With ``output`` the folder is an edgeprune output (``prune --out``): it gets its marker, and it
    replaces ``out`` only while ``out`` holds nothing edgeprune did not write (:func:`foreign_entry`
    again: files may have been added while the block ran). Otherwise, when ``out`` lies in an
    output folder, that folder's marker lists it (``OUT/ensemble/``).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output:
        mark_output(tmp)  # every file in it is edgeprune's: a later run may replace the folder
        foreign = foreign_entry(out)
        if foreign:
            raise UserError(f"output folder {out} was not replaced: {foreign}; the finished run is in {tmp}, move it where you want it")
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if not output:
        record_written(out.parent, [out.name])


def _listed(folder: Path) -> set[str] | None:
    """The files the marker of ``folder`` lists, or None when it has no readable marker."""
    marker = folder / OUTPUT_MARKER
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > _MAX_MARKER_BYTES:
            return None
        data = json.loads(marker.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def _write_marker(folder: Path, files: set[str]) -> None:
    data = json.dumps({"written_by": "edgeprune", "files": sorted(files)}, indent=1).encode()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{OUTPUT_MARKER}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # readable like the files it lists
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, folder / OUTPUT_MARKER)


def _files_under(folder: Path, path: Path) -> list[str]:
    if path.is_dir() and not path.is_symlink():
        return [p.relative_to(folder).as_posix() for p in sorted(path.rglob("*")) if not p.is_dir() or p.is_symlink()]
    return [path.relative_to(folder).as_posix()]


def mark_output(folder: Path) -> None:
    """Write the marker of a finished output folder: every file in it is edgeprune's."""
    _write_marker(folder, set(_files_under(folder, folder)) - {OUTPUT_MARKER})


def record_written(folder: Path, paths: Iterable[str | Path]) -> None:
    """Add files edgeprune just wrote into an output folder (``paths`` relative to it; a folder
    counts with everything in it) to its marker; a folder without a marker is left without one."""
    listed = _listed(folder)
    if listed is None:
        return
    for path in paths:
        listed.update(_files_under(folder, folder / path))
    _write_marker(folder, listed - {OUTPUT_MARKER})


def foreign_entry(folder: Path) -> str | None:
    """Why ``folder`` may not be replaced as a whole, or None: it is missing or empty, or its marker
    lists every file in it. Otherwise the first entry edgeprune did not write (or that there is no
    marker): a folder that merely holds a report.json is someone's work."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    listed = _listed(folder)
    if listed is None:
        return f"it is not an edgeprune output (no {OUTPUT_MARKER} listing the files edgeprune wrote)"
    parents = {p.rsplit("/", i)[0] for p in listed for i in range(1, p.count("/") + 1)}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if name == OUTPUT_MARKER or path.name in _OS_LITTER:
            continue
        ours = name in parents if path.is_dir() and not path.is_symlink() else name in listed
        if not ours:
            return f"it holds {name[:200]}, which edgeprune did not write"
    return None
