"""A torch-free child process that times ONNX models: the local stand-in for the target.

Measured here: importing torch into the timing process makes onnxruntime's CPU kernels run
~1.4x slower and bimodal across sessions (0.145 vs 0.104 ms for the same mobilenet_v2 variant),
while a process holding only onnxruntime gives ±3 %. A deployed model does not share its process
with torch either, so every local measurement runs in this process. The parent blocks while the
child times, so no evaluation of ours competes with the timed runs for the cores.

Wire format on stdin/stdout (both directions): 8-byte big-endian length + JSON header, and for
requests 8-byte length + ONNX bytes. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import struct
import sys
from typing import BinaryIO

_LEN = struct.Struct(">Q")


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(_LEN.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: BinaryIO) -> bytes | None:
    """One frame, or None at a clean end of stream."""
    head = stream.read(_LEN.size)
    if not head:
        return None
    if len(head) != _LEN.size:
        raise EOFError("truncated frame header")
    (size,) = _LEN.unpack(head)
    body = stream.read(size)
    if len(body) != size:
        raise EOFError("truncated frame body")
    return body


def serve(profile_source: str, stdin: BinaryIO, stdout: BinaryIO) -> None:
    from edgeprune.profiling.ort import OrtBackend
    from edgeprune.targets import load_profile

    backend = OrtBackend(load_profile(profile_source))
    while True:
        header = read_frame(stdin)
        if header is None:
            return
        blob = read_frame(stdin)
        try:
            shape = tuple(int(d) for d in json.loads(header)["shape"])
            stats = backend.measure(blob or b"", shape)
            reply = {"ok": True, "stats": stats.to_dict()}
        except Exception as exc:  # reported to the parent, which raises it there
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        write_frame(stdout, json.dumps(reply).encode())


if __name__ == "__main__":
    serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer)
