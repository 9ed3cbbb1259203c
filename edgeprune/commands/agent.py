"""``edgeprune agent``: serve latency measurements on the device.

Torch-free like :mod:`edgeprune.profiling.agent` itself: the device (a Jetson, a CI box) may have only
onnxruntime. That module is stdlib-only at import, so the parser takes its defaults from it.
"""

from __future__ import annotations

import argparse

from edgeprune.profiling import agent


def add_parser(sub) -> None:
    ag = sub.add_parser("agent", help="run ON the device: time ONNX models sent by a search elsewhere (no torch needed)")
    ag.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other address needs --token-file)")
    ag.add_argument("--port", type=int, default=agent.DEFAULT_PORT, help=f"port (default {agent.DEFAULT_PORT}; 0 picks a free one, printed at start)")
    ag.add_argument("--token-file", help="file holding the bearer token clients must send (required off loopback)")
    ag.add_argument("--max-upload-mb", type=float, default=agent.DEFAULT_MAX_UPLOAD_MB, help=f"largest ONNX model accepted, MiB (default {agent.DEFAULT_MAX_UPLOAD_MB})")
    ag.add_argument("--max-memory-mb", type=int, default=agent.DEFAULT_MAX_MEMORY_MB, help=f"memory limit of the process that times a model, MiB (default {agent.DEFAULT_MAX_MEMORY_MB}; 0 = no limit)")
    ag.add_argument("--measure-timeout-s", type=float, default=agent.DEFAULT_MEASURE_TIMEOUT_S, help=f"longest one measurement may take before its process is killed, s (default {agent.DEFAULT_MEASURE_TIMEOUT_S:g})")
    ag.add_argument("--request-timeout-s", type=float, default=agent.DEFAULT_REQUEST_TIMEOUT_S, help=f"time a client has to send a request's headers (plus 1 s per MiB of body), s (default {agent.DEFAULT_REQUEST_TIMEOUT_S:g})")
    ag.add_argument("--max-connections", type=int, default=agent.DEFAULT_MAX_CONNECTIONS, help=f"open connections served at once; more are closed at once (default {agent.DEFAULT_MAX_CONNECTIONS})")


def run(args: argparse.Namespace) -> int:
    agent.serve(
        args.host, args.port, args.token_file, args.max_upload_mb, max_memory_mb=args.max_memory_mb,
        measure_timeout_s=args.measure_timeout_s, request_timeout_s=args.request_timeout_s, max_connections=args.max_connections,
    )
    return 0
