"""A torch-free child process that times ONNX models: the local stand-in for the target.

Measured here: importing torch into the timing process makes onnxruntime's CPU kernels run
~1.4x slower and bimodal across sessions (0.145 vs 0.104 ms for the same mobilenet_v2 variant),
while a process holding only onnxruntime gives ±3 %. A deployed model does not share its process
with torch either, so every local measurement runs in this process. The parent blocks while the
child times, so no evaluation of ours competes with the timed runs for the cores.

Wire format on stdin/stdout (both directions): 8-byte big-endian length + JSON header, and for
requests 8-byte length + ONNX bytes. Requests: ``{"shape"}`` times a model; ``{"op": "reference",
"shape"}`` stores a reference model; ``{"shape", "with_reference": true}`` times a model and the
reference in alternating blocks; ``{"op": "node_times", "shape", "runs"}`` returns ORT's per-node
profile of a model (:meth:`OrtBackend.node_times`). Nothing is ever unpickled.
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


def serve(profile_json: str, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Serve requests until stdin closes. ``profile_json`` is the parent's whole profile (not a
    file name), so overrides made in memory apply here too."""
    from edgeprune.profiling.ort import OrtBackend
    from edgeprune.targets import Profile

    backend = OrtBackend(Profile.from_dict(json.loads(profile_json)))
    reference: tuple[bytes, tuple[int, ...]] | None = None
    while True:
        header = read_frame(stdin)
        if header is None:
            return
        blob = read_frame(stdin) or b""
        try:
            request = json.loads(header)
            shape = tuple(int(d) for d in request["shape"])
            if request.get("op") == "reference":
                reference = (blob, shape)
                reply = {"ok": True}
            elif request.get("op") == "node_times":
                reply = {"ok": True, "node_times": backend.node_times(blob, shape, int(request["runs"])).to_dict()}
            elif request.get("with_reference"):
                if reference is None:
                    raise ValueError("no reference model was sent before a paired measurement")
                stats, ref = backend.measure_pair(blob, shape, *reference)
                reply = {"ok": True, "stats": stats.to_dict(), "reference": ref.to_dict()}
            else:
                reply = {"ok": True, "stats": backend.measure(blob, shape).to_dict()}
        except Exception as exc:  # reported to the parent, which raises it there
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        write_frame(stdout, json.dumps(reply).encode())


if __name__ == "__main__":
    serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer)
